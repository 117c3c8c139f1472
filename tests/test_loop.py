"""Loss-scale dynamics through the real LossScaleOptimizer, and the telemetry that records them
(property group 2 of the issue)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import compat
from runner.precision import policy as precision
from runner.spec import PrecisionSpec, TrainingSpec
from runner.training.loop import (
    AUTO_EXECUTION_S,
    AUTO_MAX_STEPS,
    ExecutionPlan,
    compile_model,
    make_optimizer,
)
from runner.training.telemetry import LossScaleTracker

tf = compat.tensorflow()


def reference_scales(finite_steps: list[bool], initial: float, growth: int) -> list[float]:
    """The rule, written independently: halve on a non-finite step (Keras 2 not below 1), double after
    `growth` finite ones."""
    floor = compat.loss_scale_floor()
    scale, run, out = initial, 0, []
    for finite in finite_steps:
        if finite:
            run += 1
            if run == growth:
                scale, run = scale * 2, 0
        else:
            scale, run = max(scale / 2, floor), 0
        out.append(scale)
    return out


def scale_at(history: list[tuple[int, float]], step: int) -> float:
    return [scale for at, scale in history if at <= step][-1]


@given(
    st.lists(st.booleans(), min_size=1, max_size=30),
    st.integers(1, 4),
    st.sampled_from([1.0, 16.0, 2.0**15]),
    st.sampled_from(["adam", "sgd"]),
)
def test_property_loss_scale_follows_the_rule_and_telemetry_matches(finite_steps, growth, initial, kind):
    spec = PrecisionSpec(policy="mixed_float16", initial_scale=initial, growth_interval=growth)
    training = TrainingSpec.model_validate({"optimizer": {"kind": kind}, "learning_rate": 0.1})
    optimizer = precision.wrap_optimizer(make_optimizer(training), spec)
    variable = tf.Variable(np.ones(3, np.float32))
    optimizer.build([variable])
    tracker = LossScaleTracker(compat.current_loss_scale(optimizer))
    expected = reference_scales(finite_steps, initial, growth)
    for step, (finite, want) in enumerate(zip(finite_steps, expected, strict=True), start=1):
        before = variable.numpy().copy()
        scale = compat.current_loss_scale(optimizer)
        # Scaled gradients, as training produces them; inf where the step overflows.
        grad = np.full(3, 0.5 * scale if finite else np.inf, np.float32)
        compat.apply_scaled_gradients(optimizer, [tf.constant(grad)], [variable])
        assert compat.current_loss_scale(optimizer) == want
        changed = not np.array_equal(variable.numpy(), before)
        assert changed == finite  # skipped steps leave the variables untouched
        applied = compat.loss_scale_state(optimizer)[1]  # what the engine reads after every step
        tracker.observe(step, compat.current_loss_scale(optimizer), int(applied.numpy()))
    assert tracker.skipped == finite_steps.count(False)
    assert tracker.min == min([initial, *expected])
    assert tracker.current == expected[-1]
    assert [scale_at(tracker.history, s) for s in range(1, len(expected) + 1)] == expected


def test_tracker_counts_several_steps_per_call_and_detects_collapse():
    tracker = LossScaleTracker(4.0)
    tracker.observe(4, 4.0, applied=4)  # four finite steps in one call
    tracker.observe(8, 0.25, applied=4)  # four skipped
    assert (tracker.skipped, tracker.consecutive_skipped, tracker.min) == (4, 4, 0.25)
    assert "collapsed to 0.25" in tracker.collapse(max_consecutive=50)
    assert "non-finite even unscaled" in tracker.collapse(max_consecutive=50)
    tracker.observe(9, 0.5, applied=5)
    assert tracker.consecutive_skipped == 0


def test_tracker_collapses_after_too_many_consecutive_skips_even_above_one():
    tracker = LossScaleTracker(2.0**40)
    for step in range(1, 11):
        tracker.observe(step, 2.0 ** (40 - step), applied=0)
    assert tracker.collapse(max_consecutive=10) is not None
    assert tracker.collapse(max_consecutive=11) is None


def test_tracker_thins_a_long_history_but_keeps_min_and_counts_exact():
    tracker = LossScaleTracker(2.0, max_points=100)
    applied = 0
    for step in range(1, 1001):
        finite = step % 2 == 0
        applied += finite
        tracker.observe(step, 2.0 if finite else 1.0, applied)
    assert tracker.thinned and len(tracker.history) <= 101
    assert (tracker.skipped, tracker.min, tracker.steps) == (500, 1.0, 1000)
    assert tracker.history[0] == (0, 2.0) and tracker.history[-1][0] == 1000


def test_a_number_from_the_spec_is_what_runs_and_executions_end_at_epochs_and_checkpoints():
    plan = ExecutionPlan(8, every_steps=20)
    assert plan.next(remaining=100, global_step=0) == 8
    assert plan.next(remaining=5, global_step=0) == 5  # the epoch's end
    assert plan.next(remaining=100, global_step=16) == 4  # the checkpoint at step 20
    plan.timed(8, 10.0)  # a number is never changed by a timing
    assert plan.describe() == (8, "set by the spec")


def test_auto_grows_while_executions_are_short_and_shrinks_when_long():
    plan = ExecutionPlan("auto")
    seen = []
    for _ in range(8):  # a small model: 10 ms a step
        steps = plan.next(remaining=10_000, global_step=0)
        seen.append(steps)
        plan.timed(steps, steps * 0.010)
    assert seen == [1, 2, 4, 8, 16, 32, 32, 32]  # capped at AUTO_MAX_STEPS
    plan.timed(32, 5 * AUTO_EXECUTION_S)  # the machine got busy: a shorter execution next
    assert plan.next(remaining=10_000, global_step=0) == 16
    plan.timed(3, 0.001)  # an epoch's short last execution says nothing of the next
    assert plan.current == 16
    largest, why = plan.describe()
    assert largest == AUTO_MAX_STEPS and "auto" in why


def test_auto_stays_at_one_step_for_a_slow_model():
    plan = ExecutionPlan("auto")
    for _ in range(5):
        plan.timed(plan.next(remaining=1000, global_step=0), 3 * AUTO_EXECUTION_S)
    assert plan.current == 1


# ------------------------------------------------------- clipping under loss scaling; label smoothing

CLIPS = {"clip_norm": "clipnorm", "clip_global_norm": "global_clipnorm", "clip_value": "clipvalue"}


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8), rng.integers(0, 3, 16).astype(np.int32)


def _model(policy: str, weights: list[np.ndarray] | None, training: TrainingSpec, scale: float):
    """runner's model, optimizer and loss under `policy`, with `weights` (float32 variables both ways)."""
    from runner.models import build_model
    from runner.spec import Mlp

    with precision.policy_scope(policy):
        model = build_model(Mlp(hidden_units=[16]), (8, 8, 1), 3, "float32")
        optimizer = precision.wrap_optimizer(
            make_optimizer(training), PrecisionSpec(policy=policy, initial_scale=scale)
        )
        compile_model(model, optimizer, training)
    if weights is not None:
        model.set_weights(weights)
    return model


def _update(model, x, y) -> np.ndarray:
    before = np.concatenate([w.ravel() for w in model.get_weights()])
    model.train_on_batch(x, y)
    return np.concatenate([w.ravel() for w in model.get_weights()]) - before


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.cache
def _float32_updates(kind: str, clip: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The float32 reference: initial weights, the clipped update and the unclipped one (built once
    per setting: each model traces its own step)."""
    x, y = _batch()
    reference = _model(
        "float32", None, TrainingSpec(optimizer={"kind": "sgd"}, learning_rate=1.0, **{kind: clip}), 1
    )
    weights = reference.get_weights()
    clipped = _update(reference, x, y)
    unclipped = _update(
        _model("float32", weights, TrainingSpec(optimizer={"kind": "sgd"}, learning_rate=1.0), 1), x, y
    )
    return weights, clipped, unclipped


@settings(max_examples=5, deadline=None)
@given(kind=st.sampled_from(sorted(CLIPS)), exponent=st.integers(0, 12), clip=st.sampled_from([0.01, 0.05]))
def test_property_clipping_acts_on_unscaled_gradients_whatever_the_loss_scale(kind, exponent, clip):
    """SGD with rate 1, so the update is minus the clipped gradient: under mixed_float16 with a loss
    scale of 2**exponent it equals the float32 update within float16's precision (1 %); and the
    clipping is active (the clipped float32 update is not the unclipped one)."""
    weights, expected, unclipped = _float32_updates(kind, clip)
    assert _relative(expected, unclipped) > 0.05
    training = TrainingSpec(optimizer={"kind": "sgd"}, learning_rate=1.0, **{kind: clip})
    mixed = _model("mixed_float16", weights, training, 2.0**exponent)
    assert _relative(_update(mixed, *_batch()), expected) < 0.01


def test_clipping_the_scaled_gradients_instead_is_what_the_property_catches():
    """The negative control: the same step with the clip applied before unscaling (the bug) moves the
    weights by clip / scale, far from the float32 update the property compares with."""
    x, y = _batch()
    weights, expected, _ = _float32_updates("clip_global_norm", 0.05)
    plain = TrainingSpec(optimizer={"kind": "sgd"}, learning_rate=1.0)
    mixed = _model("mixed_float16", weights, plain, 2.0**10)
    optimizer = mixed.optimizer
    with tf.GradientTape() as tape:
        loss = mixed.compute_loss(x=x, y=tf.constant(y), y_pred=mixed(x, training=True))
        scaled = compat.scale_loss(optimizer, loss)
    grads = tape.gradient(scaled, mixed.trainable_variables)
    clipped, _ = tf.clip_by_global_norm(grads, 0.05)  # on the scaled gradients: the bug
    before = np.concatenate([w.ravel() for w in mixed.get_weights()])
    compat.apply_scaled_gradients(optimizer, clipped, mixed.trainable_variables)
    buggy = np.concatenate([w.ravel() for w in mixed.get_weights()]) - before
    assert _relative(buggy, expected) > 0.9


def test_label_smoothing_is_keras_categorical_smoothing_and_the_probe_measures_it():
    keras = compat.keras()
    x, y = _batch()
    smooth = TrainingSpec(label_smoothing=0.2)
    with precision.seeded(3):  # initial weights of their own, not of whatever test ran before
        model = _model("float32", None, smooth, 1.0)
    # Spread logits: an untrained net's near-uniform probabilities make smoothed and plain losses
    # nearly equal (within 1e-3 for some initial weights).
    model.set_weights([w * 4 for w in model.get_weights()])
    probabilities = model(x)
    expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.2)(np.eye(3)[y], probabilities)
    probe = precision.first_step_probe(model, x, y)
    assert probe["loss"] == pytest.approx(float(expected), rel=1e-5)
    plain = _model("float32", model.get_weights(), TrainingSpec(), 1.0)
    assert precision.first_step_probe(plain, x, y)["loss"] != pytest.approx(probe["loss"], rel=1e-3)
