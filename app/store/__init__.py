"""Persistence: the edit log (SQLAlchemy 2 models, repository functions, tensor codecs)."""
