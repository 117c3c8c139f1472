"""The one place that imports TensorFlow and Keras, and the Keras APIs that differ between versions.

Importing TensorFlow takes seconds, so nothing here runs at module import time: callers ask for
`keras()` or `tensorflow()` inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any


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


def tensorflow() -> ModuleType:
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_to(os.devnull):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # probes CUDA once, quietly
    return tf


def keras() -> ModuleType:
    tensorflow()
    import keras as keras_module

    return keras_module


def loss_scale_optimizer(inner: Any, initial_scale: float, growth_interval: int) -> Any:
    """Keras 3's dynamic LossScaleOptimizer around `inner`."""
    return keras().optimizers.LossScaleOptimizer(
        inner, initial_scale=initial_scale, dynamic_growth_steps=growth_interval
    )


def is_loss_scale_optimizer(optimizer: Any) -> bool:
    return isinstance(optimizer, keras().optimizers.LossScaleOptimizer)


def current_loss_scale(optimizer: Any) -> float | None:
    """The optimizer's loss scale now (its initial scale before the first step); None if unscaled."""
    if not is_loss_scale_optimizer(optimizer):
        return None
    if not optimizer.built:
        return float(optimizer.initial_scale)
    return float(optimizer.dynamic_scale.numpy())


def applied_steps(optimizer: Any) -> int:
    """Steps whose gradients were applied: a LossScaleOptimizer skips steps with non-finite ones."""
    return int(optimizer.iterations.numpy())


def global_policy_name() -> str:
    return str(keras().config.dtype_policy().name)


def set_global_policy(policy: Any) -> None:
    keras().config.set_dtype_policy(policy)


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
