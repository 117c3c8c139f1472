"""Comparisons are pure functions over reports (report.json's model, RunReport)."""

from __future__ import annotations

import json

import pytest

from runner.reporting import compare as comparing
from runner.reporting.compare import compare, differing_fields, expand_run_dirs, run_labels
from runner.reporting.report import ComparisonRow, RunDirError, RunReport, load_report, parse_report


def fake_epochs(loss, ips, epochs=2):
    """metrics.epochs of a run whose loss halves every epoch."""
    return [
        {
            "epoch": e,
            "loss": loss / 2**e,
            "accuracy": 1 - loss / 2**e,
            "val_loss": loss / 2**e,
            "val_accuracy": 1 - loss / 2**e,
            "images_per_second": ips,
            "seconds": 1.0,
        }
        for e in range(1, epochs + 1)
    ]


def fake_report(
    name, policy, ips, accuracy, status="completed", lr=0.001, failed=(), run_dir=None, epochs=(), batch=32
) -> RunReport:
    """A report of a run (report.json's content, validated as the model)."""
    checks = [{"name": "output_dtype", "passed": True, "severity": "error", "detail": ""}]
    checks += [{"name": n, "passed": False, "severity": "error", "detail": ""} for n in failed]
    checks += [{"name": "tensor_core_alignment", "passed": False, "severity": "hint", "detail": ""}]
    lso = policy == "mixed_float16"
    raw = {
        "name": name,
        "status": status,
        "started_at": name,
        "run_dir": run_dir,
        "spec": {
            "name": name,
            "precision": {"policy": policy},
            "data": {"batch_size": batch},
            "training": {"learning_rate": lr, "epochs": 3},
        },
        "spec_hash": f"hash-{name}-{policy}-{lr}-{batch}",
        "precision": {
            "policy": policy,
            "loss_scale": {
                "final": 1024.0 if lso else None,
                "min": 512.0 if lso else None,
                "overflow_steps": 5 * lso,
            },
        },
        "metrics": {"epochs": list(epochs), "test_accuracy": accuracy, "test_loss": 0.3},
        "performance": {"images_per_second": ips, "step_time_ms": 10.0, "peak_host_memory_mb": 700.0},
        "checks": checks,
    }
    return parse_report(raw, f"fake report {name}")


def test_ratios_and_deltas_against_the_float32_run():
    reports = [
        fake_report("a", "mixed_float16", 500.0, 0.91),
        fake_report("b", "float32", 2000.0, 0.90),
        fake_report("c", "mixed_bfloat16", 3000.0, 0.89, failed=["min_test_accuracy"]),
    ]
    result = compare(reports)
    assert result.baseline.name == "b" and "float32 run b" in (result.baseline.note or "")
    assert result.differing_fields == ["precision.policy"]
    rows = {r.name: r for r in result.rows}
    assert rows["a"].speed_ratio == 0.25 and rows["c"].speed_ratio == 1.5 and rows["b"].speed_ratio == 1.0
    assert rows["a"].accuracy_delta == pytest.approx(0.01)
    assert rows["c"].accuracy_delta == pytest.approx(-0.01)
    scale = (rows["a"].loss_scale_final, rows["a"].loss_scale_min, rows["a"].skipped_steps)
    assert scale == (1024.0, 512.0, 5)
    assert rows["c"].failed_checks == ["min_test_accuracy"]
    assert (rows["c"].checks_passed, rows["c"].checks_total) == (1, 2)  # hints do not count
    assert rows["a"].settings == {"precision.policy": "mixed_float16"}


def test_without_a_float32_run_the_first_run_is_the_baseline_and_it_says_so():
    reports = [fake_report("x", "mixed_float16", 500.0, 0.9), fake_report("y", "mixed_bfloat16", 1000.0, 0.8)]
    result = compare(reports)
    assert result.baseline.index == 0 and "no completed float32 run" in (result.baseline.note or "")
    assert result.rows[1].speed_ratio == 2.0


def test_a_failed_float32_run_is_not_a_baseline():
    reports = [
        fake_report("x", "mixed_float16", 500.0, 0.9),
        fake_report("f", "float32", None, None, status="failed"),
    ]
    assert compare(reports).baseline.name == "x"


def test_differing_fields_ignore_names():
    reports = [fake_report("a", "float32", 1.0, 0.5, lr=0.1), fake_report("b", "float32", 1.0, 0.5, lr=0.2)]
    assert differing_fields(reports) == ["training.learning_rate"]


def test_runs_of_one_spec_are_labelled_by_the_policy_that_differs():
    # The README's flow: the quickstart spec three times with --set precision.policy=...
    reports = [
        fake_report("quickstart", p, ips, 0.9, run_dir=f"reports/quickstart-{i}")
        for i, (p, ips) in enumerate(
            [("float32", 2000.0), ("mixed_float16", 500.0), ("mixed_bfloat16", 3000.0)]
        )
    ]
    result = compare(reports)
    assert [r.label for r in result.rows] == ["float32", "mixed_float16", "mixed_bfloat16"]
    assert [r.name for r in result.rows] == ["quickstart"] * 3  # comparison.json keeps its keys
    assert [r.run_dir for r in result.rows] == [f"reports/quickstart-{i}" for i in range(3)]
    assert result.baseline.label == "float32" and result.baseline.index == 0


def _run(name="q", policy="float32", lr=0.001, batch=32, run_dir=None):
    return fake_report(name, policy, 1.0, 0.5, lr=lr, batch=batch, run_dir=run_dir)


LABELS = {
    "one_field_its_value": (
        [_run(policy="mixed_float16"), _run(policy="mixed_bfloat16")],
        ["mixed_float16", "mixed_bfloat16"],
    ),
    "several_fields_by_their_last_word": (
        [_run(policy="float32", batch=32), _run(policy="mixed_float16", batch=64)],
        ["batch_size=32, policy=float32", "batch_size=64, policy=mixed_float16"],
    ),
    "non_strings_as_toml_spells_them": ([_run(lr=0.1), _run(lr=0.02)], ["0.1", "0.02"]),
    "only_names_differ": ([_run(name="a"), _run(name="b")], ["a", "b"]),
    "everything_equal_directory_names": (
        [_run(run_dir="out/q-1"), _run(run_dir="/abs/q-2")],
        ["q-1", "q-2"],
    ),
    "equal_settings_get_their_directory": (
        [_run(run_dir="r/q-1"), _run(run_dir="r/q-2"), _run(policy="mixed_float16", run_dir="r/q-3")],
        ["float32 (q-1)", "float32 (q-2)", "mixed_float16"],
    ),
    "the_same_directory_twice_its_position": (
        [_run(run_dir="r/q-1"), _run(run_dir="r/q-1")],
        ["q-1 #1", "q-1 #2"],
    ),
}


@pytest.mark.parametrize(("reports", "labels"), LABELS.values(), ids=LABELS.keys())
def test_labels_name_what_differs_and_are_distinct(reports, labels):
    assert run_labels(reports, differing_fields(reports)) == labels


def test_labels_spell_out_fields_whose_last_words_collide():
    a, b = _run(), _run()
    a.spec["model"], b.spec["model"] = {"kind": "seed_cnn"}, {"kind": "mlp"}
    a.spec["training"]["optimizer"] = {"kind": "adam"}
    b.spec["training"]["optimizer"] = {"kind": "sgd"}
    assert run_labels([a, b], differing_fields([a, b])) == [
        "model.kind=seed_cnn, training.optimizer.kind=adam",
        "model.kind=mlp, training.optimizer.kind=sgd",
    ]


def test_a_field_one_run_lacks_is_left_out_of_its_label():
    a, b = _run(), _run()
    a.spec["model"] = {"kind": "seed_cnn", "filters": [32, 64]}
    b.spec["model"] = {"kind": "mlp", "hidden_units": [16]}
    assert run_labels([a, b], differing_fields([a, b])) == [
        "filters=[32, 64], kind=seed_cnn",
        "hidden_units=[16], kind=mlp",
    ]


def test_run_directories_and_sweep_directories(tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("r2", "r1"):
        (sweep / name).mkdir(parents=True)
        report = fake_report(name, "float32", 1.0, 0.5)
        (sweep / name / "report.json").write_text(json.dumps(report.to_json()))
    (sweep / "plots").mkdir()
    assert [p.name for p in expand_run_dirs([sweep])] == ["r1", "r2"]  # in the order they ran
    assert expand_run_dirs([sweep / "r2"]) == [sweep / "r2"]
    with pytest.raises(RunDirError, match="not a directory"):
        expand_run_dirs([tmp_path / "missing"])
    with pytest.raises(RunDirError, match="no report.json"):
        expand_run_dirs([sweep / "plots"])
    (sweep / "r1" / "report.json").write_text("{broken")
    with pytest.raises(RunDirError, match="unreadable"):
        load_report(sweep / "r1")
    (sweep / "r1" / "report.json").write_text("{}")
    with pytest.raises(RunDirError, match="missing"):
        load_report(sweep / "r1")


def test_the_pareto_front_is_the_rows_no_other_beats_in_every_objective():
    """(accuracy, images/s): a (0.9, 100) and b (0.8, 200) trade one for the other; c (0.7, 150) is
    beaten by b in both; d failed (no place on it); with step time (min) the faster step wins."""
    rows = [
        ComparisonRow(
            label=n,
            name=n,
            policy="float32",
            status=st,
            test_accuracy=a,
            images_per_second=i,
            step_time_ms=t,
            checks_passed=1,
            checks_total=1,
        )
        for n, st, a, i, t in (
            ("a", "completed", 0.9, 100.0, 5.0),
            ("b", "completed", 0.8, 200.0, 2.0),
            ("c", "completed", 0.7, 150.0, 1.0),
            ("d", "diverged", None, 300.0, 1.0),
        )
    ]
    comparing.mark_front(rows, [("test_accuracy", "max"), ("images_per_second", "max")])
    assert [r.pareto for r in rows] == [True, True, False, None]
    comparing.mark_front(rows, [("test_accuracy", "max"), ("step_time_ms", "min")])
    assert [r.pareto for r in rows] == [True, True, True, None]
    single = [r.model_copy(update={"pareto": None}) for r in rows]
    comparing.mark_front(single, [("test_accuracy", "max")])
    assert all(r.pareto is None for r in single)
