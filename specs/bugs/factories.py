"""Model factories that reproduce real mixed-precision mistakes, for `runner check specs/bugs/*.toml`.

Each is called as function(input_shape=..., num_classes=...) inside runner's policy scope and gets
images already scaled to [0, 1]. Each reproduces one mistake: apart from it, the network follows the
mixed-precision rule (its softmax computes in float32).
"""

from __future__ import annotations

import tensorflow as tf

keras = tf.keras  # the Keras TensorFlow trains with: Keras 3, or Keras 2 (TensorFlow 2.15, tf-keras)


def _cnn(input_shape, num_classes, dtype_of, softmax=True):
    """The tutorial's CNN; `dtype_of` gives some layers an explicit dtype (that is the bug). Its
    softmax computes in float32 unless `dtype_of` says otherwise; without it, the model returns logits."""
    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 3, activation="relu", dtype=dtype_of.get("conv1"), name="conv1")(inputs)
    x = layers.MaxPooling2D(dtype=dtype_of.get("pool1"), name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", dtype=dtype_of.get("conv2"), name="conv2")(x)
    x = layers.MaxPooling2D(dtype=dtype_of.get("pool2"), name="pool2")(x)
    x = layers.Conv2D(64, 3, activation="relu", dtype=dtype_of.get("conv3"), name="conv3")(x)
    x = layers.Flatten(dtype=dtype_of.get("flatten"), name="flatten")(x)
    x = layers.Dense(64, activation="relu", dtype=dtype_of.get("dense"), name="dense")(x)
    x = layers.Dense(num_classes, dtype=dtype_of.get("logits"), name="logits")(x)
    if softmax:
        probabilities = dtype_of.get("probabilities", "float32")
        x = layers.Activation("softmax", dtype=probabilities, name="probabilities")(x)
    return keras.Model(inputs, x, name="tutorial_cnn")


ALL_LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "flatten", "dense", "logits", "probabilities")


def float32_in_the_middle(input_shape, num_classes):
    """One Dense pinned to float32 (a copied snippet with dtype="float32"): it computes in float32,
    casting its float16 input up and its output back down, for no reason the user knows of."""
    return _cnn(input_shape, num_classes, {"dense": "float32"})


def float32_model(input_shape, num_classes):
    """Every layer in float32, as when the model was built before the policy was set (the tutorial)
    or restored from a float32 checkpoint: the "mixed" run is a float32 run."""
    return _cnn(input_shape, num_classes, dict.fromkeys(ALL_LAYERS, "float32"))


def float16_model(input_shape, num_classes):
    """Layers built with dtype="float16" instead of the mixed policy: float16 variables lose small
    updates (the softmax is kept in float32, so this is the one mistake)."""
    return _cnn(input_shape, num_classes, dict.fromkeys(ALL_LAYERS[:-1], "float16"))


def float16_softmax(input_shape, num_classes):
    """The tutorial once the order is fixed: the softmax computes in the policy's float16, and a cast
    after it (runner's, or a user's) turns its zeros into float32 zeros: too late."""
    return _cnn(input_shape, num_classes, {"probabilities": None})


def logits(input_shape, num_classes):
    """The same network without its softmax: with model.output = "logits", runner adds it in float32."""
    return _cnn(input_shape, num_classes, {}, softmax=False)


def attention_overflow(input_shape, num_classes, gain=100.0):
    """A small vision transformer whose attention query and key projections are `gain` times too
    large (a careless initialiser, or weights scaled for another model): their product Q·Kᵀ passes
    float16's 65,504 in the first block's attention layer, which is otherwise a correct mixed model.
    Keras computes Q·Kᵀ in the layer's dtype: float16 under mixed_float16, float32 once the layer is
    declared float32 ([precision.layers], what `runner check --fix` proposes)."""
    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 4, strides=4, name="patch_embedding")(inputs)
    x = layers.Reshape((-1, 32), name="patches")(x)  # (batch, 64 patches, 32)
    attentions = []
    for i in range(2):
        y = layers.LayerNormalization(name=f"block_{i}_norm")(x)
        attention = layers.MultiHeadAttention(4, 8, name=f"block_{i}_attention")
        x = layers.Add(name=f"block_{i}_add")([x, attention(y, y)])
        attentions.append(attention)
    x = layers.GlobalAveragePooling1D(name="pool")(layers.LayerNormalization(name="norm")(x))
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="overflowing_vit")
    first = attentions[0]
    for dense in (first._query_dense, first._key_dense):  # both Keras 2 and 3 name them so
        dense.kernel.assign(dense.kernel * gain)
    return model


def int8_outliers(input_shape, num_classes, gain=1000.0):
    """A small CNN with one hidden channel offset by `gain` and the offset taken away again after a
    ReLU: an identity in floating point, but the offset tensor's range is [0, gain]. Full-int8 LiteRT
    quantizes each activation tensor with one scale from its calibrated range, so the other channels
    (ranges of a few units) round to a handful of levels and the accuracy collapses; float16 weights
    and dynamic-range int8 (which quantizes the Dense input, after the offset is gone) keep it.
    Built from Keras layers only (Rescaling with a per-channel offset), so the exports load anywhere."""
    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="hidden")(x)
    offset = [float(gain)] + [0.0] * 63
    x = layers.Rescaling(1.0, offset=offset, name="outlier")(x)  # channel 0 in [gain, gain + a few]
    x = layers.ReLU(name="outlier_relu")(x)  # keeps the converter from folding the two offsets
    x = layers.Rescaling(1.0, offset=[-v for v in offset], name="outlier_removed")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="int8_outliers")
