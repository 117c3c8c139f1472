"""runner/search.py: a [sweep]'s grid and its random search (distributions drawn with the spec's
seed), its options, and what is refused."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from runner import search
from runner.cli import app
from runner.spec import SpecError, load_plan

cli = CliRunner()

low = st.floats(1e-6, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lr_low=low,
    lr_span=st.floats(1.5, 1e4),
    width=st.tuples(st.integers(1, 64), st.integers(0, 64)),
    momentum=st.tuples(st.floats(0.0, 0.5), st.floats(0.01, 0.49)),
    samples=st.integers(1, 8),
)
def test_property_random_points_are_distinct_repeatable_and_inside_their_ranges(
    seed, lr_low, lr_span, width, momentum, samples
):
    lr_high, (w_low, w_extra), (m_low, m_extra) = lr_low * lr_span, width, momentum
    axes = {
        "training.learning_rate": {"log_uniform": [lr_low, lr_high]},
        "model.dense_units": {"int_uniform": [w_low, w_low + w_extra]},
        "training.optimizer.momentum": {"uniform": [m_low, m_low + m_extra]},
        "precision.policy": ["float32", "mixed_bfloat16"],
    }
    options = search.SweepOptions("random", samples)
    try:
        drawn = search.points(options, axes, seed, "s.toml")
    except search.SweepError as exc:  # only when the ranges hold fewer distinct points than asked
        assert w_extra == 0 and "distinct variants" in str(exc)
        return
    assert drawn == search.points(options, axes, seed, "s.toml")
    assert len(drawn) == samples and len({tuple(sorted(p.items())) for p in drawn}) == samples
    for point in drawn:
        assert lr_low <= point["training.learning_rate"] <= lr_high
        assert type(point["model.dense_units"]) is int
        assert w_low <= point["model.dense_units"] <= w_low + w_extra
        assert m_low <= point["training.optimizer.momentum"] <= m_low + m_extra
        assert point["precision.policy"] in ("float32", "mixed_bfloat16")


def test_log_uniform_spreads_over_the_decades_not_toward_the_top():
    """Half of the draws of [1e-4, 1e-2] fall below 1e-3 (a plain uniform would put 9 % there)."""
    draws = [p["lr"] for p in search.sample({"lr": {"log_uniform": [1e-4, 1e-2]}}, 400, 0, "s")]
    below = sum(d < 1e-3 for d in draws) / len(draws)
    assert 0.4 < below < 0.6 and all(1e-4 <= d <= 1e-2 for d in draws)
    assert math.isclose(sorted(draws)[0], min(draws))


SPEC = 'name = "r"\n[training]\noptimizer = {{ kind = "sgd" }}\n[sweep]\n{sweep}\n'


@pytest.mark.parametrize(
    "sweep, expected",
    [
        (
            'method = "random"\n"seed" = [1, 2]',
            'sweep.samples: expected a positive integer with method = "random"',
        ),
        ('samples = 3\n"seed" = [1, 2]', 'sweep.samples: expected only with method = "random"'),
        (
            'method = "bayes"\n"seed" = [1]',
            'sweep.method: expected "grid" or "random" or "tpe" or "cmaes"; got "bayes"',
        ),
        (
            '"training.learning_rate" = { log_uniform = [1e-4, 1e-2] }',
            'a distribution is sampled: expected sweep.method = "random"',
        ),
        (
            'method = "random"\nsamples = 2\n"training.learning_rate" = { log_uniform = [0, 1] }',
            "expected a positive low bound",
        ),
        (
            'method = "random"\nsamples = 2\n"training.learning_rate" = { uniform = [0.5, 0.1] }',
            "expected [low, high] with low < high; got [0.5, 0.1]",
        ),
        (
            'method = "random"\nsamples = 2\n"seed" = { int_uniform = [1.5, 3] }',
            "expected two integers [low, high]",
        ),
        (
            'method = "random"\nsamples = 3\n"seed" = { choice = [1, 2] }',
            "sweep.samples: expected 3 distinct variants; the sweep's values give only 2",
        ),
        ('objective = "f1"\n"seed" = [1, 2]', "sweep.objective: expected one of test_accuracy"),
        ('mode = "max"\n"seed" = [1, 2]', "sweep.mode: expected only with sweep.objective"),
        ('objective = "test_loss"\nmode = "up"\n"seed" = [1, 2]', 'sweep.mode: expected "max" or "min"'),
        ('method = "random"\nsamples = 1', "expected at least one field path to sweep"),
    ],
    ids=[
        "random-without-samples",
        "samples-on-a-grid",
        "unknown-method",
        "distribution-on-a-grid",
        "log-of-zero",
        "reversed-range",
        "fractional-int-range",
        "too-few-distinct",
        "unknown-objective",
        "mode-without-objective",
        "unknown-mode",
        "options-only",
    ],
)
def test_bad_sweeps_are_one_spec_error_naming_the_entry(tmp_path, sweep, expected):
    path = tmp_path / "s.toml"
    path.write_text(SPEC.format(sweep=sweep))
    with pytest.raises(SpecError) as caught:
        load_plan(path)
    assert f"{path}: sweep" in str(caught.value) and expected in str(caught.value)


def test_validate_prints_the_same_random_variants_twice_and_a_seed_changes_them(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        SPEC.format(
            sweep='method = "random"\nsamples = 5\nobjective = "val_loss"\n'
            '"training.learning_rate" = { log_uniform = [1e-4, 1e-2] }\n'
            '"training.optimizer.momentum" = [0.0, 0.9]'
        )
    )
    first, second = (cli.invoke(app, ["validate", str(path)]) for _ in range(2))
    assert first.exit_code == 0, first.output
    assert first.output == second.output and "5 experiment(s) planned (5 sweep variant(s))" in first.output
    variants = load_plan(path)
    assert [v.spec.name for v in variants][:2] == [
        f"r-01-{variants[0].settings['training.learning_rate']:.3g}-{variants[0].settings['training.optimizer.momentum']}",
        variants[1].spec.name,
    ]
    assert all(v.objective == ("val_loss", "min") for v in variants)
    reseeded = load_plan(path, ["seed=1"])
    assert [v.settings for v in reseeded] != [v.settings for v in variants]


def test_a_grid_is_every_combination_in_order():
    axes = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert search.points(search.SweepOptions(), axes, 0, "s") == [
        {"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")
    ]
