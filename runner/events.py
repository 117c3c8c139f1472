"""Plain events the core emits while it works: a terminal, a notebook, a cluster job's log or a test
each turn them into what they show. No rich, no TensorFlow: an event is data.

An `EventSink` is any callable taking one event; `ignore` is the silent one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path
    name: str


@dataclass(frozen=True)
class EpochStarted:
    epoch: int  # 1-based
    epochs: int
    steps: int  # steps in this epoch
    completed: int  # steps already done (a resume in mid-epoch)


@dataclass(frozen=True)
class StepsDone:
    """Progress within an epoch, at most a few times a second."""

    epoch: int
    completed: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # loss, accuracy: running means
    images_per_second: float | None = None


@dataclass(frozen=True)
class EpochEnded:
    epoch: int
    record: dict[str, Any]  # metrics.jsonl's line: loss, accuracy, val_*, seconds, images/s, loss scale


@dataclass(frozen=True)
class Note:
    """Something the user should read (a skipped checkpoint, a report not written)."""

    message: str
    level: str = "note"  # note | warning


@dataclass(frozen=True)
class VariantStarted:
    """A sweep's next experiment, about to run in its own process."""

    name: str
    settings: dict[str, Any]
    index: int  # 1-based
    count: int


@dataclass(frozen=True)
class RunFinished:
    run_dir: Path
    status: str
    exit_code: int


Event = Union[RunStarted, EpochStarted, StepsDone, EpochEnded, Note, VariantStarted, RunFinished]  # noqa: UP007
EventSink = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The sink of a caller that wants no events."""
