"""Run exported models as a user would, each by its own runtime, in a fresh `python -I` with runner
unimportable.

Run as a script by runner/export/artifacts.py: `python -I fresh_reload.py JOB.json`. The job names the
fixed batch (.npy, uint8 images), the evaluation images (the whole test split, .npy) and the exported
files; for each file this loads it with its runtime, predicts the batch and the evaluation images,
times repeated batches, saves the predictions beside, and prints one JSON line of what happened.

| format        | runtime                                            |
|---------------|----------------------------------------------------|
| `keras`       | Keras: `keras.saving.load_model`                   |
| `saved_model` | TensorFlow: `tf.saved_model.load`                  |
| `litert`      | LiteRT: `ai_edge_litert.interpreter.Interpreter`   |
| `onnx`        | ONNX Runtime: `onnxruntime.InferenceSession` (CPU) |

Any import of `runner` fails here, so a file that needs runner's code to load fails instead of
passing. runner's own `predict` imports `load` from this module (it imports nothing of runner).
"""

import importlib.abc
import json
import os
import statistics
import sys
import time
import traceback

EVALUATION_BATCH = 256  # images per call when predicting the evaluation split
LATENCY_REPEATS = 7  # timed calls of the latency batch, after one untimed: their median


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


class Loaded:
    """An artifact loaded by its runtime: `predict(uint8 images) -> float32 probabilities`."""

    def __init__(self, runtime, predict, input_shape):
        self.runtime = runtime  # "<package> <version>"
        self.predict = predict
        self.input_shape = tuple(input_shape)  # one image's, as the file declares it
        self.delegate: str | None = None  # LiteRT: the delegate that ran it


def _keras(path):
    import numpy as np
    import tensorflow as tf

    keras = load_keras()
    model = keras.saving.load_model(path)
    return Loaded(
        f"keras {keras.__version__}",
        lambda batch: np.asarray(model(tf.constant(batch), training=False)),
        model.inputs[0].shape[1:],
    )


def _saved_model(path):
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # the closures below keep it alive: its functions need its variables
    if hasattr(loaded, "serve"):  # the endpoint Keras' model.export writes

        def predict(batch):
            return np.asarray(loaded.serve(tf.constant(batch)))
    else:
        function = loaded.signatures["serving_default"]

        def predict(batch):
            return np.asarray(next(iter(function(tf.constant(batch)).values())))

    signature = loaded.signatures["serving_default"].structured_input_signature[1]
    shape = next(iter(signature.values())).shape[1:]
    return Loaded(f"tensorflow {tf.__version__}", predict, shape)


def _litert(path):
    """LiteRT's interpreter with its default delegate (XNNPACK on CPU), as an app gets it; where that
    delegate refuses the graph (XNNPACK has no kernel for some full-int8 graphs), the built-in kernels
    alone, and the result says so (`delegate`)."""
    import ai_edge_litert
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    threads = os.cpu_count() or 1
    state = {"interpreter": Interpreter(model_path=path, num_threads=threads), "shape": None}
    (given,) = state["interpreter"].get_input_details()
    (output,) = state["interpreter"].get_output_details()

    def prepare(batch_shape):
        interpreter = state["interpreter"]
        interpreter.resize_tensor_input(given["index"], list(batch_shape))
        interpreter.allocate_tensors()
        state["shape"] = batch_shape

    def run(batch):
        if state["shape"] != batch.shape:  # resized for each new batch shape (the last batch is smaller)
            prepare(batch.shape)
        interpreter = state["interpreter"]
        interpreter.set_tensor(given["index"], np.ascontiguousarray(batch, dtype=given["dtype"]))
        interpreter.invoke()  # XNNPACK prepares its runtime here, on the first call
        return np.array(interpreter.get_tensor(output["index"]))

    def predict(batch):
        try:
            return run(batch)
        except RuntimeError as exc:
            if loaded.delegate != "XNNPACK":
                raise
            why = " ".join(str(exc).split())[:200]
            loaded.delegate = f"none: the built-in kernels (XNNPACK refused the graph: {why})"
            state["interpreter"] = Interpreter(
                model_path=path,
                num_threads=threads,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            )
            state["shape"] = None
            return run(batch)

    version = getattr(ai_edge_litert, "__version__", None) or _version("ai-edge-litert")
    loaded = Loaded(f"ai-edge-litert {version}", predict, [int(d) for d in given["shape_signature"][1:]])
    loaded.delegate = "XNNPACK"
    return loaded


def _onnx(path):
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()

    def predict(batch):
        return np.asarray(session.run(None, {given.name: batch})[0])

    return Loaded(f"onnxruntime {onnxruntime.__version__}", predict, given.shape[1:])


def _version(package):
    from importlib.metadata import version

    return version(package)


RUNTIMES = {"keras": _keras, "saved_model": _saved_model, "litert": _litert, "onnx": _onnx}


def load(path, kind):
    """The artifact at `path` loaded by the runtime of its format (raises what that runtime raises)."""
    return RUNTIMES[kind](path)


def predict_all(loaded, images, batch=EVALUATION_BATCH):
    import numpy as np

    parts = [loaded.predict(np.asarray(images[i : i + batch])) for i in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def latency_ms(loaded, batch):
    """Milliseconds per image: the median of LATENCY_REPEATS timed calls on `batch`, after one untimed."""
    loaded.predict(batch)
    times = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        loaded.predict(batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / len(batch)


def run_one(artifact, batch, images, latency_images):
    import numpy as np

    result = {"path": artifact["path"]}
    start = time.perf_counter()
    loaded = load(artifact["path"], artifact["format"])
    result["runtime"] = loaded.runtime
    result["load_seconds"] = round(time.perf_counter() - start, 3)
    probabilities = loaded.predict(batch)
    np.save(artifact["out"], probabilities)
    result.update(dtype=str(probabilities.dtype), shape=list(probabilities.shape))
    if images is not None:
        np.save(artifact["evaluation_out"], predict_all(loaded, images))
        result["latency_ms_per_image"] = round(latency_ms(loaded, latency_images), 4)
        result["latency_batch"] = int(len(latency_images))
    if loaded.delegate is not None:
        result["delegate"] = loaded.delegate
    return result


def runner_refused():
    """Whether `import runner` fails in this process (the proof each result carries)."""
    import importlib

    try:
        importlib.import_module("runner")
    except ModuleNotFoundError:
        return True
    return False


def main(job_path):
    sys.meta_path.insert(0, RefuseRunner())
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    sys.path[:0] = job.get("sys_path", [])  # a factory model's module, for its own layers
    import numpy as np

    batch = np.load(job["batch"])
    images = np.load(job["evaluation"], mmap_mode="r") if job.get("evaluation") else None
    latency_images = None if images is None else np.asarray(images[: job.get("latency_batch", 32)])
    for artifact in job["artifacts"]:
        start = time.perf_counter()
        try:
            result = {**run_one(artifact, batch, images, latency_images), "ok": True}
        except Exception as exc:  # noqa: BLE001 - every way a load fails is the finding's detail
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            result = {"path": artifact["path"], "ok": False, "error": last[:500]}
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["runner_imported"] = any(m == "runner" or m.startswith("runner.") for m in sys.modules)
        result["runner_refused"] = runner_refused()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
