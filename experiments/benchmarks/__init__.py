"""Benchmark scripts: each prints a table and writes JSON to ``--out`` (default ``./results/<name>.json`` in the
working directory). ``experiments/results/`` holds the measurements quoted in the README."""
