"""The checks are pure functions over audits and measurements: drive them with hand-made and random ones
(property group 3 of the issue)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.precision import checks
from runner.spec import COMPUTE_DTYPE, PROBABILITY_ACTIVATIONS, ChecksSpec, PrecisionSpec
from runner.testing.strategies import policies

DTYPES = ["float16", "bfloat16", "float32"]
STATE_DTYPES = ["int64", "int32", "uint8", "bool"]  # exempt: exact in any precision
MIXED = PrecisionSpec(policy="mixed_float16")


def final(name="probabilities", compute="float32", activation="softmax", cls="Activation"):
    return {"name": name, "class": cls, "activation": activation, "compute_dtype": compute}


def audit(
    layers, output="float32", optimizer="Adam", lso=False, scale=None, policy="mixed_float16", last=None
):
    return {
        "layers": layers,
        "output_layers": [layers[-1]["name"]] if layers else [],
        "output_dtype": output,
        "final_activation": last,
        "optimizer": "LossScaleOptimizer" if lso else optimizer,
        "inner_optimizer": optimizer,
        "loss_scale_optimizer": lso,
        "loss_scale": scale,
        "global_policy": policy,
    }


def layer(name, compute="float16", cls="Dense", weights=("float32",), width=64):
    return {
        "name": name,
        "class": cls,
        "compute_dtype": compute,
        "variable_dtype": "float32",
        "output_dtype": compute,
        "width": width if weights else None,
        "weights": [{"path": f"{name}/w{i}", "dtype": d, "trainable": True} for i, d in enumerate(weights)],
    }


def clean_mixed_audit():
    return audit(
        [
            layer("images", "uint8", "InputLayer", ()),
            layer("hidden"),
            layer("dense"),
            layer("logits", width=10),
            layer("probabilities", "float32", "Activation", ()),
        ],
        lso=True,
        scale=32768.0,
        last=final(),
    )


NO_DECLARED = ChecksSpec()


def preflight(a, precision=MIXED, declared=NO_DECLARED, batch=64):
    return checks.preflight_findings(a, precision, declared, batch)


def test_clean_mixed_audit_passes_everything():
    found = preflight(clean_mixed_audit())
    assert all(f.passed for f in found), found


@pytest.mark.parametrize(
    ("mutate", "failing"),
    [
        (lambda a: a["layers"][1]["weights"][0].update(dtype="float16"), "variable_dtype"),
        (lambda a: a.update(output_dtype="float16"), "output_dtype"),
        (lambda a: a["final_activation"].update(compute_dtype="float16"), "output_dtype"),
        (lambda a: a.update(loss_scale_optimizer=False, optimizer="Adam"), "loss_scale_optimizer"),
        (lambda a: a.update(loss_scale=math.inf), "loss_scale"),
        (lambda a: a.update(loss_scale=0.0), "loss_scale"),
        (lambda a: a.update(global_policy="float32"), "policy_in_force"),
        (lambda a: [x.update(compute_dtype="float32") for x in a["layers"][1:4]], "compute_dtype"),
    ],
    ids=[
        "float16_variable",
        "float16_output",
        "float16_softmax_cast",
        "no_lso",
        "inf_scale",
        "zero_scale",
        "policy",
        "all_float32",
    ],
)
def test_each_broken_invariant_is_one_named_error(mutate, failing):
    a = clean_mixed_audit()
    mutate(a)
    failed = checks.blocking(preflight(a))
    assert [f.name for f in failed] == [failing]


def test_one_float32_layer_is_a_warning_naming_it_unless_declared():
    a = clean_mixed_audit()
    a["layers"][2]["compute_dtype"] = "float32"
    (finding,) = [f for f in preflight(a) if not f.passed]
    assert (finding.name, finding.severity) == ("compute_dtype", "warning")
    assert "dense (Dense) computes in float32" in finding.detail and "[precision.layers]" in finding.detail
    declared = preflight(a, declared=ChecksSpec(float32_layers=["dense"]))
    assert all(f.passed for f in declared)
    assert "dense kept in float32 as declared" in declared[0].detail


def test_float16_output_requested_on_purpose_is_a_warning():
    a = clean_mixed_audit()
    a["output_dtype"] = "float16"
    finding = checks.check_output_dtype(a, "mixed_float16", "policy")
    assert not finding.passed and finding.severity == "warning"


@pytest.mark.parametrize(
    ("compute", "policy", "severity"),
    [("float16", "mixed_float16", "error"), ("bfloat16", "mixed_bfloat16", "warning")],
)
def test_a_cast_after_a_low_precision_softmax_names_the_layer_and_both_fixes(compute, policy, severity):
    a = clean_mixed_audit()
    a["final_activation"] = final("head", compute, "softmax", "Dense")
    finding = checks.check_output_dtype(a, policy, "float32")
    assert not finding.passed and finding.severity == severity
    assert f"head (Dense, softmax) computes in {compute}" in finding.detail
    assert 'dtype="float32" on head' in finding.detail and 'model.output = "logits"' in finding.detail


def test_a_low_precision_linear_last_layer_before_a_cast_is_fine():
    """Logits in float16, cast to float32 (the guide's way for outputs without a softmax)."""
    a = clean_mixed_audit()
    a["final_activation"] = final("logits", "float16", "linear", "Dense")
    assert checks.check_output_dtype(a, "mixed_float16", "float32").passed


def test_integer_and_boolean_variables_are_exempt_and_listed():
    a = audit([layer("norm", weights=("float32", "float32", "int64")), layer("flag", weights=("bool",))])
    finding = checks.check_variable_dtype(a)
    assert finding.passed and "all 2 trained variables are float32; 2 exempt" in finding.detail
    assert "norm/w2 (int64, integer/boolean state)" in finding.detail and "flag/w0 (bool," in finding.detail
    text = checks.describe_variables(a["layers"][0])
    assert text == "2 × float32, 1 × int64 (exempt: integer/boolean state)"


@pytest.mark.parametrize(("trainable", "passed"), [(False, True), (True, False)])
def test_float16_preprocessing_constants_are_exempt_but_not_trained_weights(trainable, passed):
    """Keras 2's Normalization keeps its adapt() mean and variance in the compute dtype: constants that
    no training step updates. A trainable float16 variable of the same layer is still an error."""
    norm = layer("normalization", cls="Normalization", weights=("float16", "float16", "int64"))
    for w in norm["weights"]:
        w["trainable"] = trainable
    finding = checks.check_variable_dtype(audit([norm, layer("dense")]))
    assert finding.passed is passed
    if passed:
        assert "normalization/w0 (float16, preprocessing constants)" in finding.detail
        assert checks.describe_variables(norm) == (
            "1 × int64 (exempt: integer/boolean state), 2 × float16 (exempt: preprocessing constants)"
        )
    else:
        assert "normalization/w0 is float16" in finding.detail


def test_lso_under_float32_is_an_error():
    a = audit([layer("dense", "float32")], lso=True, scale=2.0, policy="float32")
    assert not checks.check_optimizer(a, PrecisionSpec(policy="float32")).passed


def test_tensor_core_hint_names_odd_widths_but_not_the_classifier():
    a = clean_mixed_audit()
    a["layers"][1]["width"] = 30
    hint = checks.check_tensor_core_alignment(a, "mixed_float16", batch_size=50)
    assert not hint.passed and hint.severity == "hint"
    assert "hidden (30)" in hint.detail and "batch size (50)" in hint.detail and "logits" not in hint.detail
    assert checks.check_tensor_core_alignment(a, "mixed_bfloat16", 50).passed


def test_policy_restored():
    assert checks.check_policy_restored("float32", "float32").passed
    assert not checks.check_policy_restored("float32", "mixed_float16").passed


def test_finite_metrics():
    assert checks.check_finite_metrics({"test_loss": 0.1, "test_accuracy": 0.9}).passed
    assert not checks.check_finite_metrics({"test_loss": math.nan, "test_accuracy": 0.9}).passed


@pytest.mark.parametrize(
    ("probe", "failing", "severity"),
    [
        ({"loss": 2.3, "nonfinite_gradients": [], "scale": 1.0, "overflowed_gradients": []}, [], None),
        ({"loss": math.nan, "nonfinite_gradients": [], "scale": None}, ["first_step_loss"], "error"),
        (
            {"loss": 2.3, "nonfinite_gradients": ["dense/kernel"], "scale": None},
            ["first_step_gradients"],
            "error",
        ),
        (
            {
                "loss": 2.3,
                "nonfinite_gradients": [],
                "scale": 2.0**40,
                "overflowed_gradients": ["conv1/kernel"],
            },
            ["first_step_overflow"],
            "warning",
        ),
    ],
    ids=["clean", "nan_loss", "nan_gradients", "overflow_above_default"],
)
def test_first_step_findings(probe, failing, severity):
    found = checks.first_step_findings(probe)
    failed = [f for f in found if not f.passed]
    assert [f.name for f in failed] == failing
    if failed:
        assert failed[0].severity == severity


def test_overflow_at_the_default_scale_is_only_a_hint():
    probe = {"loss": 2.3, "nonfinite_gradients": [], "scale": 2.0**15, "overflowed_gradients": ["c/kernel"]}
    (overflow,) = [f for f in checks.first_step_findings(probe) if not f.passed]
    assert overflow.severity == "hint" and "Fix" not in overflow.detail


def test_declared_checks():
    declared = ChecksSpec(min_test_accuracy=0.9, max_test_loss=0.5, max_skipped_step_fraction=0.1)
    good = checks.declared_findings(declared, {"test_accuracy": 0.95, "test_loss": 0.2}, 1, 100)
    assert [f.passed for f in good] == [True, True, True]
    bad = checks.declared_findings(declared, {"test_accuracy": 0.5, "test_loss": 0.9}, 20, 100)
    assert [f.passed for f in bad] == [False, False, False]
    assert "got 20.00% (20 of 100)" in bad[2].detail
    assert checks.declared_findings(ChecksSpec(), {"test_accuracy": 0.1}, 0, 10) == []


# ---------------------------------------------------------------- properties

layers_st = st.lists(
    st.builds(
        layer,
        name=st.uuids().map(str),
        compute=st.sampled_from(DTYPES),
        weights=st.lists(st.sampled_from(DTYPES + STATE_DTYPES), max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=8,
)
finals_st = st.none() | st.builds(
    final,
    compute=st.sampled_from(DTYPES),
    activation=st.sampled_from(["softmax", "sigmoid", "log_softmax", "linear", "relu"]),
)


@given(layers_st, st.sampled_from(DTYPES), finals_st)
def test_any_non_float32_variable_or_output_is_an_error(layers, output, last):
    a = audit(layers, output=output, last=last)
    bad_variable = any(w["dtype"] in DTYPES[:2] for x in layers for w in x["weights"])
    variables = checks.check_variable_dtype(a)
    assert (not variables.passed) == bad_variable
    if bad_variable:
        assert variables.severity == "error"
        wrong = [w["path"] for x in layers for w in x["weights"] if w["dtype"] in DTYPES[:2]]
        assert all(path in variables.detail for path in wrong[:8])
        assert (f"and {len(wrong) - 8} more" in variables.detail) == (len(wrong) > 8)
    # The final activation computes in float32, not only the output is float32: a probability
    # activation below float32 fails even behind a cast (an error in float16, a warning in bfloat16).
    out = checks.check_output_dtype(a, "mixed_float16", "float32")
    low = last is not None and last["activation"] in PROBABILITY_ACTIVATIONS
    low = low and last["compute_dtype"] != "float32"
    assert out.passed == (output == "float32" and not low)
    if output == "float32" and low and last["compute_dtype"] == "bfloat16":
        assert out.severity == "warning" and last["name"] in out.detail
    else:
        assert out.severity == "error"


@given(
    st.lists(st.integers(1, 64).map(lambda n: n * 8), min_size=1, max_size=8),
    policies(),
)
def test_any_clean_audit_yields_no_finding_at_all(widths, policy):
    dtype = COMPUTE_DTYPE[policy]
    layers = [layer(f"l{i}", dtype, width=w) for i, w in enumerate(widths)]
    layers.append(layer("out", "float32", "Activation", ()))
    lso = policy == "mixed_float16"
    a = audit(layers, lso=lso, scale=2.0**15 if lso else None, policy=policy)
    found = checks.preflight_findings(a, PrecisionSpec(policy=policy), ChecksSpec(), 64)
    assert [f for f in found if not f.passed] == []
