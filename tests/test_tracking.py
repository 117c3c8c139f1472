"""MLflow tracking (runner/reporting/tracking.py): what is logged, as pure functions; one real sweep
logged to a SQLite store and read back with MlflowClient; an unreachable server; mlflow-sync; the missing
extra."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.events import Note
from runner.reporting import tracking
from runner.reporting.report import Epoch, LossScaleSummary, RunReport, parse_report
from runner.spec import flatten_table, spec_from_dict, spec_hash, spec_to_dict
from tests.conftest import ROOT, TINY_SPEC

cli = CliRunner()

# ---------------------------------------------------------------- pure functions


def report_of(**sections) -> RunReport:
    """A report with `sections` (report.json's, as JSON) and whatever else a report needs."""
    raw = {
        "name": "t",
        "status": "completed",
        "spec": {"name": "t"},
        "spec_hash": "abcd1234",
        "precision": {"policy": "float32"},
    }
    return parse_report({**raw, **sections}, "test report")


def test_params_are_the_spec_flattened_with_dotted_keys_and_tracking_left_out():
    spec = spec_to_dict(spec_from_dict({"name": "p", "model": {"kind": "mlp", "hidden_units": [16, 8]}}))
    params = tracking.params_of(spec)
    assert params["precision.policy"] == "mixed_float16"
    assert params["training.learning_rate"] == json.dumps(spec["training"]["learning_rate"])
    assert params["model.hidden_units"] == "[16, 8]" and params["runtime.tensorboard"] == "true"
    assert params["name"] == "p"
    assert not any(key.startswith("tracking.") for key in params)
    assert set(params) == set(flatten_table(spec)) - {"tracking.mlflow"}


def test_a_param_longer_than_mlflows_limit_is_cut_to_it():
    params = tracking.params_of({"description": "x" * 10_000})
    assert len(params["description"]) == tracking.PARAM_VALUE_LIMIT


def test_tags_say_what_the_run_is():
    report = report_of(
        precision={"policy": "mixed_bfloat16"},
        status="diverged",
        spec_hash="abcd1234",
        environment={"tensorflow": "2.21.0", "keras": "3.15.1", "device": "CPU"},
        run_dir="/r/x",
        error="loss scale collapsed",
    )
    tags = tracking.tags_of(report, {"git_commit": "f00"})
    assert tags["policy"] == "mixed_bfloat16" and tags["status"] == "diverged"
    assert tags["spec_hash"] == "abcd1234" and tags["mlflow.source.git.commit"] == "f00"
    assert (tags["tensorflow"], tags["keras"], tags["device"]) == ("2.21.0", "3.15.1", "CPU")
    assert tags["runner_version"] and tags["mlflow.note.content"] == "loss scale collapsed"
    assert "mlflow.source.git.commit" not in tracking.tags_of(report, {"git_commit": None})


@pytest.mark.parametrize(
    ("status", "checks", "state"),
    [
        ("completed", [], "completed"),
        ("pruned", [], "pruned"),
        ("diverged", [], "failed"),
        ("completed", [{"name": "float32_outputs", "passed": False, "detail": "float16 softmax"}], "failed"),
    ],
)
def test_a_studys_trial_is_tagged_with_its_number_and_the_state_the_study_records(status, checks, state):
    """MLflow has no pruned state (a pruned trial's run is KILLED) and a run whose invariant failed
    is FINISHED: the tag says what the study says."""
    report = report_of(status=status, checks=checks, trial={"study": "tune-1", "number": 3})
    tags = tracking.tags_of(report, {})
    assert (tags["study"], tags["trial"], tags["trial_state"]) == ("tune-1", "3", state)
    assert "trial_state" not in tracking.tags_of(report_of(), {})


def test_epoch_metrics_are_numbers_at_step_epoch():
    records = [
        Epoch(epoch=1, loss=2.0, val_loss=None, loss_scale=4096.0, learning_rate=0.1, seconds=1),
        Epoch(epoch=2, loss=1.5, val_loss=1.7, loss_scale=8192.0, learning_rate=0.05, seconds=1),
    ]
    got = tracking.epoch_metrics(records)
    assert ("loss", 2.0, 1) in got and ("loss", 1.5, 2) in got and ("val_loss", 1.7, 2) in got
    assert ("learning_rate", 0.05, 2) in got and ("seconds", 1.0, 1) in got
    assert not [m for m in got if m[0] in {"epoch", "loss_scale"}]  # loss_scale: its per-step series
    assert len(got) == 7  # the None left out


LOSS_SCALE = {
    "initial": 32768.0,
    "final": 8192.0,
    "overflow_steps": 3,
    "steps": 40,
    # two skips at step 2 (one call of several steps), one at step 5, a growth at step 30
    "history": [[0, 32768.0], [2, 8192.0], [5, 4096.0], [30, 8192.0]],
}


def test_the_loss_scale_series_is_its_change_points_and_the_last_step():
    series = tracking.loss_scale_series(LossScaleSummary.model_validate(LOSS_SCALE))
    scale = [(step, value) for key, value, step in series if key == "loss_scale"]
    skipped = [(step, value) for key, value, step in series if key == "skipped_steps"]
    assert scale == [(0, 32768.0), (2, 8192.0), (5, 4096.0), (30, 8192.0), (40, 8192.0)]
    assert skipped == [(0, 0.0), (2, 2.0), (5, 3.0), (30, 3.0), (40, 3.0)]  # the last: the exact count
    assert tracking.loss_scale_series(None) == []
    assert tracking.loss_scale_series(LossScaleSummary(history=[])) == []


def test_summary_metrics_are_the_test_metrics_throughput_and_the_scales_end():
    report = report_of(
        metrics={"test_loss": 0.5, "test_accuracy": 0.9},
        performance={"images_per_second": 1000.0, "step_time_ms": 32.0, "peak_device_memory_mb": None},
        precision={"policy": "mixed_float16", "loss_scale": LOSS_SCALE},
    )
    got = tracking.summary_metrics(report)
    assert got["test_accuracy"] == 0.9 and got["throughput_images_per_second"] == 1000.0
    assert got["overflow_steps"] == 3.0 and got["final_loss_scale"] == 8192.0
    assert "peak_device_memory_mb" not in got


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["completed", "completed"], "FINISHED"),
        (["completed", "diverged"], "FAILED"),
        (["failed", "interrupted"], "KILLED"),
        (["completed", "pruned", "pruned"], "FINISHED"),
    ],
    ids=["all-completed", "one-diverged", "one-interrupted", "a-studys-pruned-trials"],
)
def test_a_sweeps_parent_status_is_the_worst_of_its_variants(statuses, expected):
    assert tracking.sweep_status(statuses) == expected


def test_the_tracking_uri_is_the_specs_then_the_environments_then_sqlite_beside_the_runs(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert tracking.resolve_uri(None, tmp_path) == "http://tracker:5000"
    assert tracking.resolve_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_http_limits_hold_for_the_call_only(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # the user's own value wins
    with tracking.bounded_http():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def test_the_sweep_name_comes_back_from_its_directory():
    assert tracking.sweep_group(ROOT / "reports" / "my-sweep-20261129T203651Z-e3fef1bb") == "my-sweep"
    assert tracking.sweep_group(ROOT / "x" / "s-20261129T203651Z-e3fef1bb-2") == "s"
    assert tracking.sweep_group(ROOT / "plain") == "plain"


def test_tracking_is_not_part_of_the_spec_hash_and_names_its_field():
    plain = spec_from_dict({"name": "h"})
    tracked = spec_from_dict({"name": "h", "tracking": {"mlflow": True, "experiment": "e"}})
    assert spec_hash(plain) == spec_hash(tracked)
    with pytest.raises(Exception, match=r"tracking\.mlfow"):
        spec_from_dict({"name": "h", "tracking": {"mlfow": True}})


def test_a_comparison_does_not_tell_runs_apart_by_where_they_were_logged():
    from runner.reporting.compare import differing_fields

    specs = [
        spec_from_dict({"name": "a"}),
        spec_from_dict({"name": "b", "tracking": {"mlflow": True, "experiment": "e"}}),
    ]
    reports = [
        report_of(name=s.name, spec=spec_to_dict(s), spec_hash=spec_hash(s), precision={"policy": "float32"})
        for s in specs
    ]
    assert differing_fields(reports) == []


# ---------------------------------------------------------------- without the extra


def test_mlflow_is_not_imported_by_the_cli_the_spec_or_the_library():
    code = (
        "import sys, runner.cli, runner.spec, runner.session, runner.sweeps; print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


SWEEP_SPEC = TINY_SPEC + '\n[sweep]\n"precision.policy" = ["float32", "mixed_float16"]\n'
MISSING_EXTRA = {
    "run-flag": (TINY_SPEC, ["run", "--mlflow"]),
    "run-spec": (TINY_SPEC + "\n[tracking]\nmlflow = true\n", ["run"]),
    "sweep": (SWEEP_SPEC, ["run", "--mlflow"]),
}


@pytest.mark.parametrize(("text", "command"), MISSING_EXTRA.values(), ids=MISSING_EXTRA.keys())
def test_without_the_extra_asking_for_mlflow_is_exit_2_naming_the_pip_line(
    write_spec, tmp_path, monkeypatch, text, command
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    out = tmp_path / "out"
    result = cli.invoke(app, [*command, str(write_spec(text)), "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert "pip install -e '.[mlflow]'" in result.stderr and "Traceback" not in result.output
    assert not out.exists() or list(out.iterdir()) == []  # nothing ran, nothing written


def test_mlflow_sync_without_the_extra_is_exit_2_naming_the_pip_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = cli.invoke(app, ["mlflow-sync", str(tmp_path)])
    assert result.exit_code == 2 and "pip install -e '.[mlflow]'" in result.stderr


# ---------------------------------------------------------------- a real sweep, logged


@pytest.fixture(scope="module")
def tracked_sweep(tmp_path_factory):
    """One 2-variant sweep (float32, mixed_float16; 2 epochs each) run with --mlflow to the default
    store: sqlite beside the sweep directory. Shared by the tests below: it is the slow part."""
    root = tmp_path_factory.mktemp("tracked")
    spec = root / "sweep.toml"
    spec.write_text(SWEEP_SPEC, encoding="utf-8")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.setenv("RUNNER_STRICT_DOCUMENTS", "1")
        result = cli.invoke(app, ["run", str(spec), "--mlflow", "--output", str(root / "reports")])
    assert result.exit_code == 0, result.output
    (sweep_dir,) = [p for p in (root / "reports").iterdir() if p.is_dir() and p.name.startswith("tiny-")]
    return sweep_dir, result


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(client, experiment_id):
    return {r.info.run_id: r for r in client.search_runs([experiment_id])}


@pytest.mark.slow
def test_a_tracked_sweep_is_a_parent_run_with_a_nested_run_per_variant(tracked_sweep):
    sweep_dir, _ = tracked_sweep
    uri = f"sqlite:///{sweep_dir.parent.resolve()}/mlflow.db"
    client = _client(uri)
    experiment = client.get_experiment_by_name("tiny")  # the sweep's name in its file
    found = _runs(client, experiment.experiment_id)
    parents = [r for r in found.values() if r.data.tags.get("runner.sweep") == "true"]
    assert len(parents) == 1 and len(found) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["variants"] == "2"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "comparison.json",
        "comparison.html",
    }
    variants = [p for p in sweep_dir.iterdir() if (p / "report.json").exists()]
    for variant in variants:
        report = json.loads((variant / "report.json").read_text())
        run = found[report["tracking"]["run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.info.run_name == report["name"]
        assert run.data.params == tracking.params_of(report["spec"])
        assert run.data.params["precision.policy"] == report["spec"]["precision"]["policy"]
        assert run.data.tags["policy"] == report["precision"]["policy"]
        loss = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [(m.step, m.value) for m in loss] == [
            (e["epoch"], e["val_accuracy"]) for e in report["metrics"]["epochs"]
        ]
        assert run.data.metrics["test_accuracy"] == report["metrics"]["test_accuracy"]
        assert run.data.metrics["throughput_images_per_second"] == report["performance"]["images_per_second"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts >= {"report.json", "report.html", "report.md", "spec.toml", "metrics.jsonl", "plots"}


@pytest.mark.slow
def test_the_mixed_float16_variant_logs_its_loss_scale_per_training_step(tracked_sweep):
    sweep_dir, _ = tracked_sweep
    client = _client(f"sqlite:///{sweep_dir.parent.resolve()}/mlflow.db")
    series = {}
    for variant in (p for p in sweep_dir.iterdir() if (p / "report.json").exists()):
        report = json.loads((variant / "report.json").read_text())
        history = client.get_metric_history(report["tracking"]["run_id"], "loss_scale")
        series[report["precision"]["policy"]] = ([(m.step, m.value) for m in history], report)
    assert series["float32"][0] == []  # no loss scaling, no series
    logged, report = series["mixed_float16"]
    scale = report["precision"]["loss_scale"]
    expected = [tuple(point) for point in scale["history"]]
    if scale["steps"] > expected[-1][0]:
        expected.append((scale["steps"], scale["final"]))
    assert logged == expected and logged[-1][0] == 16  # 2 epochs of 8 steps


@pytest.mark.slow
def test_mlflow_sync_logs_an_untracked_run_once_and_a_logged_sweep_never_again(tracked_sweep, tmp_path):
    sweep_dir, _ = tracked_sweep
    variant = next(p for p in sweep_dir.iterdir() if (p / "report.json").exists())
    old = tmp_path / "old" / variant.name  # as if run without tracking
    shutil.copytree(variant, old)
    (old / tracking.MARKER).unlink()
    first = cli.invoke(app, ["mlflow-sync", str(old)])
    second = cli.invoke(app, ["mlflow-sync", str(old)])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "logged:" in first.stdout and "already logged, not again" in second.stdout
    client = _client(f"sqlite:///{old.parent.resolve()}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
    # The tracked sweep: its parent and variants are all logged already.
    again = cli.invoke(app, ["mlflow-sync", str(sweep_dir)])
    assert again.exit_code == 0 and again.stdout.count("already logged, not again") == 3, again.stdout
    sweep_client = _client(f"sqlite:///{sweep_dir.parent.resolve()}/mlflow.db")
    assert len(sweep_client.search_runs([sweep_client.get_experiment_by_name("tiny").experiment_id])) == 3


@pytest.mark.slow
def test_a_run_changed_since_it_was_logged_replaces_its_mlflow_run(tracked_sweep, tmp_path):
    """A resumed run logs again, in place of its earlier MLflow run (here: its report edited)."""
    sweep_dir, _ = tracked_sweep
    variant = next(p for p in sweep_dir.iterdir() if (p / "report.json").exists())
    run_dir = tmp_path / variant.name
    shutil.copytree(variant, run_dir)
    (run_dir / tracking.MARKER).unlink()
    assert cli.invoke(app, ["mlflow-sync", str(run_dir)]).exit_code == 0
    report = json.loads((run_dir / "report.json").read_text())
    report["metrics"]["test_accuracy"] = 0.5
    (run_dir / "report.json").write_text(json.dumps(report))
    result = cli.invoke(app, ["mlflow-sync", str(run_dir)])
    assert result.exit_code == 0 and "logged:" in result.stdout
    client = _client(f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    (run,) = client.search_runs([experiment.experiment_id])  # active runs: the earlier one deleted
    assert run.data.metrics["test_accuracy"] == 0.5


@pytest.mark.slow
def test_mlflow_sync_of_an_untracked_sweep_makes_the_parent_and_nested_runs(tracked_sweep, tmp_path):
    sweep_dir, _ = tracked_sweep
    copy = tmp_path / "reports" / sweep_dir.name
    shutil.copytree(sweep_dir, copy)
    for marker in copy.rglob(tracking.MARKER):
        marker.unlink()
    result = cli.invoke(app, ["mlflow-sync", str(copy)])
    assert result.exit_code == 0 and result.stdout.count("logged:") == 3, result.output
    client = _client(f"sqlite:///{copy.parent.resolve()}/mlflow.db")
    found = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("runner.sweep") == "true"]
    nested = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 2 and parent.info.status == "FINISHED"


# ---------------------------------------------------------------- an unreachable server


@pytest.mark.slow
def test_an_unreachable_tracking_server_costs_seconds_and_warns_once(write_spec, tmp_path, monkeypatch):
    from runner.session import run_experiment
    from runner.spec import load_spec

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    spec = load_spec(
        write_spec(TINY_SPEC.replace("epochs = 2", "epochs = 1")),
        ["tracking.mlflow=true", 'tracking.tracking_uri="http://127.0.0.1:9"'],
    )
    events = []
    outcome = run_experiment(spec, tmp_path / "reports", events.append)
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    # other warnings may come (e.g. a policy measured slower than float32 on this CPU): MLflow's, once
    warnings = [e for e in events if isinstance(e, Note) and e.level == "warning" and "MLflow" in e.message]
    assert len(warnings) == 1 and "runner mlflow-sync" in warnings[0].message, warnings
    saved = json.loads((outcome.run_dir / "report.json").read_text())
    assert saved["tracking"]["tracking_uri"] == "http://127.0.0.1:9" and saved["tracking"]["error"]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored
    # the tracking step alone, again: every request MLflow makes runs under runner's bounds (no retries,
    # a 5 s timeout) — seen by MLflow's own request function, which still runs
    import mlflow.utils.rest_utils as rest_utils

    real, seen = rest_utils.http_request, []

    def watched(*args, **kwargs):
        seen.append({k: os.environ.get(k) for k in tracking.HTTP_LIMITS})
        return real(*args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", watched)
    tracking.track_run(outcome.run_dir, events.append)
    assert seen and all(limits == tracking.HTTP_LIMITS for limits in seen), seen


@pytest.mark.slow
def test_two_mlflow_syncs_at_once_log_a_run_once(tracked_sweep, tmp_path):
    """Two processes logging the same run at the same moment take turns: one MLflow run, not two."""
    sweep_dir, _ = tracked_sweep
    variant = next(p for p in sweep_dir.iterdir() if (p / "report.json").exists())
    old = tmp_path / "both" / variant.name
    shutil.copytree(variant, old)
    (old / tracking.MARKER).unlink()
    command = [sys.executable, "-m", "runner", "mlflow-sync", str(old)]
    children = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    client = _client(f"sqlite:///{old.parent.resolve()}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
    said = b"".join(out for out, _ in outputs).decode()
    assert "logged:" in said and "already logged, not again" in said


def test_a_database_store_that_cannot_open_is_tried_a_bounded_number_of_times(tmp_path, monkeypatch):
    """An SQLite file in a place it cannot be made: MLflow would retry 10 times over ~100 s; runner's
    bound holds (the engine is made at most SQL_TRIES times), and the run is told, not failed."""
    from mlflow.store.db import utils as db_utils

    real, made = db_utils.create_sqlalchemy_engine, []
    monkeypatch.setattr(db_utils, "create_sqlalchemy_engine", lambda uri: made.append(uri) or real(uri))
    monkeypatch.setattr(db_utils, "_make_parent_dirs_if_sqlite", lambda uri: None)  # /proc refuses anyway
    uri = "sqlite:////proc/runner-cannot-write-here/mlflow.db"
    with pytest.raises(Exception), tracking.mlflow_call():  # noqa: B017 - whatever MLflow raises, bounded
        tracking._client(uri).search_experiments()
    assert 1 <= len(made) <= tracking.SQL_TRIES
    assert db_utils.MAX_RETRY_COUNT == 10  # restored
