"""A study's trial, seen from its own process (runner/studies.py started it with RUNNER_TRIAL set):
each epoch's value of the objective is reported to the trial, the study's pruner is asked whether
to go on, and a trial it prunes stops at that epoch's end through runner's own stop path (the
epoch's checkpoint is written first: status "pruned"). The process also stops, checkpointing, if
the driver that started it dies (a SIGKILL): `runner resume SWEEP_DIR` continues the trial.

The value reported is the validation split's metric of the objective (val_accuracy for
test_accuracy, val_loss for test_loss), or the training one where the data has no validation split;
the report says which (`trial.metric`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from runner import processes, search, tuning
from runner.spec import BadInput
from runner.training.callbacks import Observer
from runner.training.telemetry import StopRequest

VARIABLE = "RUNNER_TRIAL"
PARENT_POLL_S = 0.25  # how often a trial checks that its driver still runs


@dataclass
class TrialLink:
    """The trial this process runs, and what has been reported to it."""

    storage: str
    study: str
    trial_id: int
    number: int
    objective: str
    mode: str
    pruning: dict[str, Any]
    reported: dict[str, float] = field(default_factory=dict)
    metric: str | None = None
    pruned_at_epoch: int | None = None
    _trial: Any = None

    def record(self) -> dict[str, Any]:
        """report.json's `trial`."""
        return {
            "study": self.study,
            "number": self.number,
            "metric": self.metric,
            "pruner": self.pruning.get("kind", "none"),
            "reported": dict(self.reported),
            "pruned_at_epoch": self.pruned_at_epoch,
        }

    def trial(self) -> Any:
        """Optuna's trial, opened once (its storage, the study's pruner)."""
        if self._trial is None:
            optuna = tuning.load_optuna()
            study = optuna.load_study(
                study_name=self.study,
                storage=tuning.open_storage(self.storage),
                sampler=optuna.samplers.RandomSampler(),  # nothing is sampled here
                pruner=tuning.make_pruner(self.pruning),
            )
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def epoch_value(self, logs: dict[str, float]) -> tuple[str, float] | None:
        """The objective's value this epoch: the validation metric, else the training one."""
        base = search.PRUNABLE.get(self.objective)
        if base is None:
            return None
        for name in (f"val_{base}", base):
            value = logs.get(name)
            if value is not None:
                return name, float(value)
        return None

    def report(self, epoch: int, logs: dict[str, float]) -> bool:
        """Report epoch `epoch` (1-based)'s value; True when the pruner stops the trial here."""
        found = self.epoch_value(logs)
        if found is None:
            return False
        self.metric, value = found
        self.reported[str(epoch)] = value
        if value != value:  # NaN: the run's own divergence check ends it, not the pruner
            return False
        trial = self.trial()
        if len(trial.study.directions) > 1:  # Optuna keeps no per-epoch values (nor prunes) then
            return False
        trial.report(value, epoch)
        if self.pruning.get("kind", "none") != "none" and trial.should_prune():
            self.pruned_at_epoch = epoch
            return True
        return False


def from_environment() -> TrialLink | None:
    """The trial this process runs, from RUNNER_TRIAL; None when it is no trial."""
    text = os.environ.get(VARIABLE)
    if not text:
        return None
    try:
        given = json.loads(text)
        return TrialLink(
            storage=str(given["storage"]),
            study=str(given["study"]),
            trial_id=int(given["trial_id"]),
            number=int(given["number"]),
            objective=str(given["objective"]),
            mode=str(given["mode"]),
            pruning=dict(given.get("pruning") or {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(
            f"{VARIABLE}: expected the JSON a study's driver sets (storage, study, trial_id, number, "
            f"objective, mode); got {text[:120]!r} ({type(exc).__name__}: {exc})"
        ) from None


class TrialReports(Observer):
    """After each epoch's checkpoint: report to the trial, and stop where the pruner says."""

    def __init__(self, link: TrialLink):
        self.link = link

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.link.report(epoch + 1, logs):
            self.model.stop_training = True


@contextlib.contextmanager
def stop_with_parent(link: TrialLink | None, stop: StopRequest) -> Iterator[None]:
    """While training: should the driver that started this trial die, ask training to stop (it
    checkpoints and exits 130), so the trial is left resumable, not training unwatched."""
    if link is None:
        yield
        return
    # A warm trial's parent is the fork server, which ends with the driver (runner/processes.py)
    parent, done = os.getppid(), threading.Event()
    driver = os.environ.get(processes.DRIVER_VARIABLE, str(parent))

    def watch() -> None:
        while not done.wait(PARENT_POLL_S):
            if os.getppid() != parent:
                stop.signal = stop.signal or f"the end of the study's driver (PID {driver})"
                return

    thread = threading.Thread(target=watch, name="runner-trial-parent", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
