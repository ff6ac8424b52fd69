"""Batch jobs, run as their own processes: `python -m pipelines <job> ...`."""
