"""The README's offline first run, as a user types it: the issue's acceptance criteria. Its float32
variant here; the mixed_float16 run itself (the README's command, with every deployment format) is
tests/test_deploy.py's `deployed`: one quickstart run serves both (the suite's time)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from runner.cli import app
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # the README's first run: trains to 90% accuracy


@pytest.mark.parametrize("policy", ["float32"])
def test_quickstart_reaches_090_with_every_invariant(tmp_path, policy):
    args = ["run", str(ROOT / "specs/quickstart.toml"), "--output", str(tmp_path)]
    args += ["--set", f"precision.policy={policy}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["metrics"]["test_accuracy"] >= 0.90
    assert all(check["passed"] for check in report["checks"])
    precision, audit = report["precision"], report["audit"]
    assert precision["variable_dtype"] == "float32" and audit["output_dtype"] == "float32"
    assert audit["optimizer"] == "Adam"
    assert {x["compute_dtype"] for x in audit["layers"] if x["class"] != "InputLayer"} == {"float32"}
