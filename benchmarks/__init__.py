"""The benchmark suite: `eventbus bench [--quick]` or `python -m benchmarks`."""
