"""This process's part in a run: what it prepares before it touches a run directory (the data, then
TensorFlow, the device, its tf.distribute strategy, its share of the cores), the run directory the
chief creates and every worker must see, what a crash says about a lost peer, and the file each
worker leaves (`workers/worker-<rank>.json`). The session calls these in its order."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import compat, runs
from runner.data.sources import Source, load_splits
from runner.memory import MemoryPhases
from runner.spec import (
    BadInput,
    ExperimentSpec,
    SpecValueError,
    spec_hash,
    spec_to_toml,
)
from runner.training.distribution import ClusterConfig, ClusterError, Role, role_for


def require_device(device: str) -> None:
    """Bad input, before anything is written: a spec asking for a GPU this machine does not have."""
    if device == "gpu" and not compat.tensorflow().config.list_physical_devices("GPU"):
        raise SpecValueError(
            'runtime.device: expected a visible GPU for device = "gpu"; found none '
            "(use --set runtime.device=auto to run on the CPU)"
        )


def release_previous_run() -> None:
    """Free what an earlier run in this process held (its memory is not the next run's).
    Nothing here may start TensorFlow's runtime: a strategy made next may still need to configure it
    (logical CPU devices, a cluster's collectives), and a host such as Ray may have imported Keras."""
    if "keras" not in sys.modules or not compat.runtime_started():
        return  # no run here has held TensorFlow's memory
    compat.keras().backend.clear_session()  # Keras 3's collects garbage too: one collection, not two
    if compat.keras_version().startswith("2."):
        gc.collect()  # a collection is 0.3 s in a large process (a test session): once is enough
    tf = compat.tensorflow()
    for device in tf.config.list_logical_devices("GPU"):
        tf.config.experimental.reset_memory_stats(device.name)


@dataclass
class Setup:
    """What a run or a resume has before it touches its directory."""

    splits: Source
    environment: dict[str, Any]
    role: Role
    strategy: Any  # None: the default strategy (one device)
    memory: MemoryPhases


def prepare(spec: ExperimentSpec, role: Role) -> Setup:
    """The data (a DataError leaves nothing behind), TensorFlow, the device, the strategy (several
    workers join their cluster here), and the environment."""
    release_previous_run()
    memory = MemoryPhases.from_now()
    threads = thread_share()  # before anything starts TensorFlow's runtime (a folder's scan may)
    with memory.phase("data"):
        splits = load_splits(spec.data, spec.seed)
    with memory.phase("tensorflow"):
        compat.keras()  # the slow import: after the data (a missing archive fails fast), before the bars
        require_device(spec.runtime.device)
        strategy = strategy_for(spec, role)
    return Setup(splits, {**runs.environment_info(), "threads": threads}, role, strategy, memory)


def strategy_for(spec: ExperimentSpec, role: Role) -> Any:
    """The spec's tf.distribute strategy (several workers join their cluster here); None for one device."""
    if spec.distribution.strategy == "none":
        return None
    from runner.training.engine import make_strategy

    strategy = make_strategy(spec.distribution, role, spec.runtime.device)
    replicas = int(strategy.num_replicas_in_sync)
    if spec.data.batch_size % replicas:
        raise SpecValueError(
            f"data.batch_size: expected a multiple of the {replicas} replicas (the global batch split "
            f"evenly); got {spec.data.batch_size}"
        )
    return strategy


THREADS_VARIABLE = "RUNNER_CPU_THREADS"  # set by a parallel sweep for each variant (sweeps.core_shares)


def thread_share() -> dict[str, Any]:
    """TensorFlow's thread pools as this process was given them: a parallel sweep's share of the
    cores (THREADS_VARIABLE), or TensorFlow's defaults (every core)."""
    given = os.environ.get(THREADS_VARIABLE, "")
    if not given.isdigit() or int(given) < 1:
        return {"intra_op": None, "inter_op": None, "why": f"TensorFlow's defaults ({os.cpu_count()} cores)"}
    threads = int(given)
    if not compat.set_threads(threads):
        return {"intra_op": None, "inter_op": None, "why": "TensorFlow already running: its defaults"}
    return {
        "intra_op": threads,
        "inter_op": threads,
        "why": f"a parallel sweep's share: {threads} of {os.cpu_count()} cores ({THREADS_VARIABLE})",
    }


def distribution_record(spec: ExperimentSpec, setup: Setup) -> dict[str, Any]:
    replicas = int(setup.strategy.num_replicas_in_sync) if setup.strategy is not None else 1
    return {
        "strategy": spec.distribution.strategy,
        "workers": setup.role.workers,
        "replicas": replicas,
        "global_batch": spec.data.batch_size,
        "per_replica_batch": spec.data.batch_size // replicas,
        "devices": [] if setup.strategy is None else list(setup.strategy.extended.worker_devices),
    }


@contextlib.contextmanager
def _new_run_dir(spec: ExperimentSpec, output: Path, environment: dict[str, Any]) -> Iterator[Path]:
    """A fresh run directory, locked while the block runs and seeded with the spec and environment.
    Bad input found inside (a model that cannot be built, a disk too full for spec.toml) removes it
    again: nothing trained, nothing to keep, no `failed` run left to puzzle over."""
    run_dir = runs.create_run_dir(output, spec.name, spec_hash(spec))
    with runs.run_lock(run_dir):
        try:
            runs.write_text_atomic(run_dir / "spec.toml", spec_to_toml(spec))
            runs.write_json_atomic(run_dir / "environment.json", environment)
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise runs.OutputError(
                f"--output {output}: cannot write the run directory ({exc.strerror})"
            ) from None
        try:
            yield run_dir
        except BadInput:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise


@contextlib.contextmanager
def run_directory(spec: ExperimentSpec, output: Path, setup: Setup) -> Iterator[Path]:
    """The run directory: the chief creates it; on several workers it tells the others its path,
    and every worker must see it (shared storage) or none starts."""
    if setup.role.is_chief:
        with _new_run_dir(spec, output, setup.environment) as run_dir:
            if setup.role.workers > 1:
                _share_run_dir(setup, output, run_dir)
            yield run_dir
    else:
        yield _share_run_dir(setup, output, None)


def _share_run_dir(setup: Setup, output: Path, run_dir: Path | None) -> Path:
    from runner.training.engine import all_sum, broadcast_text

    role, strategy = setup.role, setup.strategy
    path = Path(broadcast_text(strategy, None if run_dir is None else str(run_dir.resolve()), role.workers))
    seen = np.zeros(role.workers)
    seen[role.rank] = float(path.is_dir())
    blind = [rank for rank, ok in enumerate(all_sum(strategy, seen, role.workers)) if ok < 0.5]
    if blind:
        assert role.cluster is not None
        who = ", ".join(f"worker {rank} ({role.cluster.address_of(rank)})" for rank in blind)
        raise ClusterError(
            f"--output {output}: {who} cannot see the run directory {path} the chief created there; "
            "expected storage every worker sees (a shared filesystem)"
        )
    return path


def role_of(spec: ExperimentSpec) -> Role:
    return role_for(spec.distribution.strategy, spec.distribution.cluster)


TASK_NAME = re.compile(r"/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)")


def _lost_task(message: str, role: Role) -> tuple[str, int] | None:
    """The peer a TensorFlow collective error blames: the one its coordination service found
    unhealthy, else the first task named that is not this one."""
    unhealthy = message.find("unhealthy")
    named = [(m.group(1), int(m.group(2))) for m in TASK_NAME.finditer(message, max(unhealthy, 0))]
    assert role.cluster is not None
    own = (role.cluster.task_type, role.cluster.task_index)
    others = [task for task in named if task != own]
    return others[0] if others else None


def failure(exc: Exception, role: Role) -> str:
    """A crash in words; on several workers, a peer lost in a collective is named."""
    text = f"{type(exc).__name__}: {exc}"
    if role.cluster is None or "Error" not in type(exc).__name__:
        return text
    lost = _lost_task(str(exc), role)
    if lost is None:
        return text
    peer = ClusterConfig(role.cluster.cluster, *lost)
    return (
        f"lost worker {peer.worker_rank} ({peer.task_type}:{peer.task_index} at "
        f"{peer.cluster[peer.task_type][peer.task_index]}): the cluster's collectives failed "
        f"({type(exc).__name__}); the last checkpoint stands: resume with `runner resume RUN_DIR` "
        "on every worker (or `runner launch --workers N RUN_DIR`)"
    )


def write_worker_file(run_dir: Path, role: Role, ended: dict[str, Any]) -> None:
    """`workers/worker-<rank>.json`: what this worker ended with (`ended`: its status, error, steps and
    weights digest), for the chief's report and for you."""
    assert role.cluster is not None
    folder = run_dir / "workers"
    folder.mkdir(exist_ok=True)
    record = {
        "rank": role.rank,
        "task": {"type": role.cluster.task_type, "index": role.cluster.task_index},
        "address": role.cluster.cluster[role.cluster.task_type][role.cluster.task_index],
        "is_chief": role.is_chief,
        **ended,
        "finished_at": runs.utc_now(),
    }
    runs.write_json_atomic(folder / f"worker-{role.rank}.json", record)
