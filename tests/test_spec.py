"""Spec validation: table-driven good and bad inputs, overrides, messages, schema, round-trip."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from runner.spec import (
    ExperimentSpec,
    SpecError,
    json_schema,
    load_plan,
    load_spec,
    load_study,
    parse_override,
    spec_from_dict,
    spec_hash,
    spec_to_dict,
    spec_to_toml,
    tomllib,
)
from runner.testing.strategies import loss_scale_settings, model_tables, policies

BASE = {"name": "t"}


def with_(section: str, **fields) -> dict:
    return {"name": "t", section: fields}


GOOD = {
    "minimal": BASE,
    "float32": with_("precision", policy="float32"),
    "bfloat16": with_("precision", policy="mixed_bfloat16", loss_scale="none"),
    "int_for_float": with_("precision", initial_scale=1024),
    "resnet20": with_("model", kind="resnet", depth=20, width=8),
    "mlp": with_("model", kind="mlp", hidden_units=[8, 8], batch_norm=True, dropout=0.5),
    "sgd": {
        "name": "t",
        "training": {"optimizer": {"kind": "sgd", "momentum": 0.9, "nesterov": True}},
    },
    "cifar_with_path": with_("data", source="cifar10", path="/data/cifar-10-python.tar.gz"),
}


@pytest.mark.parametrize("raw", GOOD.values(), ids=GOOD.keys())
def test_valid_specs_load(raw):
    spec = spec_from_dict(raw, source="x.toml")
    assert isinstance(spec, ExperimentSpec)


BAD = {
    # id: (raw, fragments the message must contain)
    "typo_in_key": (
        with_("precision", polcy="float32"),
        ["precision.polcy", "unknown key", 'did you mean "policy"'],
    ),
    "typo_top_level": ({"name": "t", "trainig": {}}, ["trainig", 'did you mean "training"']),
    "wrong_policy": (
        with_("precision", policy="mixed_fp16"),
        ["precision.policy", "float32, mixed_float16, mixed_bfloat16", '"mixed_fp16"'],
    ),
    "negative_batch": (with_("data", batch_size=-32), ["data.batch_size", "> 0", "-32"]),
    "nan_learning_rate": (
        with_("training", learning_rate=math.nan),
        ["training.learning_rate", "finite", "nan"],
    ),
    "inf_scale": (
        with_("precision", initial_scale=math.inf),
        ["precision.initial_scale", "finite"],
    ),
    "string_for_int": (with_("training", epochs="10"), ["training.epochs", "integer", '"10"']),
    "bool_for_int": (with_("data", batch_size=True), ["data.batch_size"]),
    "unknown_model_kind": (with_("model", kind="vgg"), ["model", "seed_cnn", "vgg"]),
    "key_of_other_variant": (
        with_("model", kind="mlp", filters=[8]),
        ["model.filters", "unknown key"],
    ),
    "resnet_depth": (with_("model", kind="resnet", depth=21), ["depth", "6n+2", "21"]),
    "name_with_slash": ({"name": "../escape"}, ["name", "../escape"]),
    "name_missing": ({}, ["name", "missing"]),
    "zero_epochs": (with_("training", epochs=0), ["training.epochs", "> 0"]),
    "steps_per_execution_word": (
        with_("training", steps_per_execution="fast"),
        ["training.steps_per_execution", 'a positive integer or "auto"', '"fast"'],
    ),
    "steps_per_execution_zero": (
        with_("training", steps_per_execution=0),
        ["training.steps_per_execution", 'a positive integer or "auto"', "0 (int)"],
    ),
    "fraction_out_of_range": (with_("data", validation_fraction=1.5), ["data.validation_fraction"]),
    "optimizer_typo": (
        {"name": "t", "training": {"optimizer": {"kind": "adam", "beta1": 0.9}}},
        ['did you mean "beta_1"'],
    ),
}


@pytest.mark.parametrize(("raw", "fragments"), BAD.values(), ids=BAD.keys())
def test_invalid_specs_name_file_field_expected_and_received(raw, fragments):
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw, source="specs/x.toml")
    message = str(info.value)
    assert message.startswith("specs/x.toml: ")
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_every_problem_is_reported_at_once():
    raw = {"name": "t", "precision": {"policy": "x"}, "data": {"batch_size": 0}}
    message = str(pytest.raises(SpecError, spec_from_dict, raw).value)
    assert "precision.policy" in message and "data.batch_size" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("precision.policy=float32", (["precision", "policy"], "float32")),
        ('precision.policy="float32"', (["precision", "policy"], "float32")),
        ("training.epochs=3", (["training", "epochs"], 3)),
        ("training.learning_rate=1e-4", (["training", "learning_rate"], 1e-4)),
        ("model.filters=[8, 16]", (["model", "filters"], [8, 16])),
        ("training.jit_compile=true", (["training", "jit_compile"], True)),
    ],
    ids=["bare_string", "quoted_string", "int", "float", "list", "bool"],
)
def test_override_values_are_toml_literals(text, expected):
    assert parse_override(text) == expected


def test_override_applies_and_wins_over_file(write_spec):
    path = write_spec('name = "t"\n[precision]\npolicy = "mixed_float16"\n')
    spec = load_spec(path, ["precision.policy=float32", "training.epochs=2"])
    assert spec.precision.policy == "float32" and spec.training.epochs == 2


def test_override_of_unknown_key_names_the_nearest_valid_one(write_spec):
    path = write_spec('name = "t"\n')
    message = str(pytest.raises(SpecError, load_spec, path, ["training.learnig_rate=0.1"]).value)
    assert "--set training.learnig_rate=0.1" in message
    assert 'did you mean "learning_rate"' in message
    assert str(path) in message


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1"])
def test_malformed_override_is_a_spec_error(text):
    with pytest.raises(SpecError, match="KEY.PATH=VALUE"):
        parse_override(text)


def test_override_through_a_value_is_an_error(write_spec):
    path = write_spec('name = "t"\nseed = 1\n')
    with pytest.raises(SpecError, match="seed is a value, not a table"):
        load_spec(path, ["seed.x=1"])


def test_missing_file_and_bad_toml(write_spec, tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.toml")
    bad = write_spec('name = "t"\n[precision\n')
    with pytest.raises(SpecError, match=r"invalid TOML.*line 2"):
        load_spec(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(binary)


def test_shipped_specs_are_valid():
    from tests.conftest import ROOT

    paths = sorted((ROOT / "specs").rglob("*.toml"))
    assert {p.name for p in paths} >= {"mixed.toml", "float32.toml", "quickstart.toml"}
    for path in paths:
        assert load_study(path) or load_plan(path)  # a study (specs/tune.toml) or a plan
    mixed = load_spec(ROOT / "specs" / "mixed.toml")
    assert (mixed.precision.policy, mixed.data.source, mixed.data.batch_size) == (
        "mixed_float16",
        "cifar10",
        32,
    )
    assert (mixed.training.epochs, mixed.training.learning_rate, mixed.model.kind) == (
        10,
        1e-3,
        "seed_cnn",
    )


def test_hash_is_stable_and_sensitive():
    a = spec_from_dict({"name": "t"})
    assert spec_hash(a) == spec_hash(spec_from_dict({"name": "t"}))
    assert spec_hash(a) != spec_hash(spec_from_dict({"name": "t", "seed": 1}))


def test_json_schema_describes_the_sections():
    schema = json_schema()
    assert set(schema["properties"]) >= {
        "name",
        "precision",
        "model",
        "data",
        "training",
        "runtime",
    }


def test_spec_module_does_not_import_tensorflow():
    code = "import sys, runner.spec, runner.cli; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- round-trip (property)

names = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True).filter(lambda s: s not in {".", ".."})
fractions = st.floats(0, 0.99, allow_nan=False)
models = model_tables(max_units=512, max_layers=8, max_depth=110)
optimizers = st.one_of(
    st.builds(dict, kind=st.just("adam"), beta_1=fractions, epsilon=st.floats(1e-10, 1.0)),
    st.builds(dict, kind=st.just("sgd"), momentum=fractions, nesterov=st.booleans()),
    st.builds(dict, kind=st.just("adamw"), weight_decay=st.floats(0, 1)),
    st.builds(dict, kind=st.just("rmsprop"), rho=fractions),
)
specs = st.builds(
    dict,
    name=names,
    seed=st.integers(0, 2**32 - 1),
    description=st.text(max_size=40),
    precision=st.builds(
        lambda policy, scaling: {"policy": policy, **scaling}, policies(), loss_scale_settings()
    ),
    model=models,
    data=st.builds(
        dict,
        source=st.sampled_from(["cifar10", "mnist", "fashion_mnist", "shapes"]),
        batch_size=st.integers(1, 4096),
        train_size=st.none() | st.integers(1, 60_000),
        validation_fraction=fractions,
    ),
    training=st.builds(
        dict,
        optimizer=optimizers,
        learning_rate=st.floats(1e-6, 1.0),
        epochs=st.integers(1, 100),
        steps_per_execution=st.integers(1, 64),
    ),
)


@given(specs)
def test_any_valid_spec_round_trips_through_toml(raw):
    spec = spec_from_dict(raw)
    again = spec_from_dict(tomllib.loads(spec_to_toml(spec)))
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)
    assert tomllib.loads(tomli_w.dumps(spec_to_dict(spec))) == spec_to_dict(spec)


# ---------------------------------------------------------------- sweeps


def test_a_sweep_plans_the_cartesian_product_with_the_same_seed(write_spec):
    path = write_spec(
        'name = "cmp"\nseed = 3\n[sweep]\n"precision.policy" = ["float32", "mixed_float16"]\n'
        "training.epochs = [1, 2]\n"
    )
    variants = load_plan(path, ["data.batch_size=16"])
    assert [v.spec.name for v in variants] == [
        "cmp-float32-1",
        "cmp-float32-2",
        "cmp-mixed_float16-1",
        "cmp-mixed_float16-2",
    ]
    assert variants[2].settings == {"precision.policy": "mixed_float16", "training.epochs": 1}
    assert {(v.spec.seed, v.spec.data.batch_size, v.group) for v in variants} == {(3, 16, "cmp")}


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ('"precision.polcy" = ["float32"]', "precision.polcy: unknown key; expected one of"),
        ('"precision.policy" = ["float32", "fp8"]', "sweep precision.policy=fp8"),
        ('"precision.policy" = []', "expected a non-empty list"),
        ('"precision.policy" = "float32"', "expected a non-empty list"),
    ],
    ids=["unknown_key", "bad_value", "empty", "not_a_list"],
)
def test_bad_sweeps_are_spec_errors(write_spec, sweep, message):
    path = write_spec(f'name = "cmp"\n[sweep]\n{sweep}\n')
    with pytest.raises(SpecError, match=re.escape(message)):
        load_plan(path)


def test_single_experiment_commands_refuse_a_sweep(write_spec):
    path = write_spec('name = "cmp"\n[sweep]\n"seed" = [1, 2]\n')
    with pytest.raises(SpecError, match="use `runner run` for sweeps"):
        load_spec(path)


def test_xla_is_refused_under_a_distributed_strategy():
    with pytest.raises(
        SpecError, match='training.jit_compile: expected false with distribution.strategy = "mirrored"'
    ):
        spec_from_dict(
            {"name": "x", "training": {"jit_compile": True}, "distribution": {"strategy": "mirrored"}}
        )
    assert spec_from_dict({"name": "x", "training": {"jit_compile": True}}).training.jit_compile
    # "auto" decides at run time (speed.xla_options: a rule under a strategy, else measured).
    auto = {"name": "x", "distribution": {"strategy": "mirrored"}}
    assert spec_from_dict(auto).training.jit_compile == "auto"


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_jit_compile_is_true_false_or_auto(value):
    with pytest.raises(SpecError, match='training.jit_compile: expected true, false or "auto"'):
        spec_from_dict({"name": "x", "training": {"jit_compile": value}})
