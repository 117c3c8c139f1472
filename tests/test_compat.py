"""Which TensorFlow and Keras runner supports, and what it says about the others."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from runner import compat
from runner.cli import app
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("tf", "keras", "legacy", "tf_keras", "usable", "says"),
    [
        ("2.16.2", "3.3.3", False, None, True, "with Keras 3.3.3: supported"),
        ("2.21.0", "3.15.1", False, None, True, "supported (tested 2.15–2.21)"),
        ("2.22.0", "3.16.0", False, None, True, "newer than the tested 2.15–2.21"),
        ("2.15.1", "2.15.0", False, None, True, "with Keras 2.15.0 (tf.keras): supported"),
        ("2.15.1", "3.3.3", False, None, False, 'keras package is 3.3.3: pip install "keras~=2.15.0"'),
        ("2.21.0", "3.15.1", True, "2.21.0", True, "Keras 2 from tf-keras 2.21.0 (TF_USE_LEGACY_KERAS=1)"),
        ("2.21.0", "3.15.1", True, None, False, 'not installed: pip install "tf-keras~=2.21.0"'),
        ("2.21.0", "3.15.1", True, "2.16.0", False, "tf-keras 2.16.0 is not the one for TensorFlow 2.21.0"),
        ("2.16.1", "2.15.0", False, None, False, "needs Keras 3, but the keras package is 2.15.0"),
        ("2.16.1", None, False, None, False, "keras package is missing"),
        ("2.13.0", "2.13.1", False, None, False, "too old: runner supports TensorFlow 2.15–2.21"),
        ("2.12.0rc1", "2.12.0", False, None, False, "2.12.0rc1 is too old"),
    ],
    ids=[
        "tf2.16",
        "tf2.21",
        "newer",
        "tf2.15",
        "tf2.15_with_keras3",
        "tf_keras",
        "legacy_without_tf_keras",
        "tf_keras_of_another_release",
        "keras2_on_tf2.16",
        "no_keras",
        "tf_too_old",
        "rc_version",
    ],
)
def test_support_status(tf, keras, legacy, tf_keras, usable, says):
    ok, why = compat.support_status(tf, keras, legacy, tf_keras)
    assert ok is usable and says in why
    if not ok:
        assert "pip install" in why  # what to do about it, always


def test_an_unsupported_environment_is_a_clear_exit_2(monkeypatch, tmp_path):
    """As if the Keras that TensorFlow needs here were not installed (whichever TensorFlow this is)."""
    monkeypatch.setattr(compat, "_installed", lambda distribution: None)
    monkeypatch.setattr(compat, "_KERAS", {})
    result = CliRunner().invoke(app, ["run", str(ROOT / "specs/quickstart.toml"), "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "pip install" in result.stderr and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # refused before a run directory was made
    env = CliRunner().invoke(app, ["env"])
    flat = " ".join(env.stdout.replace("│", " ").split())
    assert env.exit_code == 0 and "pip install" in flat, env.output


def test_the_keras_that_trains_is_tensorflows_own():
    """Models built by factories with tf.keras, and runner's own, are of one Keras, whichever it is."""
    tf = compat.tensorflow()
    assert compat.keras().Model is tf.keras.Model
    assert compat.keras_version().split(".")[0] in {"2", "3"}


DEFERRED = """
import importlib.util, json, sys
from runner import compat
tf = compat.tensorflow()
before = "sklearn" in sys.modules
import keras
wrappers = getattr(keras, "wrappers", None)
classifier = getattr(wrappers, "SKLearnClassifier", None) if wrappers else None
print(json.dumps({
    "keras3": keras.__version__.startswith("3"),
    "sklearn_installed": importlib.util.find_spec("sklearn") is not None,
    "sklearn_before": before,
    "classifier": classifier.__module__ + "." + classifier.__name__ if classifier else None,
    "sklearn_after": "sklearn" in sys.modules,
    "same": sys.modules.get("keras.wrappers") is importlib.import_module("keras.wrappers"),
}))
"""


@pytest.mark.slow  # a fresh process importing TensorFlow: 4-6 s
def test_keras_scikit_learn_wrappers_load_on_first_use_not_with_tensorflow():
    """MLflow installs scikit-learn, which Keras 3's `keras.wrappers` imports with Keras: 1-2 s of
    every runner process for an API runner never uses. It is loaded on first use instead, and is the
    real one then (a fresh process: this one has imported Keras already)."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-c", DEFERRED]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["sklearn_installed"], "the suite's environment has MLflow's scikit-learn, which this defers"
    if not seen["keras3"]:  # Keras 2 has no scikit-learn wrappers to defer
        return
    assert not seen["sklearn_before"], "scikit-learn was imported with TensorFlow"
    assert seen["classifier"] == "keras.src.wrappers.sklearn_wrapper.SKLearnClassifier"
    assert seen["sklearn_after"] and seen["same"]
