"""What a run leaves to deploy, and proof that it works outside runner.

`artifacts.py` writes model.keras and the SavedModel (and their float32 copies under a mixed
policy), has `conversions.py` make the deployment formats from the float32 copy (LiteRT, ONNX, their
quantizations, Keras int8), and checks and measures them; `fresh_reload.py` is the script that runs
each by its own runtime in a fresh `python -I` without runner (it imports nothing of runner);
`predict.py` runs any exported artifact on image files through the run's own preprocessing;
`finished_run.py` is `runner export RUN_DIR`, the same for a
finished run's checkpoint, later.

Imports: spec, compat, runs, exits, data, models, precision, training, preflight, reporting.
"""
