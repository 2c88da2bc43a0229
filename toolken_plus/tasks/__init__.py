"""Benchmarks: each task module turns its data into examples, prompts and
evaluation items, and scores predictions."""
