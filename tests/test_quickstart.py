"""The README's offline first run, exactly as a user types it: the issue's acceptance criteria."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from runner.cli import app
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # the README's first run: trains to 90% accuracy


@pytest.mark.parametrize("policy", ["mixed_float16", "float32"])
def test_quickstart_reaches_090_with_every_invariant(tmp_path, policy, monkeypatch):
    args = ["run", str(ROOT / "specs/quickstart.toml"), "--output", str(tmp_path)]
    if policy == "float32":
        args += ["--set", "precision.policy=float32"]
    else:  # the README's run exports by default: model.keras and its float32 copy, checked
        monkeypatch.delenv("RUNNER_SKIP_EXPORT")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["metrics"]["test_accuracy"] >= 0.90
    assert all(check["passed"] for check in report["checks"])
    precision, audit = report["precision"], report["audit"]
    assert precision["variable_dtype"] == "float32" and audit["output_dtype"] == "float32"
    if policy == "mixed_float16":
        assert precision["compute_dtype"] == "float16"
        assert {"model.keras", "model-float32.keras"} <= {p.name for p in run_dir.iterdir()}
        assert "export_roundtrip" in {check["name"] for check in report["checks"]}
        assert audit["optimizer"].startswith("LossScaleOptimizer")  # V3 in Keras 2
        assert 0 < precision["loss_scale"]["final"] < float("inf")
    else:
        assert audit["optimizer"] == "Adam"
        assert {x["compute_dtype"] for x in audit["layers"] if x["class"] != "InputLayer"} == {"float32"}
