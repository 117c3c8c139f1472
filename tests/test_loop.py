"""Loss-scale dynamics through the real LossScaleOptimizer, and the telemetry that records them
(property group 2 of the issue)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from runner import compat, precision
from runner.loop import AUTO_EXECUTION_S, AUTO_MAX_STEPS, ExecutionPlan, make_optimizer
from runner.spec import PrecisionSpec, TrainingSpec
from runner.telemetry import LossScaleTracker

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
