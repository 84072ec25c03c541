"""Benchmarks: each prints its figures as ratios against a baseline measured in
the same run, and writes them to bench/results/<name>.json."""
