"""Benchmarks: `python -m benchmarks.NAME` prints a table, `--json` one JSON object.

Every figure that has a target is a ratio against a reference measured in the same run (memcpy,
plain file I/O, raw pyzmq), because the machines these run on are shared and noisy.
"""
