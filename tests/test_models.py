"""Model registry and builders."""

from __future__ import annotations

from typing import get_args

import pytest

from runner import compat, precision
from runner.models import MODEL_BUILDERS, build_model
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
    assert model.inputs[0].dtype == "uint8"
    out = model(np.zeros((2, 28, 28, 1), np.uint8))
    assert tuple(out.shape) == (2, 10) and out.dtype.name == "float32"
    assert tuple(mlp(np.zeros((1, 28, 28, 1), np.uint8)).shape) == (1, 3)
    assert compat.global_policy_name() == "float32"
