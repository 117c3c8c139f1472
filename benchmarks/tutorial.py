"""The reference of P1 and P2: TensorFlow's CIFAR-10 CNN tutorial as written, its policy bug fixed.

    python benchmarks/tutorial.py POLICY TRAIN_IMAGES TEST_IMAGES EPOCHS

What stays the tutorial's: float64 images scaled on the host (`x / 255.0`), `model.fit` on the NumPy
arrays with the test images as validation data, then `model.evaluate`, batch 32, Adam. What is fixed:
the policy is set before the model is built and the softmax is float32 (the tutorial's other two
bugs, see DESIGN.md), so the model is runner's `seed_cnn` layer for layer. What stands in: runner's
`shapes` images for CIFAR-10 (offline; the same shapes and dtypes), Keras' progress bar off.

Prints one JSON line: images/s of each epoch's training steps (from the epoch's start to its last
step; validation is not in it), and the resident memory per phase (runner.memory, the same
measurement as a run's report).
"""

from __future__ import annotations

import json
import sys
import time

from runner.memory import MemoryPhases


def main() -> int:
    policy, images, test_images, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    memory = MemoryPhases.from_now()
    with memory.phase("tensorflow"):
        from tensorflow import keras

        from runner.data.shapes import make_shapes
    keras.mixed_precision.set_global_policy(policy)
    with memory.phase("data"):
        (x, y), (x_test, y_test) = make_shapes(images, seed=1), make_shapes(test_images, seed=2)
        x, x_test = x / 255.0, x_test / 255.0  # float64, as in the tutorial
    with memory.phase("model"):
        model = keras.Sequential(
            [
                keras.Input((32, 32, 3)),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(64, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(64, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(10),
                keras.layers.Activation("softmax", dtype="float32"),
            ]
        )
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    rates: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rates.append(images / (self.end - self.start))

    with memory.phase("fit"):
        model.fit(
            x,
            y,
            epochs=epochs,
            batch_size=32,
            validation_data=(x_test, y_test),
            verbose=0,
            callbacks=[Clock()],
        )
    with memory.phase("evaluation"):
        model.evaluate(x_test, y_test, batch_size=32, verbose=0)
    print(json.dumps({"images_per_second": rates, "memory_phases": memory.table(), "peak_mb": memory.peak()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
