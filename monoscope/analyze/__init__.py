"""One pass over an activation store -> the feature store (SQLite; see schema.py)."""
