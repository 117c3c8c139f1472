"""What a run leaves to deploy, and proof that it works outside runner.

`artifacts.py` writes model.keras and the SavedModel (and their float32 copies under a mixed
policy) and checks them; `fresh_reload.py` is the script that reloads them in a fresh `python -I`
without runner (it imports nothing of runner); `predict.py` runs an exported model on image files
through the run's own preprocessing; `finished_run.py` is `runner export RUN_DIR`, the same for a
finished run's checkpoint, later.

Imports: spec, compat, runs, exits, data, models, precision, training, preflight, reporting.
"""
