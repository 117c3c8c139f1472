"""Attention models, a dtype policy per layer, and the tensors measured inside attention layers
(runner/models.py's ViT and keras_hub kinds, runner/precision/layers.py, fidelity.recording_internals)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from runner import compat
from runner.cli import app
from runner.models import ModelError, build_model
from runner.precision import checks, fidelity
from runner.precision import policy as precision
from runner.precision.layers import apply_layer_policies, layer_paths, match
from runner.session import run_experiment
from runner.spec import COMPUTE_DTYPE, KerasHub, Vit, load_spec, spec_from_dict
from runner.testing.strategies import layer_policies, policies, small_models

VIT = Vit(depth=1, heads=2, width=16)
IMAGES = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")


def vit(policy: str, spec: Vit = VIT, patterns: dict[str, str] | None = None):
    refused = compat.needs_keras_3("precision.layers")
    if patterns and refused:  # Keras 2 has no per-layer policies here: one clear refusal instead
        with precision.policy_scope(policy), pytest.raises(ModelError, match="needs Keras 3"):
            apply_layer_policies(build_model(spec, (32, 32, 3), 10, "float32"), patterns)
        pytest.skip(f"refused as it should be: {refused}")
    with precision.policy_scope(policy):
        model = build_model(spec, (32, 32, 3), 10, "float32")
        rows = apply_layer_policies(model, patterns or {})
    return model, rows


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_a_vit_holds_every_invariant_in_each_policy(policy):
    model, _ = vit(policy)
    audit = precision.audit_model(model, compat.keras().optimizers.Adam())
    found = [
        checks.check_compute_dtype(audit, policy),
        checks.check_variable_dtype(audit),
        checks.check_output_dtype(audit, policy, "float32"),
    ]
    assert all(f.passed for f in found), found
    assert model.output_shape == (None, 10)
    paths = {x["path"]: x for x in audit["layers"]}
    # The attention layer is audited through its own layers: the softmax (no weights) among them.
    softmax = next(p for p in paths if p.startswith("block_0_attention/softmax"))
    assert paths[softmax]["compute_dtype"] == COMPUTE_DTYPE[policy]
    assert paths["block_0_attention"]["container"] and paths["block_0_attention"]["weights"] == []


def test_a_vit_refuses_patches_larger_than_its_images():
    with precision.policy_scope("float32"), pytest.raises(ModelError, match="patch_size"):
        build_model(Vit(patch_size=32), (16, 16, 3), 10, "float32")


def test_layer_paths_reach_the_layers_inside_an_attention_layer():
    model, _ = vit("float32")
    paths = [p for p, _ in layer_paths(model)]
    inside = [p for p in paths if p.startswith("block_0_attention/")]
    assert {p.split("/")[1].rstrip("_0123456789") for p in inside} >= {"query", "key", "value", "softmax"}
    assert paths.index("block_0_attention") < min(paths.index(p) for p in inside)  # parents first


def test_declared_layers_compute_in_their_policy_the_rest_in_the_global_one():
    patterns = {"*softmax*": "float32", "block_0_mlp1": "mixed_bfloat16", "block_0_attention/*": "float32"}
    model, rows = vit("mixed_float16", patterns=patterns)
    by_path = dict(layer_paths(model))
    for row in rows:
        assert str(by_path[row["path"]].dtype_policy.compute_dtype) == COMPUTE_DTYPE[row["policy"]]
    # The first pattern that matches wins: the softmax by "*softmax*", not "block_0_attention/*".
    softmax = next(r for r in rows if "softmax" in r["path"])
    assert softmax["pattern"] == "*softmax*"
    assert str(by_path["block_0_mlp2"].dtype_policy.compute_dtype) == "float16"
    audit = precision.audit_model(model, compat.keras().optimizers.Adam(), patterns)
    finding = checks.check_compute_dtype(audit, "mixed_float16")
    assert finding.passed and "as [precision.layers] declares" in finding.detail, finding
    # Without the declaration the same layers are off the policy: a warning naming them.
    undeclared = precision.audit_model(model, compat.keras().optimizers.Adam())
    assert checks.check_compute_dtype(undeclared, "mixed_float16").severity == "warning"


def test_a_pattern_that_matches_no_layer_names_the_paths_there_are():
    with pytest.raises(ModelError, match=r'precision.layers."block_9\*": .*matches none \(paths: '):
        vit("mixed_float16", patterns={"block_9*": "float32"})


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "b", "a/b", "a/*", "*", "*b", "b/*"]), min_size=1, max_size=4, unique=True
    ),
    st.sampled_from(["a", "b", "a/b", "a/b/c", "c"]),
)
def test_property_the_first_matching_pattern_wins(patterns, path):
    table = {p: f"policy-{i}" for i, p in enumerate(patterns)}
    found = match(path, table)
    import fnmatch

    matching = [p for p in patterns if fnmatch.fnmatchcase(path, p)]
    assert found == ((matching[0], table[matching[0]]) if matching else None)


def recorded(model, images=IMAGES):
    internals: list[dict] = []
    with fidelity.without_randomness(model), fidelity.recording_internals(model, internals):
        model(images, training=True)
    return internals


def reference_logits(model, images=IMAGES) -> np.ndarray:
    """Q·Kᵀ of block_0_attention computed here in float64 from its input and weights."""
    keras = compat.keras()
    norm = keras.Model(model.inputs, model.get_layer("block_0_norm1").output)
    x = np.asarray(norm(images), dtype="float64")  # (batch, tokens, width)
    attention = model.get_layer("block_0_attention")
    q_kernel, q_bias, k_kernel, k_bias = (np.asarray(w, "float64") for w in attention.get_weights()[:4])
    q = np.einsum("btw,whd->bthd", x, q_kernel) + q_bias
    k = np.einsum("btw,whd->bthd", x, k_kernel) + k_bias
    return np.einsum("bshd,bthd->bhts", k, q)


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["fused", "explicit"])
def test_the_logits_recorded_are_q_k_as_the_layer_computes_them(dropout):
    """Keras' fused path (no dropout) takes Q·Kᵀ in the layer's dtype and scales after; its explicit
    path (dropout > 0) scales Q first and calls its softmax layer. The probe records which, and the
    maximum it records is the product computed independently here."""
    model, _ = vit("float32", Vit(depth=1, heads=2, width=16, attention_dropout=dropout))
    rows = [r for r in recorded(model) if r["layer"] == "block_0_attention"]
    logits = next(r for r in rows if r["tensor"].startswith("attention logits"))
    explicit = dropout > 0 or compat.needs_keras_3("the fused path") is not None  # Keras 2 has no other
    expected = np.abs(reference_logits(model)).max() / (math.sqrt(8) if explicit else 1.0)
    assert logits["max_abs"] == pytest.approx(expected, rel=1e-4)
    assert ("scaled after" in logits["tensor"]) == (not explicit)
    assert any(r["tensor"] == "softmax output" for r in rows) == explicit


def overflowing_vit(policy: str, patterns: dict[str, str] | None = None, gain: float = 600.0):
    model, rows = vit(policy, patterns=patterns)
    attention = model.get_layer("block_0_attention")
    for dense in (attention._query_dense, attention._key_dense):
        dense.kernel.assign(dense.kernel * gain)
    return model


def test_an_overflowing_attention_layer_is_the_first_named_with_its_measured_maximum():
    model = overflowing_vit("mixed_float16")
    internals = recorded(model)
    explicit = compat.needs_keras_3("the fused path") is not None  # Keras 2 scales Q before Q·Kᵀ
    expected = float(np.abs(reference_logits(model)).max()) / (math.sqrt(8) if explicit else 1.0)
    assert expected > 65504  # the product does not fit float16 ...
    finding = checks.check_attention_headroom(internals)
    assert (finding.passed, finding.severity) == (False, "error")
    # ... and the probe says where and by how much (measured in float64 from the float16 operands).
    assert (
        "the first to overflow is block_0_attention (MultiHeadAttention): attention logits" in finding.detail
    )
    first = checks.headroom_misses(internals)[0][0]
    assert first["max_abs"] == pytest.approx(expected, rel=2e-2)
    assert f"{first['max_abs']:.4g}" in finding.detail and "65,504" in finding.detail


def test_the_same_attention_layer_declared_float32_computes_its_logits_in_float32():
    model = overflowing_vit(
        "mixed_float16", {"block_0_attention": "float32", "block_0_attention/*": "float32"}
    )
    internals = recorded(model)
    logits = next(r for r in internals if r["tensor"].startswith("attention logits"))
    assert logits["dtype"] == "float32" and not logits["nonfinite"]
    assert checks.check_attention_headroom(internals).passed
    assert np.isfinite(np.asarray(model(IMAGES))).all()


def test_under_bfloat16_the_same_logits_fit():
    internals = recorded(overflowing_vit("mixed_bfloat16"))
    assert checks.check_attention_headroom(internals).passed


def row(
    layer="a", tensor="attention logits Q·Kᵀ (scaled after)", dtype="float16", max_abs=1.0, nonfinite=False
):
    return {"layer": layer, "class": "MultiHeadAttention", "tensor": tensor, "dtype": dtype,
            "max_abs": max_abs, "nonfinite": nonfinite}  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "passed", "severity", "named"),
    [
        ([row(max_abs=100.0)], True, "error", None),
        ([row(max_abs=5000.0)], False, "warning", "a (MultiHeadAttention)"),
        ([row(max_abs=70000.0)], False, "error", "a (MultiHeadAttention)"),
        ([row("a", max_abs=5000.0), row("b", nonfinite=True)], False, "error", "b (MultiHeadAttention)"),
        ([row("a", max_abs=1e9, dtype="bfloat16")], True, "error", None),
    ],
    ids=["fits", "near", "over", "over-beats-near", "bfloat16-range"],
)
def test_attention_headroom(rows, passed, severity, named):
    finding = checks.check_attention_headroom(rows)
    assert (finding.passed, finding.severity) == (passed, severity)
    if named:
        assert f"is {named}" in finding.detail


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2e5), st.booleans()), min_size=1, max_size=8))
def test_property_the_first_overflow_in_order_is_named(values):
    rows = [row(f"layer{i}", max_abs=v, nonfinite=bad) for i, (v, bad) in enumerate(values)]
    over = [r for r in rows if r["nonfinite"] or r["max_abs"] >= 65504]
    finding = checks.check_attention_headroom(rows)
    if over:
        assert finding.severity == "error" and f"is {over[0]['layer']} " in finding.detail
    else:
        assert finding.severity == "warning" or finding.passed


@pytest.mark.slow  # keras_hub's import alone takes about 5 s
def test_keras_hub_backbone_is_built_without_weights_with_runners_head():
    pytest.importorskip("keras_hub")
    spec = KerasHub(
        backbone="ViTBackbone",
        arguments={"patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32},
    )
    with precision.policy_scope("mixed_float16"):
        model = build_model(spec, (32, 32, 3), 10, "float32")
    audit = precision.audit_model(model, compat.keras().optimizers.Adam())
    assert checks.check_compute_dtype(audit, "mixed_float16").passed
    assert checks.check_output_dtype(audit, "mixed_float16", "float32").passed
    assert model.output_shape == (None, 10)
    internals = recorded(model)
    assert any(r["tensor"].startswith("attention logits") and "/mha" in r["layer"] for r in internals)


@pytest.mark.slow  # keras_hub's import
def test_keras_hub_unknown_backbone_suggests_the_close_one():
    pytest.importorskip("keras_hub")
    with precision.policy_scope("float32"), pytest.raises(ModelError, match='did you mean "ViTBackbone"'):
        build_model(KerasHub(backbone="VitBackbone"), (32, 32, 3), 10, "float32")


def test_without_keras_hub_one_message_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub raises ImportError
    with precision.policy_scope("float32"), pytest.raises(ModelError) as raised:
        build_model(KerasHub(backbone="ViTBackbone"), (32, 32, 3), 10, "float32")
    assert "pip install -e '.[keras_hub]'" in str(raised.value) or "needs Keras 3" in str(raised.value)


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_the_vit_spec_trains_in_each_policy_with_every_invariant(policy, tmp_path):
    """The issue's acceptance: specs/vit.toml with one encoder block and 5 epochs reaches its
    min_test_accuracy (0.9) in float32 and mixed_bfloat16 (measured 0.956 and 0.962, about 20 s of
    training each on a 2-core AMD EPYC); under mixed_float16 (emulated on most CPUs: slow) one short
    epoch proves the invariants and a finite loss. Every check passes, the attention probe's included.
    XLA and the export are left out: they are tested elsewhere, and here they would double the time."""
    # Keras 2's initialisers draw other weights from the same seed: there one block took longer
    # (mixed_bfloat16: 0.871 after 5 epochs with tf-keras 2.21, measured).
    epochs = 5 if compat.needs_keras_3("") is None else 7
    settings = [f"precision.policy={policy}", "model.depth=1", f"training.epochs={epochs}"]
    settings += ["training.jit_compile=false", "export.formats=[]"]
    if policy == "mixed_float16":
        settings += ["training.epochs=1", "data.train_size=256", "checks.min_test_accuracy=0.0"]
    spec = load_spec(ROOT / "specs/vit.toml", settings)
    outcome = run_experiment(spec, tmp_path)
    report = outcome.record
    assert report.status == "completed", report.error
    failed = [c for c in report.checks if not c.passed and c.severity != "hint"]
    assert failed == [], failed
    names = {c.name for c in report.checks}
    assert policy == "float32" or "attention_headroom" in names
    assert math.isfinite(report.metrics.test_loss)
    if policy != "mixed_float16":
        assert report.metrics.test_accuracy >= 0.9


@settings(max_examples=10, deadline=None)
@given(small_models(), policies(), st.data())
def test_property_every_layer_computes_as_the_map_or_the_policy_says_and_variables_stay_float32(
    table, policy, data
):
    """Random built-in models (ViTs among them) with a random [precision.layers] over their own paths:
    each layer computes in the dtype of the first pattern that matches it, else as it was built (the
    policy's dtype, or float32 for runner's output softmax); every floating variable is float32
    whatever its layer computes in."""
    spec = spec_from_dict({"name": "p", "model": table}).model
    with precision.policy_scope(policy):
        model = build_model(spec, (32, 32, 3), 10, "float32")
    built = {path: str(layer.dtype_policy.compute_dtype) for path, layer in layer_paths(model)}
    assert {d for d in built.values() if checks.is_floating(d)} <= {COMPUTE_DTYPE[policy], "float32"}
    patterns = data.draw(layer_policies(list(built)), label="[precision.layers]")
    if patterns and compat.needs_keras_3("precision.layers"):
        with pytest.raises(ModelError, match="needs Keras 3"):
            apply_layer_policies(model, patterns)
        return
    apply_layer_policies(model, patterns)
    for path, layer in layer_paths(model):
        found = match(path, patterns)
        expected = COMPUTE_DTYPE[found[1]] if found else built[path]
        assert str(layer.dtype_policy.compute_dtype) == expected, (path, found)
    audit = precision.audit_model(model, compat.keras().optimizers.Adam(), patterns)
    assert checks.check_variable_dtype(audit).passed
    assert checks.check_compute_dtype(audit, policy).passed


VIT_SPEC = 'name = "v"\n[model]\nkind = "vit"\ndepth = 1\nheads = 2\nwidth = 16\n'
SMALL_DATA = '[data]\nsource = "shapes"\nbatch_size = 8\ntrain_size = 32\ntest_size = 8\n'


@pytest.mark.parametrize(
    ("layers", "says"),
    [
        (
            '"block_7*" = "float32"',
            'precision.layers."block_7*": expected a pattern that matches a layer path',
        ),
        ('"block_0*" = "float64"', "precision.layers.block_0*: expected one of float32, mixed_float16"),
    ],
    ids=["matches-no-layer", "bad-policy"],
)
def test_a_bad_precision_layers_entry_is_exit_2_naming_it(write_spec, layers, says):
    path = write_spec(f"{VIT_SPEC}{SMALL_DATA}[precision.layers]\n{layers}\n")
    result = CliRunner().invoke(app, ["check", str(path), "--steps", "0"])
    refused = compat.needs_keras_3("precision.layers")
    assert result.exit_code == 2, result.output
    assert (says if not refused or "float64" in layers else "needs Keras 3") in " ".join(
        result.stderr.split()
    )


KERAS_HUB_SPEC = """name = "hub"
[precision]
policy = "{policy}"
[model]
kind = "keras_hub"
backbone = "ViTBackbone"
arguments = {{patch_size = 8, num_layers = 1, num_heads = 2, hidden_dim = 16, mlp_dim = 32}}
"""


@pytest.mark.slow  # keras_hub's import alone takes about 5 s
@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_a_keras_hub_backbone_passes_runner_check_in_each_policy(write_spec, policy):
    pytest.importorskip("keras_hub")
    path = write_spec(KERAS_HUB_SPEC.format(policy=policy) + SMALL_DATA)
    result = CliRunner().invoke(app, ["check", str(path), "--steps", "0"])
    assert result.exit_code == 0, result.output
    assert "0 error(s), 0 warning(s)" in result.stdout
    assert policy == "float32" or "attention_headroom" in result.stdout
