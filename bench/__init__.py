"""Benchmarks: each ``bench_*.py`` measures its contenders side by side in one run and prints
ratios."""
