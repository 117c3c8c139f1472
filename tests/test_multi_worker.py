"""Several workers, for real: `runner` processes joined into a MultiWorkerMirroredStrategy cluster on
127.0.0.1 (ports picked free at run time), and mirrored replicas on logical CPU devices. Small specs:
each run is seconds; every wait has a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runner.training.distribution import local_cluster
from tests.conftest import ROOT
from tests.started import Started
from tests.test_resume import (
    checkpoint_position,
    model_metrics,
    only_run,
    ran,
    report,
    runner,
    spec_file_of,
    wait_for,
)

pytestmark = pytest.mark.slow  # every test here trains in `runner` processes

SPEC = """
name = "mw"
seed = 5
[precision]
policy = "mixed_float16"
[model]
kind = "seed_cnn"
filters = [8, 16]
dense_units = 16
batch_norm = true  # per-replica moving statistics, averaged by the engine after every step
[data]
source = "shapes"
batch_size = 32
train_size = 1024
test_size = 128
[training]
epochs = 3  # 32 steps an epoch, 96 in all: a checkpoint every 20, and room to stop in the middle
learning_rate = 0.003
[runtime]
deterministic = true
checkpoint_every_steps = 20  # the event the interruption tests wait for
[distribution]
strategy = "multi_worker"
peer_timeout_s = 60
[export]  # the chief exports in the launched run alone: a fresh-process reload is 5 s a run
formats = []
"""
EXIT_BOUND_S = 60  # a worker lost or stopped: every other one ends within this (measured: ~10 s)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    return spec_file_of(tmp_path_factory, "mw.toml", SPEC)


@pytest.fixture(scope="module")
def launched(spec_file, tmp_path_factory) -> Path:
    """`runner launch --workers 2`: the uninterrupted reference run, the chief exporting the model."""
    keras = ("--set", 'export.formats=["keras"]')
    return ran(tmp_path_factory, "launched", "launch", "--workers", "2", spec_file, *keras)


def workers(spec_file: Path, out: Path, *args: str) -> list[Started]:
    """Two `runner run` (or `resume`) processes, each with its TF_CONFIG, as a cluster manager starts them."""
    command = args or ("run", str(spec_file), "--output", str(out))
    return [
        runner(*command, wait=False, env={**os.environ, "TF_CONFIG": config.to_tf_config()})
        for config in local_cluster(2)
    ]


def finish(children: list[Started] | list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Every worker's exit code and stderr; each must end within EXIT_BOUND_S of the call."""
    ended = []
    for child in children:
        stderr = child.communicate(timeout=EXIT_BOUND_S)[1]
        ended.append((child.wait(), stderr if isinstance(stderr, str) else stderr.decode(errors="replace")))
    return ended


def worker_files(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "workers" / f"worker-{i}.json").read_text()) for i in (0, 1)]


def test_launch_two_workers_completes_with_one_run_directory_and_equal_weights(launched):
    data = report(launched)
    assert data["status"] == "completed"
    assert data["distribution"] | {"devices": None} == {
        "strategy": "multi_worker",
        "workers": 2,
        "replicas": 2,
        "global_batch": 32,
        "per_replica_batch": 16,
        "devices": None,
    }
    assert {c["name"]: c["passed"] for c in data["checks"]}["replicas_in_sync"]
    for name in ("report.json", "report.md", "report.html", "metrics.jsonl", "spec.toml", "checkpoints"):
        assert (launched / name).exists(), name
    assert (launched / "model.keras").is_file()  # exported by the chief
    assert len(model_metrics(launched)) == 3
    chief, other = worker_files(launched)
    assert chief["is_chief"] and not other["is_chief"]
    assert chief["weights_sha256"] == other["weights_sha256"] is not None
    assert chief["steps"] == other["steps"] == data["precision"]["loss_scale"]["steps"]
    assert sorted(p.name for p in (launched / "workers").iterdir()) == ["worker-0.json", "worker-1.json"]


def test_sigint_to_one_worker_stops_both_at_one_step_and_resume_equals_the_uninterrupted_run(
    spec_file, launched, tmp_path
):
    children = workers(spec_file, tmp_path)
    wait_for(lambda: checkpoint_position(tmp_path).get("epoch", 0) >= 1)  # training, past an epoch
    children[1].send_signal(signal.SIGINT)
    ended = finish(children)
    assert [code for code, _ in ended] == [130, 130], ended
    run_dir = only_run(tmp_path)
    interrupted = report(run_dir)
    assert interrupted["status"] == "interrupted" and "another worker" in interrupted["error"]
    position = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert position["global_step"] == worker_files(run_dir)[1]["steps"]  # both stopped at that step
    assert position["name"] in interrupted["error"]
    resumed = runner("launch", "--workers", "2", run_dir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    # The weights are bit-identical, so is every validation figure. The training means of the epoch
    # the stop cut are summed over the replicas in another order after a resume (the saved totals
    # are put on the first replica): equal to float32 rounding (measured: 2e-7 relative).
    assert worker_files(run_dir)[0]["weights_sha256"] == worker_files(launched)[0]["weights_sha256"]
    resumed_epochs, reference = model_metrics(run_dir), model_metrics(launched)
    assert [{k: v for k, v in e.items() if k.startswith("val_")} for e in resumed_epochs] == [
        {k: v for k, v in e.items() if k.startswith("val_")} for e in reference
    ]
    assert resumed_epochs == [pytest.approx(e, rel=1e-6) for e in reference]
    assert report(run_dir)["resumes"][0]["from"] == position["name"]


def test_a_killed_worker_ends_the_other_with_a_message_naming_it_and_resume_completes(
    spec_file, launched, tmp_path
):
    children = workers(spec_file, tmp_path)
    wait_for(lambda: checkpoint_position(tmp_path).get("global_step", 0) >= 20)
    children[1].kill()  # SIGKILL: no goodbye to its peers
    started = time.monotonic()
    code, stderr = finish(children)[0]
    waited = time.monotonic() - started
    assert code == 3, stderr
    run_dir = only_run(tmp_path)
    failed = report(run_dir)
    assert failed["status"] == "failed" and "lost worker 1" in failed["error"], failed["error"]
    assert "Traceback" not in stderr
    print(f"the chief ended {waited:.1f} s after worker 1 was killed")  # shown with -s: the measured bound
    resumed = runner("launch", "--workers", "2", run_dir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert worker_files(run_dir)[0]["weights_sha256"] == worker_files(launched)[0]["weights_sha256"]


def test_a_worker_that_never_joins_is_one_message_within_the_peer_timeout(spec_file, tmp_path):
    config = local_cluster(2)[0]
    result = runner(
        "run",
        spec_file,
        "--output",
        tmp_path,
        "--set",
        "distribution.peer_timeout_s=10",
        env={**os.environ, "TF_CONFIG": config.to_tf_config()},
    )
    assert result.returncode == 2, result.stderr
    assert "worker(s) 1 (127.0.0.1:" in result.stderr and "did not join" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


MIRRORED = """
import json, sys
import numpy as np
from pathlib import Path
from runner.session import run_experiment
from runner.spec import spec_from_dict
from runner.training import checkpoints

def final_weights(outcome):
    name, _ = checkpoints.latest(outcome.run_dir)
    with np.load(outcome.run_dir / "checkpoints" / f"{name}.npz") as arrays:
        return {k: arrays[k].tolist() for k in arrays.files if k.startswith("model/")}

out, result = Path(sys.argv[1]), {}
for policy in ("float32", "mixed_float16"):
    for strategy in ("mirrored", "none"):  # mirrored first: TensorFlow splits the CPU before it starts
        spec = spec_from_dict({
            "name": f"{policy}-{strategy}", "seed": 3,
            "precision": {"policy": policy},
            "model": {"kind": "seed_cnn", "filters": [8, 16], "dense_units": 16},
            "data": {"source": "shapes", "batch_size": 64, "train_size": 640, "test_size": 64},
            "training": {"epochs": 1, "learning_rate": 0.05, "optimizer": {"kind": "sgd"}},
            "runtime": {"deterministic": True, "tensorboard": False},
            "distribution": {"strategy": strategy, **({"replicas": 2} if strategy == "mirrored" else {})},
        })
        outcome = run_experiment(spec, out)
        assert outcome.status == "completed", outcome.report["error"]
        result[f"{policy}-{strategy}"] = {"weights": final_weights(outcome), "report": outcome.report}
json.dump(result, sys.stdout)
"""


def relative_l2(a: dict, b: dict) -> dict[str, float]:
    return {k: float(np.linalg.norm(np.subtract(a[k], b[k])) / max(np.linalg.norm(b[k]), 1e-30)) for k in a}


def test_two_mirrored_replicas_train_as_one_device_with_the_same_global_batch(tmp_path):
    mirrored_runs(tmp_path, {})


def mirrored_runs(tmp_path: Path, env: dict[str, str]) -> dict:
    """MIRRORED in a process of its own (with `env`), its runs checked against each other."""
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout)
    mirrored = runs["mixed_float16-mirrored"]["report"]
    assert mirrored["distribution"]["replicas"] == 2 and mirrored["distribution"]["per_replica_batch"] == 32
    assert all(c["passed"] for c in mirrored["checks"] if c["severity"] == "error"), mirrored["checks"]
    # float32: the same arithmetic split in two; measured 3e-8..2e-6 (biases, summed in another order).
    float32 = relative_l2(runs["float32-mirrored"]["weights"], runs["float32-none"]["weights"])
    assert max(float32.values()) < 1e-5, float32
    # The metrics are read across the replicas: the same means as on one device (a sum would double).
    epochs = [runs[f"float32-{s}"]["report"]["metrics"]["epochs"][0] for s in ("mirrored", "none")]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert epochs[0][name] == pytest.approx(epochs[1][name], rel=1e-5), name
    # mixed_float16: float16 sums over 32 images instead of 64 round differently. Measured: kernels
    # within 1 % (biases, near zero, are relative noise). Held to a bound of its own kind: the
    # mirrored run is no further from the float32 reference than the one-device mixed run is, x2.
    reference = runs["float32-none"]["weights"]
    kernels = [k for k in reference if np.ndim(reference[k]) > 1]
    mixed = relative_l2(runs["mixed_float16-mirrored"]["weights"], runs["mixed_float16-none"]["weights"])
    assert max(mixed[k] for k in kernels) < 0.05, mixed
    mirrored_drift = relative_l2(runs["mixed_float16-mirrored"]["weights"], reference)
    single_drift = relative_l2(runs["mixed_float16-none"]["weights"], reference)
    assert all(mirrored_drift[k] <= 2 * single_drift[k] + 1e-6 for k in kernels), (
        mirrored_drift,
        single_drift,
    )
    return runs


def test_a_worker_that_cannot_see_the_run_directory_stops_every_worker_before_training(spec_file, tmp_path):
    """Worker 1 runs in a mount namespace of its own where --output is an empty tmpfs: the storage of
    a cluster whose machines do not share it. Every worker stops with exit 2 and one message, and
    the chief takes its run directory back."""
    out = tmp_path / "out"
    out.mkdir()
    run = [sys.executable, "-m", "runner", "run", str(spec_file), "--output", str(out)]
    hidden = f"mount -t tmpfs -o size=1m tmpfs {out} && exec {' '.join(run)}"
    commands = [run, ["unshare", "--mount", "--propagation", "private", "sh", "-c", hidden]]
    children = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "TF_CONFIG": config.to_tf_config()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command, config in zip(commands, local_cluster(2), strict=True)
    ]
    ended = finish(children)
    assert [code for code, _ in ended] == [2, 2], ended
    for _, stderr in ended:
        assert "worker 1 (127.0.0.1:" in stderr and "cannot see the run directory" in stderr, stderr
        assert "Traceback" not in stderr
    assert not list(out.iterdir())


def test_batch_normalization_statistics_stay_one_model_across_mirrored_replicas(spec_file, tmp_path):
    """Each replica updates its own BatchNormalization moving statistics (Keras 3 mirrors them without
    aggregation, Keras 2 keeps them per replica); the engine averages them after every step, so the
    replicas end equal (the multi-worker tests' spec has batch_norm too)."""
    result = runner(
        "run",
        spec_file,
        "--set",
        "distribution.strategy=mirrored",
        "--set",
        "distribution.replicas=2",
        "--set",
        "training.epochs=1",
        "--set",
        "data.train_size=480",  # 15 steps, each followed by the averaging: as telling as 50
        "--output",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    data = report(only_run(tmp_path))
    (in_sync,) = [c for c in data["checks"] if c["name"] == "replicas_in_sync"]
    assert in_sync["passed"], in_sync
    assert any("bn" in layer["name"] for layer in data["audit"]["layers"])


def test_ctrl_c_to_runner_launch_stops_every_worker_with_a_checkpoint(spec_file, tmp_path):
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "launch",
            "--workers",
            "2",
            str(spec_file),
            "--output",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: checkpoint_position(tmp_path).get("global_step", 0) >= 20)
    launcher.send_signal(signal.SIGINT)
    _, stderr = launcher.communicate(timeout=EXIT_BOUND_S)
    assert launcher.returncode == 130, stderr
    run_dir = only_run(tmp_path)
    assert report(run_dir)["status"] == "interrupted"
    assert [w["status"] for w in worker_files(run_dir)] == ["interrupted", "interrupted"]
    # The command that resumes it on this machine (`runner resume` alone would need a TF_CONFIG).
    assert f"resume with: runner launch --workers 2 {run_dir}" in " ".join(stderr.split())
