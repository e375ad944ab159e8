"""Checkpoint analyses (Santurkar et al. 2018 and the studies beyond it). Each kind is a module
with `compute(origin, settings) -> rows` and a record in `bnstudy.config.catalog.ANALYSES`; `run.analyze`
is the analysis job of one run (its checkpoints -> one table per kind and settings). They read
checkpoints, never retrain, and probe the loss as a pure function of a parameter dict
(`functional.Objective`), set fresh from the stored weights for every point.
"""
