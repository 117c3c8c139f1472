"""Precision policy: a scope that sets it before anything is built, loss scaling, and a dtype audit.

The audit is plain data (dicts of strings), so the checks that read it are pure functions.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np

from runner import compat
from runner.models import OUTPUT_ACTIVATION, OUTPUT_CAST, final_activation
from runner.precision.layers import layer_paths, match
from runner.spec import COMPUTE_DTYPE, PrecisionSpec


@contextlib.contextmanager
def policy_scope(policy: str) -> Iterator[None]:
    """Set Keras' global dtype policy for the block, and restore the previous one afterwards.

    Layers read the global policy when they are *constructed*, so everything that builds layers
    must run inside this block (the tutorial set it afterwards and silently trained in float32).
    """
    previous = compat.global_policy()
    compat.set_global_policy(policy)
    try:
        yield
    finally:
        compat.set_global_policy(previous)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy, TensorFlow and Keras for the block; restore Python and NumPy state after.

    TensorFlow's global seed cannot be read back, so it is reset to unseeded (its default) afterwards.
    """
    keras, tf = compat.keras(), compat.tensorflow()
    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        with compat.checkpointable_random():
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        tf.random.set_seed(None)


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Python's and NumPy's random state and Keras' global seed generator as they were before the
    block: building a throwaway model (the float32 reference) draws initializer seeds from them, and
    the run's own randomness must not depend on whether it was built."""
    py_state, np_state, keras_state = random.getstate(), np.random.get_state(), compat.global_seed_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        compat.restore_global_seed_state(keras_state)


@contextlib.contextmanager
def built_aside() -> Iterator[None]:
    """For a model built and thrown away (the float32 reference, a timed candidate): the random
    state and Keras' automatic layer names as they were before the block, so the run's own model
    is the same whether or not another was built first."""
    with random_state_kept(), compat.names_kept():
        yield


def wrap_optimizer(optimizer: Any, precision: PrecisionSpec) -> Any:
    if not precision.uses_loss_scaling:
        return optimizer
    return compat.loss_scale_optimizer(optimizer, precision.initial_scale, precision.growth_interval)


def _output_dtype(layer: Any) -> str | None:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # never called, or called at several places
        return None
    if isinstance(output, list | tuple):
        return compat.dtype_name(output[0].dtype) if output else None
    return compat.dtype_name(output.dtype)


def _output_layer_names(model: Any) -> list[str]:
    names = []
    for tensor in model.outputs:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.append(history[0].name)
    return names or [model.layers[-1].name]


def _weight_record(variable: Any) -> dict[str, Any]:
    return {
        "path": compat.variable_path(variable),
        "dtype": compat.dtype_name(variable.dtype),
        "trainable": bool(variable.trainable),
    }


def audit_model(model: Any, optimizer: Any, declared: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every layer's compute, variable and output dtype, the model's output dtype, the optimizer.
    Layers inside layers (an attention layer's dense and softmax layers, a nested model's) are
    audited themselves, their parent holding none of their variables. `declared`: the spec's
    [precision.layers], whose layers are marked with their pattern's policy."""
    layers = []
    for path, layer in layer_paths(model):
        policy = layer.dtype_policy
        # A nested model or a layer made of layers: audited through its own layers.
        container = bool(compat.sublayers(layer))
        found = match(path, declared or {})
        layers.append(
            {
                "name": layer.name,
                "path": path,
                "class": type(layer).__name__,
                "container": container,
                "compute_dtype": str(policy.compute_dtype),
                "variable_dtype": str(policy.variable_dtype),
                "output_dtype": _output_dtype(layer),
                # Units or filters: Tensor Cores want multiples of 8 (a hint under mixed_float16).
                "width": getattr(layer, "units", None) or getattr(layer, "filters", None),
                # The dtypes variables really have, not what the policy says they should.
                "weights": [] if container else [_weight_record(v) for v in layer.weights],
                **({"declared": found[1], "pattern": found[0]} if found else {}),
            }
        )
    return {
        "layers": layers,
        "output_layers": _output_layer_names(model),
        "output_dtype": compat.dtype_name(model.outputs[0].dtype),
        # Where the output really is computed (a cast after a float16 softmax is float32 too late).
        "final_activation": final_activation(model),
        "optimizer": type(optimizer).__name__,
        "inner_optimizer": type(getattr(optimizer, "inner_optimizer", optimizer)).__name__,
        "loss_scale_optimizer": compat.is_loss_scale_optimizer(optimizer),
        "output_cast_appended": any(x["name"] == OUTPUT_CAST for x in layers),
        "output_activation_appended": any(x["name"] == OUTPUT_ACTIVATION for x in layers),
        "loss_scale": compat.current_loss_scale(optimizer),
        "global_policy": compat.global_policy_name(),
    }


def _nonfinite(tf: Any, grads: list, variables: list) -> list[str]:
    return [
        compat.variable_path(v)
        for g, v in zip(grads, variables, strict=True)
        if g is not None and not bool(tf.reduce_all(tf.math.is_finite(compat.dense(g, "float32"))))
    ]


def first_step_probe(model: Any, x: Any, y: Any, jit_compile: bool = False) -> dict[str, Any]:
    """Loss and gradients of one training step on a real batch, without changing the model.

    Gradients are taken twice: unscaled (are they finite at all?) and, under a LossScaleOptimizer,
    scaled by the current loss scale as training will (do they overflow float16?). Nothing is applied,
    and variables a training-mode call updates (BatchNorm statistics) are put back. Under a
    distributed strategy the batch is split over the replicas and the gradients are all-reduced, as
    in training (every worker takes part). With `jit_compile` the step is compiled by XLA, as the
    run will compile it (XLA can place a mixed step's casts differently).
    """
    tf = compat.tensorflow()
    snapshot = [v.numpy() for v in model.variables]
    start = time.perf_counter()
    try:
        if tf.distribute.has_strategy():
            loss, grads, scaled_grads = _replicated_gradients(tf, model, x, y)
            compiled = "tf.function"
        else:
            step = partial(_gradients, tf, model)
            if jit_compile:
                step = tf.function(step, jit_compile=True, autograph=False)  # no tensor-dependent branches
            loss, grads, scaled_grads = step(tf.convert_to_tensor(x), tf.convert_to_tensor(y))
            compiled = "xla" if getattr(step, "_jit_compile", False) else "eager"  # what really ran
        variables = model.trainable_variables
        result: dict[str, Any] = {
            "loss": float(loss),
            "nonfinite_gradients": _nonfinite(tf, grads, variables),
            "scale": compat.current_loss_scale(model.optimizer),
            "compiled": compiled,  # eager, xla (jit_compile) or tf.function (distributed)
            "seconds": time.perf_counter() - start,  # an eager step: an upper bound of a compiled one
        }
        if scaled_grads is not None:
            result["overflowed_gradients"] = _nonfinite(tf, scaled_grads, variables)
    finally:
        for variable, value in zip(model.variables, snapshot, strict=True):
            variable.assign(value)
    return result


def _gradients(tf: Any, model: Any, x: Any, y: Any) -> tuple[Any, list, list | None]:
    """The loss, its gradients, and (under loss scaling) the scaled loss's gradients."""
    optimizer = model.optimizer
    scaled = compat.is_loss_scale_optimizer(optimizer)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred)
        scaled_loss = compat.scale_loss(optimizer, loss) if scaled else loss
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    scaled_grads = tape.gradient(scaled_loss, variables) if scaled else None
    del tape
    return loss, grads, scaled_grads


def _replicated_gradients(tf: Any, model: Any, x: Any, y: Any) -> tuple[Any, list, list | None]:
    """`_gradients` on every replica's share of the batch, summed over the replicas (each replica's
    loss is already divided by their number, as in a training step)."""
    strategy = tf.distribute.get_strategy()
    count = int(strategy.num_replicas_in_sync)
    xs, ys = np.array_split(np.asarray(x), count), np.array_split(np.asarray(y), count)
    shares = strategy.experimental_distribute_values_from_function(
        lambda context: (xs[context.replica_id_in_sync_group], ys[context.replica_id_in_sync_group])
    )
    variables = model.trainable_variables

    def replica_step(share: Any) -> Any:
        loss, grads, scaled_grads = _gradients(tf, model, tf.convert_to_tensor(share[0]), share[1])
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables, strict=True)]
        summed = tf.distribute.get_replica_context().all_reduce("SUM", [loss, *grads, *(scaled_grads or [])])
        return summed

    summed = strategy.experimental_local_results(strategy.run(tf.function(replica_step), args=(shares,)))[0]
    n = len(variables)
    return summed[0], summed[1 : 1 + n], (summed[1 + n :] or None)


# CPU features with which oneDNN computes in the dtype natively (else it converts, element by element).
CPU_NATIVE = {"float16": {"amx_fp16", "avx512_fp16"}, "bfloat16": {"amx_bf16", "avx512_bf16"}}


def hardware_note(policy: str, device: dict[str, Any]) -> str:
    """What the device's features say about `policy`, to explain a measured figure (speed.py); it
    never stands in for one: a CPU with AVX-512 FP16 was measured running TensorFlow's float16
    convolution gradients ~280x slower than float32."""
    if policy == "float32":
        return "the reference precision"
    dtype = COMPUTE_DTYPE[policy]
    gpu = device.get("gpu")
    if gpu:
        cc = tuple(gpu.get("compute_capability") or (0, 0))
        needed = (7, 0) if dtype == "float16" else (8, 0)
        has = "has" if cc >= needed else f"lacks (they need {needed[0]}.{needed[1]})"
        return f"{gpu.get('name', 'GPU')} ({cc[0]}.{cc[1]}) {has} {dtype} Tensor Cores"
    native = CPU_NATIVE[dtype] & set(device.get("cpu_flags", []))
    if native:
        names = ", ".join(sorted(f.upper() for f in native))
        return f"CPU has {names} (oneDNN {dtype} kernels)"
    wanted = " or ".join(sorted(f.upper() for f in CPU_NATIVE[dtype]))
    return f"no {wanted}: {dtype} emulated"
