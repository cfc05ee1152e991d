"""The workflow model: definitions, the deterministic loop, replay and the context.

Pure Python: no SQLite, no Ray, no files.
"""
