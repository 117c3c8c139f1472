"""What a run recorded: its state while it runs (`RunState`) and the report.json it becomes (the
model report.RunReport), which `runner report`, `runner compare`, the documents and the terminal
views all read. No rich here:
how a record is shown is views.py's and documents.py's business.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import runs
from runner.memory import MemoryPhases
from runner.precision.checks import NON_COMPUTING, Finding, exemption
from runner.reporting.report import RunReport
from runner.spec import ExperimentSpec, spec_hash, spec_to_dict
from runner.training import checkpoints
from runner.training.distribution import Role
from runner.training.schedules import mode_of
from runner.training.telemetry import StopRequest, TrainingLog


@dataclass
class RunState:
    """What a run has learnt so far; whatever happens, it becomes report.json."""

    spec: ExperimentSpec
    run_dir: Path
    environment: dict[str, Any]
    data: dict[str, Any]
    status: str = "failed"
    audit: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)
    log: TrainingLog = field(default_factory=TrainingLog)
    test_metrics: dict[str, float | None] = field(default_factory=dict)  # None: no test split
    loss_scale: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started_at: str = field(default_factory=runs.utc_now)
    resume_from: tuple[str, dict[str, Any]] | None = None  # checkpoint (name, meta) to continue from
    resumes: list[dict[str, Any]] = field(default_factory=list)
    stop: StopRequest = field(default_factory=StopRequest)
    role: Role = field(default_factory=Role)  # which worker this process is (one process: the chief)
    distribution: dict[str, Any] = field(default_factory=dict)  # strategy, workers, replicas, batches
    weights_sha256: str | None = None  # of the final weights, once training completed
    restored_epoch: int | None = None  # early stopping's best epoch, when its weights were restored
    fine_tuning: dict[str, Any] | None = None  # a frozen base unfrozen: which, and from which epoch
    export: dict[str, Any] | None = None  # the files a completed run exported and their round trip
    memory: MemoryPhases = field(default_factory=MemoryPhases)  # resident memory per phase
    xla: tuple[bool, str] = (False, "")  # whether the step is compiled by XLA, and why (speed.xla_choice)
    speed: dict[str, Any] | None = None  # the candidates timed here and what they say (speed.json)
    policy_choice: dict[str, Any] | None = None  # precision.policy = "auto": what was chosen, and why
    timed: list[Any] = field(default_factory=list)  # speed.Timing taken before the run (the policy's)
    trial: dict[str, Any] | None = None  # a study's trial: what its pruner saw (training/trial.py)
    trial_link: Any = None  # training.trial.TrialLink: this process's trial, while it runs


def _most_common(values: list[str]) -> str | None:
    return Counter(values).most_common(1)[0][0] if values else None


def precision_summary(state: RunState) -> dict[str, Any]:
    """Dtypes as the built model really has them (not as the spec asked), and the loss scale."""
    layers = (state.audit or {}).get("layers", [])
    computing = [x["compute_dtype"] for x in layers if x["class"] not in NON_COMPUTING and x["weights"]]
    variables = [w["dtype"] for x in layers for w in x["weights"] if not exemption(x, w)]
    leaves = [x for x in layers if x["class"] not in NON_COMPUTING and not x.get("container")]
    return {
        "policy": state.spec.precision.policy,
        "compute_dtype": _most_common(computing),
        "variable_dtype": _most_common(variables),
        "loss_scale": state.loss_scale or None,
        "layers_per_dtype": dict(sorted(Counter(x["compute_dtype"] for x in leaves).items())),
        "declared_layers": [
            {
                "path": x["path"],
                "pattern": x["pattern"],
                "policy": x["declared"],
                "compute_dtype": x["compute_dtype"],
            }
            for x in layers
            if x.get("declared")
        ],
    }


def make_report(state: RunState, performance: dict[str, Any]) -> RunReport:
    """report.json of the run as it stands, validated by its model (a writer's mistake fails here)."""
    env = state.environment
    checkpoint = _latest_checkpoint(state)  # read once: the divergence names it too
    return RunReport.model_validate(
        {
            "name": state.spec.name,
            "status": state.status,
            "error": state.error,
            "started_at": state.started_at,
            "run_dir": str(state.run_dir),
            "spec": spec_to_dict(state.spec),
            "spec_hash": spec_hash(state.spec),
            "environment": {k: env.get(k) for k in ("python", "tensorflow", "keras", "device", "threads")},
            "data": state.data,
            "precision": precision_summary(state),
            "audit": state.audit,
            "checks": [f.as_dict() for f in state.findings],
            "metrics": {
                "epochs": [e.as_dict() for e in state.log.epochs],
                "test_loss": state.test_metrics.get("test_loss"),
                "test_accuracy": state.test_metrics.get("test_accuracy"),
            },
            "performance": performance | {"xla": {"used": state.xla[0], "why": state.xla[1]}},
            "speed": state.speed,
            "distribution": state.distribution or None,
            "learning_rate": _learning_rate(state),
            "early_stopping": _early_stopping(state),
            "fine_tuning": state.fine_tuning,
            "divergence": _divergence(state, checkpoint),
            "resumes": state.resumes,
            "checkpoint": checkpoint,
            "weights_sha256": state.weights_sha256,  # of the weights the test metrics are of
            "export": state.export,
            "trial": state.trial,
        }
    )


def write_report(report: RunReport) -> None:
    """report.json in the report's run directory, atomically."""
    assert report.run_dir is not None
    runs.write_json_atomic(Path(report.run_dir) / "report.json", report.to_json())


def _learning_rate(state: RunState) -> dict[str, Any]:
    """The schedule as the spec gave it and what it did (each epoch's rate is in metrics.epochs)."""
    training = state.spec.training
    summary: dict[str, Any] = {"base": training.learning_rate, "schedule": training.schedule.model_dump()}
    if training.schedule.kind == "reduce_on_plateau":
        summary["plateau"] = state.log.plateau.to_state()
    return summary


def _early_stopping(state: RunState) -> dict[str, Any] | None:
    """Where early stopping stopped the run, its best epoch, and the values it watched."""
    stopping = state.spec.training.early_stopping
    if stopping is None:
        return None
    watched = state.log.early_stopping
    return {
        **stopping.model_dump(),
        "mode": mode_of(stopping.monitor),
        "stopped_at_epoch": watched.stopped_at_epoch,
        "best_epoch": watched.best_epoch,
        "best_value": watched.best,
        "values": [getattr(e, stopping.monitor) for e in state.log.epochs],
        "restored_epoch": state.restored_epoch,
    }


def _latest_checkpoint(state: RunState) -> str | None:
    found = checkpoints.latest(state.run_dir)
    return found[0] if found else None


def _divergence(state: RunState, checkpoint: str | None) -> dict[str, Any] | None:
    """Where a diverged run went wrong, what it had reached, and the checkpoint kept from before."""
    if state.log.diverged_at_step is None:
        return None
    last_good = state.log.epochs[-1].as_dict() if state.log.epochs else None
    return {
        "step": state.log.diverged_at_step,
        "diagnosis": state.log.divergence,
        "last_good_epoch": last_good,
        "checkpoint": checkpoint,
    }


def memory_figures(memory: MemoryPhases) -> dict[str, Any]:
    """The process's peak resident memory and where it went, phase by phase (memory.py)."""
    return {
        "peak_host_memory_mb": round(memory.peak(), 1),
        "memory_phases": memory.table(),
        "memory_phases_exact": memory.per_phase,
    }


def performance(log: TrainingLog, batch_size: int, memory: MemoryPhases) -> dict[str, Any]:
    ips = log.images_per_second
    peak_device = None
    from runner import compat

    tf = compat.tensorflow()
    if tf.config.list_logical_devices("GPU"):
        peak_device = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    return {
        "images_per_second": round(ips, 1) if ips else None,
        "step_time_ms": round(1000 * batch_size / ips, 3) if ips else None,
        "peak_device_memory_mb": peak_device,
        "steps_per_execution": log.steps_per_execution[0] if log.steps_per_execution else None,
        "steps_per_execution_why": log.steps_per_execution[1] if log.steps_per_execution else None,
        **memory_figures(memory),
    }
