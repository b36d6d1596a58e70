"""Benchmarks for wsiarray (never run by the test suite).

Run them from the repository root, for example::

    python -m benchmarks.bench_read_level --repeats 5
"""
