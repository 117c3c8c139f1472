"""runner.cluster.ray: a local Ray cluster on 127.0.0.1 whose Ray Train workers get a TF_CONFIG runner
accepts and TensorFlow connects with (a real collective), and a whole experiment on two of them (issue 17).

The Ray tests are bounded by the timeout run_on_workers takes (the job is stopped with the cluster),
not by sleeps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner import compat
from runner.cluster import ray as runner_ray
from runner.cluster.ray import LOCALHOST, RayRunError, WorkerOutcome
from runner.spec import BadInput, ExperimentSpec, load_spec, spec_from_dict
from runner.training.distribution import ClusterConfig
from tests.conftest import ROOT

RUN_TIMEOUT_S = 600  # Ray's start (~5 s), two workers importing TensorFlow (~20 s), one short epoch

TINY = {
    "name": "ray-tiny",
    "seed": 7,
    "precision": {"policy": "mixed_float16"},
    "model": {"kind": "seed_cnn", "filters": [8, 16, 16], "dense_units": 16},
    "data": {"source": "shapes", "batch_size": 32, "train_size": 320, "test_size": 64},
    "training": {"epochs": 1, "learning_rate": 0.002},
}


# --- Without Ray running: the module's rules --------------------------------------------------------


def test_importing_runner_ray_loads_neither_ray_nor_tensorflow():
    code = "import sys, runner.cluster.ray; print(sorted({'ray', 'tensorflow'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_a_missing_extra_is_one_message_and_exit_2(tmp_path):
    # ray = None in sys.modules: `import ray` fails as it does where the extra is not installed.
    code = (
        "import runpy, sys; sys.modules['ray'] = None; "
        f"sys.argv = ['runner.cluster.ray', {str(ROOT / 'specs/quickstart.toml')!r}, "
        f"'--output', {str(tmp_path)!r}]; "
        "runpy.run_module('runner.cluster.ray', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "pip install -e '.[ray]'" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("distribution", "expected"),
    [
        ({}, "multi_worker"),
        ({"strategy": "multi_worker", "peer_timeout_s": 60}, "multi_worker"),
        ({"strategy": "mirrored"}, None),
        ({"strategy": "multi_worker", "cluster": "slurm"}, None),
    ],
    ids=["none-becomes-multi_worker", "multi_worker-kept", "mirrored-refused", "slurm-refused"],
)
def test_multi_worker_spec(distribution, expected):
    spec = spec_from_dict({**TINY, "distribution": distribution})
    if expected is None:
        with pytest.raises(BadInput, match='expected strategy = "none" or "multi_worker"'):
            runner_ray.multi_worker_spec(spec)
        return
    resolved = runner_ray.multi_worker_spec(spec)
    assert isinstance(resolved, ExperimentSpec)
    assert (resolved.distribution.strategy, resolved.distribution.cluster) == (expected, "tf_config")
    assert resolved.distribution.peer_timeout_s == spec.distribution.peer_timeout_s


def test_foreign_addresses_are_found():
    local = ClusterConfig({"worker": ["127.0.0.1:1000", "127.0.0.1:1001"]}, "worker", 0)
    mixed = ClusterConfig({"chief": ["10.0.0.2:1000"], "worker": ["127.0.0.1:1001"]}, "worker", 0)
    assert runner_ray.foreign_addresses(local) == []
    assert runner_ray.foreign_addresses(mixed) == ["10.0.0.2:1000"]


def test_bounded_gives_back_values_errors_and_stops_waiting():
    assert runner_ray.bounded(lambda: 42, 5, "answer") == 42
    with pytest.raises(KeyError):
        runner_ray.bounded(lambda: {}["missing"], 5, "lookup")
    import threading

    never = threading.Event()
    with pytest.raises(RayRunError, match="hang: no answer within 0 s"):
        runner_ray.bounded(never.wait, 0.2, "hang")


def test_fewer_than_one_worker_is_bad_input():
    with pytest.raises(BadInput, match="--workers: expected at least 1; got 0"):
        runner_ray.run_on_workers(_claims_completed, 0, timeout_s=1)


def _claims_completed(cluster: ClusterConfig) -> WorkerOutcome:
    return WorkerOutcome(cluster.worker_rank, "completed", 0)


def _tf_config(hosts: list[str], index: int) -> str:
    return ClusterConfig(
        {"worker": [f"{h}:{2000 + i}" for i, h in enumerate(hosts)]}, "worker", index
    ).to_tf_config()


@pytest.mark.parametrize(
    ("tf_config", "rank", "error"),
    [
        (_tf_config([LOCALHOST, LOCALHOST], 1), 1, None),
        (None, 0, "TF_CONFIG is not set"),
        (_tf_config([LOCALHOST, LOCALHOST], 0), 1, "expected task 1 (Ray's world rank); got 0"),
        (
            _tf_config([LOCALHOST, "192.0.2.2"], 0),
            0,
            "expected every address on 127.0.0.1; got ['192.0.2.2:2001']",
        ),
    ],
    ids=["local-and-in-rank", "unset", "wrong-index", "outward-address"],
)
def test_a_worker_trains_only_with_a_local_tf_config_of_its_rank(monkeypatch, tf_config, rank, error):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    outcome = runner_ray.worker_outcome(_claims_completed, rank)
    assert outcome.rank == rank
    if error is None:
        assert (outcome.status, outcome.exit_code, outcome.error) == ("completed", 0, None)
    else:
        assert (outcome.status, outcome.exit_code) == ("bad_input", 2)
        assert error in (outcome.error or "")


# --- The whole experiment (needs runner's multi-worker training, issue 17) --------------------------


@pytest.mark.slow
def test_an_experiment_on_two_ray_workers(tmp_path: Path):
    """Ray Train gives each worker a TF_CONFIG runner accepts (its own rank, one cluster on
    127.0.0.1, worker 0 the chief) and TensorFlow connects with: the two train as one model (the
    same final weights, every step's gradients all-reduced), in the driver's Keras."""
    spec = spec_from_dict(TINY)
    report = runner_ray.run_on_ray(spec, tmp_path, workers=2, timeout_s=RUN_TIMEOUT_S)
    assert report["status"] == "completed"
    assert report["distribution"]["strategy"] == "multi_worker"
    assert report["distribution"]["workers"] == report["distribution"]["replicas"] == 2
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # the chief's; no other worker's
    assert (run_dir / "report.json").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert json.loads((run_dir / "report.json").read_text()) == report
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch
    workers = [json.loads((run_dir / f"workers/worker-{i}.json").read_text()) for i in range(2)]
    assert [w["task"] for w in workers] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    addresses = [w["address"] for w in workers]
    assert len(set(addresses)) == 2 and all(a.rsplit(":", 1)[0] == LOCALHOST for a in addresses)
    assert [w["is_chief"] for w in workers] == [True, False]
    assert workers[0]["weights_sha256"] == workers[1]["weights_sha256"]
    assert report["environment"]["keras"] == compat.keras_version()  # TF_USE_LEGACY_KERAS passed on
    assert load_spec(run_dir / "spec.toml").distribution.strategy == "multi_worker"
