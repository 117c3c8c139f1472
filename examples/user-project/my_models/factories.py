"""Model factories: runner calls each as function(input_shape=..., num_classes=...) inside the
spec's precision policy, with images already scaled to [0, 1]; the tests build them the same way."""

from __future__ import annotations

import tensorflow as tf

keras = tf.keras  # the Keras TensorFlow trains with: Keras 3, or Keras 2 through tf-keras


def small_cnn(input_shape, num_classes, width=16):
    """Two convolutions and a classifier. No layer names a dtype, so each computes in the policy's
    (float16 under mixed_float16) and keeps float32 variables, except the last activation."""
    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(width, 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(2 * width, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    # The mixed-precision rule: the last activation computes in float32 (a float16 softmax
    # underflows to 0 and the loss takes log(0)).
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="small_cnn")
