"""This project's model factory keeps the mixed-precision rules under every policy, its first
training step is finite, and a run interrupted mid-epoch resumes exactly where it stopped.

The specs in specs/ are tests too: `pytest --runner-specs specs` (ci.sh).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from my_models.factories import small_cnn

from runner.spec import load_spec
from runner.testing import (
    assert_finite_first_step,
    assert_mixed_precision_invariants,
    assert_resume_is_exact,
    policy_scope,
)
from runner.testing.strategies import policies

SPECS = Path(__file__).resolve().parent.parent / "specs"
INPUT_SHAPE, CLASSES = (32, 32, 3), 10


def build(policy):
    """The model as runner builds it: every layer created while the policy is in force."""
    with policy_scope(policy):
        model = small_cnn(INPUT_SHAPE, CLASSES)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


@settings(max_examples=10, deadline=None)  # three policies: hypothesis stops once it has tried each
@given(policy=policies())
def test_the_factory_keeps_the_invariants_under_every_policy(policy):
    model = build(policy)
    assert_mixed_precision_invariants(model, policy)
    rng = np.random.default_rng(0)
    images, labels = rng.random((8, *INPUT_SHAPE), dtype=np.float32), rng.integers(0, CLASSES, 8)
    assert_finite_first_step(model, (images, labels))


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly():
    # The promised run, shortened: exactness needs a few steps on both sides of the stop, not accuracy.
    spec = load_spec(SPECS / "reaches_accuracy.toml", ["data.train_size=512", "training.epochs=2"])
    assert_resume_is_exact(spec, steps=6)  # mid-epoch: an epoch here is 15 steps
