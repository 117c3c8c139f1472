"""The invariant checks are pure functions over audits: drive them with hand-made and random audits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner import checks

DTYPES = ["float16", "bfloat16", "float32"]


def audit(layers, output="float32", optimizer="Adam", lso=False, scale=None, policy="mixed_float16"):
    return {
        "layers": layers,
        "output_layers": [layers[-1]["name"]] if layers else [],
        "output_dtype": output,
        "optimizer": "LossScaleOptimizer" if lso else optimizer,
        "inner_optimizer": optimizer,
        "loss_scale_optimizer": lso,
        "loss_scale": scale,
        "global_policy": policy,
    }


def layer(name, compute="float16", cls="Dense", weights=("float32",)):
    return {
        "name": name,
        "class": cls,
        "compute_dtype": compute,
        "variable_dtype": "float32",
        "output_dtype": compute,
        "weights": [{"path": f"{name}/w{i}", "dtype": d, "trainable": True} for i, d in enumerate(weights)],
    }


def clean_mixed_audit():
    return audit(
        [
            layer("images", "uint8", "InputLayer", ()),
            layer("dense"),
            layer("probabilities", "float32", "Activation", ()),
        ],
        lso=True,
        scale=32768.0,
    )


def test_clean_mixed_audit_passes_everything():
    found = checks.preflight_findings(clean_mixed_audit(), "mixed_float16", "dynamic", "float32")
    assert all(f.passed for f in found), found


@pytest.mark.parametrize(
    ("mutate", "failing"),
    [
        (lambda a: a["layers"][1].update(compute_dtype="float32"), "compute_dtype"),
        (lambda a: a["layers"][1]["weights"][0].update(dtype="float16"), "variable_dtype"),
        (lambda a: a.update(output_dtype="float16"), "output_dtype"),
        (lambda a: a.update(loss_scale_optimizer=False, optimizer="Adam"), "loss_scale_optimizer"),
        (lambda a: a.update(loss_scale=math.inf), "loss_scale"),
        (lambda a: a.update(loss_scale=0.0), "loss_scale"),
        (lambda a: a.update(global_policy="float32"), "policy_in_force"),
    ],
    ids=[
        "float32_layer",
        "float16_variable",
        "float16_output",
        "no_lso",
        "inf_scale",
        "zero_scale",
        "policy_not_in_force",
    ],
)
def test_each_broken_invariant_is_one_named_error(mutate, failing):
    a = clean_mixed_audit()
    mutate(a)
    failed = checks.blocking(checks.preflight_findings(a, "mixed_float16", "dynamic", "float32"))
    assert [f.name for f in failed] == [failing]


def test_lso_under_float32_is_an_error():
    a = audit([layer("dense", "float32")], lso=True, scale=2.0)
    assert not checks.check_optimizer(a, "float32", "dynamic").passed


def test_policy_restored():
    assert checks.check_policy_restored("float32", "float32").passed
    assert not checks.check_policy_restored("float32", "mixed_float16").passed


def test_finite_metrics():
    assert checks.check_finite_metrics({"test_loss": 0.1, "test_accuracy": 0.9}).passed
    assert not checks.check_finite_metrics({"test_loss": math.nan, "test_accuracy": 0.9}).passed


layers_st = st.lists(
    st.builds(
        layer,
        name=st.uuids().map(str),
        compute=st.sampled_from(DTYPES),
        weights=st.lists(st.sampled_from(DTYPES), max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=8,
)


@given(layers_st, st.sampled_from(DTYPES))
def test_any_non_float32_variable_or_output_is_an_error(layers, output):
    a = audit(layers, output=output)
    bad_variable = any(w["dtype"] != "float32" for x in layers for w in x["weights"])
    assert (not checks.check_variable_dtype(a).passed) == bad_variable
    out = checks.check_output_dtype(a, "mixed_float16", "float32")
    assert out.passed == (output == "float32")
    if not out.passed:
        assert out.severity == "error"


@given(st.integers(1, 8), st.sampled_from(["mixed_float16", "mixed_bfloat16", "float32"]))
def test_any_clean_audit_yields_no_error(n, policy):
    dtype = checks.COMPUTE_DTYPE[policy]
    layers = [layer(f"l{i}", dtype) for i in range(n)] + [layer("out", "float32", "Activation", ())]
    lso = policy == "mixed_float16"
    a = audit(layers, lso=lso, scale=2.0**15 if lso else None, policy=policy)
    assert checks.blocking(checks.preflight_findings(a, policy, "dynamic", "float32")) == []
