"""Nothing lost: interrupt, kill, resume, diverge, run side by side: real `runner` processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from runner import compat, runs
from tests.conftest import ROOT
from tests.started import runner  # warm: forked from a server that imported TensorFlow once

pytestmark = pytest.mark.slow  # every test here trains in `runner` processes

DETERMINISTIC = """
name = "det"
seed = 5
[precision]
policy = "mixed_float16"
[model]
kind = "seed_cnn"
filters = [16, 32, 32]
dense_units = 32
batch_norm = true
dropout = 0.1
[data]
source = "shapes"
batch_size = 32
train_size = 2000  # 63 steps an epoch: room for a mid-epoch checkpoint (every 40) and a stop after it
test_size = 400
[data.augmentation]  # stateless draws: a resumed epoch is augmented as the uninterrupted one was
horizontal_flip = true
pad_crop = 2
brightness = 0.1
[training]
epochs = 3
learning_rate = 0.003
steps_per_execution = 4  # a number, not "auto" (timed): the loss-scale history is sampled per call
[training.schedule]  # a rate that changes every step: a resume must pick it up at the right one
kind = "cosine"
warmup_epochs = 0.5
alpha = 0.1
[runtime]
deterministic = true
checkpoint_every_steps = 40  # mid-epoch checkpoints: the event an interruption test waits for
[export]  # what resumes are about is the training: the export's fresh-process reload is 5 s a run
formats = []
"""
TIMING = {"seconds", "images_per_second"}  # the clock's, not the model's


def only_run(folder: Path) -> Path:
    (run_dir,) = [p for p in folder.iterdir() if p.is_dir()]
    return run_dir


def model_metrics(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING} for r in runs.read_jsonl(run_dir / "metrics.jsonl")
    ]


def report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def checkpoint_position(folder: Path) -> dict:
    """latest.json of the run in `folder` (epoch, step, global_step), or {} before its first checkpoint.
    The pointer is written atomically: a torn one fails the read, and the test with it."""
    for latest in folder.glob("*/checkpoints/latest.json"):
        return json.loads(latest.read_text())
    return {}


def in_mid_epoch(position: dict, epoch: int) -> bool:
    """A checkpoint position stands inside 0-based `epoch`, past its first step."""
    return position.get("epoch") == epoch and position.get("step", 0) > 0


def spec_file_of(tmp_path_factory, name: str, text: str) -> Path:
    """A spec file of `text`, written once for a module's fixtures."""
    path = tmp_path_factory.mktemp("spec") / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    return spec_file_of(tmp_path_factory, "det.toml", DETERMINISTIC)


def ran(tmp_path_factory, folder: str, *command: str | Path) -> Path:
    """The run directory `runner COMMAND... --output <a new folder>` made, which must exit 0."""
    out = tmp_path_factory.mktemp(folder)
    result = runner(*command, "--output", out)
    assert result.returncode == 0, result.stderr + result.stdout
    return only_run(out)


@pytest.fixture(scope="module")
def uninterrupted(spec_file, tmp_path_factory) -> Path:
    return ran(tmp_path_factory, "uninterrupted", "run", spec_file)


def test_sigint_mid_epoch_then_resume_equals_the_uninterrupted_run(spec_file, uninterrupted, tmp_path):
    child = runner("run", spec_file, "--output", tmp_path, wait=False)
    wait_for(lambda: in_mid_epoch(checkpoint_position(tmp_path), 1))  # the second epoch's first checkpoint
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 130, stderr
    run_dir = only_run(tmp_path)
    interrupted = report(run_dir)
    assert interrupted["status"] == "interrupted" and "SIGINT" in interrupted["error"]
    assert f"runner resume {run_dir}" in stderr.decode()
    position = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert position["epoch"] == 1 and position["step"] > 0  # stopped mid-epoch, after the step it was in
    (run_dir / "error.txt").write_text("Traceback: an earlier attempt's crash\n")
    resumed = runner("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert not (run_dir / "error.txt").exists()  # not this completed run's error (issue 15)
    assert model_metrics(run_dir) == model_metrics(uninterrupted)
    final, reference = report(run_dir), report(uninterrupted)
    assert final["status"] == "completed" and final["resumes"][0]["from"] == position["name"]
    assert final["metrics"]["test_loss"] == reference["metrics"]["test_loss"]
    assert final["metrics"]["test_accuracy"] == reference["metrics"]["test_accuracy"]
    assert final["precision"]["loss_scale"]["history"] == reference["precision"]["loss_scale"]["history"]


def test_the_same_deterministic_spec_gives_identical_metrics(spec_file, uninterrupted, tmp_path):
    result = runner("run", spec_file, "--output", tmp_path)
    assert result.returncode == 0, result.stderr
    again = only_run(tmp_path)
    assert model_metrics(again) == model_metrics(uninterrupted)
    assert (again / "metrics.jsonl").read_text() != ""
    assert report(again)["metrics"]["test_loss"] == report(uninterrupted)["metrics"]["test_loss"]
    environment = json.loads((again / "environment.json").read_text())
    assert {"tensorflow", "keras", "numpy", "python", "device", "git_commit"} <= set(environment)


def test_sigkill_during_checkpoint_writes_leaves_every_file_whole(spec_file, tmp_path):
    child = runner(
        "run", spec_file, "--output", tmp_path, "--set", "runtime.checkpoint_every_steps=3", wait=False
    )
    # Ten checkpoints in, so the kill likely lands mid-write.
    wait_for(lambda: checkpoint_position(tmp_path).get("global_step", 0) >= 30)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    run_dir = only_run(tmp_path)
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())  # every JSON file parses
    runs.read_jsonl(run_dir / "metrics.jsonl")
    resumed = runner("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert report(run_dir)["status"] == "completed"
    assert [r["epoch"] for r in runs.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_a_second_sigint_stops_at_once_without_corrupting_files(spec_file, tmp_path):
    child = runner("run", spec_file, "--output", tmp_path, wait=False)
    wait_for(lambda: any(tmp_path.glob("*/checkpoints/latest.json")))
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGINT)
    child.wait(timeout=120)
    assert child.returncode == 130
    run_dir = only_run(tmp_path)
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())
    assert report(run_dir)["status"] == "interrupted"
    assert runner("resume", run_dir).returncode == 0


def test_an_injected_nan_loss_ends_diverged_with_the_checkpoint_kept(tmp_path):
    spec = tmp_path / "nan.toml"
    spec.write_text(
        'name = "nan"\n[precision]\npolicy = "float32"\n[model]\nkind = "factory"\n'
        'factory = "tests.factories:nan_loss_after"\narguments = {after = 60}\n'
        "[data]\nsource = 'shapes'\nbatch_size = 32\ntrain_size = 1200\ntest_size = 100\n"
        "[training]\nepochs = 4\n"
    )
    result = runner("run", spec, "--output", tmp_path / "out")
    assert result.returncode == 3, result.stderr
    run_dir = only_run(tmp_path / "out")
    data = report(run_dir)
    assert data["status"] == "diverged" and "non-finite loss" in data["error"]
    divergence = data["divergence"]
    assert divergence["step"] > 60 and divergence["last_good_epoch"]["epoch"] >= 1
    kept = divergence["checkpoint"]
    assert (run_dir / "checkpoints" / f"{kept}.npz").exists()
    assert kept in json.loads((run_dir / "checkpoints" / "pinned.json").read_text())["names"]


def test_four_concurrent_runs_leave_four_complete_run_directories(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        'name = "same"\n[model]\nkind = "mlp"\nhidden_units = [8]\n[data]\nsource = "shapes"\n'
        "train_size = 256\ntest_size = 64\n[training]\nepochs = 1\n[runtime]\ntensorboard = false\n"
        "[export]\nformats = []\n"  # the runs' own files race here, not an export's reload (5 s each)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    children = [runner("run", spec, "--output", tmp_path / "out", wait=False, env=env) for _ in range(4)]
    for child in children:
        child.wait(timeout=600)
        assert child.returncode == 0, child.stderr.read()
    run_dirs = sorted((tmp_path / "out").iterdir())
    assert len(run_dirs) == 4
    for run_dir in run_dirs:
        assert report(run_dir)["status"] == "completed"
        assert {"spec.toml", "environment.json", "metrics.jsonl", "report.json", "report.html"} <= {
            p.name for p in run_dir.iterdir()
        }


def test_a_run_interrupted_by_the_first_layout_still_resumes(tmp_path):
    """tests/fixtures/v1-interrupted-run was written by runner at 7cbc39e (before the restructuring of
    issue 16): mixed_float16, interrupted by SIGINT in epoch 2 at step 27. Its checkpoint format,
    report.json and metrics.jsonl must stay readable by every later version."""
    import shutil

    run_dir = tmp_path / "v1-interrupted-run"
    shutil.copytree(ROOT / "tests" / "fixtures" / "v1-interrupted-run", run_dir)
    resumed = runner("resume", run_dir)
    if compat.keras_version().startswith("2"):  # the fixture's checkpoint is Keras 3's: refused, by name
        assert resumed.returncode == 3, resumed.stderr
        assert "optimizer variables (14) are not this model's (12)" in report(run_dir)["error"]
        assert "Keras (now 2." in report(run_dir)["error"]
        return
    assert resumed.returncode == 0, resumed.stderr
    data = report(run_dir)
    assert data["status"] == "completed" and data["resumes"][-1]["from"] == "step-00000027"
    assert [r["epoch"] for r in runs.read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert data["precision"]["loss_scale"]["steps"] == 3 * 20  # 640 images, batch 32: every step counted
