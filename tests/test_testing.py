"""runner/testing: the assertions users put in their own tests, and the hypothesis strategies (which
runner's own property tests draw from too)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner import compat
from runner.precision import checks
from runner.precision import policy as precision
from runner.reporting.report import RunReport, parse_report
from runner.spec import ChecksSpec, Mlp, PrecisionSpec, spec_from_dict, spec_to_toml
from runner.testing import (
    assert_finite_first_step,
    assert_mixed_precision_invariants,
    policy_scope,
    resume_differences,
)
from runner.testing.strategies import POLICIES, policies, specs
from specs.bugs import factories as bugs
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SHAPE, CLASSES = (32, 32, 3), 10


def correct(input_shape, num_classes):
    """A user's model that keeps the rules: images in [0, 1], its softmax computing in float32."""
    layers = compat.keras().layers
    inputs = layers.Input(input_shape)
    x = layers.Dense(8, activation="tanh", name="hidden")(layers.Flatten()(inputs))
    outputs = layers.Activation("softmax", dtype="float32")(layers.Dense(num_classes, name="logits")(x))
    return compat.keras().Model(inputs, outputs)


def built(factory, policy="mixed_float16", compiled=True):
    with policy_scope(policy):
        model = factory(SHAPE, CLASSES)
        if compiled:
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def failure_of(assertion, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as caught:
        assertion(*args, **kwargs)
    return str(caught.value)


def test_the_invariants_hold_for_a_model_built_under_each_policy():
    for policy in POLICIES:
        assert_mixed_precision_invariants(built(correct, policy), policy=policy)


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (bugs.float16_model, "variable_dtype"),
        (bugs.float32_model, "compute_dtype"),
        (bugs.float16_softmax, "output_dtype"),
        (bugs.float32_in_the_middle, "compute_dtype"),  # a warning: fails a test too
    ],
)
def test_a_broken_model_fails_with_the_audits_own_finding(factory, name):
    model = built(factory)
    message = failure_of(assert_mixed_precision_invariants, model, "mixed_float16")
    audit = precision.audit_model(model, model.optimizer)
    spec_checks = checks.preflight_findings(audit, PrecisionSpec(), ChecksSpec(), 64)
    (finding,) = [f for f in spec_checks if f.name == name]  # what `runner check` says of it
    assert not finding.passed and f"{name}: {finding.detail}" in message
    assert message.startswith("mixed-precision invariants under mixed_float16: 1 of 4 checks failed")


def test_a_deliberate_float32_layer_is_declared_and_an_uncompiled_model_skips_the_optimizer():
    model = built(bugs.float32_in_the_middle, compiled=False)
    assert_mixed_precision_invariants(model, "mixed_float16", float32_layers=["dense"])
    assert "1 of 3 checks failed" in failure_of(assert_mixed_precision_invariants, model, "mixed_float16")


def test_the_first_step_is_finite_on_real_pixels_and_not_on_nan_ones():
    model = built(correct)
    pixels, labels = np.random.default_rng(0).random((4, *SHAPE), np.float32), np.arange(4)
    before = [v.numpy() for v in model.trainable_variables]
    assert_finite_first_step(model, (pixels, labels))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables, strict=True))
    message = failure_of(assert_finite_first_step, model, (np.full_like(pixels, np.nan), labels))
    assert (
        "expected a finite loss on the first batch; got nan" in message and "Fix: check the data" in message
    )
    uncompiled = built(correct, compiled=False)
    assert "expected a compiled model" in failure_of(assert_finite_first_step, uncompiled, (pixels, labels))
    assert compat.global_policy_name() == "float32"


def report(loss=0.5, seconds=1.0, sha="ab12") -> RunReport:
    epoch = {"epoch": 1, "loss": loss, "accuracy": 0.8, "loss_scale": 32768.0, "seconds": seconds}
    raw = {
        "name": "resumed",
        "status": "completed",
        "spec": {"name": "resumed"},
        "spec_hash": "0123abcd",
        "metrics": {"epochs": [epoch], "test_loss": 0.4, "test_accuracy": 0.9},
        "precision": {"policy": "mixed_float16", "loss_scale": {"overflow_steps": 2, "final": 32768.0}},
        "weights_sha256": sha,
    }
    return parse_report(raw, "test report")


def test_resume_differences_name_what_training_computed_differently_and_ignore_the_clock():
    # report.json's content or the model: both are read the same
    assert resume_differences(report(seconds=1.0).to_json(), report(seconds=9.0)) == []
    assert resume_differences(report(loss=0.5, sha="cd34"), report(loss=0.25)) == [
        "epoch 1 loss: 0.5 resumed, 0.25 uninterrupted",
        "final weights SHA-256: 'cd34' resumed, 'ab12' uninterrupted",
    ]
    shorter = report()
    shorter.metrics.epochs = []
    assert "epochs: 0 resumed, 1 uninterrupted" in resume_differences(shorter, report())


@given(specs())
def test_every_drawn_spec_is_small_valid_and_round_trips_through_toml(spec):
    assert spec_from_dict(tomllib.loads(spec_to_toml(spec))) == spec
    assert spec.training.epochs <= 2 and spec.data.train_size <= 8 * spec.data.batch_size


FACTORY = {"kind": "factory", "factory": "my_models.factories:small_cnn", "arguments": {"width": 8}}


@given(specs(model=FACTORY, data=st.just({"source": "shapes", "batch_size": 8}), policy="mixed_bfloat16"))
def test_drawn_specs_keep_the_tables_given(spec):
    assert spec.model.factory == "my_models.factories:small_cnn" and spec.model.arguments == {"width": 8}
    assert (spec.data.batch_size, spec.precision.policy) == (8, "mixed_bfloat16")


@given(
    specs(model=st.sampled_from([Mlp(hidden_units=[4]), {"kind": "resnet", "depth": 8}]), policy=policies())
)
def test_drawn_specs_take_spec_models_and_strategies(spec):
    assert spec.model.kind in {"mlp", "resnet"} and spec.precision.policy in POLICIES


def test_the_testing_modules_import_no_tensorflow():
    import subprocess

    code = (
        "import sys, runner.testing, runner.testing.strategies, runner.pytest_plugin; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_a_planned_stop_becomes_a_stop_request_at_its_step():
    """What assert_resume_is_exact stops a run with (the checkpoint callback asks at every boundary)."""
    from runner.training.telemetry import StopRequest

    planned = StopRequest(after_steps=6)
    assert [planned.due(steps) for steps in (4, 5)] == [False, False] and planned.signal is None
    assert planned.due(8) and planned.signal == "a stop planned after 6 steps"
    assert StopRequest(signal="SIGINT").due(0) and not StopRequest().due(10**9)
