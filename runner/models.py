"""Model registry: spec `kind` → a builder of a Keras functional model.

Every model takes uint8 images (scaling to [0, 1] happens inside the model, so the data pipeline
never holds float copies) and ends in a softmax that computes in float32 unless the spec asks to
reproduce the float16-output bug. A cast *after* a float16 softmax is not enough: its probabilities
have already underflowed to 0 (float16's smallest is 6e-8), so models we did not write get their
final activation in float32 too, and `final_activation` finds the layer the audit must look at.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner import compat
from runner.spec import (
    PROBABILITY_ACTIVATIONS,
    Factory,
    KerasApplication,
    KerasHub,
    Mlp,
    ResNet,
    SeedCnn,
    SpecValueError,
    Vit,
)

OUTPUT_CAST = "output_cast"  # the layer runner appends to give a foreign model a float32 output
OUTPUT_ACTIVATION = "output_activation"  # the float32 softmax runner appends to a model's logits
# Layers that move or cast values without computing new ones: the final activation lies behind them.
WEIGHTS_TIMEOUT_S = 30  # each wait of the ImageNet weights' download (connect, every read)
PASS_THROUGH = {"Flatten", "Reshape", "Dropout", "Identity", "InputLayer"}


class ModelError(SpecValueError):
    """A model the spec names but that cannot be built: unknown application, broken factory."""


def _inputs(input_shape: tuple[int, ...], scale: float = 1.0 / 255) -> tuple[Any, Any]:
    layers = compat.keras().layers
    images = layers.Input(shape=input_shape, dtype="uint8", name="images")  # (batch, H, W, C) uint8
    return images, layers.Rescaling(scale, name="scale")(images)


def _head(x: Any, num_classes: int, output_dtype: str | None) -> Any:
    """Logits in the policy's dtype, then a softmax in float32 (None: the policy's dtype, the bug)."""
    layers = compat.keras().layers
    logits = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype=output_dtype, name="probabilities")(logits)


def build_seed_cnn(
    spec: SeedCnn, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None
) -> Any:
    layers = compat.keras().layers
    images, x = _inputs(input_shape)
    pool = layers.MaxPooling2D if spec.pooling == "max" else layers.AveragePooling2D
    for i, filters in enumerate(spec.filters):
        # "valid" as in the tutorial, unless the feature map is already smaller than the kernel.
        padding = "valid" if min(x.shape[1:3]) >= spec.kernel_size else "same"
        x = layers.Conv2D(filters, spec.kernel_size, padding=padding, name=f"conv{i + 1}")(x)
        if spec.batch_norm:
            x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.Activation(spec.activation, name=f"act{i + 1}")(x)
        # The tutorial pools after every convolution but the last.
        if i < len(spec.filters) - 1 and min(x.shape[1:3]) >= 2:
            x = pool(2, name=f"pool{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(spec.dense_units, activation=spec.activation, name="dense")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    return compat.keras().Model(images, _head(x, num_classes, output_dtype), name="seed_cnn")


def build_mlp(spec: Mlp, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None) -> Any:
    layers = compat.keras().layers
    images, x = _inputs(input_shape)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(spec.hidden_units):
        x = layers.Dense(units, name=f"dense{i + 1}")(x)
        if spec.batch_norm:
            x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.Activation(spec.activation, name=f"act{i + 1}")(x)
        if spec.dropout:
            x = layers.Dropout(spec.dropout, name=f"dropout{i + 1}")(x)
    return compat.keras().Model(images, _head(x, num_classes, output_dtype), name="mlp")


def _residual_block(x: Any, filters: int, stride: int, activation: str, name: str) -> Any:
    layers = compat.keras().layers
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation(activation, name=f"{name}_act1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        # Projection shortcut (option B of the paper) where the shape changes.
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation(activation, name=f"{name}_out")(y)


def build_resnet(
    spec: ResNet, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None
) -> Any:
    layers = compat.keras().layers
    blocks_per_stage = (spec.depth - 2) // 6
    images, x = _inputs(input_shape)
    x = layers.Conv2D(spec.width, 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation(spec.activation, name="stem_act")(x)
    for stage in range(3):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            x = _residual_block(x, spec.width * 2**stage, stride, spec.activation, name)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    model_name = f"resnet{spec.depth}"
    return compat.keras().Model(images, _head(x, num_classes, output_dtype), name=model_name)


def _encoder_block(x: Any, spec: Vit, mlp_width: int, name: str) -> Any:
    """One pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""
    layers = compat.keras().layers
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
    y = layers.MultiHeadAttention(
        spec.heads, spec.width // spec.heads, dropout=spec.attention_dropout, name=f"{name}_attention"
    )(y, y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
    y = layers.Dense(mlp_width, activation="gelu", name=f"{name}_mlp1")(y)
    y = layers.Dense(spec.width, name=f"{name}_mlp2")(y)
    if spec.dropout:
        y = layers.Dropout(spec.dropout, name=f"{name}_dropout")(y)
    return layers.Add(name=f"{name}_add2")([x, y])


def build_vit(spec: Vit, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None) -> Any:
    layers = compat.keras().layers
    images, x = _inputs(input_shape)
    rows, columns = input_shape[0] // spec.patch_size, input_shape[1] // spec.patch_size
    if rows < 1 or columns < 1:
        raise ModelError(
            f"model.patch_size: expected at most the images' side ({min(input_shape[:2])}); "
            f"got {spec.patch_size}"
        )
    if spec.stem == "conv":
        x = layers.Conv2D(spec.width // 2, 3, padding="same", activation="relu", name="stem_conv")(x)
    x = layers.Conv2D(spec.width, spec.patch_size, strides=spec.patch_size, name="patch_embedding")(x)
    x = layers.Reshape((rows * columns, spec.width), name="patches")(x)  # (batch, patches, width)
    # A learned position embedding from built-in layers only (a saved model loads without runner):
    # a linear map of each token plus a bias per (patch, channel), which is the embedding.
    x = layers.EinsumDense(
        "bpc,cd->bpd", output_shape=(rows * columns, spec.width), bias_axes="pd", name="position_embedding"
    )(x)
    for i in range(spec.depth):
        x = _encoder_block(x, spec, spec.mlp_width or 2 * spec.width, f"block_{i}")
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    return compat.keras().Model(images, _head(x, num_classes, output_dtype), name="vit")


KERAS_HUB_EXTRA = "pip install -e '.[keras_hub]'"


def _keras_hub_backbone(spec: KerasHub) -> Any:
    """The backbone class keras_hub names `spec.backbone`; a missing extra or Keras 2 is one ModelError."""
    refused = compat.needs_keras_3('model.kind = "keras_hub"')
    if refused:
        raise ModelError(refused)
    try:
        keras_hub = importlib.import_module("keras_hub")
    except ImportError as exc:
        raise ModelError(
            f'model.kind: "keras_hub" needs the keras_hub extra ({exc}): {KERAS_HUB_EXTRA}'
        ) from None
    constructor = getattr(keras_hub.models, spec.backbone, None)
    if not isinstance(constructor, type):
        known = sorted(n for n in dir(keras_hub.models) if n.endswith("Backbone") and n != "Backbone")
        close = difflib.get_close_matches(spec.backbone, known, n=1, cutoff=0.5)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise ModelError(
            f"model.backbone: expected a keras_hub backbone ({', '.join(known[:12])}, …); "
            f'got "{spec.backbone}"{hint}'
        )
    return constructor


def build_keras_hub(
    spec: KerasHub, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None
) -> Any:
    keras = compat.keras()
    constructor = _keras_hub_backbone(spec)
    arguments: dict[str, Any] = dict(spec.arguments)
    if "image_shape" in inspect.signature(constructor).parameters:
        arguments["image_shape"] = tuple(input_shape)
    try:
        backbone = constructor(**arguments)
    except Exception as exc:  # noqa: BLE001 - the backbone's own argument checks, reported as the spec's
        raise ModelError(
            f"model.arguments: keras_hub.models.{spec.backbone} cannot be built from {arguments}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    images, x = _inputs(input_shape)
    features = backbone(x)
    pooling = {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D}
    if len(features.shape) in pooling:  # tokens (batch, tokens, dim) or a feature map (batch, H, W, C)
        features = pooling[len(features.shape)](name="pool")(features)
    elif len(features.shape) != 2:
        raise ModelError(
            f"model.backbone: expected {spec.backbone} to return tokens, a feature map or a vector; "
            f"got shape {tuple(features.shape)}"
        )
    name = spec.backbone.lower().removesuffix("backbone") or "backbone"
    return keras.Model(images, _head(features, num_classes, output_dtype), name=name)


def _activation_name(layer: Any) -> str | None:
    """ "softmax", "sigmoid", "linear"… of a layer that applies one (a Softmax layer, an Activation,
    Dense(activation=…)); None for a layer without an activation."""
    if type(layer).__name__ == "Softmax":
        return "softmax"
    function = getattr(layer, "activation", None)
    if function is None:
        return None
    name = str(getattr(function, "__name__", function))
    return next((known for known in (*PROBABILITY_ACTIVATIONS, "linear") if name.startswith(known)), name)


def final_activation(model: Any) -> dict[str, Any] | None:
    """The layer that computes the model's (first) output last, looking through casts, reshapes and
    nested models: {name, class, activation, compute_dtype}; None where the graph cannot be read."""
    tensor = model.outputs[0]
    for _ in range(1000):  # a bounded walk: a graph is finite, a bug in one must not hang a run
        layer, inputs = compat.producer(tensor)
        if layer is None:
            return None
        if hasattr(layer, "layers") and getattr(layer, "outputs", None):  # a nested model: its output
            tensor = layer.outputs[0]
            continue
        activation = _activation_name(layer)
        passes = type(layer).__name__ in PASS_THROUGH or (
            type(layer).__name__ == "Activation" and activation == "linear"
        )
        if not passes:
            return {
                "name": layer.name,
                "class": type(layer).__name__,
                "activation": activation,
                "compute_dtype": str(layer.dtype_policy.compute_dtype),
            }
        if len(inputs) != 1:
            return None
        tensor = inputs[0]
    return None


def _wrap_foreign(
    inner: Any, images: Any, x: Any, output_dtype: str | None, name: str, activation: str | None = None
) -> Any:
    """Call a model we did not write on scaled images. Given an `activation`, the model returns
    logits and runner applies it in `output_dtype`; else a float32 cast is appended if the output
    is not float32 (right for logits, and the audit flags a float16 softmax before it)."""
    keras = compat.keras()
    outputs = inner(x)
    if activation is not None:
        try:
            head = keras.layers.Activation(activation, dtype=output_dtype, name=OUTPUT_ACTIVATION)
        except ValueError as exc:
            raise ModelError(f'model: cannot apply the activation "{activation}": {exc}') from None
        outputs = head(outputs)
    elif output_dtype == "float32" and compat.dtype_name(outputs.dtype) != "float32":
        outputs = keras.layers.Activation("linear", dtype="float32", name=OUTPUT_CAST)(outputs)
    return keras.Model(images, outputs, name=name)


def _application(keras: Any, spec: KerasApplication) -> Any:
    constructor = getattr(keras.applications, spec.name, None)
    if not callable(constructor):
        known = sorted(n for n in dir(keras.applications) if n[0].isupper())
        close = difflib.get_close_matches(spec.name, known, n=1, cutoff=0.5)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise ModelError(
            f'model.name: expected a keras.applications model ({", ".join(known)}); got "{spec.name}"{hint}'
        )
    return constructor


def _weights(spec: KerasApplication) -> str | None:
    """model.weights as the constructor takes it: None, "imagenet", or an existing file's path."""
    if spec.weights in (None, "imagenet"):
        return spec.weights
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise ModelError(
            f'model.weights: expected "imagenet" or a weights file of {spec.name} (.h5, .weights.h5); '
            f'got "{spec.weights}" ({"not a file" if path.exists() else "not found"})'
        )
    return str(path.resolve())


def build_keras_application(
    spec: KerasApplication, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None
) -> Any:
    keras = compat.keras()
    constructor = _application(keras, spec)
    arguments: dict[str, Any] = dict(spec.arguments)
    activation = None
    if output_dtype is not None and spec.include_top:  # logits from it, its activation in float32 by runner
        activation = arguments.pop("classifier_activation", "softmax")
        arguments["classifier_activation"] = None
    if spec.include_top:
        arguments["classes"] = num_classes
    else:
        arguments.setdefault("pooling", "avg")
    weights = _weights(spec)
    timeout = socket.getdefaulttimeout()
    try:
        # Keras downloads ImageNet's weights with urlretrieve, which has no timeout of its own: a
        # network that drops packets would hang the run. Each socket wait is bounded instead.
        socket.setdefaulttimeout(WEIGHTS_TIMEOUT_S if weights == "imagenet" else timeout)
        inner = constructor(
            weights=weights, input_shape=input_shape, include_top=spec.include_top, **arguments
        )
    except (ValueError, TypeError) as exc:
        raise ModelError(
            f"model: keras.applications.{spec.name} cannot take this data "
            f"(input {input_shape}, {num_classes} classes): {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a download refused (offline), a weights file of another model
        what = (
            "ImageNet weights (downloaded on first use: is there a network?)"
            if weights == "imagenet"
            else weights
        )
        raise ModelError(
            f"model.weights: cannot load {what}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    finally:
        socket.setdefaulttimeout(timeout)
    if spec.weights is None:
        # Applications that scale their input themselves (EfficientNet, ConvNeXt, MobileNetV3, …) expect
        # pixels in [0, 255]: fed [0, 1], their first normalisation squeezes the input 255-fold.
        images, x = _inputs(input_shape, 1.0 if _scales_its_input(inner) else 1.0 / 255)
    else:  # pretrained: the pixels as its weights were trained on them (its own preprocess_input)
        images, x = _pretrained_inputs(keras, constructor, input_shape)
    if spec.include_top:
        return _wrap_foreign(inner, images, x, output_dtype, spec.name.lower(), activation)
    inner.trainable = spec.freeze_base_epochs == 0
    inner.runner_frozen_epochs = spec.freeze_base_epochs  # loop.unfreeze reads it at each epoch
    # Pretrained: batch normalisation keeps ImageNet's statistics while the base is fine-tuned.
    features = inner(x, training=False) if spec.weights is not None else inner(x)
    return keras.Model(images, _head(features, num_classes, output_dtype), name=spec.name.lower())


def _pretrained_inputs(keras: Any, constructor: Any, input_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Inputs, and the application's own preprocess_input applied to the uint8 images as one fixed
    1×1 convolution (every mode of Keras' — "tf" to [-1, 1], "torch" mean/std, "caffe" RGB→BGR less
    the means — is an affine map of a pixel's channels): built-in layers only, so the exported model
    loads anywhere."""
    images, x = _inputs(input_shape, 1.0)  # float pixels in [0, 255]
    affine = _preprocess_map(constructor, input_shape[-1])
    if affine is None:
        return images, x
    weight, bias = affine
    preprocess = keras.layers.Conv2D(input_shape[-1], 1, trainable=False, name="preprocess")
    x = preprocess(x)
    preprocess.set_weights([weight.T[None, None].astype("float32"), bias.astype("float32")])
    return images, x


def _preprocess_map(constructor: Any, channels: int) -> tuple[Any, Any] | None:
    """(W, b) with preprocess_input(pixel) = W @ pixel + b, probed on the unit pixels; None when the
    application has none or it is the identity (it scales its input itself)."""
    import numpy as np

    module = importlib.import_module(constructor.__module__)
    preprocess = getattr(module, "preprocess_input", None)
    if preprocess is None or channels != 3:
        return None
    probe = np.concatenate([np.zeros((1, 3)), 255 * np.eye(3)]).astype("float32").reshape(4, 1, 1, 3)
    out = np.asarray(preprocess(probe.copy()), dtype="float64").reshape(4, 3)
    bias, weight = out[0], (out[1:] - out[0]).T / 255
    pixels = np.random.default_rng(0).uniform(0, 255, (8, 1, 1, 3)).astype("float32")
    expected = np.asarray(preprocess(pixels.copy()), dtype="float64").reshape(8, 3)
    if not np.allclose(pixels.reshape(8, 3) @ weight.T + bias, expected, rtol=1e-4, atol=1e-3):
        raise ModelError(f"model: {constructor.__name__}'s preprocess_input is not a per-pixel affine map")
    if np.allclose(weight, np.eye(3)) and np.allclose(bias, 0):
        return None
    return weight, bias


def _scales_its_input(model: Any) -> bool:
    first = next((layer for layer in model.layers if type(layer).__name__ != "InputLayer"), None)
    return type(first).__name__ in {"Rescaling", "Normalization"}


def load_factory(reference: str) -> Callable[..., Any]:
    """Import `package.module:function`, looking in the working directory first (like `python -m`)."""
    module_name, _, function_name = reference.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure is the spec's to fix
        raise ModelError(
            f'model.factory: cannot import "{module_name}" ({type(exc).__name__}: {exc})'
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelError(f'model.factory: expected a function "{function_name}" in {module_name}; found none')
    return function


def build_factory(
    spec: Factory, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None
) -> Any:
    keras = compat.keras()
    function = load_factory(spec.factory)
    images, x = _inputs(input_shape)
    try:
        inner = function(input_shape=input_shape, num_classes=num_classes, **spec.arguments)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code (sys.exit too), reported as such
        raise ModelError(f"model.factory: {spec.factory} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(inner, keras.Model):
        got = type(inner).__name__
        if hasattr(inner, "layers"):  # a model of another Keras (`import keras` next to tf-keras)
            got = (
                f"{type(inner).__module__}.{got}, a model of another Keras: build it with tf.keras, "
                f"the Keras TensorFlow trains with here ({compat.keras_version()})"
            )
        raise ModelError(f"model.factory: expected {spec.factory} to return a keras.Model; got {got}")
    _require_declared_output(spec, final_activation(inner))
    activation = "softmax" if spec.output == "logits" else None
    return _wrap_foreign(inner, images, x, output_dtype, inner.name, activation)


def _require_declared_output(spec: Factory, final: dict[str, Any] | None) -> None:
    """A model that returns logits where probabilities are declared (or the reverse) trains silently
    wrong: the loss would clip logits as if they were probabilities, or apply a second softmax."""
    if final is None:
        return
    where = f"{spec.factory}'s last layer {final['name']} ({final['class']})"
    if spec.output == "logits" and final["activation"] in PROBABILITY_ACTIVATIONS:
        raise ModelError(
            f'model.output: expected logits (output = "logits": runner adds a float32 softmax); '
            f"{where} applies {final['activation']}. Fix: drop that activation, or set "
            'model.output = "probabilities" and give it dtype="float32"'
        )
    if spec.output == "probabilities" and final["activation"] == "linear":
        raise ModelError(
            f'model.output: expected probabilities (output = "probabilities"); {where} is linear, '
            'so the model returns logits. Fix: model.output = "logits" (runner adds a float32 softmax)'
        )


Builder = Callable[[Any, tuple[int, ...], int, "str | None"], Any]

MODEL_BUILDERS: dict[str, Builder] = {
    "seed_cnn": build_seed_cnn,
    "mlp": build_mlp,
    "resnet": build_resnet,
    "keras_application": build_keras_application,
    "factory": build_factory,
    "vit": build_vit,
    "keras_hub": build_keras_hub,
}


def build_model(spec: Any, input_shape: tuple[int, ...], num_classes: int, output_dtype: str | None) -> Any:
    """Build under the current dtype policy: call inside `precision.policy_scope`."""
    model = MODEL_BUILDERS[spec.kind](spec, input_shape, num_classes, output_dtype)
    shape = tuple(model.outputs[0].shape)
    if len(model.outputs) != 1 or len(shape) != 2 or shape[1] != num_classes:
        got = ", ".join(str(tuple(o.shape)).replace("None", "batch") for o in model.outputs)
        raise ModelError(
            f"model: expected one output of shape (batch, {num_classes}), a probability per class of "
            f"the data; got {got}"
        )
    return model
