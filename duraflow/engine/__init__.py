"""The workflow model: definitions, the deterministic loop, replay, the context and the client.

Pure Python: no SQLite, no Ray, no files.
"""
