"""Model registry and builders."""

from __future__ import annotations

from typing import get_args

import pytest

from runner import compat
from runner.models import MODEL_BUILDERS, build_model
from runner.precision import policy as precision
from runner.spec import Mlp, ModelKind, ResNet, SeedCnn


def test_registry_keys_are_the_specs_kinds():
    assert set(MODEL_BUILDERS) == set(get_args(ModelKind))


def test_seed_cnn_is_the_tutorials_network():
    with precision.policy_scope("float32"):
        model = build_model(SeedCnn(), (32, 32, 3), 10, "float32")
    classes = [type(x).__name__ for x in model.layers]
    assert classes == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "Activation",
        "MaxPooling2D",
        "Conv2D",
        "Activation",
        "MaxPooling2D",
        "Conv2D",
        "Activation",
        "Flatten",
        "Dense",
        "Dense",
        "Activation",
    ]
    # The tutorial's parameter count: 122,570.
    assert model.count_params() == 122_570


@pytest.mark.parametrize(("depth", "convs"), [(8, 7 + 2), (20, 19 + 2)])
def test_resnet_depth(depth, convs):
    with precision.policy_scope("float32"):
        model = build_model(ResNet(depth=depth, width=4), (32, 32, 3), 10, "float32")
    n_conv = sum(type(x).__name__ == "Conv2D" for x in model.layers)
    assert n_conv == convs  # 6n+1 convolutions in the body + 2 projection shortcuts
    assert any(type(x).__name__ == "BatchNormalization" for x in model.layers)


def test_models_take_uint8_and_any_input_shape():
    import numpy as np

    with precision.policy_scope("mixed_float16"):
        model = build_model(SeedCnn(filters=[4, 4, 4, 4, 4, 4], dense_units=4), (28, 28, 1), 10, "float32")
        mlp = build_model(Mlp(hidden_units=[4]), (28, 28, 1), 3, "float32")
    assert compat.tensorflow().as_dtype(model.inputs[0].dtype).name == "uint8"
    out = model(np.zeros((2, 28, 28, 1), np.uint8))
    assert tuple(out.shape) == (2, 10) and out.dtype.name == "float32"
    assert tuple(mlp(np.zeros((1, 28, 28, 1), np.uint8)).shape) == (1, 3)
    assert compat.global_policy_name() == "float32"


# ---------------------------------------------------------------- models we did not write


def not_a_model(input_shape, num_classes):
    return "a string"


def raises(input_shape, num_classes):
    raise RuntimeError("factory exploded")


def _build(spec_dict, policy="mixed_float16", shape=(32, 32, 3), output_dtype="float32"):
    from runner.spec import spec_from_dict

    spec = spec_from_dict({"name": "t", "model": spec_dict})
    with precision.policy_scope(policy):
        model = build_model(spec.model, shape, 10, output_dtype)
        audit = precision.audit_model(model, compat.keras().optimizers.Adam())
    return model, audit


def test_keras_application_returns_logits_and_runner_applies_the_softmax_in_float32():
    model, audit = _build({"kind": "keras_application", "name": "MobileNetV2", "arguments": {"alpha": 0.35}})
    assert audit["output_dtype"] == "float32" and audit["output_activation_appended"]
    assert not audit["output_cast_appended"]
    assert audit["output_layers"] == ["output_activation"]
    assert audit["final_activation"] == {
        "name": "output_activation",
        "class": "Activation",
        "activation": "softmax",
        "compute_dtype": "float32",
    }
    inner = {x["name"]: x for x in audit["layers"]}
    assert inner["predictions"]["compute_dtype"] == "float16"  # the application's logits, in float16
    convs = [x for x in audit["layers"] if x["class"] == "Conv2D"]
    assert len(convs) > 30 and {x["compute_dtype"] for x in convs} == {"float16"}
    assert any(x["container"] for x in audit["layers"])  # the application, audited through its own layers


def test_keras_application_keeps_the_requested_classifier_activation_in_float32():
    arguments = {"alpha": 0.35, "classifier_activation": "sigmoid"}
    _, audit = _build({"kind": "keras_application", "name": "MobileNetV2", "arguments": arguments})
    assert audit["final_activation"]["activation"] == "sigmoid"
    assert audit["final_activation"]["compute_dtype"] == "float32"


def test_keras_application_built_as_is_when_the_bug_is_requested():
    _, audit = _build({"kind": "keras_application", "name": "MobileNetV2"}, output_dtype=None)
    assert audit["output_dtype"] == "float16" and not audit["output_activation_appended"]
    assert audit["final_activation"]["name"] == "predictions"
    assert audit["final_activation"]["compute_dtype"] == "float16"


@pytest.mark.parametrize(
    ("application", "scale"),
    [("EfficientNetB0", 1.0), ("MobileNetV3Small", 1.0), ("MobileNetV2", 1 / 255)],
)
def test_applications_that_scale_their_input_get_pixels_in_0_255(application, scale):
    model, _ = _build({"kind": "keras_application", "name": application})
    assert model.get_layer("scale").scale == pytest.approx(scale)


def test_factory_float16_softmax_gets_a_cast_and_the_audit_finds_the_softmax_behind_it():
    model, audit = _build({"kind": "factory", "factory": "specs.bugs.factories:float16_softmax"})
    assert audit["output_cast_appended"] and audit["output_dtype"] == "float32"
    inner = {x["name"]: x for x in audit["layers"]}
    assert inner["probabilities"]["output_dtype"] == "float16"  # the factory's own softmax
    assert inner["conv1"]["compute_dtype"] == "float16"
    final = audit["final_activation"]
    assert (final["name"], final["activation"], final["compute_dtype"]) == (
        "probabilities",
        "softmax",
        "float16",
    )
    _, kept = _build(
        {"kind": "factory", "factory": "specs.bugs.factories:float16_softmax"}, output_dtype=None
    )
    assert kept["output_dtype"] == "float16" and not kept["output_cast_appended"]


def test_factory_logits_get_a_float32_softmax():
    model, audit = _build({"kind": "factory", "factory": "specs.bugs.factories:logits", "output": "logits"})
    assert audit["output_activation_appended"] and not audit["output_cast_appended"]
    assert audit["final_activation"]["compute_dtype"] == "float32"
    import numpy as np

    probabilities = model(np.zeros((2, 32, 32, 3), np.uint8)).numpy()
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"kind": "factory", "factory": "no_such_module:f"}, 'cannot import "no_such_module"'),
        ({"kind": "factory", "factory": "specs.bugs.factories:nope"}, 'expected a function "nope"'),
        ({"kind": "factory", "factory": "tests.test_models:not_a_model"}, "to return a keras.Model; got str"),
        ({"kind": "factory", "factory": "tests.test_models:raises"}, "raised RuntimeError: factory exploded"),
        ({"kind": "keras_application", "name": "NoSuchNet"}, "expected a keras.applications model"),
        (
            {"kind": "factory", "factory": "specs.bugs.factories:float16_softmax", "output": "logits"},
            r"expected logits .* probabilities \(Activation\) applies softmax",
        ),
        (
            {"kind": "factory", "factory": "specs.bugs.factories:logits"},
            r"expected probabilities .* logits \(Dense\) is linear",
        ),
        (
            {
                "kind": "keras_application",
                "name": "MobileNetV2",
                "arguments": {"classifier_activation": "nope"},
            },
            'cannot apply the activation "nope"',
        ),
    ],
    ids=[
        "no_module",
        "no_function",
        "not_a_model",
        "raises",
        "unknown_application",
        "softmax_declared_logits",
        "logits_declared_probabilities",
        "unknown_classifier_activation",
    ],
)
def test_models_that_cannot_be_built_are_bad_input(model, message):
    from runner.models import ModelError

    with pytest.raises(ModelError, match=message):
        _build(model)
    assert compat.global_policy_name() == "float32"


def test_application_too_small_for_the_data_is_bad_input():
    from runner.models import ModelError

    with pytest.raises(ModelError, match="cannot take this data"):
        _build({"kind": "keras_application", "name": "ResNet50"}, shape=(28, 28, 1))
