"""The one place that imports TensorFlow and Keras, and the Keras APIs that differ between versions.

Importing TensorFlow takes seconds, so nothing here runs at module import time: callers ask for
`keras()` or `tensorflow()` inside the functions that need them.
"""

from __future__ import annotations

import contextlib
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


def tensorflow() -> ModuleType:
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_to(os.devnull):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # probes CUDA once, quietly
    return tf


TESTED_TENSORFLOW = ((2, 16), (2, 21))  # Keras 3 ships with TensorFlow from 2.16


class UnsupportedEnvironment(BadInput):
    """A TensorFlow or Keras that runner cannot drive: one message naming what it supports."""


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)(?:\.(\d+))?", text)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else (0, 0)


def support_status(tensorflow_version: str, keras_version: str, legacy_requested: bool) -> tuple[bool, str]:
    """(usable, sentence) for these versions: the sentence says what is supported when it is not."""
    low, high = (f"{v[0]}.{v[1]}" for v in TESTED_TENSORFLOW)
    tf, k = _version(tensorflow_version), _version(keras_version)
    if legacy_requested or k[0] < 3:
        why = (
            "TF_USE_LEGACY_KERAS=1 asks for Keras 2"
            if legacy_requested
            else f"Keras {keras_version} is Keras 2"
        )
        return False, (
            f"{why}; runner drives Keras 3 only (TensorFlow {low}–{high}): unset TF_USE_LEGACY_KERAS, "
            f'or install "tensorflow>={low},<{TESTED_TENSORFLOW[1][0]}.{TESTED_TENSORFLOW[1][1] + 1}".'
        )
    if tf < TESTED_TENSORFLOW[0]:
        return (
            False,
            f"TensorFlow {tensorflow_version} is too old: runner supports TensorFlow {low}–{high} (Keras 3).",
        )
    if tf > TESTED_TENSORFLOW[1]:
        return True, f"TensorFlow {tensorflow_version} is newer than the tested {low}–{high}: it may work."
    return (
        True,
        f"TensorFlow {tensorflow_version} with Keras {keras_version}: supported (tested {low}–{high}).",
    )


def keras() -> ModuleType:
    """Keras 3, after checking that this TensorFlow and Keras are ones runner supports."""
    tf = tensorflow()
    try:
        import keras as keras_module
    except ImportError:
        raise UnsupportedEnvironment(
            f"Keras is not installed next to TensorFlow {tf.__version__}: install tensorflow>=2.16 (Keras 3)"
        ) from None
    usable, why = support_status(tf.__version__, keras_module.__version__, _legacy_requested())
    if not usable:
        raise UnsupportedEnvironment(why)
    return keras_module


def support() -> tuple[bool, str]:
    """Whether this environment's TensorFlow and Keras are supported, without failing when they are not."""
    from importlib import metadata

    try:
        keras_version = metadata.version("keras")
    except metadata.PackageNotFoundError:
        keras_version = "0"
    return support_status(tensorflow().__version__, keras_version, _legacy_requested())


def _legacy_requested() -> bool:
    return os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in {"1", "true", "yes"}


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
