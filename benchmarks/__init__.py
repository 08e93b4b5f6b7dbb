"""Benchmarks: one command each, printing a table with ratios measured in the same run."""
