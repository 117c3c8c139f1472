"""Which TensorFlow and Keras runner supports, and what it says about the others."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from runner import compat
from runner.cli import app
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("tf", "keras", "legacy", "usable", "says"),
    [
        ("2.16.2", "3.3.3", False, True, "supported"),
        ("2.21.0", "3.15.1", False, True, "supported"),
        ("2.22.0", "3.16.0", False, True, "newer than the tested"),
        ("2.15.1", "2.15.0", False, False, "Keras 2.15.0 is Keras 2"),
        ("2.13.0", "3.0.0", False, False, "too old: runner supports TensorFlow 2.16–2.21"),
        ("2.21.0", "3.15.1", True, False, "TF_USE_LEGACY_KERAS=1 asks for Keras 2"),
        ("2.12.0rc1", "2.12.0", False, False, "Keras 2"),
    ],
    ids=["tf2.16", "tf2.21", "newer", "keras2", "tf_too_old", "legacy_env", "rc_version"],
)
def test_support_status(tf, keras, legacy, usable, says):
    ok, why = compat.support_status(tf, keras, legacy)
    assert ok is usable and says in why
    if not ok:
        assert "2.16–2.21" in why


def test_legacy_keras_request_is_a_clear_exit_2(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    result = CliRunner().invoke(app, ["run", str(ROOT / "specs/quickstart.toml"), "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "runner drives Keras 3 only" in result.stderr and "Traceback" not in result.output
    env = CliRunner().invoke(app, ["env"])
    assert env.exit_code == 0 and "asks for Keras 2" in " ".join(env.stdout.replace("│", " ").split())
