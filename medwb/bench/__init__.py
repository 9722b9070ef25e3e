"""Measuring variants: the per-variant probe (a fresh process each), the benchmark run,
records, memory bandwidth and the decode floor, and the comparison report."""
