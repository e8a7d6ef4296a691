"""Thin entry points: train (run.py), and the job glue they share (config.py, job.py)."""
