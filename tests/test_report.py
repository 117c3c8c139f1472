"""runner/reporting/report.py: the typed, versioned files runner writes (report.json, comparison.json,
sweep.json, export.json), their published JSON Schemas, and the migration of reports older versions
wrote (tests/fixtures/v1-interrupted-run: report.json as runner wrote it before it had a version)."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.reporting.compare import compare
from runner.reporting.report import (
    REPORT_VERSION,
    SCHEMAS,
    Comparison,
    RunDirError,
    RunReport,
    json_schema,
    load_comparison,
    load_report,
    parse_report,
)
from tests.conftest import ROOT, TINY_SPEC

FIXTURE = ROOT / "tests" / "fixtures" / "v1-interrupted-run"


@pytest.fixture
def old_run(tmp_path):
    run_dir = tmp_path / "v1-interrupted-run"
    shutil.copytree(FIXTURE, run_dir)
    return run_dir


def test_an_old_report_loads_through_the_migration(old_run):
    written = json.loads((old_run / "report.json").read_text())
    assert "schema_version" not in written and "advice" in written["precision"]  # as version 1 wrote it
    report = load_report(old_run)
    assert report.schema_version == REPORT_VERSION
    assert report.status == "interrupted" and report.precision.policy == "mixed_float16"
    assert report.precision.loss_scale is not None and report.precision.loss_scale.steps == 27
    assert report.metrics.epochs[0].epoch == 1 and report.data is not None and report.data.train == 640
    # The statement version 1 made from CPU flags is kept, marked as what it was: not a measurement.
    assert report.speed == {
        "statement": written["precision"]["advice"]["detail"],
        "slow": True,
        "measured": False,
    }
    assert "advice" not in report.to_json()["precision"]


def test_a_migrated_report_is_what_this_version_writes(old_run):
    """Migrated, it validates against the published schema, and reads back the same."""
    report = load_report(old_run)
    jsonschema.validate(report.to_json(), json_schema("report"))
    assert parse_report(report.to_json(), "again") == report


def test_the_published_schema_refuses_what_the_model_refuses(old_run):
    """The schema can fail: an unknown field, a wrong type, a status no run has."""
    good = load_report(old_run).to_json()
    for bad in (good | {"surprise": 1}, good | {"status": "finished"}, good | {"spec_hash": 7}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, json_schema("report"))
        with pytest.raises(RunDirError):
            parse_report(bad, "report.json")


def test_a_report_from_a_newer_runner_is_refused_by_name(old_run):
    written = json.loads((old_run / "report.json").read_text())
    (old_run / "report.json").write_text(json.dumps(written | {"schema_version": REPORT_VERSION + 1}))
    result = CliRunner().invoke(app, ["report", str(old_run)])
    assert result.exit_code == 2
    assert f"schema_version {REPORT_VERSION + 1} was written by a newer runner" in result.output
    assert "Traceback" not in result.output


def test_a_field_of_the_wrong_type_is_named_with_what_was_found(old_run):
    report = load_report(old_run).to_json()
    report["metrics"]["test_accuracy"] = "high"
    (old_run / "report.json").write_text(json.dumps(report))
    result = CliRunner().invoke(app, ["report", str(old_run)])
    (old_run / "report.json").unlink()  # broken on purpose: not one for conftest's schema check
    assert result.exit_code == 2
    assert "report.json: metrics.test_accuracy:" in result.output and '"high"' in result.output


def test_runner_report_json_prints_the_current_version(old_run):
    result = CliRunner().invoke(app, ["report", str(old_run), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["schema_version"] == REPORT_VERSION


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_runner_schema_prints_each_files_schema(kind):
    result = CliRunner().invoke(app, ["schema", f"--{kind}"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema == json_schema(kind) and "schema_version" in schema["properties"]


def test_runner_schema_takes_one_file_at_a_time():
    result = CliRunner().invoke(app, ["schema", "--report", "--sweep"])
    assert result.exit_code == 2 and "at most one of" in result.output


def test_an_old_and_a_current_report_compare(old_run):
    """A comparison reads every version through the migration (a current report made from the old
    one: a completed float32 run of the same spec)."""
    old = load_report(old_run)
    spec = old.spec | {"precision": {**old.spec["precision"], "policy": "float32"}}
    new = old.model_copy(update={"status": "completed", "spec": spec, "schema_version": REPORT_VERSION})
    new.precision = new.precision.model_copy(update={"policy": "float32"})
    comparison = compare([old, new])
    assert [r.label for r in comparison.rows] == ["mixed_float16", "float32"]
    assert comparison.baseline.index == 1 and comparison.rows[0].speed_ratio == 1.0
    jsonschema.validate(comparison.to_json(), json_schema("comparison"))


def test_a_comparison_written_before_versions_loads(tmp_path, old_run):
    comparison = compare([load_report(old_run)]).to_json()
    del comparison["schema_version"]
    (tmp_path / "comparison.json").write_text(json.dumps(comparison))
    assert load_comparison(tmp_path) == Comparison.model_validate(comparison | {"schema_version": 1})
    (tmp_path / "comparison.json").write_text(json.dumps(comparison | {"rows": [{"label": "x"}]}))
    with pytest.raises(RunDirError, match=r"comparison.json: rows\.0\.name"):
        load_comparison(tmp_path)


def test_a_sweep_plan_written_before_versions_resumes(tmp_path):
    from runner.spec import spec_from_dict
    from runner.sweeps import SWEEP_FILE, Variant, read_plan, write_plan

    spec = spec_from_dict({"name": "a", "data": {"source": "shapes"}})
    write_plan(tmp_path, [Variant(spec, {"seed": 1}, "a", "a.toml", None)])
    plan = json.loads((tmp_path / SWEEP_FILE).read_text())
    jsonschema.validate(plan, json_schema("sweep"))
    del plan["schema_version"]
    (tmp_path / SWEEP_FILE).write_text(json.dumps(plan))
    assert [v.spec for v in read_plan(tmp_path)] == [spec]
    (tmp_path / SWEEP_FILE).write_text(json.dumps(plan | {"variants": [{"name": 3}]}))
    with pytest.raises(RunDirError, match=r"variants\.0\.name"):
        read_plan(tmp_path)


@pytest.mark.slow
def test_runner_compare_of_the_old_run_and_a_new_one(old_run, tmp_path, write_spec):
    """The acceptance's own case: a run this version trains, beside the fixture's, in `runner compare`."""
    from runner.session import run_experiment
    from runner.spec import load_spec

    outcome = run_experiment(load_spec(write_spec(TINY_SPEC)), tmp_path / "reports")
    assert isinstance(outcome.record, RunReport) and outcome.report["schema_version"] == REPORT_VERSION
    result = CliRunner().invoke(
        app, ["compare", str(old_run), str(outcome.run_dir), "-o", str(tmp_path / "c")]
    )
    assert result.exit_code == 0, result.output
    written = load_comparison(tmp_path / "c")
    assert [r.status for r in written.rows] == ["interrupted", "completed"]
