"""Business logic below the routes: edits, the model host (weights = base + log), worker steps."""
