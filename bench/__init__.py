"""bench/: the benchmark of issue 6 (bench/run.py)."""
