"""The one place that imports TensorFlow and Keras, and the Keras APIs that differ between versions.

Importing TensorFlow takes seconds, so nothing here runs at module import time: callers ask for
`keras()` or `tensorflow()` inside the functions that need them.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from runner.spec import BadInput


@contextlib.contextmanager
def native_stderr_to(path: str | Path) -> Iterator[IO[str]]:
    """Send what C++ code writes to file descriptor 2 to `path`; yield a stream to the real stderr.

    TensorFlow's core logs through absl before its log level is read (oneDNN and CUDA notices,
    "DT_HALF only on AVX-512"), so TF_CPP_MIN_LOG_LEVEL cannot silence it. Runs keep it in
    their directory instead of burying the progress bars.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as target:
        os.dup2(target.fileno(), 2)
    terminal = os.fdopen(os.dup(saved), "w", encoding="utf-8", errors="replace")
    try:
        yield terminal
    finally:
        terminal.flush()
        terminal.close()
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _DeferredModule(ModuleType):
    """Stands in `sys.modules` for a module not yet run: the first attribute asked of it runs the
    real module (which takes its place) and answers from it. `__spec__` is set, so the import
    system's own look at it does not load it."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        return getattr(real, name)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self.__name__))


def defer_keras_wrappers() -> bool:
    """Keras 3 runs `keras.wrappers` (its scikit-learn estimators) on import, which imports
    scikit-learn and SciPy where they are installed (MLflow brings them), for an API runner never
    uses: `compat.tensorflow()` took 4.5 s with it and 3.8 s without (medians of 5, a 2-core AMD EPYC),
    in every runner process, every sweep variant and trial.
    Before Keras is imported, put a stand-in in its place that runs it on first use. False where there
    is nothing to defer (Keras already imported, or a Keras without a `keras/wrappers` package)."""
    if "keras" in sys.modules or "keras.wrappers" in sys.modules:
        return False
    found = importlib.util.find_spec("keras")  # a top-level spec is found without running the package
    places = (found.submodule_search_locations or []) if found else []
    inits = [Path(place) / "wrappers" / "__init__.py" for place in places]
    init = next((path for path in inits if path.is_file()), None)
    if init is None:
        return False
    stand_in = _DeferredModule("keras.wrappers")
    stand_in.__spec__ = importlib.util.spec_from_file_location(
        "keras.wrappers", init, submodule_search_locations=[str(init.parent)]
    )
    stand_in.__path__ = [str(init.parent)]
    stand_in.__file__ = str(init)  # what tools that walk sys.modules ask (autograph's linecache fix)
    sys.modules["keras.wrappers"] = stand_in
    return True


_DEVICES_PROBED = [False]  # per process: a process forked after the import probes its own


def tensorflow() -> ModuleType:
    """TensorFlow, imported and its devices probed once in this process (quietly: CUDA's notices)."""
    tf = import_tensorflow()
    if not _DEVICES_PROBED[0]:
        _DEVICES_PROBED[0] = True
        with native_stderr_to(os.devnull):
            tf.config.list_physical_devices("GPU")
    return tf


def import_tensorflow() -> ModuleType:
    """TensorFlow imported, nothing more: no device is probed and its runtime does not start (a
    warm server imports it so in runner/processes.py, then forks `runner` processes from it)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    defer_keras_wrappers()
    with native_stderr_to(os.devnull):
        import tensorflow as tf
    return tf


TESTED_TENSORFLOW = ((2, 15), (2, 21))  # pyproject's range, which tests/test_noxfile.py holds this to
KERAS_3_FROM = (2, 16)  # TensorFlow 2.15's tf.keras is Keras 2; from 2.16 Keras 3, or Keras 2 via tf-keras


class UnsupportedEnvironment(BadInput):
    """A TensorFlow or Keras that runner cannot drive: one message naming what it supports."""


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)(?:\.(\d+))?", text)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else (0, 0)


def _range() -> str:
    (a, b), (c, d) = TESTED_TENSORFLOW
    return f"{a}.{b}–{c}.{d}"


def support_status(
    tensorflow_version: str,
    keras_version: str | None,
    legacy_requested: bool,
    tf_keras_version: str | None = None,
) -> tuple[bool, str]:
    """(usable, sentence) for these installed versions: the sentence says what is supported when it is not.

    `keras_version` is the `keras` package's, `tf_keras_version` the `tf-keras` package's (None: not
    installed), `legacy_requested` whether TF_USE_LEGACY_KERAS asks TensorFlow >= 2.16 for Keras 2.
    """
    tf, supported = _version(tensorflow_version), f"runner supports TensorFlow {_range()}"
    if tf < TESTED_TENSORFLOW[0]:
        return False, (
            f"TensorFlow {tensorflow_version} is too old: {supported} "
            f'(Keras 2 on 2.15, Keras 3 from 2.16): pip install "tensorflow>=2.15,<2.22".'
        )
    newer = tf > TESTED_TENSORFLOW[1]
    tested = f"newer than the tested {_range()}: it may work" if newer else f"supported (tested {_range()})"
    if legacy_requested:
        if tf_keras_version is None:
            return False, (
                f"TF_USE_LEGACY_KERAS=1 asks TensorFlow {tensorflow_version} for Keras 2 from the tf-keras "
                f'package, which is not installed: pip install "tf-keras~={tf[0]}.{tf[1]}.0", '
                "or unset TF_USE_LEGACY_KERAS."
            )
        if _version(tf_keras_version) != tf:
            return False, (
                f"tf-keras {tf_keras_version} is not the one for TensorFlow {tensorflow_version} (each "
                f"tf-keras release matches one TensorFlow release): "
                f'pip install "tf-keras~={tf[0]}.{tf[1]}.0".'
            )
        return True, (
            f"TensorFlow {tensorflow_version} with Keras 2 from tf-keras {tf_keras_version} "
            f"(TF_USE_LEGACY_KERAS=1): {tested}."
        )
    if tf < KERAS_3_FROM:
        if keras_version is None or _version(keras_version) >= (3, 0):
            return False, (
                f"TensorFlow {tensorflow_version} takes Keras 2 as tf.keras, but the keras package is "
                f'{keras_version or "missing"}: pip install "keras~={tf[0]}.{tf[1]}.0", '
                'or "tensorflow>=2.16" for Keras 3.'
            )
        return True, f"TensorFlow {tensorflow_version} with Keras {keras_version} (tf.keras): {tested}."
    if keras_version is None or _version(keras_version) < (3, 0):
        return False, (
            f"TensorFlow {tensorflow_version} needs Keras 3, but the keras package is "
            f'{keras_version or "missing"}: pip install "keras>=3", or set TF_USE_LEGACY_KERAS=1 with '
            f"tf-keras for Keras 2. {supported}."
        )
    return True, f"TensorFlow {tensorflow_version} with Keras {keras_version}: {tested}."


def _installed(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _legacy_requested() -> bool:
    return os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in {"1", "true", "yes"}


def support() -> tuple[bool, str]:
    """Whether this environment's TensorFlow and Keras are supported, without failing when they are not."""
    return support_status(
        tensorflow().__version__, _installed("keras"), _legacy_requested(), _installed("tf-keras")
    )


def _driven_keras_version(legacy_requested: bool) -> str | None:
    """The version of the Keras TensorFlow trains with: tf-keras's when TF_USE_LEGACY_KERAS asks for it
    (TensorFlow 2.15 honours it too), else the keras package's."""
    return _installed("tf-keras") if legacy_requested else _installed("keras")


_KERAS: dict[bool, tuple[ModuleType, bool]] = {}  # by TF_USE_LEGACY_KERAS: (tf.keras, is Keras 2)


def _loaded() -> tuple[ModuleType, bool]:
    legacy = _legacy_requested()
    if legacy not in _KERAS:
        usable, why = support()
        if not usable:
            raise UnsupportedEnvironment(why)
        keras2 = _version(_driven_keras_version(legacy) or "0") < (3, 0)
        _KERAS[legacy] = (tensorflow().keras, keras2)
    return _KERAS[legacy]


def keras() -> ModuleType:
    """The Keras TensorFlow trains with here (Keras 3, or Keras 2 as tf.keras), once it is known to be
    a supported one: `tf.keras` is the Keras that TensorFlow itself uses, whichever it is."""
    return _loaded()[0]


def runtime_started() -> bool:
    """Whether TensorFlow's runtime (its devices, its collectives) has started in this process: after
    that, logical devices and a cluster can no longer be configured."""
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context  # no public accessor

    return context.context()._context_handle is not None


def keras_version() -> str:
    """The driven Keras' version: "3.15.1", or "2.21.0 (tf-keras)" for Keras 2 from tf-keras."""
    legacy = _legacy_requested()
    version = _driven_keras_version(legacy) or "unknown"
    return f"{version} (tf-keras)" if legacy else version


def _keras2() -> bool:
    return _loaded()[1]


# What differs between Keras 2 and Keras 3. Nothing else in runner asks which one it drives.


def needs_keras_3(what: str) -> str | None:
    """None under Keras 3; else one sentence saying that `what` needs it and what runs here."""
    if not _keras2():
        return None
    return (
        f"{what} needs Keras 3; this is Keras {keras_version()} (TensorFlow "
        f"{tensorflow().__version__}). Use TensorFlow >= 2.16 with Keras 3"
    )


def dense(gradient: Any, dtype: str) -> Any:
    """A gradient as a dense tensor of `dtype`: an embedding's gradient is an IndexedSlices (the rows
    the batch touched), which has no .numpy() and which tf.math.is_finite does not take."""
    tf = tensorflow()
    if isinstance(gradient, tf.IndexedSlices):
        gradient = tf.convert_to_tensor(gradient)
    return tf.cast(gradient, dtype)


def sublayers(layer: Any) -> list[Any]:
    """The layers `layer` holds directly (a model's layers, an attention layer's dense and softmax
    layers), in the order it tracks them; both Keras keep this private method on every layer."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def set_layer_policy(layer: Any, policy: str) -> None:
    """Give one built layer its own dtype policy (Keras 3: the layer casts its inputs to the new
    compute dtype on its next call; its variables, float32 under a mixed policy, stay as they are)."""
    layer.dtype_policy = keras().DTypePolicy(policy)


def global_policy() -> Any:
    return keras().mixed_precision.global_policy()  # Keras 3 keeps the Keras 2 name too


def global_policy_name() -> str:
    return str(global_policy().name)


def set_global_policy(policy: Any) -> None:
    keras().mixed_precision.set_global_policy(policy)


def global_seed_state() -> tuple[Any, Any]:
    """Keras 3's global SeedGenerator (what unseeded random ops draw from) and its state's value, or
    (None, None): not made yet, or Keras 2 (whose unseeded ops draw from TensorFlow's global seed)."""
    if _keras2():
        return None, None
    from keras.src.backend.common import global_state  # no public accessor

    generator = global_state.get_global_attribute("global_seed_generator")
    return generator, (None if generator is None else generator.state.numpy())


def restore_global_seed_state(saved: tuple[Any, Any]) -> None:
    if _keras2():
        return
    from keras.src.backend.common import global_state

    generator, value = saved
    global_state.set_global_attribute("global_seed_generator", generator)
    if generator is not None:
        generator.state.assign(value)


@contextlib.contextmanager
def names_kept() -> Iterator[None]:
    """Keras' counters of automatic layer names (dense, dense_1, ...) as they were before the block:
    a model built and thrown away inside does not rename the layers of the next one."""
    if _keras2():
        import importlib

        # Keras 2's backend (tf_keras, or keras 2.15 itself) counts names per graph.
        backend = importlib.import_module(keras().__name__.split(".")[0] + ".src.backend")
        uids = backend.PER_GRAPH_OBJECT_NAME_UIDS  # a WeakKeyDictionary of defaultdict(int)
        saved = {graph: dict(counts) for graph, counts in uids.items()}
        try:
            yield
        finally:
            uids.clear()
            for graph, counts in saved.items():
                uids[graph] = collections.defaultdict(int, counts)
        return
    from keras.src.backend.common import global_state  # no public accessor

    counts = global_state.get_global_attribute("object_name_uids")
    before = None if counts is None else dict(counts)
    try:
        yield
    finally:
        current = global_state.get_global_attribute("object_name_uids")
        if current is not None:
            current.clear()
            current.update(before or {})


def dtype_name(dtype: Any) -> str:
    """The name ("float16") of a tf.DType (Keras 2's variables and tensors) or a string (Keras 3's)."""
    return str(getattr(dtype, "name", dtype))


def variable_path(variable: Any) -> str:
    """A variable's path ("dense/kernel"): Keras 3's `path`, Keras 2's name without its ":0".

    Keras 2's variables have no `path`: asking one that is distributed for it reads its value (a
    summed one's is a collective, which one worker alone would start out of step with the others)."""
    path = None if _keras2() else getattr(variable, "path", None)
    return str(path) if path is not None else re.sub(r":\d+$", "", str(variable.name))


def producer(tensor: Any) -> tuple[Any, list[Any]]:
    """The layer that made a symbolic tensor and that call's input tensors ((None, []) if unknown).

    Keras 3 keeps an operation's node with `input_tensors`, Keras 2 with `keras_inputs`.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, []
    layer, node_index = history[0], history[1]
    try:
        node = layer._inbound_nodes[node_index]
    except (AttributeError, IndexError):
        return layer, []
    inputs = getattr(node, "keras_inputs", None)
    if inputs is None:
        inputs = getattr(node, "input_tensors", [])
    return layer, list(inputs) if isinstance(inputs, list | tuple) else [inputs]


def compile_model(model: Any, optimizer: Any, **options: Any) -> None:
    """model.compile with exactly `optimizer`. Both Kerases wrap a float16 model's optimizer in a
    LossScaleOptimizer of their own defaults; runner wraps (or not) itself, with the spec's scale and
    interval, so that what the spec says is what runs. Keras 3 is told not to; Keras 2 is undone."""
    if _keras2():
        model.compile(optimizer=optimizer, **options)
        if model.optimizer is not optimizer:
            model.optimizer = optimizer
    else:
        model.compile(optimizer=optimizer, auto_scale_loss=False, **options)


def loss_scale_optimizer(inner: Any, initial_scale: float, growth_interval: int) -> Any:
    """A dynamic LossScaleOptimizer around `inner`."""
    if not _keras2():
        return keras().optimizers.LossScaleOptimizer(
            inner, initial_scale=initial_scale, dynamic_growth_steps=growth_interval
        )
    optimizer = keras().mixed_precision.LossScaleOptimizer(
        inner, dynamic=True, initial_scale=initial_scale, dynamic_growth_steps=growth_interval
    )
    _count_applied_steps(optimizer)
    return optimizer


def _count_applied_steps(optimizer: Any) -> None:
    """Keras 2 counts a skipped step in `iterations` too (Keras 3 does not): count the applied ones in
    a variable of our own, incremented where the LossScaleOptimizer hands finite gradients on."""
    tf = tensorflow()
    with tf.init_scope():
        applied = tf.Variable(0, dtype=tf.int64, trainable=False, name="applied_steps")
    apply = optimizer._apply_gradients  # called only for finite gradients (tf_keras, Keras 2.15)

    def apply_and_count(*args: Any, **kwargs: Any) -> Any:
        result = apply(*args, **kwargs)
        applied.assign_add(1)
        return result

    optimizer._apply_gradients = apply_and_count
    optimizer._runner_applied_steps = applied


def is_loss_scale_optimizer(optimizer: Any) -> bool:
    return isinstance(optimizer, keras().mixed_precision.LossScaleOptimizer)


def current_loss_scale(optimizer: Any) -> float | None:
    """The optimizer's loss scale now (its initial scale before the first step); None if unscaled."""
    if not is_loss_scale_optimizer(optimizer):
        return None
    if _keras2():
        return float(optimizer.loss_scale)
    if not optimizer.built:
        return float(optimizer.initial_scale)
    return float(optimizer.dynamic_scale.numpy())


def loss_scale_state(optimizer: Any) -> tuple[Any, Any] | None:
    """The variables holding a LossScaleOptimizer's current scale and its count of applied steps, for
    a compiled loop to read after every step; None without loss scaling. Build the optimizer first."""
    if not is_loss_scale_optimizer(optimizer):
        return None
    if _keras2():
        return optimizer._loss_scale.current_loss_scale, optimizer._runner_applied_steps
    return optimizer.dynamic_scale, optimizer.iterations


def loss_scale_floor() -> float:
    """The smallest scale a run of overflows halves down to: Keras 2 stops at 1, Keras 3 goes on."""
    return 1.0 if _keras2() else 0.0


def scale_loss(optimizer: Any, loss: Any) -> Any:
    """`loss` times the optimizer's current loss scale, as its training step scales it."""
    return optimizer.get_scaled_loss(loss) if _keras2() else optimizer.scale_loss(loss)


def apply_scaled_gradients(optimizer: Any, gradients: list[Any], variables: list[Any]) -> None:
    """One optimizer step from gradients of the scaled loss, as a training step applies them: unscaled,
    checked for overflow (a skipped step and a smaller scale), the scale updated."""
    if _keras2():
        optimizer.apply_gradients(zip(optimizer.get_unscaled_gradients(gradients), variables, strict=True))
    else:
        optimizer.apply(gradients, variables)


def smoothed_sparse_crossentropy(label_smoothing: float) -> Any:
    """A Keras loss: integer labels, probabilities, targets smoothed as CategoricalCrossentropy's
    `label_smoothing` smooths one-hot ones (1 - s on the label, s / classes spread over all)."""
    return _smoothed_loss_class()(label_smoothing=label_smoothing)


@functools.cache
def _smoothed_loss_class() -> type:
    losses, tf = keras().losses, tensorflow()

    class SmoothedSparseCrossentropy(losses.Loss):  # type: ignore[name-defined]
        def __init__(
            self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy", **kw: Any
        ):
            super().__init__(name=name, **kw)
            self.label_smoothing = label_smoothing

        def call(self, y_true: Any, y_pred: Any) -> Any:
            labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])  # (batch,)
            targets = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
            return losses.categorical_crossentropy(targets, y_pred, label_smoothing=self.label_smoothing)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "label_smoothing": self.label_smoothing}

    return SmoothedSparseCrossentropy


def set_threads(threads: int) -> bool:
    """TensorFlow's intra- and inter-op thread pools to `threads` each; False once its runtime has
    started (they cannot change then)."""
    tf = tensorflow()
    if runtime_started():
        return False
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return True


def learning_rate_variable(optimizer: Any) -> Any:
    """The variable holding the rate the (inner) optimizer's update reads, for the loop to set each
    step. Both Kerases keep it in `_learning_rate` when the rate is a number (runner never gives
    them a schedule object: the schedule is runner's, see schedules.py)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner._learning_rate


def learning_rate(optimizer: Any) -> Any:
    """The rate the optimizer reports for its next update (its public property; a LossScaleOptimizer
    answers with its inner optimizer's)."""
    return optimizer.learning_rate


def build_optimizer(optimizer: Any, variables: list[Any]) -> None:
    """Create the optimizer's slot variables for `variables` now, if fit has not yet."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    built = getattr(inner, "_built", False) if _keras2() else optimizer.built
    if not built:
        optimizer.build(variables)


def optimizer_variables(optimizer: Any) -> list[Any]:
    """Every variable of the optimizer's state: Keras 2 keeps a LossScaleOptimizer's scale and its
    count of good steps outside `variables`."""
    found = list(optimizer.variables)
    if _keras2() and is_loss_scale_optimizer(optimizer):
        state = optimizer._loss_scale  # no public accessor for the variables themselves
        found += [state.current_loss_scale, state.counter, optimizer._runner_applied_steps]
    return found


@contextlib.contextmanager
def checkpointable_random() -> Iterator[None]:
    """Layers built in the block draw their randomness (dropout masks) from a state that can be saved
    and restored. Keras 3's always does; Keras 2's legacy default keeps it inside TensorFlow's ops,
    so a resumed run would draw other masks: it is told to use tf.random.Generator, then restored."""
    if not _keras2():
        yield
        return
    experimental = keras().backend.experimental
    was_enabled = experimental.is_tf_random_generator_enabled()
    experimental.enable_tf_random_generator()
    try:
        yield
    finally:
        if not was_enabled:
            experimental.disable_tf_random_generator()


def model_variables(model: Any) -> list[Any]:
    """The model's variables, the states of its random generators included (Keras 3 lists them in
    `variables`, Keras 2 keeps them in each layer's generator)."""
    found = list(model.variables)
    if _keras2():
        for layer in model.submodules:
            generator = getattr(layer, "_random_generator", None)
            if generator is not None and generator._rng_type == generator.RNG_STATEFUL:
                generator._maybe_init()  # created on the first call otherwise
                found.append(generator._generator.state)
    return found


def replica_local_state(model: Any) -> list[Any]:
    """The model's variables each replica updates on its own under a distributed strategy: the
    floating non-trainable ones written inside a step (BatchNormalization's moving statistics).
    Keras 3 mirrors them without aggregation (each replica writes its own copy, and the copies
    drift apart), Keras 2 keeps them per replica (synchronized on read, read as their mean). The
    engine averages them over the replicas after every step. None on one device."""
    tf = tensorflow()
    if not tf.distribute.has_strategy() or tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return []
    found = []
    for variable in model.non_trainable_variables:
        inner = variable if _keras2() else getattr(variable, "value", variable)
        if not tf.as_dtype(inner.dtype).is_floating:
            continue
        apart = getattr(inner, "synchronization", None) == tf.VariableSynchronization.ON_READ
        if apart or getattr(inner, "aggregation", None) == tf.VariableAggregation.NONE:
            found.append(variable)
    return found


def metrics_variables(model: Any) -> list[Any]:
    """The running totals of the compiled metrics (and the mean loss), once they are built."""
    if _keras2():
        return [v for metric in model.metrics for v in metric.variables]
    return list(model.metrics_variables)


def assign_summed(variables: list[Any], values: list[Any]) -> None:
    """Give summed variables (the metrics' totals: one copy per replica, read as their sum) these
    sums: the cluster's first replica holds each value, every other replica zero. An assignment
    outside the replicas would split it by the local devices only, and one worker's alone would
    not be mirrored by the others' collectives."""
    tf = tensorflow()
    if not tf.distribute.has_strategy():
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        return

    def assign() -> None:
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        for variable, value in zip(variables, values, strict=True):
            variable.assign(tf.where(first, tf.constant(value), tf.zeros_like(value)))

    tf.distribute.get_strategy().run(tf.function(assign))


def build_metrics(model: Any, x: Any, y: Any) -> None:
    """Build the compiled metrics (Keras creates them on the first training step) from one batch."""
    tf = tensorflow()
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    y_pred = model(x, training=False)
    if _keras2():  # build without updating: an update outside the replicas fails on a summed variable
        if not model.compiled_loss.built:
            model.compiled_loss.build(y_pred)
        if not model.compiled_metrics.built:
            model.compiled_metrics.build(y_pred, y)
        return
    model.compute_metrics(x, y, y_pred, sample_weight=None)


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """TensorFlow's deterministic ops for the block (slower on some ops), then as they were."""
    if not enabled:
        yield
        return
    from tensorflow.python.framework import config as tf_config  # no public disable yet

    was_enabled = tf_config.is_op_determinism_enabled()
    tensorflow().config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def save_keras_file(model: Any, path: Path) -> None:
    """`model` as a `.keras` file (a zip of its config and weights) that keras.saving.load_model
    reads back: both Kerases write the format (tf-keras from 2.13)."""
    model.save(str(path))


def export_saved_model(model: Any, path: Path) -> None:
    """`model` as a TensorFlow SavedModel whose `serve` endpoint takes the model's inputs, for
    tf.saved_model.load and TF Serving: Keras 3 `export(format=...)`, tf-keras `export(path)`."""
    if _keras2():
        model.export(str(path))
    else:
        model.export(str(path), format="tf_saved_model", verbose=False)


def frozen_bases(model: Any) -> list[Any]:
    """The layers a spec freezes for some epochs (a pretrained application's base: models.py marks
    it with `runner_frozen_epochs`)."""
    return [layer for layer in model.layers if getattr(layer, "runner_frozen_epochs", 0)]


def variables_to_train(model: Any) -> list[Any]:
    """Every variable that trains at some epoch: the trainable ones, and those of a base frozen for
    now (the optimizer gets their slots from the start, so a checkpoint has the same variables
    before and after the base is unfrozen)."""
    bases = frozen_bases(model)
    flags = [base.trainable for base in bases]
    for base in bases:
        base.trainable = True
    try:
        return list(model.trainable_variables)
    finally:
        for base, flag in zip(bases, flags, strict=True):
            base.trainable = flag
