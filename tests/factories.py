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


def _large_logits(input_shape, num_classes):
    """Logits tens apart at initialisation: float16's softmax underflows most classes to 0."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    init = keras.initializers.RandomNormal(stddev=0.3, seed=1)
    return inputs, keras.layers.Dense(num_classes, kernel_initializer=init, name="logits")(x)


def underflowing_softmax(input_shape, num_classes):
    """Large logits, then a softmax in the policy's dtype (float16 under mixed_float16)."""
    inputs, logits = _large_logits(input_shape, num_classes)
    outputs = keras.layers.Softmax(name="softmax")(logits)
    return keras.Model(inputs, outputs, name="underflowing_softmax")


def large_logits(input_shape, num_classes):
    """The same network returning its logits (model.output = "logits")."""
    return keras.Model(*_large_logits(input_shape, num_classes), name="large_logits")


class StepCounter(keras.layers.Layer):
    """Identity that keeps integer and boolean state, as counters, seeds and flags do."""

    def build(self, input_shape):
        self.count = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False, name="count"
        )
        self.seen = self.add_weight(shape=(), dtype="bool", initializer="zeros", trainable=False, name="seen")

    def call(self, x, training=False):
        if training:
            self.count.assign_add(tf.constant(1, "int64"))
            self.seen.assign(True)
        return x


def integer_state(input_shape, num_classes):
    """A small network with an int64 and a bool state variable (exempt from the float32 rule)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = StepCounter(name="steps")(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    x = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="integer_state")


def exits(input_shape, num_classes):
    """User code that ends the process instead of returning a model."""
    import sys

    sys.exit(0)


def wrong_output_size(input_shape, num_classes):
    """Three classes too few: the loss would fail inside TensorFlow, mid-check."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(num_classes - 3, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs)


def amplified(input_shape, num_classes):
    """A layer that scales its activations by 1e4 before a float16 op: no headroom left in float16."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    x = keras.layers.Rescaling(1e4, name="amplify")(x)
    x = keras.layers.Dense(16, name="after")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="amplified")


def tiny_gradients(input_shape, num_classes):
    """Activations shrunk 1e-6 before the logits: the hidden layer's gradients fall below float16's range."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, name="hidden")(x)
    x = keras.layers.Rescaling(1e-6, name="shrink")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="tiny_gradients")


class HostIdentity(keras.layers.Layer):
    """Identity, through a Python (host) function: XLA cannot compile the graph it is in."""

    def call(self, x):
        echoed = tf.py_function(lambda t: t, [x], Tout=x.dtype)
        echoed.set_shape(x.shape)
        return x + tf.stop_gradient(echoed) * 0


def host_function(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = HostIdentity(name="host")(keras.layers.Dense(16, activation="relu", name="hidden")(x))
    x = keras.layers.Dense(num_classes, name="logits")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def unnamed(input_shape, num_classes):
    """Layers named by Keras (dense, dense_1, ...): names that depend on what was built before."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(8, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def slow_to_build(input_shape, num_classes, marker):
    """A model that takes an hour to build (a huge download, a slow file system): it says it has
    started by writing `marker`, then waits."""
    import time
    from pathlib import Path

    Path(marker).write_text("building")
    time.sleep(3600)
    raise AssertionError("never built")


def stuck_in_tensorflow(input_shape, num_classes, marker):
    """A model whose building is one TensorFlow call that does not return (as a large model's timed
    execution or compile can take tens of seconds): Python's signal handlers cannot run meanwhile."""

    @tf.function
    def spin():
        started = tf.io.write_file(marker, "in TensorFlow")  # written by the graph: the call has begun
        with tf.control_dependencies([started]):
            return tf.while_loop(lambda i: i < 2**62, lambda i: i + 1, [tf.constant(0, tf.int64)])

    spin()
    raise AssertionError("never built")


def convolutions_only(input_shape, num_classes):
    """No Dense layer: a 1x1 convolution to the classes, averaged over the image (keras_int8 has
    nothing to quantize here)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Conv2D(num_classes, 1, name="classes")(x)
    x = keras.layers.GlobalAveragePooling2D(name="average")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="convolutions_only")
