"""Benchmark workloads and (later) the `specdecode bench` suite."""
