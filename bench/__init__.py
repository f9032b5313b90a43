"""Benchmarks: each module measures ratios in one run and writes reports/bench/<name>.json."""
