"""Hypothesis strategies for runner's inputs: policies, loss-scale settings, small valid specs.

    @given(policy=policies())
    def test_my_factory(policy):
        with policy_scope(policy):
            model = my_factory(input_shape=(32, 32, 3), num_classes=10)
        assert_mixed_precision_invariants(model, policy)

Every spec `specs()` draws validates (they are built through the spec's own loader) and is small
enough to build and train in seconds on a CPU. runner's own property tests draw from here too.
Needs hypothesis (`pip install "runner[testing]"`); imports no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args

from hypothesis import strategies as st
from pydantic import BaseModel

from runner.spec import ExperimentSpec, LayerPolicy, OptimizerKind, Policy, spec_from_dict

__all__ = [
    "layer_policies",
    "loss_scale_settings",
    "model_tables",
    "policies",
    "small_data",
    "small_models",
    "specs",
]

POLICIES: tuple[str, ...] = get_args(Policy)
ACTIVATIONS = ("relu", "gelu", "swish", "tanh")
RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)  # 6n + 2


def policies() -> st.SearchStrategy[str]:
    """A Keras dtype policy runner supports: float32, mixed_float16, mixed_bfloat16."""
    return st.sampled_from(POLICIES)


def loss_scale_settings(max_initial_scale: float = 2.0**40) -> st.SearchStrategy[dict[str, Any]]:
    """A [precision] table's loss scaling: loss_scale, initial_scale and growth_interval, e.g.
    `PrecisionSpec(policy=policy, **settings)`."""
    return st.builds(
        dict,
        loss_scale=st.sampled_from(["dynamic", "none"]),
        initial_scale=st.floats(1.0, max_initial_scale),
        growth_interval=st.integers(1, 10_000),
    )


def model_tables(
    max_units: int = 12, max_layers: int = 4, max_depth: int = 14
) -> st.SearchStrategy[dict[str, Any]]:
    """A [model] table of a built-in kind (seed_cnn, mlp, resnet, vit) up to these sizes: units or
    filters per layer, layers, and ResNet depth (6n + 2); a ViT of one or two small blocks."""
    activations, fractions = st.sampled_from(ACTIVATIONS), st.sampled_from([0.0, 0.25])
    units = st.lists(st.integers(1, max_units), min_size=1, max_size=max_layers)
    return st.one_of(
        st.builds(
            dict,
            kind=st.just("seed_cnn"),
            filters=units.map(lambda filters: filters[:6]),
            kernel_size=st.integers(1, 3),
            dense_units=st.integers(1, max_units),
            activation=activations,
            pooling=st.sampled_from(["max", "average"]),
            batch_norm=st.booleans(),
            dropout=fractions,
        ),
        st.builds(
            dict,
            kind=st.just("mlp"),
            hidden_units=units.map(lambda hidden: hidden[:8]),
            activation=activations,
            batch_norm=st.booleans(),
            dropout=fractions,
        ),
        st.builds(
            dict,
            kind=st.just("resnet"),
            depth=st.sampled_from([d for d in RESNET_DEPTHS if d <= max_depth]),
            width=st.integers(1, max(6, max_units // 8)),
            activation=activations,
        ),
        st.builds(
            dict,
            kind=st.just("vit"),
            patch_size=st.sampled_from([4, 8]),
            depth=st.integers(1, min(2, max_layers)),
            heads=st.sampled_from([1, 2]),
            width=st.sampled_from([8, 16]),
            stem=st.sampled_from(["conv", "patch"]),
            dropout=fractions,
            attention_dropout=fractions,
        ),
    )


def layer_policies(paths: Sequence[str]) -> st.SearchStrategy[dict[str, str]]:
    """A [precision.layers] table over a built model's layer paths (`runner.precision.layers.
    layer_paths`): some paths exactly, some as a pattern ending in `*` (a layer and everything
    inside it), each to one of the policies a layer may take."""
    if not paths:
        return st.just({})
    pattern = st.sampled_from(list(paths)).flatmap(lambda path: st.sampled_from([path, f"{path}*"]))
    return st.dictionaries(pattern, st.sampled_from(get_args(LayerPolicy)), max_size=4)


def small_models() -> st.SearchStrategy[dict[str, Any]]:
    """A [model] table of a built-in kind small enough to build in a fraction of a second."""
    return model_tables()


@st.composite
def _shapes_data(draw: st.DrawFn) -> dict[str, Any]:
    batch = draw(st.sampled_from([8, 16, 32]))
    return {
        "source": "shapes",
        "batch_size": batch,
        "train_size": batch * draw(st.integers(3, 8)),
        "test_size": batch,
        "validation_fraction": draw(st.sampled_from([0.0, 0.1])),
        "shuffle_seed": draw(st.integers(0, 2**16)),
    }


def small_data() -> st.SearchStrategy[dict[str, Any]]:
    """A [data] table of the procedural `shapes` source (offline), a few batches of each split."""
    return _shapes_data()


def _table_of(value: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """A dict, or a spec model (Factory(...), DataSpec(...)) as its TOML table."""
    return value.model_dump(mode="json", exclude_none=True) if isinstance(value, BaseModel) else dict(value)


def _strategy(value: Any, default: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    if value is None:
        return default
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


@st.composite
def _spec_tables(draw: st.DrawFn, model: Any, data: Any, policy: Any) -> dict[str, Any]:
    return {
        "name": draw(st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True)),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "precision": {"policy": draw(_strategy(policy, policies())), **draw(loss_scale_settings())},
        "model": _table_of(draw(_strategy(model, small_models()))),
        "data": _table_of(draw(_strategy(data, small_data()))),
        "training": {
            "optimizer": {"kind": draw(st.sampled_from(get_args(OptimizerKind)))},
            "learning_rate": draw(st.floats(1e-4, 1e-2)),
            "epochs": draw(st.integers(1, 2)),
            "steps_per_execution": draw(st.integers(1, 8)),
        },
    }


def specs(model: Any = None, data: Any = None, policy: Any = None) -> st.SearchStrategy[ExperimentSpec]:
    """A small valid ExperimentSpec: one or two epochs of a small model on a few batches.

    `model`, `data`: a table (a dict such as `{"kind": "factory", "factory": "my_models:small_cnn"}`,
    or a spec model), a strategy drawing tables, or None for small built-in models and `shapes` data.
    `policy`: a policy name, a strategy drawing one, or None for `policies()`.
    """
    source = "<drawn by runner.testing.strategies.specs>"
    return _spec_tables(model, data, policy).map(lambda raw: spec_from_dict(raw, source=source))
