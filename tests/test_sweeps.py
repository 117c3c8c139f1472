"""runner/sweeps.py: a sweep keeps going past a failed variant, survives an interruption (`runner
resume SWEEP_DIR`), runs variants in parallel with their share of the cores, and ranks them."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner import sweeps
from runner.cli import app
from runner.reporting import compare
from runner.reporting.report import Best, ComparisonRow
from tests.conftest import TINY_SPEC
from tests.test_resume import model_metrics, runner, wait_for

cli = CliRunner()

SWEEP = """
[training]
steps_per_execution = 2
[runtime]
tensorboard = false
deterministic = true
checkpoint_every_steps = 8
[checks]
max_consecutive_skipped_steps = 4
[export]
formats = []
[sweep]
objective = "test_accuracy"
"""


def write_sweep(tmp_path: Path, axes: str, policy="float32", train_size=256, epochs=1) -> Path:
    """conftest's tiny spec (an MLP on 256 shapes) as sweep "sw", with the sweep's axes."""
    base = (
        TINY_SPEC.replace('name = "tiny"', 'name = "sw"\nseed = 4')
        .replace("seed = 7\n", "")
        .replace('policy = "mixed_float16"', f'policy = "{policy}"')
        .replace("train_size = 256", f"train_size = {train_size}")
        .replace("epochs = 2", f"epochs = {epochs}")
        .replace("[training]", "[training]\nsteps_per_execution = 2")
    )
    path = tmp_path / "sweep.toml"
    path.write_text(base + SWEEP.replace("[training]\nsteps_per_execution = 2\n", "") + axes + "\n")
    return path


def sweep_dir(out: Path) -> Path:
    (found,) = [p for p in out.iterdir() if (p / sweeps.SWEEP_FILE).exists()]
    return found


def variant_dirs(group: Path) -> dict[str, Path]:
    return {p.name.rsplit("-", 2)[0]: p for p in group.iterdir() if (p / "spec.toml").exists()}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: (size, mtime in ns), to show nothing was rewritten."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
def test_a_diverged_variant_does_not_stop_a_parallel_sweep_whose_exit_is_the_worst(tmp_path):
    """Variant 2 starts at a loss scale of 1e20: its float16 gradients overflow at every step, and
    after 4 skipped steps in a row the run is diverged. The other three complete; two run at once,
    each with its share of the cores; the comparison lists all four and ranks the completed ones."""
    spec = write_sweep(
        tmp_path, '"precision.initial_scale" = [1024.0, 1e20, 2048.0, 4096.0]', "mixed_float16"
    )
    result = runner("run", spec, "--output", tmp_path / "out", "--parallel", "2")
    assert result.returncode == 3, result.stderr
    group = sweep_dir(tmp_path / "out")
    comparison = json.loads((group / "comparison.json").read_text())
    statuses = [row["status"] for row in comparison["rows"]]
    assert statuses == ["completed", "diverged", "completed", "completed"]
    assert "loss scale collapsed" in comparison["rows"][1]["error"]
    assert comparison["objective"]["metric"] == "test_accuracy"
    ranks = [row["rank"] for row in comparison["rows"]]
    assert ranks[1] is None and sorted(r for r in ranks if r) in ([1, 2, 3], [1, 1, 3], [1, 2, 2], [1, 1, 1])
    best = comparison["objective"]["best"]
    assert best["value"] == max(row["test_accuracy"] for row in comparison["rows"] if row["rank"])
    for run_dir in variant_dirs(group).values():
        threads = json.loads((run_dir / "report.json").read_text())["environment"]["threads"]
        assert threads["intra_op"] == threads["inter_op"] >= 1 and "parallel sweep" in threads["why"]
    assert "rank" in (group / "comparison.md").read_text()


@pytest.mark.slow
def test_fail_fast_stops_at_the_first_variant_that_does_not_pass(tmp_path):
    spec = write_sweep(tmp_path, '"precision.initial_scale" = [1e20, 1024.0]', "mixed_float16")
    result = runner("run", spec, "--output", tmp_path / "out", "--fail-fast")
    assert result.returncode == 3, result.stderr
    rows = json.loads((sweep_dir(tmp_path / "out") / "comparison.json").read_text())["rows"]
    assert [row["status"] for row in rows] == ["diverged"]  # the second never started


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_the_uninterrupted_comparison(tmp_path):
    """SIGINT to the sweep in variant 2: it checkpoints and the sweep exits 130. `runner resume
    SWEEP_DIR` leaves variant 1 untouched, resumes 2, runs 3 (each kind of variant once);
    deterministic mode, so every number equals an uninterrupted sweep's."""
    axes = "seed = [0, 1, 2]"
    spec = write_sweep(tmp_path, axes, train_size=4000, epochs=2)
    whole = runner("run", spec, "--output", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    child = runner("run", spec, "--output", tmp_path / "cut", wait=False)
    wait_for(lambda: any((tmp_path / "cut").glob("*/sw-1-*/checkpoints/latest.json")))
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 130, stderr
    group = sweep_dir(tmp_path / "cut")
    done = variant_dirs(group)
    assert set(done) == {"sw-0", "sw-1"}
    assert json.loads((done["sw-1"] / "report.json").read_text())["status"] == "interrupted"
    before = snapshot(done["sw-0"])

    resumed = runner("resume", group)
    assert resumed.returncode == 0, resumed.stderr
    after = variant_dirs(group)
    assert set(after) == {"sw-0", "sw-1", "sw-2"} and after["sw-1"] == done["sw-1"]
    assert snapshot(after["sw-0"]) == before
    assert json.loads((after["sw-1"] / "report.json").read_text())["resumes"]
    reference = variant_dirs(sweep_dir(tmp_path / "whole"))
    for name, run_dir in after.items():
        assert model_metrics(run_dir) == model_metrics(reference[name]), name
    rows = json.loads((group / "comparison.json").read_text())["rows"]
    expected = json.loads((sweep_dir(tmp_path / "whole") / "comparison.json").read_text())["rows"]
    numbers = ("status", "test_accuracy", "test_loss", "val_loss", "rank")
    assert [{k: r[k] for k in numbers} for r in rows] == [{k: r[k] for k in numbers} for r in expected]
    again = runner("resume", group)  # everything done: kept as it is, the same comparison
    assert again.returncode == 0 and variant_dirs(group) == after


def test_resume_of_a_folder_that_is_not_a_sweep_or_a_run_is_bad_input(tmp_path):
    result = cli.invoke(app, ["resume", str(tmp_path)])
    assert result.exit_code == 2 and "nor a sweep directory (no sweep.json)" in result.output
    (tmp_path / sweeps.SWEEP_FILE).write_text("{not json")
    damaged = cli.invoke(app, ["resume", str(tmp_path)])
    assert damaged.exit_code == 2 and "unreadable sweep plan" in damaged.output


def test_core_shares_split_the_cpu_or_give_each_variant_a_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(sweeps.os, "cpu_count", lambda: 8)
    assert sweeps.core_shares(1) == {0: {}}
    assert sweeps.core_shares(3) == {s: {"RUNNER_CPU_THREADS": "2"} for s in range(3)}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert sweeps.core_shares(3) == {
        0: {"CUDA_VISIBLE_DEVICES": "2"},
        1: {"CUDA_VISIBLE_DEVICES": "5"},
        2: {"CUDA_VISIBLE_DEVICES": "2"},
    }


def row(label: str, status: str, accuracy: float | None) -> ComparisonRow:
    return ComparisonRow(
        label=label,
        name=label,
        status=status,
        test_accuracy=accuracy,
        policy="float32",
        checks_passed=1,
        checks_total=1,
    )


def test_ranking_numbers_completed_rows_by_the_objective_and_names_the_best():
    rows = [
        row("a", "completed", 0.5),
        row("b", "diverged", 0.9),
        row("c", "completed", 0.7),
        row("d", "completed", 0.5),
    ]
    objective = compare.rank(rows, ("test_accuracy", "max"))
    assert [r.rank for r in rows] == [2, None, 1, 2]
    assert objective is not None and objective.best == Best(label="c", name="c", value=0.7)
    compare.rank(rows, ("test_accuracy", "min"))
    assert [r.rank for r in rows] == [1, None, 3, 1]
    assert compare.rank(rows, None) is None
