"""Benchmarks: every speed claim in the README comes from one of these scripts (`python -m bench.run_all` runs them all)."""
