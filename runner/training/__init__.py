"""Training: runner's own strategy-aware loop and what watches it.

`distribution.py` reads cluster membership (TF_CONFIG, Slurm) and the chief rule; `engine.py` is the
compiled step on any tf.distribute strategy; `loop.py` drives the epochs from the spec (optimizer,
steps per execution, segments); `callbacks.py` observes it (telemetry, checkpoints, TensorBoard,
progress events); `schedules.py` gives each step's learning rate and watches plateaus and early
stopping; `telemetry.py` records what training observed and carries the stop request;
`checkpoints.py` saves and restores everything an exact resume needs; `workers.py` is this process's part in a
run (its data, device, strategy and thread share; the run directory every worker must see); `trial.py`
is a study's trial seen from its process (per-epoch reports to Optuna, pruning, its driver's death).

Imports: spec, compat, runs, processes, events, memory, data, models, precision, search, tuning.
"""
