"""Model factories for tests (imported by `runner` as `tests.factories:...`)."""

from __future__ import annotations

import tensorflow as tf

keras = tf.keras  # the Keras TensorFlow trains with: Keras 3, or Keras 2 (TensorFlow 2.15, tf-keras)


class NanAfter(keras.layers.Layer):
    """Identity, until `after` training calls have passed: then NaN (an injected divergence)."""

    def __init__(self, after: int, **kwargs):
        super().__init__(**kwargs)
        self.after = after

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=False):
        if training:
            self.calls.assign_add(1.0)
        nan = tf.fill(tf.shape(x), tf.constant(float("nan"), x.dtype))
        return tf.where(self.calls > self.after, nan, x)


def nan_loss_after(input_shape, num_classes, after=40):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    x = NanAfter(after, name="poison")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)
