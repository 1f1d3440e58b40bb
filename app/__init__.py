"""kedit: lifelong knowledge editing for language models, as a library, a CLI and a service."""
