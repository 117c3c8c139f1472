"""runner/reporting/parity.py and `[sweep] seeds`: each point over several seeds, its mean and 95 %
interval, and the verdict of `[checks] max_accuracy_drop_vs` on the paired differences. The numbers
are checked against Student's t computed here from its definition (no scipy), and the slow test runs
a sweep over seeds on shapes where one variant is made worse on purpose."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from runner import search
from runner.cli import app
from runner.reporting import parity
from runner.reporting.report import ComparisonRow
from runner.spec import SpecError, load_plan
from tests.conftest import TINY_SPEC
from tests.test_resume import runner

cli = CliRunner()


def t_cdf(x: float, df: int, steps: int = 20_000) -> float:
    """Student's t distribution function by integrating its density (Simpson's rule from 0)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    h = x / steps
    total = 0.0
    for i in range(steps + 1):
        weight = 1 if i in (0, steps) else (4 if i % 2 else 2)
        total += weight * c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2)
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 19, 30, 31, 45, 60, 120])
def test_the_t_quantile_is_students_975th(df):
    assert t_cdf(parity.t_975(df), df) == pytest.approx(0.975, abs=2e-4)


def test_the_interval_of_known_values():
    mean, low, high = parity.interval([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    half = 4.303 * 0.02 / math.sqrt(3)  # sd 0.02, t(2) = 4.303
    assert (low, high) == (pytest.approx(0.92 - half), pytest.approx(0.92 + half))
    assert parity.interval([0.9]) is None


def row(policy: str, seed: int | None, accuracy: float | None, status="completed", **other) -> ComparisonRow:
    settings = {"precision.policy": policy, **({"seed": seed} if seed is not None else {}), **other}
    return ComparisonRow(
        label=f"{policy}-{seed}",
        name="n",
        settings=settings,
        policy=policy,
        status=status,
        test_accuracy=accuracy,
        checks_passed=1,
        checks_total=1,
    )


WANTED = {"baseline": "float32", "drop": 0.005}


def test_a_policy_within_the_drop_passes_with_its_paired_interval():
    """Paired by seed: the seeds' spread (0.90 to 0.94) cancels; the differences are -0.001..+0.001."""
    rows = [
        *(row("float32", s, a) for s, a in ((1, 0.90), (2, 0.92), (3, 0.94))),
        *(row("mixed_bfloat16", s, a) for s, a in ((1, 0.899), (2, 0.921), (3, 0.940))),
    ]
    (verdict,) = parity.verdicts(rows, WANTED)
    assert verdict.verdict == "pass" and verdict.pairs == 3
    assert verdict.delta_mean == pytest.approx(0.0, abs=1e-9)
    assert -0.005 < verdict.ci_low < 0 < verdict.ci_high
    assert verdict.statement.startswith("mixed_bfloat16 vs float32: Δ test accuracy +0.0000 [")
    assert verdict.statement.endswith("over 3 seeds: within 0.005")


def test_unpaired_the_same_runs_would_not_be_told_apart_from_a_drop():
    """The seeds' spread is what pairing removes: the means' interval alone is far wider than 0.005."""
    points = parity.points([row("float32", s, a) for s, a in ((1, 0.90), (2, 0.92), (3, 0.94))])
    (point,) = points
    assert point.ci_high - point.ci_low > 0.09


def test_a_drop_the_interval_cannot_rule_out_fails_and_a_clear_drop_fails():
    noisy = [
        *(row("float32", s, 0.92) for s in (1, 2, 3)),
        *(row("mixed_float16", s, a) for s, a in ((1, 0.925), (2, 0.915), (3, 0.92))),
    ]
    (verdict,) = parity.verdicts(noisy, WANTED)
    assert verdict.verdict == "fail" and verdict.ci_low < -0.005 < verdict.delta_mean
    assert "a drop larger than 0.005 is not ruled out" in verdict.statement
    worse = [
        *(row("float32", s, 0.92) for s in (1, 2, 3)),
        *(row("mixed_float16", s, 0.80) for s in (1, 2, 3)),
    ]
    assert parity.verdicts(worse, WANTED)[0].verdict == "fail"


def test_one_run_per_point_gives_no_verdict_and_says_how_to_get_one():
    (verdict,) = parity.verdicts([row("float32", None, 0.92), row("mixed_bfloat16", None, 0.91)], WANTED)
    assert verdict.verdict == "none" and verdict.pairs == 1 and verdict.delta_mean == pytest.approx(-0.01)
    assert "a verdict needs at least 2 seeds per point: set [sweep] seeds = 3 or more" in verdict.statement


def test_points_are_paired_with_the_baseline_of_the_same_other_settings_and_seed():
    rows = [
        row("float32", 1, 0.90, **{"training.learning_rate": 0.01}),
        row("float32", 2, 0.80, **{"training.learning_rate": 0.01}),
        row("float32", 1, 0.50, **{"training.learning_rate": 0.1}),
        row("float32", 2, 0.40, **{"training.learning_rate": 0.1}),
        row("mixed_bfloat16", 2, 0.80, **{"training.learning_rate": 0.01}),
        row("mixed_bfloat16", 1, 0.90, **{"training.learning_rate": 0.01}),
        row("mixed_bfloat16", 1, 0.30, **{"training.learning_rate": 0.1}),
        row("mixed_bfloat16", 2, 0.20, **{"training.learning_rate": 0.1}),
    ]
    low_lr, high_lr = parity.verdicts(rows, WANTED)
    assert (low_lr.point["training.learning_rate"], low_lr.delta_mean) == (0.01, 0.0)
    assert (high_lr.point["training.learning_rate"], high_lr.delta_mean) == (0.1, pytest.approx(-0.2))
    assert "(learning_rate=0.1)" in high_lr.statement


def test_a_run_that_diverged_where_the_baseline_learned_fails_and_no_baseline_is_no_verdict():
    rows = [
        *(row("float32", s, 0.9) for s in (1, 2, 3)),
        row("mixed_float16", 1, 0.9),
        row("mixed_float16", 2, None, status="diverged"),
        row("mixed_float16", 3, 0.9),
    ]
    (verdict,) = parity.verdicts(rows, WANTED)
    assert verdict.verdict == "fail" and verdict.pairs == 2
    assert "1 of 3 runs did not complete where float32's did (seed 2 diverged): fails" in verdict.statement
    (alone,) = parity.verdicts([row("mixed_bfloat16", s, 0.9) for s in (1, 2)], WANTED)
    assert alone.verdict == "none" and "no float32 run with the same other settings" in alone.statement


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(st.floats(0.5, 0.99), min_size=2, max_size=8),
    shift=st.floats(-0.2, 0.2),
    drop=st.floats(0.001, 0.1),
)
def test_property_a_constant_shift_is_an_exact_interval_and_its_verdict_follows_the_drop(base, shift, drop):
    """Every seed moved by the same amount: the paired differences have no spread, so the interval
    is that shift exactly, and the verdict is whether it is above -drop."""
    rows = [row("float32", i, a) for i, a in enumerate(base)] + [
        row("mixed_float16", i, a + shift) for i, a in enumerate(base)
    ]
    (verdict,) = parity.verdicts(rows, {"baseline": "float32", "drop": drop})
    assert verdict.ci_low == pytest.approx(shift, abs=1e-5) == verdict.ci_high
    if abs(shift + drop) > 1e-4:
        assert verdict.verdict == ("pass" if shift > -drop else "fail")


# ---------------------------------------------------------------- [sweep] seeds


def write_seeded(tmp_path, sweep: str, checks: str = "") -> object:
    path = tmp_path / "seeds.toml"
    base = TINY_SPEC.replace('name = "tiny"', 'name = "par"').replace("seed = 7", "seed = 40")
    path.write_text(
        base + "[runtime]\ntensorboard = false\n[export]\nformats = []\n" + checks + "[sweep]\n" + sweep
    )
    return path


def test_seeds_repeat_each_point_with_the_specs_seed_and_the_next_ones(tmp_path):
    path = write_seeded(tmp_path, 'seeds = 3\n"precision.policy" = ["float32", "mixed_bfloat16"]\n')
    variants = load_plan(path)
    assert [(v.spec.precision.policy, v.spec.seed) for v in variants] == [
        ("float32", 40),
        ("float32", 41),
        ("float32", 42),
        ("mixed_bfloat16", 40),
        ("mixed_bfloat16", 41),
        ("mixed_bfloat16", 42),
    ]
    assert len({v.spec.name for v in variants}) == 6


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ('seeds = 0\n"precision.policy" = ["float32"]\n', "sweep.seeds: expected an integer 1..100"),
        ('seeds = 2\n"seed" = [1, 2]\n', 'expected no "seed" axis beside it'),
        ('seeds = 2\ntrials = 3\nmethod = "random"\n"seed" = [1, 2]\n', "expected no seeds in a study"),
    ],
)
def test_bad_seeds_are_one_message(tmp_path, sweep, expected):
    with pytest.raises(SpecError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        load_plan(write_seeded(tmp_path, sweep))
    assert search.MAX_SEEDS == 100


def test_a_bad_parity_check_is_refused_by_name(tmp_path):
    path = write_seeded(
        tmp_path,
        'seeds = 2\n"precision.policy" = ["float32"]\n',
        '[checks]\nmax_accuracy_drop_vs = { baseline = "float64", drop = 0.01 }\n',
    )
    result = cli.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "checks.max_accuracy_drop_vs.baseline" in result.output


PARITY_SPEC = """
name = "{name}"
seed = 40
[precision]
policy = "float32"
[model]
kind = "mlp"
hidden_units = [32]
[data]
source = "npz"
path = "{data}"
batch_size = 32
[training]
epochs = 2
learning_rate = 0.003
[runtime]
tensorboard = false
[export]
formats = []
[checks]
max_accuracy_drop_vs = {{ baseline = "float32", drop = 0.05 }}
[sweep]
seeds = 3
{axis}
"""


def quadrants(path: Path) -> Path:
    """4 classes of 8×8 images, each a slightly brighter quadrant in noise: an MLP learns it in two
    epochs whatever its seed (0.82 here), not perfectly (a parity test needs a model that learns,
    neither at chance nor at 1.0, where every variant would look alike)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 1200)
    images = rng.uniform(0, 1.0, (1200, 8, 8))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] += 0.25
    images = np.clip(images, 0, 1)
    np.savez(path, x_train=images[:1000], y_train=labels[:1000], x_test=images[1000:], y_test=labels[1000:])
    return path


@pytest.mark.slow
def test_parity_over_three_seeds_gives_a_verdict_and_a_variant_made_worse_fails_it_with_exit_1(tmp_path):
    """The issue's acceptance (the quickstart's figures: docs/sweeps-and-reports.md): float32 and
    mixed_bfloat16 over seeds 40, 41, 42, and a mixed_bfloat16 variant made worse on purpose (a
    learning rate 300× too high) in a second spec file of the same run: one comparison, its one
    float32 point the baseline. The fair policy is within the drop, with its interval; the worse one
    fails it, and the run exits 1."""
    data = quadrants(tmp_path / "quadrants.npz")
    fair, worse = tmp_path / "fair.toml", tmp_path / "worse.toml"
    axis = '"precision.policy" = ["float32", "mixed_bfloat16"]'
    fair.write_text(PARITY_SPEC.format(name="fair", data=data, axis=axis))
    worse.write_text(
        PARITY_SPEC.format(name="worse", data=data, axis='"training.learning_rate" = [1.0]').replace(
            'policy = "float32"', 'policy = "mixed_bfloat16"'
        )
    )
    result = runner("run", fair, worse, "--output", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    (group,) = (tmp_path / "out").iterdir()
    comparison = json.loads((group / "comparison.json").read_text())
    assert len(comparison["rows"]) == 9 and len(comparison["points"]) == 3
    for point in comparison["points"]:
        assert point["seeds"] == 3 and point["ci_low"] <= point["mean_test_accuracy"] <= point["ci_high"]
    by_rate = {v["point"].get("training.learning_rate"): v for v in comparison["parity"]}
    fair_verdict, worse_verdict = by_rate[0.003], by_rate[1.0]
    assert fair_verdict["pairs"] == worse_verdict["pairs"] == 3
    assert fair_verdict["verdict"] == "pass", fair_verdict
    assert fair_verdict["ci_low"] <= fair_verdict["delta_mean"] <= fair_verdict["ci_high"]
    assert worse_verdict["verdict"] == "fail" and worse_verdict["delta_mean"] < -0.05, worse_verdict
    shown = " ".join(result.stdout.split())
    assert fair_verdict["statement"] in shown and worse_verdict["statement"] in shown
    assert "Parity" in (group / "comparison.md").read_text()
    assert "Over seeds" in (group / "comparison.html").read_text()
