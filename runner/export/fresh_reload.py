"""Reload exported models as a user would, in a fresh `python -I` with runner unimportable.

Run as a script by runner/export/artifacts.py, never imported: `python -I fresh_reload.py JOB.json`. The job
names the batch (.npy, uint8 images) and the exported files; for each file this loads it with plain
Keras (`keras.saving.load_model`) or TensorFlow (`tf.saved_model.load`), predicts the batch, saves
the predictions beside, and prints one JSON line of what happened. Any import of `runner` fails
here, so a file that needs runner's code to load fails the round trip instead of passing it.
"""

import importlib.abc
import json
import os
import sys
import time
import traceback


class RefuseRunner(importlib.abc.MetaPathFinder):
    """Makes `import runner` (and its submodules) fail, whatever the installed package offers."""

    def find_spec(self, name, path=None, target=None):
        if name == "runner" or name.startswith("runner."):
            raise ModuleNotFoundError(
                f"No module named {name!r} (refused: an export must load without runner)"
            )
        return None


def load_keras():
    """The Keras a user of this TensorFlow loads with: tf-keras when TF_USE_LEGACY_KERAS asks for it."""
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in {"1", "true", "yes"}:
        import tf_keras as keras
    else:
        import keras
    return keras


def predict(path, kind, batch):
    import numpy as np
    import tensorflow as tf

    if kind == "keras":
        keras = load_keras()
        model = keras.saving.load_model(path)
        return np.asarray(model(tf.constant(batch), training=False))
    loaded = tf.saved_model.load(path)
    if hasattr(loaded, "serve"):  # the endpoint Keras' model.export writes
        return np.asarray(loaded.serve(tf.constant(batch)))
    outputs = loaded.signatures["serving_default"](tf.constant(batch))
    return np.asarray(next(iter(outputs.values())))


def main(job_path):
    sys.meta_path.insert(0, RefuseRunner())
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    sys.path[:0] = job.get("sys_path", [])  # a factory model's module, for its own layers
    import numpy as np

    batch = np.load(job["batch"])
    for artifact in job["artifacts"]:
        start = time.perf_counter()
        result = {"path": artifact["path"]}
        try:
            probabilities = predict(artifact["path"], artifact["format"], batch)
            np.save(artifact["out"], probabilities)
            result.update(ok=True, dtype=str(probabilities.dtype), shape=list(probabilities.shape))
        except Exception as exc:  # noqa: BLE001 - every way a load fails is the finding's detail
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            result.update(ok=False, error=last[:500])
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["runner_imported"] = any(m == "runner" or m.startswith("runner.") for m in sys.modules)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
