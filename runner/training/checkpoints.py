"""Checkpoints: every variable a run needs to continue exactly, and where it stood.

A checkpoint is `checkpoints/step-NNNNNNNN.npz` (the values of the model's variables, random-seed
states included; the optimizer's, a LossScaleOptimizer's scale and counter included; the metrics')
plus `step-NNNNNNNN.json` (the position and the telemetry so far), each written atomically, then
`latest.json` pointing at them. A process killed at any moment leaves either the previous complete
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import compat
from runner.runs import atomic_file, write_json_atomic

KEEP = 2  # the newest checkpoints kept (plus the one a divergence pins)
GROUPS = ("model", "optimizer", "metrics")


@dataclass(frozen=True)
class Position:
    """Where training stands: `epoch` (0-based) in progress, `step` steps of it done, `global_step` in all."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0


class CheckpointError(Exception):
    """A checkpoint that does not fit the model being restored (a changed spec or code)."""


def _variables(model: Any) -> dict[str, list[Any]]:
    return {
        "model": compat.model_variables(model),
        "optimizer": compat.optimizer_variables(model.optimizer),
        "metrics": compat.metrics_variables(model),
    }


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def save(run_dir: Path, model: Any, position: Position, state: dict[str, Any], write: bool = True) -> str:
    """Write a checkpoint of `model` (and its optimizer and metrics) at `position`; returns its name.

    Reading the values is a collective on several workers (metrics are summed over them): every
    worker calls this, only the chief with `write`."""
    name = f"step-{position.global_step:08d}"
    groups = _variables(model)
    arrays = {f"{g}/{i}": np.asarray(v.numpy()) for g, vs in groups.items() for i, v in enumerate(vs)}
    if not write:
        return name
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    with atomic_file(folder / f"{name}.npz", "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs too narrowly
    meta = {
        "position": asdict(position),
        "variables": {g: [compat.variable_path(v) for v in vs] for g, vs in groups.items()},
        "state": state,
    }
    write_json_atomic(folder / f"{name}.json", meta)
    write_json_atomic(folder / "latest.json", {"name": name, **meta["position"]})
    _prune(folder, keep={name, *_pinned(folder), *_best(folder)})
    return name


def mark_best(run_dir: Path, name: str) -> None:
    """`best.json` points at checkpoint `name` (the best epoch early stopping has seen so far); it is
    kept whatever comes after, until a better one replaces it."""
    folder = run_dir / "checkpoints"
    meta = json.loads((folder / f"{name}.json").read_text())
    write_json_atomic(folder / "best.json", {"name": name, **meta["position"]})


def _best(folder: Path) -> set[str]:
    try:
        return {json.loads((folder / "best.json").read_text())["name"]}
    except (OSError, ValueError, KeyError):
        return set()


def _complete(folder: Path) -> list[str]:
    """Names with both files present, oldest first."""
    names = sorted(p.stem for p in folder.glob("step-*.json"))
    return [n for n in names if (folder / f"{n}.npz").exists()]


def _pinned(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / "pinned.json").read_text())["names"])
    except (OSError, ValueError, KeyError):
        return set()


def pin(run_dir: Path, name: str) -> None:
    """Keep `name` whatever comes after (the last checkpoint before a divergence)."""
    folder = run_dir / "checkpoints"
    write_json_atomic(folder / "pinned.json", {"names": sorted(_pinned(folder) | {name})})


def _prune(folder: Path, keep: set[str]) -> None:
    names = _complete(folder)
    for name in names[:-KEEP]:
        if name not in keep:
            for suffix in (".npz", ".json"):
                with contextlib.suppress(OSError):
                    (folder / f"{name}{suffix}").unlink()


def _candidates(folder: Path) -> list[str]:
    """Complete checkpoints, newest last (latest.json's, if intact, counts as the newest)."""
    candidates = _complete(folder)
    with contextlib.suppress(OSError, ValueError, KeyError):
        pointed = json.loads((folder / "latest.json").read_text())["name"]
        if pointed in candidates:
            candidates.append(pointed)
    return candidates


def latest(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """The newest complete checkpoint (latest.json if it is intact, else the newest pair on disk)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return None
    for name in reversed(_candidates(folder)):
        try:
            meta = json.loads((folder / f"{name}.json").read_text())
            return name, meta
        except (OSError, ValueError):
            continue
    return None


def best(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint `checkpoints/best.json` points at (early stopping's best epoch; the same
    {"name", "epoch", "step", "global_step"} as latest.json), None without one. A pointer whose
    checkpoint is gone or unreadable is a CheckpointError naming it."""
    folder = run_dir / "checkpoints"
    pointer = folder / "best.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["name"]
        meta = json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{pointer}: expected a pointer to a checkpoint; {type(exc).__name__}: {exc}"
        ) from None
    reason = _unreadable(folder / f"{name}.npz")
    if reason is not None:
        raise CheckpointError(f"{folder / name}.npz: unreadable ({reason})")
    return name, meta


def _unreadable(path: Path) -> str | None:
    """Why the arrays at `path` cannot be read back (every array, so each one's CRC is checked)."""
    try:
        with np.load(path) as arrays:
            for key in arrays.files:
                arrays[key]
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file fails in many ways
        return f"{type(exc).__name__}: {exc}"
    return None


def latest_restorable(run_dir: Path) -> tuple[tuple[str, dict[str, Any]] | None, list[str]]:
    """The newest checkpoint whose files both read back whole, and why each newer one was skipped
    (a disk error or a truncation must not end a resume that an older checkpoint can serve)."""
    folder = run_dir / "checkpoints"
    skipped: list[str] = []
    if not folder.is_dir():
        return None, skipped
    for name in dict.fromkeys(reversed(_candidates(folder))):
        try:
            meta = json.loads((folder / f"{name}.json").read_text())
        except (OSError, ValueError) as exc:
            skipped.append(f"{name}: {name}.json unreadable ({type(exc).__name__}: {exc})")
            continue
        reason = _unreadable(folder / f"{name}.npz")
        if reason is None:
            return (name, meta), skipped
        skipped.append(f"{name}: {name}.npz unreadable ({reason})")
    return None, skipped


def restore(
    run_dir: Path,
    name: str,
    meta: dict[str, Any],
    model: Any,
    groups: tuple[str, ...] = GROUPS,
) -> None:
    """Assign a checkpoint's values to `model`'s variables, after checking they are the same ones.
    Every worker of a cluster calls this (the metrics' totals are sums over the replicas)."""
    compat.build_optimizer(model.optimizer, compat.variables_to_train(model))
    with np.load(run_dir / "checkpoints" / f"{name}.npz") as arrays:
        for group in groups:
            variables = _variables(model)[group]
            saved = meta["variables"][group]
            # Names only: a path's scopes depend on where the variable was built (in fit, or here).
            if [_name(p) for p in map(compat.variable_path, variables)] != [_name(p) for p in saved]:
                raise CheckpointError(
                    f"{name}: its {group} variables ({len(saved)}) are not this model's ({len(variables)}): "
                    f"was the spec, the code or the Keras (now {compat.keras_version()}) changed since?"
                )
            values = [arrays[f"{group}/{i}"] for i in range(len(variables))]
            for i, (variable, value) in enumerate(zip(variables, values, strict=True)):
                if tuple(value.shape) != tuple(variable.shape):
                    raise CheckpointError(
                        f"{name}: {saved[i]} has shape {value.shape}; this model's {variable.shape}"
                    )
            if group == "metrics":
                compat.assign_summed(variables, values)
            else:
                for variable, value in zip(variables, values, strict=True):
                    variable.assign(value)
