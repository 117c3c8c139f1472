"""What float16 (or bfloat16) does to the numbers of one training step, measured before training.

On the probe's weights and real batch: each layer's gradient under the spec's policy (scaled loss,
then unscaled) against a float32 reference of the same model (built under the float32 policy, the
weights copied), and each layer's output range in its compute dtype (activation headroom). The
results are plain data; `checks.numerics_findings` judges them. The model is left as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from runner import compat
from runner.precision.checks import DTYPE_MAX, FLOAT16_TINY
from runner.precision.layers import layer_paths

FLOAT16_MAX = DTYPE_MAX["float16"]
# Layers that draw random numbers in training: off while both runs are compared (float16 and
# float32 draw different masks from the same seed).
RANDOM_LAYER_FIELDS = {"Dropout": "rate", "GaussianDropout": "rate", "GaussianNoise": "stddev"}


def leaf_layers(model: Any) -> Iterator[tuple[str, Any]]:
    """(path, layer) of every layer that holds no layers: a nested model's, and those inside an
    attention layer (its query, key and value projections, its softmax) or any composite layer."""
    for path, layer in layer_paths(model):
        if not compat.sublayers(layer):
            yield path, layer


@contextlib.contextmanager
def without_randomness(model: Any) -> Iterator[None]:
    """Dropout and noise layers off for the block (their rate or stddev 0), restored afterwards."""
    saved = []
    for _, layer in leaf_layers(model):
        field = next((f for c, f in RANDOM_LAYER_FIELDS.items() if _is_a(layer, c)), None)
        if field and isinstance(getattr(layer, field, None), int | float):
            saved.append((layer, field, getattr(layer, field)))
            setattr(layer, field, 0.0)
    try:
        yield
    finally:
        for layer, field, value in saved:
            setattr(layer, field, value)


def _is_a(layer: Any, class_name: str) -> bool:
    return any(cls.__name__ == class_name for cls in type(layer).__mro__)


@contextlib.contextmanager
def recording_outputs(model: Any, ranges: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Record every low-precision layer's output range into `ranges` while the block calls the model
    eagerly: max |x| of the finite values, whether any is inf/NaN, the share of non-zero values
    below float16's smallest normal. The layers' `call` is wrapped for the block only."""
    tf = compat.tensorflow()
    wrapped = []
    for path, layer in leaf_layers(model):
        dtype = str(layer.dtype_policy.compute_dtype)
        if dtype not in DTYPE_MAX or _is_a(layer, "InputLayer"):
            continue
        wrapped.append(layer)
        layer.call = _recorder(tf, layer, path, layer.call, dtype, ranges)
    try:
        yield
    finally:
        for layer in wrapped:
            vars(layer).pop("call", None)


def _recorder(
    tf: Any, layer: Any, path: str, call: Any, dtype: str, ranges: dict[str, dict[str, Any]]
) -> Any:
    def record(*args: Any, **kwargs: Any) -> Any:
        outputs = call(*args, **kwargs)
        first = outputs[0] if isinstance(outputs, list | tuple) else outputs
        if hasattr(first, "dtype") and compat.dtype_name(first.dtype) in DTYPE_MAX:
            ranges[path] = {"class": type(layer).__name__, **output_range(tf, first, dtype)}
        return outputs

    return record


def output_range(tf: Any, tensor: Any, dtype: str) -> dict[str, Any]:
    values = np.abs(tf.cast(tensor, "float32").numpy().astype(np.float64))
    finite = values[np.isfinite(values)]
    nonzero = finite[finite > 0]
    return {
        "dtype": dtype,
        "max_abs": float(finite.max()) if finite.size else 0.0,
        "nonfinite": bool(finite.size < values.size),
        "tiny_fraction": float((nonzero < FLOAT16_TINY).mean()) if nonzero.size else 0.0,
    }


ATTENTION_CLASS = "MultiHeadAttention"  # Keras' and its subclasses (keras_hub's, a user's)
NORMALISATION_CLASSES = ("LayerNormalization", "RMSNormalization", "GroupNormalization")


@contextlib.contextmanager
def recording_internals(model: Any, internals: list[dict[str, Any]]) -> Iterator[None]:
    """Record, in the order they are computed while the block calls the model eagerly, the tensors
    inside layers that a layer's output does not show: each attention layer's logits (Q·Kᵀ, as its
    path computes them: scaled before the product on Keras' explicit path, after it on the fused
    one) and its softmax's output, and each normalisation layer's variance (what its statistics
    square). Appends one row per tensor to `internals`; the layers are restored after the block."""
    tf = compat.tensorflow()
    wrapped = []
    for path, layer in layer_paths(model):
        if _is_a(layer, ATTENTION_CLASS) and hasattr(layer, "_compute_attention"):
            attribute, recorder = "_compute_attention", _attention_recorder(tf, layer, path, internals)
        elif any(_is_a(layer, c) for c in NORMALISATION_CLASSES) and _low_precision(layer):
            attribute, recorder = "call", _variance_recorder(tf, layer, path, internals)
        else:
            continue
        wrapped.append((layer, attribute, vars(layer).get(attribute)))  # another recorder's, or None
        setattr(layer, attribute, recorder)
    try:
        yield
    finally:
        for layer, attribute, previous in wrapped:
            if previous is None:
                vars(layer).pop(attribute, None)
            else:
                setattr(layer, attribute, previous)


def _low_precision(layer: Any) -> bool:
    return str(layer.dtype_policy.compute_dtype) in DTYPE_MAX


def _row(path: str, layer: Any, tensor: str, dtype: str, values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    return {
        "layer": path,
        "class": type(layer).__name__,
        "tensor": tensor,
        "dtype": dtype,
        "max_abs": float(np.abs(finite).max()) if finite.size else 0.0,
        "nonfinite": bool(finite.size < values.size),
    }


def _attention_recorder(tf: Any, layer: Any, path: str, internals: list[dict[str, Any]]) -> Any:
    compute = layer._compute_attention
    softmax = getattr(layer, "_softmax", None)

    def record(query: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        calls: list[Any] = []
        if softmax is not None:  # the explicit path calls it; the fused one does not
            vars(softmax)["call"] = _calls_counted(softmax.call, calls)
        try:
            outputs = compute(query, key, *args, **kwargs)
        finally:
            if softmax is not None:
                vars(softmax).pop("call", None)
        dtype = compat.dtype_name(query.dtype)
        q = tf.cast(query, "float64")
        if calls:  # Keras scales the query first, then takes the product in the layer's dtype
            q = q / math.sqrt(float(layer._key_dim))
            tensor = "attention logits (Q/√d)·Kᵀ"
        else:  # fused: the product in the layer's dtype, scaled after its cast to float32
            tensor = "attention logits Q·Kᵀ (scaled after)"
        logits = tf.einsum(layer._dot_product_equation, tf.cast(key, "float64"), q).numpy()
        internals.append(_row(path, layer, tensor, dtype, logits))
        if calls and outputs[1] is not None:
            internals.append(
                _row(path, layer, "softmax output", compat.dtype_name(outputs[1].dtype), outputs[1].numpy())
            )
        return outputs

    return record


def _calls_counted(call: Any, calls: list[Any]) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(True)
        return call(*args, **kwargs)

    return counted


def _variance_recorder(tf: Any, layer: Any, path: str, internals: list[dict[str, Any]]) -> Any:
    call = layer.call

    def record(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        x = tf.cast(inputs, "float64").numpy()
        squares = np.square(x - x.mean(axis=-1, keepdims=True)) if x.size else x
        # Keras computes these statistics in float32 whatever the policy; the dtype says so.
        internals.append(_row(path, layer, "normalisation variance", "float32", squares))
        return call(inputs, *args, **kwargs)

    return record


def _layer_slices(model: Any) -> list[tuple[str, list[int]]]:
    """(layer path, indices into model.trainable_variables) for every layer with trainable weights of
    its own (a composite layer's own, such as a class token, apart from its layers')."""
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    table: list[tuple[str, list[int]]] = []
    taken: set[int] = set()
    for path, layer in reversed(list(layer_paths(model))):  # a layer's layers before the layer
        owned = [index[id(v)] for v in layer.trainable_weights if id(v) in index and id(v) not in taken]
        taken.update(id(v) for v in layer.trainable_weights)
        if owned:
            table.append((path, owned))
    return table[::-1]


def step_gradients(model: Any, x: Any, y: Any, scale: float = 1.0) -> tuple[float, list[np.ndarray]]:
    """One eager training-mode step's loss and gradients (float64 arrays, one per trainable variable),
    from the loss times `scale` as a loss-scaled step takes them, divided by `scale` afterwards."""
    tf = compat.tensorflow()
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        y_pred = model(tf.convert_to_tensor(x), training=True)
        loss = model.compute_loss(x=x, y=tf.convert_to_tensor(y), y_pred=y_pred)
        target = loss * tf.constant(scale, loss.dtype) if scale != 1.0 else loss
    grads = tape.gradient(target, variables)
    arrays = [
        np.zeros(v.shape) if g is None else compat.dense(g, "float32").numpy().astype(np.float64) / scale
        for g, v in zip(grads, variables, strict=True)
    ]
    return float(loss), arrays


MAX_HALVINGS = 8  # the probe halves an overflowing scale as the first steps of training would


def scaled_gradients(model: Any, x: Any, y: Any) -> tuple[float, list[np.ndarray], dict[str, Any]]:
    """The mixed run's unscaled gradients at the optimizer's loss scale; if they overflow there, at
    the first halving that does not (where dynamic loss scaling settles within its first steps)."""
    scale = compat.current_loss_scale(model.optimizer)
    if scale is None:
        loss, grads = step_gradients(model, x, y)
        return loss, grads, {"loss_scale": None, "scaled_overflow": None, "compared_at_scale": None}
    used = scale
    for _ in range(MAX_HALVINGS + 1):
        loss, grads = step_gradients(model, x, y, used)
        if all(np.isfinite(g).all() for g in grads):
            break
        used /= 2
    return loss, grads, {"loss_scale": scale, "scaled_overflow": used != scale, "compared_at_scale": used}


def compare_gradients(mixed: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Cosine similarity, relative L2 error and underflow of one layer's gradient against float32."""
    a, b = mixed.ravel(), reference.ravel()
    underflow = float(np.mean((a == 0) & (b != 0))) if b.size else 0.0
    nb = float(np.linalg.norm(b))
    if not np.isfinite(a).all():
        return {"cosine": None, "relative_error": None, "underflow": underflow, "finite": False, "norm": nb}
    na, difference = float(np.linalg.norm(a)), float(np.linalg.norm(a - b))
    if nb == 0.0 or na == 0.0:
        cosine = 1.0 if na == nb else 0.0
    else:
        cosine = min(float(np.dot(a, b) / (na * nb)), 1.0)
    error = difference / nb if nb else (0.0 if difference == 0.0 else math.inf)
    return {
        "cosine": cosine,
        "relative_error": error,
        "underflow": underflow,
        "finite": True,
        "norm": nb,  # the float32 gradient's L2 norm
        "difference": difference,  # ||mixed - float32||
    }


def suggested_loss_scale(reference: list[np.ndarray]) -> float | None:
    """The smallest power of two that lifts the smallest non-zero gradient magnitude above float16's
    smallest normal, capped at the largest that keeps the largest below float16's maximum."""
    magnitudes = np.concatenate([np.abs(g.ravel()) for g in reference]) if reference else np.zeros(0)
    nonzero = magnitudes[magnitudes > 0]
    if not nonzero.size:
        return None
    wanted = math.ceil(math.log2(FLOAT16_TINY / float(nonzero.min())))
    ceiling = math.floor(math.log2(FLOAT16_MAX / float(nonzero.max())))
    if 2.0**ceiling * float(nonzero.max()) >= FLOAT16_MAX:
        ceiling -= 1
    return 2.0 ** max(min(wanted, ceiling), 0)


def gradient_fidelity(
    mixed: list[np.ndarray], reference: list[np.ndarray], slices: list[tuple[str, list[int]]]
) -> list[dict[str, Any]]:
    """One row per layer with weights: its gradients (all its variables together) compared."""
    rows = []
    for name, indices in slices:
        a = np.concatenate([mixed[i].ravel() for i in indices])
        b = np.concatenate([reference[i].ravel() for i in indices])
        rows.append({"layer": name, "size": int(b.size), **compare_gradients(a, b)})
    return rows


def numerics_probe(model: Any, reference: Any, x: Any, y: Any) -> dict[str, Any]:
    """Gradient fidelity of `model` against its float32 `reference` (same architecture; its weights
    are overwritten with the model's) and the model's activation headroom, on one batch. Every
    variable of `model` (BatchNorm statistics included) is put back afterwards."""
    snapshot = [v.numpy() for v in model.variables]
    reference.set_weights(model.get_weights())
    ranges: dict[str, dict[str, Any]] = {}
    internals: list[dict[str, Any]] = []
    try:
        with (
            without_randomness(model),
            recording_outputs(model, ranges),
            recording_internals(model, internals),
        ):
            loss, mixed, scaling = scaled_gradients(model, x, y)
        with without_randomness(reference):
            reference_loss, exact = step_gradients(reference, x, y)
    finally:
        for variable, value in zip(model.variables, snapshot, strict=True):
            variable.assign(value)
    rows = gradient_fidelity(mixed, exact, _layer_slices(model))
    compared = [i for _, indices in _layer_slices(model) for i in indices]
    overall = compare_gradients(
        np.concatenate([mixed[i].ravel() for i in compared] or [np.zeros(0)]),
        np.concatenate([exact[i].ravel() for i in compared] or [np.zeros(0)]),
    )
    return {
        "loss": loss,
        "float32_loss": reference_loss,
        **scaling,
        "suggested_loss_scale": suggested_loss_scale(exact),
        "overall": overall,
        "layers": rows,
        "activations": [{"layer": name, **r} for name, r in ranges.items()],
        # The forward pass is the same at every loss scale tried: its first recording of each tensor.
        "internals": first_of_each(internals),
    }


def first_of_each(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (layer, tensor)'s first row, in the order they came."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for row in rows:
        if (row["layer"], row["tensor"]) not in seen:
            seen.add((row["layer"], row["tensor"]))
            kept.append(row)
    return kept
