"""Parity over seeds: does a precision policy cost accuracy? One run per policy proves nothing (the
seed-to-seed spread is larger than most precision effects), so a sweep with `seeds = N` runs each
point N times, with the seeds seed, seed + 1, …, and the comparison gives:

- each point's test accuracy as mean ± a 95 % t interval over its seeds;
- with `[checks] max_accuracy_drop_vs = { baseline = "float32", drop = 0.005 }`, for each point
  whose policy is not the baseline's, the paired difference against the baseline point (the only
  one, or else the one with the same other settings), seed by seed (the same seed: the same initial
  weights and data order), as a 95 % t interval, and a verdict: **within** when the interval's lower
  bound is above -drop (the data rule out a larger drop: a non-inferiority test at 2.5 %),
  **fails** otherwise, and also when a run of the point did not complete (diverged, failed) where
  the baseline's of the same seed did. With fewer than two paired seeds there is no verdict, and the
  comparison says so.

Pure Python: comparison rows in, summaries out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from runner.reporting.report import ComparisonRow, ParityVerdict, PointSummary

# Student's t, two-sided 95 % (the 0.975 quantile), by degrees of freedom; past 30: 1.96 + 2.4/df,
# within 0.002 of the exact value.
T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip
SEED_FIELD = "seed"
POLICY_FIELD = "precision.policy"


def t_975(df: int) -> float:
    return T_975[df] if df in T_975 else 1.96 + 2.4 / df


def interval(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean and its 95 % t interval; None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _point_key(row: ComparisonRow) -> str:
    """A row's point: its differing settings without the seed."""
    return json.dumps({k: v for k, v in row.settings.items() if k != SEED_FIELD}, sort_keys=True)


def _accuracy(row: ComparisonRow) -> float | None:
    return row.test_accuracy if row.status == "completed" and row.test_accuracy is not None else None


def points(rows: list[ComparisonRow]) -> list[PointSummary]:
    """Each point's test accuracy over its seeds (points of one run each included: n = 1, no interval)."""
    groups: dict[str, list[ComparisonRow]] = {}
    for row in rows:
        groups.setdefault(_point_key(row), []).append(row)
    summaries = []
    for key, members in groups.items():
        values = [a for a in map(_accuracy, members) if a is not None]
        found = interval(values)
        mean = found[0] if found else (values[0] if values else None)
        summaries.append(
            PointSummary(
                settings=json.loads(key),
                policy=members[0].policy,
                runs=len(members),
                seeds=len(values),
                mean_test_accuracy=_round(mean),
                ci_low=_round(found[1]) if found else None,
                ci_high=_round(found[2]) if found else None,
            )
        )
    return summaries


def verdicts(rows: list[ComparisonRow], wanted: dict[str, Any] | None) -> list[ParityVerdict]:
    """Each non-baseline point against the baseline point of the same other settings (see the module)."""
    if not wanted:
        return []
    baseline, drop = str(wanted["baseline"]), float(wanted["drop"])
    groups: dict[str, list[ComparisonRow]] = {}
    for row in rows:
        groups.setdefault(_point_key(row), []).append(row)
    bases = [key for key, members in groups.items() if members[0].policy == baseline]
    found = []
    for key, members in groups.items():
        settings = json.loads(key)
        policy = members[0].policy
        if policy == baseline:
            continue
        base_members = _baseline_of(settings, baseline, groups, bases)
        found.append(_verdict(settings, policy, baseline, drop, members, base_members))
    return found


def _baseline_of(
    settings: dict[str, Any], baseline: str, groups: dict[str, list[ComparisonRow]], bases: list[str]
) -> list[ComparisonRow] | None:
    """The baseline point a point is held to: the only one, else the one with its other settings."""
    if len(bases) == 1:
        return groups[bases[0]]
    swapped = {**settings, **({POLICY_FIELD: baseline} if POLICY_FIELD in settings else {})}
    return groups.get(json.dumps(swapped, sort_keys=True)) if swapped != settings else None


def _verdict(
    settings: dict[str, Any],
    policy: str,
    baseline: str,
    drop: float,
    members: list[ComparisonRow],
    base_members: list[ComparisonRow] | None,
) -> ParityVerdict:
    label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in settings.items() if k != POLICY_FIELD)
    name = policy + (f" ({label})" if label else "")
    made: dict[str, Any] = {"point": settings, "policy": policy, "baseline": baseline, "drop": drop}
    if not base_members:
        return ParityVerdict(
            **made,
            pairs=0,
            verdict="none",
            statement=f"{name} vs {baseline}: no {baseline} run with the same other settings: no verdict",
        )
    base = {_seed(r): _accuracy(r) for r in base_members}
    deltas, lost = [], []
    for row in members:
        mine, theirs = _accuracy(row), base.get(_seed(row))
        if mine is not None and theirs is not None:
            deltas.append(mine - theirs)
        elif theirs is not None and row.status != "completed":  # the baseline learned, this one did not
            lost.append(f"seed {_seed(row)} {row.status}")
    if lost:
        statement = (
            f"{name} vs {baseline}: {len(lost)} of {len(members)} runs did not complete where {baseline}'s "
            f"did ({', '.join(lost)}): fails"
        )
        return ParityVerdict(**made, pairs=len(deltas), verdict="fail", statement=statement)
    found = interval(deltas)
    if found is None:
        statement = (
            f"{name} vs {baseline}: {len(deltas)} paired run(s) that completed; a verdict needs at least 2 "
            "seeds per point: set [sweep] seeds = 3 or more"
        )
        only = deltas[0] if deltas else None
        return ParityVerdict(
            **made, pairs=len(deltas), delta_mean=_round(only), verdict="none", statement=statement
        )
    mean, low, high = found
    within = low >= -drop
    statement = (
        f"{name} vs {baseline}: Δ test accuracy {mean:+.4f} [{low:+.4f}, {high:+.4f}] "
        f"over {len(deltas)} seeds: "
        + (f"within {drop:g}" if within else f"a drop larger than {drop:g} is not ruled out")
    )
    return ParityVerdict(
        **made,
        pairs=len(deltas),
        delta_mean=_round(mean),
        ci_low=_round(low),
        ci_high=_round(high),
        verdict="pass" if within else "fail",
        statement=statement,
    )


def _seed(row: ComparisonRow) -> Any:
    return row.settings.get(SEED_FIELD)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)
