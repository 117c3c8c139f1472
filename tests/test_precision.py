"""Precision on real Keras objects: the policy scope, loss-scale wrapping, and the dtype audit of
every built-in model under every policy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner import compat
from runner.models import build_model
from runner.precision import checks
from runner.precision import policy as precision
from runner.spec import (
    COMPUTE_DTYPE,
    ChecksSpec,
    Mlp,
    PrecisionSpec,
    ResNet,
    SeedCnn,
    TrainingSpec,
    spec_from_dict,
)
from runner.testing.strategies import policies, small_models
from runner.training.loop import compile_model, make_optimizer

keras = compat.keras()
tf = compat.tensorflow()
POLICIES = ["float32", "mixed_float16", "mixed_bfloat16"]
MODELS = {
    "seed_cnn": SeedCnn(filters=[8, 8, 8], dense_units=8),
    "seed_cnn_bn": SeedCnn(filters=[8, 8], dense_units=8, batch_norm=True, pooling="average", dropout=0.2),
    "mlp": Mlp(hidden_units=[8, 8], batch_norm=True, dropout=0.1),
    "resnet8": ResNet(depth=8, width=4),
}


def _build(model_spec, policy: str, output_dtype: str | None = "float32", loss_scale: str = "dynamic"):
    p = PrecisionSpec(policy=policy, loss_scale=loss_scale)
    with precision.policy_scope(policy):
        model = build_model(model_spec, (32, 32, 3), 10, output_dtype)
        optimizer = precision.wrap_optimizer(make_optimizer(TrainingSpec()), p)
        compile_model(model, optimizer, TrainingSpec())
        audit = precision.audit_model(model, optimizer)  # inside the scope, as the session does
    return model, optimizer, p, audit


def test_policy_scope_sets_and_restores_even_on_error():
    before = compat.global_policy_name()
    with precision.policy_scope("mixed_float16"):
        assert compat.global_policy_name() == "mixed_float16"
    assert compat.global_policy_name() == before
    with pytest.raises(RuntimeError), precision.policy_scope("mixed_bfloat16"):
        raise RuntimeError("boom")
    assert compat.global_policy_name() == before


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kind", MODELS.keys())
def test_built_models_satisfy_every_invariant(kind, policy):
    model, optimizer, p, audit = _build(MODELS[kind], policy)
    findings = checks.preflight_findings(audit, p, ChecksSpec(), 32)
    assert checks.blocking(findings) == [], findings
    # The audit agrees with Keras itself.
    assert audit["output_dtype"] == "float32" == model.outputs[0].dtype
    expected = COMPUTE_DTYPE[policy]
    dense = [x for x in audit["layers"] if x["class"] in {"Dense", "Conv2D"}]
    assert dense and all(x["compute_dtype"] == expected for x in dense)
    assert all(tf.as_dtype(v.dtype) == tf.float32 for v in model.weights)
    assert audit["loss_scale_optimizer"] is (policy == "mixed_float16")


def test_loss_scale_optimizer_takes_the_specs_scale_and_interval():
    p = PrecisionSpec(policy="mixed_float16", initial_scale=1024.0, growth_interval=7)
    opt = precision.wrap_optimizer(make_optimizer(TrainingSpec()), p)
    assert compat.is_loss_scale_optimizer(opt)
    assert (opt.initial_scale, opt.dynamic_growth_steps) == (1024.0, 7)
    assert compat.current_loss_scale(opt) == 1024.0


@pytest.mark.parametrize(
    ("policy", "loss_scale"),
    [("float32", "dynamic"), ("mixed_bfloat16", "dynamic"), ("mixed_float16", "none")],
)
def test_no_loss_scaling_where_it_does_not_apply(policy, loss_scale):
    model, optimizer, _, _ = _build(MODELS["mlp"], policy, loss_scale=loss_scale)
    assert not compat.is_loss_scale_optimizer(model.optimizer)
    assert compat.current_loss_scale(optimizer) is None


def test_the_tutorial_bug_policy_after_build_is_caught():
    """Building first and setting the policy afterwards leaves every layer in float32."""
    model = build_model(MODELS["seed_cnn"], (32, 32, 3), 10, "float32")  # policy still float32
    with precision.policy_scope("mixed_float16"):
        optimizer = precision.wrap_optimizer(make_optimizer(TrainingSpec()), PrecisionSpec())
        compile_model(model, optimizer, TrainingSpec())
        audit = precision.audit_model(model, optimizer)
    failed = checks.blocking(checks.preflight_findings(audit, PrecisionSpec(), ChecksSpec(), 32))
    assert [f.name for f in failed] == ["compute_dtype"]
    assert "conv1 (Conv2D) computes in float32" in failed[0].detail
    assert "not mixed_float16" in failed[0].detail


def test_float16_softmax_is_reported_when_requested():
    _, _, _, audit = _build(MODELS["mlp"], "mixed_float16", output_dtype=None)
    assert audit["output_dtype"] == "float16"
    finding = checks.check_output_dtype(audit, "mixed_float16", "policy")
    assert not finding.passed and finding.severity == "warning" and "probabilities" in finding.detail
    error = checks.check_output_dtype(audit, "mixed_float16", "float32")
    assert not error.passed and error.severity == "error"


def _factory(name: str, policy: str, output: str = "probabilities"):
    from runner.spec import Factory

    spec = Factory(factory=f"tests.factories:{name}", output=output)
    return _build(spec, policy)


def _images(n: int = 8):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("policy", "severity"), [("float32", None), ("mixed_float16", "error"), ("mixed_bfloat16", "warning")]
)
def test_a_cast_after_a_float16_softmax_is_caught_by_the_layer_that_computes_it(policy, severity):
    """Bug 1 of issue 14: the output is float32 (runner's cast), but the softmax before the cast
    computed in float16 and its probabilities have already underflowed to exactly 0."""
    model, _, p, audit = _factory("underflowing_softmax", policy)
    assert audit["output_dtype"] == "float32"
    probabilities = model(_images()).numpy()
    assert (probabilities.min() == 0.0) == (policy == "mixed_float16")  # the underflow is real
    finding = checks.check_output_dtype(audit, policy, p.output_dtype)
    if severity is None:
        assert finding.passed, finding
        return
    assert not finding.passed and finding.severity == severity
    assert "softmax (Softmax, softmax) computes in" in finding.detail
    assert 'dtype="float32" on softmax' in finding.detail and 'model.output = "logits"' in finding.detail


@pytest.mark.parametrize("policy", POLICIES)
def test_logits_with_runners_float32_softmax_keep_every_probability_above_zero(policy):
    model, _, p, audit = _factory("large_logits", policy, output="logits")
    assert model(_images()).numpy().min() > 0.0
    assert checks.check_output_dtype(audit, policy, p.output_dtype).passed
    assert checks.blocking(checks.preflight_findings(audit, p, ChecksSpec(), 32)) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_integer_and_boolean_state_is_exempt_from_the_float32_rule(policy):
    """Bug 2 of issue 14: counters and flags are exact in any precision; only floats must be float32."""
    model, _, p, audit = _factory("integer_state", policy)
    assert {compat.dtype_name(v.dtype) for v in model.weights} == {"float32", "int64", "bool"}
    finding = checks.check_variable_dtype(audit)
    assert finding.passed, finding
    assert "steps/count (int64, integer/boolean state)" in finding.detail
    assert "steps/seen (bool, integer/boolean state)" in finding.detail and "; 2 exempt" in finding.detail
    assert checks.blocking(checks.preflight_findings(audit, p, ChecksSpec(), 32)) == []


def test_seeded_scope_is_reproducible_and_restores_numpy():
    import numpy as np

    state = np.random.get_state()[1].copy()
    with precision.seeded(3):
        a = tf.random.uniform((3,)).numpy(), keras.initializers.GlorotUniform()((2, 3)).numpy()
    with precision.seeded(3):
        b = tf.random.uniform((3,)).numpy(), keras.initializers.GlorotUniform()((2, 3)).numpy()
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert (np.random.get_state()[1] == state).all()


@pytest.mark.parametrize(
    ("policy", "device", "named"),
    [
        ("mixed_float16", {"cpu_flags": ["avx2"], "gpu": None}, "no AMX_FP16 or AVX512_FP16"),
        ("mixed_float16", {"cpu_flags": ["avx512_fp16", "amx_bf16"], "gpu": None}, "AVX512_FP16"),
        ("mixed_bfloat16", {"cpu_flags": ["amx_bf16"], "gpu": None}, "AMX_BF16"),
        ("mixed_float16", {"gpu": {"name": "T4", "compute_capability": [7, 5]}}, "T4 (7.5) has float16"),
        ("mixed_bfloat16", {"gpu": {"name": "T4", "compute_capability": [7, 5]}}, "lacks (they need 8.0)"),
        ("float32", {"gpu": None}, "the reference"),
    ],
    ids=["avx2", "avx512_fp16", "amx_bf16", "t4_fp16", "t4_bf16", "float32"],
)
def test_the_hardware_note_explains_and_never_judges_speed(policy, device, named):
    """Flags explain a measurement; they never replace it: an AVX-512 FP16 CPU was measured ~300x
    slower in float16 training, so the note names features and says nothing about speed."""
    note = precision.hardware_note(policy, device)
    assert named in note
    assert not {"faster", "slower", "speed"} & set(note.lower().replace(",", " ").split())


def test_current_loss_scale_is_finite_after_a_step():
    model, optimizer, _, _ = _build(MODELS["mlp"], "mixed_float16")
    import numpy as np

    x = np.zeros((4, 32, 32, 3), np.uint8)
    model.train_on_batch(x, np.zeros((4,), np.int32))
    scale = compat.current_loss_scale(optimizer)
    assert math.isfinite(scale) and scale > 0


# ---------------------------------------------------------------- property group 1


@given(small_models(), policies(), st.sampled_from([(32, 32, 3), (28, 28, 1)]))
def test_property_any_small_built_in_model_satisfies_every_invariant(model_table, policy, shape):
    model_spec = spec_from_dict({"name": "drawn", "model": model_table}).model
    p = PrecisionSpec(policy=policy)
    with precision.policy_scope(policy):
        model = build_model(model_spec, shape, 10, "float32")
        optimizer = precision.wrap_optimizer(make_optimizer(TrainingSpec()), p)
        compile_model(model, optimizer, TrainingSpec())
        audit = precision.audit_model(model, optimizer)
    assert compat.global_policy_name() == "float32"
    found = checks.preflight_findings(audit, p, ChecksSpec(), 32)
    assert [f for f in found if not f.passed and f.severity != "hint"] == []
    # The audit agrees with Keras, layer by layer.
    by_name = {x["name"]: x for x in audit["layers"]}
    for keras_layer in model.layers:
        entry = by_name[keras_layer.name]
        assert entry["compute_dtype"] == keras_layer.compute_dtype
        real = [tf.as_dtype(v.dtype).name for v in keras_layer.weights]
        # A layer of layers (an attention layer) is audited through them: its variables are theirs.
        inside = [x for x in audit["layers"] if x["path"].startswith(entry["path"] + "/")]
        audited = entry["weights"] + [w for x in inside for w in x["weights"]]
        assert sorted(w["dtype"] for w in audited) == sorted(real)
        assert entry["container"] == bool(inside)
    assert audit["output_dtype"] == tf.as_dtype(model.outputs[0].dtype).name == "float32"
    # Not only the output: the final activation itself computes in float32, as Keras says.
    final = audit["final_activation"]
    assert final["activation"] == "softmax" and final["compute_dtype"] == "float32"
    assert model.get_layer(final["name"]).compute_dtype == "float32"
    assert audit["loss_scale_optimizer"] == type(model.optimizer).__name__.startswith("LossScaleOptimizer")
    expected = COMPUTE_DTYPE[policy]
    assert {x["compute_dtype"] for x in audit["layers"] if x["weights"]} == {expected}
