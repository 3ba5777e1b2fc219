"""Benchmarks: `python -m benchmarks.polling` compares how RunPod clients follow jobs (see its docstring)."""
