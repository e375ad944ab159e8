"""Tracking in MLflow, beside the DAG (`init_tracking`, the training jobs, `track`).

Takes the tracking settings and the runs as they train (or, for `track`, the results on disk);
gives an MLflow experiment whose runs mirror the run folders. The run folders stay the truth:
a tracking outage never fails a job, and `sync` re-sends what the store is missing.

mlflow is imported only where a store is opened: the Snakemake process reads the tracking
context through this package without it, and an untracked training job never loads it. This file
imports nothing.
"""
