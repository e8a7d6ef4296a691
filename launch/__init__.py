"""Entry-point scripts (`run.py`, `tune.py`, `plan.py`, `prepare_data.py`): thin, imported by no package."""
