"""Recorded histories (msgpack, with a JSON twin for people) replayed by tests/test_histories.py."""
