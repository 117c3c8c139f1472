"""Multi-worker training on a Ray cluster of this machine alone (issue 17): Ray Train's TensorflowTrainer
starts one process per worker and gives each a TF_CONFIG; each calls runner.session.run_experiment with
the same spec and the same output folder; the chief writes the run directory.

Everything stays on 127.0.0.1: Ray itself (its node address, so the TF_CONFIG addresses it hands out
too), checked on the driver after Ray starts and again by every worker before it trains. Each worker
sends its outcome back through `ray.train.report` (a small checkpoint: Ray Train V2 keeps only reports
that carry one, and merges every worker's into one folder), so the driver sees all of them.

Ray is imported only inside functions (`pip install -e '.[ray]'`), TensorFlow only in the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from runner import exits
from runner.runs import environment_set
from runner.spec import BadInput, DistributionSpec, ExperimentSpec
from runner.training.distribution import ClusterConfig, ClusterError, from_environment

LOCALHOST = "127.0.0.1"
INSTALL_HINT = "pip install -e '.[ray]'"
DEFAULT_TIMEOUT_S = 3600.0  # the whole job: Ray's start, every worker's run, the outcomes' way back
RAY_START_TIMEOUT_S = 120.0  # a local Ray starts in 2-6 s on 2 cores; a minute more is a hang
# Ray turns a node address of 127.0.0.1 into this machine's outward IP (so other nodes can join) unless
# its local-only mode is on, as on macOS and Windows. Read when ray is imported and by every process
# Ray starts; V2 because only Ray Train V2 gives back every worker's reported checkpoint.
RAY_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TRAIN_V2_ENABLED": "1"}
LEGACY_KERAS = "TF_USE_LEGACY_KERAS"  # Ray's TensorFlow backend sets it to 1 in every worker


class RayUnavailable(BadInput):
    """Ray Train is not installed: exit 2, one message naming the extra."""


class RayRunError(RuntimeError):
    """The job did not finish on Ray (a worker crashed, a wait ran out of time): exit 3."""


@dataclass(frozen=True)
class WorkerOutcome:
    """What one worker sends back. `rank` is Ray's world rank, which is also its TF_CONFIG task index."""

    rank: int
    status: str
    exit_code: int
    run_dir: str | None = None
    report: dict[str, Any] | None = None  # the chief's report.json (a probe's findings, for any worker)
    error: str | None = None


Work = Callable[[ClusterConfig], WorkerOutcome]


def import_ray() -> Any:
    """The ray module with Ray Train's TensorFlow backend; a missing extra is one BadInput message."""
    try:
        import ray
        import ray.train.tensorflow  # noqa: F401 - its TensorflowTrainer is what sets TF_CONFIG
    except ModuleNotFoundError as exc:
        raise RayUnavailable(
            f"Ray Train is not installed ({exc.name} is missing); for `runner.cluster.ray`: {INSTALL_HINT}"
        ) from None
    return ray


def bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """`call()` in a daemon thread, waited on for at most `timeout_s`: a hang becomes a RayRunError."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"runner.cluster.ray: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RayRunError(f"{what}: no answer within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@contextlib.contextmanager
def deadline(timeout_s: float, what: str) -> Iterator[None]:
    """A RayRunError in this (the main) thread once `timeout_s` have passed, for a call that must stay on
    the main thread (ray.init: started from another thread, its driver loses the cluster when that
    thread ends). Elsewhere a no-op: the call is left to its own limits (Ray gives up on a GCS after 60 s)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise RayRunError(f"{what}: no answer within {timeout_s:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def local_ray(cpus: int, start_timeout_s: float = RAY_START_TIMEOUT_S) -> Iterator[Any]:
    """A Ray cluster of this machine alone, bound to 127.0.0.1, with `cpus` CPUs; shut down on leaving."""
    with environment_set(RAY_ENVIRONMENT):  # the processes Ray starts inherit it
        ray = import_ray()
        if ray.is_initialized():
            raise RayRunError("Ray is already running in this process: runner starts its own local cluster")
        options = {"address": "local", "_node_ip_address": LOCALHOST, "num_cpus": cpus, "num_gpus": 0}
        try:
            with deadline(start_timeout_s, "starting Ray"):
                ray.init(**options, include_dashboard=False, log_to_driver=False)
            node = ray.util.get_node_ip_address()
            if node != LOCALHOST:
                raise RayRunError(
                    f"Ray's node address: expected {LOCALHOST}; got {node} (ray was imported before "
                    "runner.cluster.ray could set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; set it in the "
                    "environment)"
                )
            yield ray
        finally:
            ray.shutdown()


def foreign_addresses(cluster: ClusterConfig) -> list[str]:
    """The cluster's addresses that are not on 127.0.0.1."""
    everyone = [a for addresses in cluster.cluster.values() for a in addresses]
    return [a for a in everyone if a.rsplit(":", 1)[0] != LOCALHOST]


def worker_outcome(work: Work, rank: int) -> WorkerOutcome:
    """`work` with this worker's cluster, once TF_CONFIG is checked: runner's rules, every address on
    127.0.0.1, and this worker's task index Ray's rank (so worker 0, the chief, writes the run)."""
    try:
        cluster = from_environment("tf_config")
    except ClusterError as exc:
        return WorkerOutcome(rank, "bad_input", exits.BAD_INPUT, error=str(exc))
    if foreign_addresses(cluster):
        detail = f"TF_CONFIG: expected every address on {LOCALHOST}; got {foreign_addresses(cluster)}"
        return WorkerOutcome(rank, "bad_input", exits.BAD_INPUT, error=detail)
    if cluster.worker_rank != rank:
        detail = f"TF_CONFIG: expected task {rank} (Ray's world rank); got {cluster.worker_rank}"
        return WorkerOutcome(rank, "bad_input", exits.BAD_INPUT, error=detail)
    return work(cluster)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: undo Ray's TF_USE_LEGACY_KERAS=1 (the driver's Keras stays the
    workers'), do the work, send the outcome back as a one-file checkpoint."""
    import ray.train

    if config["legacy_keras"] is None:
        os.environ.pop(LEGACY_KERAS, None)
    else:
        os.environ[LEGACY_KERAS] = config["legacy_keras"]
    rank = ray.train.get_context().get_world_rank()
    outcome = worker_outcome(config["work"], rank)
    with tempfile.TemporaryDirectory(prefix="runner-outcome-") as folder:
        (Path(folder) / f"outcome-{rank}.json").write_text(json.dumps(asdict(outcome)), encoding="utf-8")
        metrics = {"rank": rank, "status": outcome.status, "exit_code": outcome.exit_code}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _read_outcomes(result: Any, workers: int) -> list[WorkerOutcome]:
    if result.checkpoint is None:
        raise RayRunError("the workers reported no outcome")
    with result.checkpoint.as_directory() as folder:
        found = [json.loads(p.read_text(encoding="utf-8")) for p in Path(folder).glob("outcome-*.json")]
    outcomes = sorted((WorkerOutcome(**raw) for raw in found), key=lambda o: o.rank)
    if [o.rank for o in outcomes] != list(range(workers)):
        raise RayRunError(f"expected outcomes of workers 0..{workers - 1}; got {[o.rank for o in outcomes]}")
    return outcomes


def run_on_workers(
    work: Work, workers: int, *, timeout_s: float, name: str = "runner"
) -> list[WorkerOutcome]:
    """`work` on `workers` Ray Train workers of a local cluster, each with its TF_CONFIG; the outcomes
    by rank. Bounded: a job still running after `timeout_s` is stopped with the cluster (RayRunError)."""
    if workers < 1:
        raise BadInput(f"--workers: expected at least 1; got {workers}")
    with local_ray(workers) as ray, tempfile.TemporaryDirectory(prefix="runner-ray-") as storage:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer

        trainer = TensorflowTrainer(
            train_loop_per_worker,
            train_loop_config={"work": work, "legacy_keras": os.environ.get(LEGACY_KERAS)},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=name, storage_path=storage),
        )
        try:
            result = bounded(trainer.fit, timeout_s, f"the job on {workers} Ray Train workers")
        except ray.train.TrainingFailedError as exc:
            raise RayRunError(f"a Ray Train worker failed: {exc}") from None
        return _read_outcomes(result, workers)


def multi_worker_spec(spec: ExperimentSpec) -> ExperimentSpec:
    """The spec with `multi_worker` from TF_CONFIG: one written for one device is run on the workers; one
    that asks for another strategy or for Slurm's cluster contradicts Ray and is refused."""
    distribution = spec.distribution
    if distribution.strategy == "mirrored" or distribution.cluster != "tf_config":
        raise BadInput(
            'distribution: expected strategy = "none" or "multi_worker" with cluster = "tf_config" (Ray '
            f'sets TF_CONFIG); got strategy = "{distribution.strategy}", cluster = "{distribution.cluster}"'
        )
    update = {"strategy": "multi_worker", "cluster": "tf_config"}
    checked = DistributionSpec.model_validate({**distribution.model_dump(), **update})
    return spec.model_copy(update={"distribution": checked})


def experiment_on_worker(spec: ExperimentSpec, output: Path, cluster: ClusterConfig) -> WorkerOutcome:
    """One worker's share: the whole experiment, as every worker runs it; the report for the chief only."""
    from runner.session import run_experiment

    rank = cluster.worker_rank
    try:
        outcome = run_experiment(spec, output)
    except BadInput as exc:
        return WorkerOutcome(rank, "bad_input", exits.BAD_INPUT, error=str(exc))
    report = outcome.report if cluster.is_chief else None
    return WorkerOutcome(rank, outcome.status, outcome.exit_code, str(outcome.run_dir), report)


def experiment_on_ray(
    spec: ExperimentSpec, output: Path, workers: int = 2, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[WorkerOutcome]:
    """Every worker's outcome of one experiment on a local Ray cluster; bad input anywhere is BadInput."""
    spec = multi_worker_spec(spec)
    work = partial(experiment_on_worker, spec, output.resolve())  # Ray starts workers in its own folder
    outcomes = run_on_workers(work, workers, timeout_s=timeout_s, name=spec.name)
    bad = [o for o in outcomes if o.exit_code == exits.BAD_INPUT]
    if bad:
        raise BadInput(f"worker {bad[0].rank}: {bad[0].error}")
    return outcomes


def run_on_ray(
    spec: ExperimentSpec, output: Path, workers: int = 2, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """Train `spec` on `workers` Ray Train workers on this machine; the chief's report (report.json)."""
    chief = experiment_on_ray(spec, output, workers, timeout_s=timeout_s)[0]
    if chief.report is None:
        raise RayRunError(f"the chief wrote no report: {chief.status} ({chief.error})")
    return chief.report


def main(
    spec: Annotated[Path, typer.Argument(help="The experiment (TOML).")],
    workers: Annotated[int, typer.Option(help="Ray Train workers, one process each.")] = 2,
    output: Annotated[
        Path, typer.Option(help="The run directory's parent; one path for every worker.")
    ] = Path("reports"),
    timeout_s: Annotated[float, typer.Option(help="The longest the whole job may take.")] = DEFAULT_TIMEOUT_S,
) -> None:
    """Train SPEC on --workers Ray Train workers of a local Ray cluster (127.0.0.1); exit as the chief."""
    from runner.spec import load_spec

    try:
        outcomes = experiment_on_ray(load_spec(spec), output, workers, timeout_s=timeout_s)
    except BadInput as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exits.BAD_INPUT) from None
    except RayRunError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exits.RUN_FAILED) from None
    for o in outcomes:
        role = " (chief)" if o.report is not None else ""
        typer.echo(f"worker {o.rank}{role}: {o.status}, exit {o.exit_code}, {o.run_dir or o.error}")
    raise typer.Exit(outcomes[0].exit_code)


if __name__ == "__main__":
    typer.run(main)
