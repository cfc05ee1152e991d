"""Bytes at rest: the payload codec, the partition's SQLite file and its schema. Mechanics only."""
