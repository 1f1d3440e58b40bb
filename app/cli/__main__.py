"""`python -m app.cli …`: the same as the `kedit` command (what the tests and benchmarks spawn)."""

from app.cli import main

main()
