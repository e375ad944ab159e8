"""Stage 3, training (`train`, one job per run): a run spec -> its run folder.

Takes a `RunSpec` and its prepared dataset; gives results/runs/<run>/: the training and
evaluation curves, the per-layer logs, checkpoints and summary.json. `loop` is the job and its
training loop, `evaluation` the evaluation passes, `layers` the per-layer logging; `sgd` the
optimiser, `checkpoint` the checkpoint files, `runtime` the device, threads and numerics.

This file imports nothing, so importing the package stays light (torch loads with the modules).
"""
