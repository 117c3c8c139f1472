"""Renderables, rendered into a fixed-width, colourless console."""

from __future__ import annotations

import io

from rich.console import Console

from runner.reporting.report import RunReport, parse_report
from runner.reporting.views import render_environment, render_run


def render(renderable) -> str:
    console = Console(width=100, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def table_rows(text: str) -> list[list[str]]:
    """The cells of each one-line table row: `│ a │ b │` → ["a", "b"]."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")
    ]


def sample_raw(status="completed", passed=True):
    """report.json's content: a report from before issue 31 (its precision has the old `advice`)."""
    layer = {
        "name": "dense",
        "class": "Dense",
        "compute_dtype": "float16",
        "variable_dtype": "float32",
        "output_dtype": "float16",
        "weights": [{"path": "dense/kernel", "dtype": "float32", "trainable": True}],
    }
    return {
        "name": "demo",
        "status": status,
        "error": None,
        "run_dir": "reports/demo-x",
        "spec": {"name": "demo", "precision": {"policy": "mixed_float16"}},
        "spec_hash": "0123abcd",
        "environment": {"device": "CPU: test"},
        "precision": {
            "policy": "mixed_float16",
            "compute_dtype": "float16",
            "variable_dtype": "float32",
            "loss_scale": {"initial": 32768.0, "final": 4096.0, "min": 2048.0, "overflow_steps": 3},
            "advice": {"faster": False, "detail": "mixed_float16 runs several times SLOWER here"},
        },
        "audit": {
            "layers": [layer],
            "output_layers": ["dense"],
            "output_dtype": "float32",
            "optimizer": "LossScaleOptimizer",
        },
        "checks": [
            {
                "name": "output_dtype",
                "passed": passed,
                "detail": "model output is float32",
                "severity": "error",
            }
        ],
        "metrics": {
            "epochs": [
                {
                    "epoch": 1,
                    "loss": 0.5,
                    "accuracy": 0.8,
                    "val_loss": 0.4,
                    "val_accuracy": 0.85,
                    "seconds": 3.2,
                    "images_per_second": 1234.5,
                }
            ],
            "test_loss": 0.41,
            "test_accuracy": 0.86,
        },
        "performance": {
            "images_per_second": 1234.5,
            "step_time_ms": 25.9,
            "peak_host_memory_mb": 700.0,
            "peak_device_memory_mb": None,
        },
    }


def sample_report(status="completed", passed=True, **sections) -> RunReport:
    """sample_raw as the model, with `sections` (report.json's, as JSON) in place of its own."""
    return parse_report({**sample_raw(status, passed), **sections}, "sample report")


def test_run_report_shows_status_precision_checks_metrics_and_path():
    text = render(render_run(sample_report()))
    for fragment in (
        "demo",
        "completed",
        "policy mixed_float16",
        "compute float16",
        "variables float32",
        "loss scale 32768 → 4096",
        "3 skipped steps",
        "1,234 images/s",
        "✓",
        "output_dtype",
        "0.8600",
        "reports/demo-x",
        "LossScaleOptimizer",
        "SLOWER here",
    ):
        assert fragment in text, fragment


def test_a_distributed_run_says_where_its_replicas_were_and_a_single_device_one_does_not():
    placement = {
        "strategy": "multi_worker",
        "workers": 2,
        "replicas": 4,
        "global_batch": 64,
        "per_replica_batch": 16,
        "devices": [],
    }
    distributed = sample_report(distribution=placement)
    assert "multi_worker: 2 workers, 4 replicas · global batch 64, 16 per replica" in render(
        render_run(distributed)
    )
    single = sample_report(distribution={**placement, "strategy": "none"})
    assert "replicas" not in render(render_run(single))
    assert "replicas" not in render(render_run(sample_report()))  # a report from before issue 17


def test_failed_check_is_marked():
    text = render(render_run(sample_report(passed=False)))
    assert "✗" in text and "1 check(s) failed" in text


def test_environment_renders_each_policy_measured_against_float32():
    """Each policy's row: its steps both ways, its fastest against float32's, and the flags' note
    beside it (an AVX-512 FP16 CPU measured ~300x slower in float16 says so, whatever its flags)."""
    env = {
        "python": "3.11",
        "tensorflow": "2.21",
        "keras": "3.15",
        "device": "CPU: x",
        "device_facts": {"cpu_flags": ["avx512_fp16", "amx_bf16"], "gpu": None},
    }

    def timing(policy, xla, step_ms, note=""):
        return {"policy": policy, "xla": xla, "step_ms": step_ms, "note": note}

    machine = {
        "timings": [
            timing("float32", False, 10.0),
            timing("float32", True, None, "not timed: the 15 s budget was spent"),
            timing("mixed_bfloat16", False, 5.0),
            timing("mixed_bfloat16", True, 8.0),
            timing("mixed_float16", False, 3000.0),
            timing("mixed_float16", True, 25.0),
        ],
        "model": "the tutorial's CNN",
        "batch": 16,
        "measured_at": "2026-12-07T00:00:00Z",
        "seconds": 12.5,
        "cached": True,
    }
    text = render(render_environment(env, machine))
    rows = table_rows(text)
    assert ["tensorflow", "2.21"] in rows and ["gpu", "none"] in rows
    (bf16,) = [r for r in rows if r[0] == "mixed_bfloat16"]
    assert bf16[1:4] == ["5.0 ms", "8.0 ms", "2× faster"] and "AMX_BF16" in bf16[4]
    (fp16,) = [r for r in rows if r[0] == "mixed_float16"]
    assert fp16[1:4] == ["3000.0 ms", "25.0 ms", "2.5× slower"] and "AVX512_FP16" in fp16[4]
    (float32,) = [r for r in rows if r[0] == "float32"]
    assert float32[1] == "10.0 ms" and float32[2].startswith("not timed") and float32[3] == "the reference"
    assert "cached" in text and "--refresh measures again" in text


def test_comparison_table_shows_differing_fields_ratios_and_failed_checks():
    from runner.reporting.compare import compare
    from runner.reporting.views import comparison_table
    from tests.test_compare import fake_report

    reports = [
        fake_report("cmp-float32", "float32", 2000.0, 0.90),
        fake_report("cmp-mixed_float16", "mixed_float16", 500.0, 0.80, failed=["min_test_accuracy"]),
    ]
    text = render(comparison_table(compare(reports)))
    for fragment in ("policy", "mixed_float16", "2,000", "0.25×", "1.00×", "-0.100", "✗ min_test_accuracy",
                     "✓ 1/1", "1024 (min 512)", "ratios against the float32 run cmp-float32"):  # fmt: skip
        assert fragment in text, fragment


def test_comparison_table_labels_runs_the_differing_fields_cannot_tell_apart():
    from runner.reporting.compare import compare
    from runner.reporting.views import comparison_table
    from tests.test_compare import fake_report

    reports = [fake_report("q", "float32", 2000.0, 0.9, run_dir=f"r/q-{i}") for i in (1, 2)]
    reports.append(fake_report("q", "mixed_float16", 500.0, 0.9, run_dir="r/q-3"))
    three = render(comparison_table(compare(reports)))
    assert "float32 (q-1)" in three and "float32 (q-2)" in three
    same_spec = render(comparison_table(compare(reports[:2])))
    assert "q-1 " in same_spec and "q-2 " in same_spec
    policies = render(comparison_table(compare(reports[1:])))  # the policy alone tells them apart
    assert "q-2" not in policies and "mixed_float16" in policies


def test_audit_summary_names_layers_with_weights_off_the_policy():
    from runner.reporting.views import audit_summary

    def layer(name, dtype, weights=True):
        return {"name": name, "class": "Dense", "compute_dtype": dtype, "weights": [{}] if weights else []}

    audit = {
        "layers": [layer("a", "float16"), layer("b", "float32"), layer("act", "float32", False)],
        "output_layers": ["act"],
        "output_dtype": "float32",
        "optimizer": "LossScaleOptimizer",
    }
    text = render(audit_summary(audit, "mixed_float16"))
    assert "│ float32       │      2 │            1 │ b " in text


def test_terminal_events_keep_a_bounded_number_of_epoch_bars():
    """A run of 10**9 epochs must not grow the progress display (and its redraw time) without bound."""
    from runner import events
    from runner.reporting.views import SHOWN_EPOCHS, TerminalEvents

    quiet = Console(file=io.StringIO(), width=100, color_system=None)
    sink = TerminalEvents(quiet, quiet)
    for epoch in range(1, 3 * SHOWN_EPOCHS):
        sink(events.EpochStarted(epoch, 10**9, 4, 0))
        sink(events.StepsDone(epoch, 4, 4, {"loss": 0.5}, 100.0))
    shown = [task.description for task in sink.progress.tasks]
    sink.close()
    assert shown == [f"epoch {e}/{10**9}" for e in range(2 * SHOWN_EPOCHS, 3 * SHOWN_EPOCHS)]


def test_a_run_that_exported_names_its_files_and_one_that_did_not_says_nothing():
    exported = sample_report(export={"files": [{"path": "model.keras"}, {"path": "saved_model"}]})
    assert "exported: model.keras, saved_model · runner predict" in render(render_run(exported))
    assert "exported" not in render(render_run(sample_report(export=None)))
    assert "exported" not in render(render_run(sample_report()))  # a report from before issue 19
