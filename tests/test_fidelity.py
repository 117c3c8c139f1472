"""What float16 does to the numbers (runner/precision/fidelity.py and its checks): gradient fidelity against a
float32 copy, activation headroom, the underflow hint's loss scale, the compiled probe, and the
loss-scale health check over a run's history."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import example, given, settings
from rich.console import Console

from runner import compat
from runner.models import build_model
from runner.precision import checks, fidelity
from runner.precision import policy as precision
from runner.preflight.check import check_experiment
from runner.reporting.views import render_check
from runner.spec import ChecksSpec, Factory, PrecisionSpec, SeedCnn, TrainingSpec, spec_from_dict
from runner.testing.strategies import small_models  # random small models of every built-in kind
from runner.training.loop import compile_model, make_optimizer

tf = compat.tensorflow()
SHAPE = (8, 8, 3)


def _model(model_spec, policy: str, initial_scale: float = 32768.0):
    p = PrecisionSpec(policy=policy, initial_scale=initial_scale)
    with precision.policy_scope(policy):
        model = build_model(model_spec, SHAPE, 4, "float32")
        optimizer = precision.wrap_optimizer(make_optimizer(TrainingSpec()), p)
        compile_model(model, optimizer, TrainingSpec())
    return model


def _batch(n: int = 8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), rng.integers(0, 4, (n,), dtype=np.int32)


def _numerics(model_spec, policy: str, initial_scale: float = 32768.0):
    model, reference = _model(model_spec, policy, initial_scale), _model(model_spec, "float32")
    return fidelity.numerics_probe(model, reference, *_batch())


@settings(max_examples=6, deadline=None)
@given(small_models())
@example(SeedCnn(filters=[3], dense_units=4, batch_norm=True, dropout=0.5))
def test_property_float32_against_float32_is_exact(model_spec):
    """The comparison machinery itself: the same model in float32 twice agrees exactly, dropout
    (switched off for the comparison) included."""
    if isinstance(model_spec, dict):  # a drawn [model] table
        model_spec = spec_from_dict({"name": "drawn", "model": model_spec}).model
    found = _numerics(model_spec, "float32")
    assert found["layers"] and found["overall"]["relative_error"] == 0.0
    for row in found["layers"]:
        assert row["relative_error"] == 0.0 and row["cosine"] == pytest.approx(1.0, abs=1e-12), row
        assert row["underflow"] == 0.0
    assert found["activations"] == []  # no layer computes below float32


def test_the_probe_leaves_the_model_and_keras_state_as_they_were():
    spec = SeedCnn(filters=[4, 4], dense_units=4, batch_norm=True, dropout=0.5)
    model, reference = _model(spec, "mixed_float16"), _model(spec, "float32")
    before = [v.numpy().copy() for v in model.variables]
    policy, x = compat.global_policy_name(), _batch()[0]
    output = model(x, training=False).numpy()
    found = fidelity.numerics_probe(model, reference, *_batch())
    assert found["activations"] and found["loss_scale"] == 32768.0
    assert all((v.numpy() == b).all() for v, b in zip(model.variables, before, strict=True))
    assert compat.global_policy_name() == policy
    assert all("call" not in vars(layer) for _, layer in fidelity.leaf_layers(model))  # hooks removed
    assert model.get_layer("dropout").rate == 0.5
    assert (model(x, training=False).numpy() == output).all()


def test_building_the_float32_reference_leaves_the_random_state_as_it_was():
    import random

    draw = getattr(compat.keras(), "random", None)  # Keras 3's unseeded ops (Keras 2 has none)
    if draw is not None:
        draw.uniform((1,))  # the global seed generator exists
    py_state, np_state, (_, seed_state) = random.getstate(), np.random.get_state(), compat.global_seed_state()
    with precision.random_state_kept():
        _model(SeedCnn(filters=[2], dense_units=2, dropout=0.5), "float32")
        if draw is not None:
            draw.uniform((1,))
    assert random.getstate() == py_state and (np.random.get_state()[1] == np_state[1]).all()
    assert np.array_equal(compat.global_seed_state()[1], seed_state)


def test_a_layer_that_scales_activations_by_1e4_has_no_headroom_in_float16():
    found = _numerics(Factory(factory="tests.factories:amplified", output="logits"), "mixed_float16")
    finding = checks.check_activation_headroom(found["activations"])
    assert not finding.passed and finding.severity == "warning"
    assert finding.detail.count("amplify (Rescaling)") == 1 and "hidden" not in finding.detail
    clean = _numerics(Factory(factory="tests.factories:amplified", output="logits"), "mixed_bfloat16")
    assert checks.check_activation_headroom(clean["activations"]).passed


def _spec(model: dict, **sections):
    data = {"source": "shapes", "batch_size": 32, "train_size": 64, "test_size": 32}
    return spec_from_dict({"name": "numerics", "seed": 1, "model": model, "data": data, **sections})


TINY = {"kind": "factory", "factory": "tests.factories:tiny_gradients", "output": "logits"}


def test_underflow_at_loss_scale_1_gets_a_computed_scale_that_removes_it():
    outcome = check_experiment(_spec(TINY, precision={"initial_scale": 1}), timing_steps=0)
    (hint,) = [f for f in outcome.findings if f.name == "gradient_underflow"]
    assert not hint.passed and hint.severity == "hint" and "hidden" in hint.detail
    suggested = outcome.audit["numerics"]["suggested_loss_scale"]
    assert suggested > 1 and f"precision.initial_scale = {suggested:g} (now 1)" in hint.detail
    again = check_experiment(_spec(TINY, precision={"initial_scale": suggested}), timing_steps=0)
    (hint,) = [f for f in again.findings if f.name == "gradient_underflow"]
    assert hint.passed, hint
    assert not again.audit["numerics"]["scaled_overflow"]


def test_jit_compile_probes_compiled_and_check_shows_the_numerics():
    spec = _spec({"kind": "mlp", "hidden_units": [8]}, training={"jit_compile": True})
    outcome = check_experiment(spec, timing_steps=0)
    assert outcome.audit["numerics"]["probe_compiled"] == "xla"
    assert [f.name for f in checks.blocking(outcome.findings)] == []
    console = Console(width=100, file=io.StringIO(), color_system=None)
    console.print(render_check(outcome.audit, outcome.findings, None))
    text = console.file.getvalue()
    assert "first step probed xla" in text and "gradient_fidelity" in text
    assert "against a float32 copy" in text


# ---------------------------------------------------------------- pure functions


def _rows(*differences):
    return [
        {
            "layer": f"l{i}",
            "finite": True,
            "difference": d,
            "cosine": 0.9,
            "relative_error": d,
            "underflow": 0.0,
        }
        for i, d in enumerate(differences)
    ]


@pytest.mark.parametrize(
    ("cosine", "error", "declared", "passed"),
    [
        (0.999, 0.05, ChecksSpec(), True),
        (0.999, 0.05, ChecksSpec(min_gradient_cosine=0.9999), False),
        (0.999, 0.05, ChecksSpec(max_gradient_error=0.01), False),
        (0.4, 0.05, ChecksSpec(), False),
        (-0.5, 0.05, ChecksSpec(), False),
        (0.999, 1.5, ChecksSpec(), False),
        (0.4, 1.5, ChecksSpec(min_gradient_cosine=0.3, max_gradient_error=2), True),
    ],
    ids=["within", "cosine-setting", "error-setting", "low-cosine", "negative", "large-error", "loosened"],
)
def test_gradient_fidelity_thresholds_come_from_checks(cosine, error, declared, passed):
    numerics = {
        "overall": {"finite": True, "cosine": cosine, "relative_error": error},
        "layers": _rows(0.1, 0.3),
        "loss_scale": None,
    }
    finding = checks.check_gradient_fidelity(numerics, declared, "mixed_float16")
    assert finding.passed is passed and finding.severity == "warning"
    if not passed:
        assert finding.detail.index("l1 (90% of the difference") < finding.detail.index("l0 (10%")


@pytest.mark.parametrize(
    ("magnitudes", "expected"),
    [
        ([1e-9, 1e-3], 2.0**16),  # lifts 1e-9 above 2**-14 (needs 2**16); 1e-3 * 2**16 = 65.5 fits
        ([1e-12, 1e-2], 2.0**22),  # would need 2**26; 1e-2 * 2**22 = 41943 is the last that fits
        ([1e-3, 1.0], 1.0),  # already above the smallest normal: no scaling needed
        ([0.0], None),
    ],
    ids=["lift", "capped-by-overflow", "none-needed", "all-zero"],
)
def test_suggested_loss_scale(magnitudes, expected):
    assert fidelity.suggested_loss_scale([np.array(magnitudes)]) == expected


@pytest.mark.parametrize(
    ("history", "steps", "longest"),
    [
        ([[0, 32768.0], [3, 1.0]], 10, 7),  # at 1 for the last 7 steps
        ([[0, 1.0], [2, 2.0], [5, 1.0], [6, 0.5]], 9, 4),  # Keras 3 goes below 1: one run of 4
        ([[0, 32768.0], [5, 16384.0]], 10, 0),
    ],
    ids=["keras2-floor", "keras3-below", "never"],
)
def test_longest_run_at_or_below_1(history, steps, longest):
    assert checks.longest_run_at_or_below(history, steps) == longest


def test_max_steps_at_min_scale_warns_on_a_scale_stuck_at_1():
    stuck = {"history": [[0, 32768.0], [15, 1.0]], "steps": 40, "final": 1.0}
    finding = checks.check_steps_at_min_scale(stuck, 20)
    assert not finding.passed and finding.severity == "warning" and "for 25" in finding.detail
    assert checks.check_steps_at_min_scale(stuck, 25).passed


def test_skipped_steps_per_growth_interval():
    history = [[0, 8.0], [1, 4.0], [2, 2.0], [7, 4.0], [11, 2.0]]
    assert checks.skipped_per_interval(history, 12, 5) == [0.4, 0.0, 0.5]


@pytest.mark.slow  # trains an epoch
def test_a_run_whose_scale_sits_at_1_gets_the_max_steps_at_min_scale_warning(tmp_path):
    from runner.session import run_experiment

    spec = _spec(
        {"kind": "mlp", "hidden_units": [8]},
        precision={"initial_scale": 1, "growth_interval": 1000},
        training={"epochs": 1, "steps_per_execution": 1},
        checks={"max_steps_at_min_scale": 1},
        runtime={"tensorboard": False},
    )
    outcome = run_experiment(spec, tmp_path)
    (finding,) = [c for c in outcome.report["checks"] if c["name"] == "max_steps_at_min_scale"]
    assert not finding["passed"] and finding["severity"] == "warning", finding
    assert outcome.report["precision"]["loss_scale"]["skipped_per_interval"] == [0.0]
