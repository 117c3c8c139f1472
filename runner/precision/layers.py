"""[precision.layers]: a dtype policy per layer, chosen by a pattern over the layer's path.

A path is a layer's name under its parents', "/"-joined: "block_0_attention" for a layer of
runner's model, "block_0_attention/softmax" for the softmax inside it, "vit/vit_encoder/…" inside
a model we did not write. Every layer has one, weights or not (Keras' own `layer.path` exists
only once a layer with a `build` has been built, so a softmax has none and a `DTypePolicyMap`
cannot reach it). The policies are given to the built layers (compat.set_layer_policy): a layer
casts its inputs to its compute dtype on each call, so the next call computes in the new dtype
with the same weights, which is also what makes a patched model comparable with the unpatched one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from typing import Any

from runner import compat
from runner.models import ModelError

SHOWN_PATHS = 12  # paths named in the message for a pattern that matches nothing


def layer_paths(layer: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, layer) for every layer under `layer`, depth first, parents before their children."""
    for child in compat.sublayers(layer):
        path = f"{prefix}{child.name}"
        yield path, child
        yield from layer_paths(child, path + "/")


def match(path: str, patterns: Mapping[str, str]) -> tuple[str, str] | None:
    """(pattern, policy) of the first pattern that matches `path` (fnmatch: `*` crosses "/"), or None."""
    return next(((p, policy) for p, policy in patterns.items() if fnmatch.fnmatchcase(path, p)), None)


def apply_layer_policies(model: Any, patterns: Mapping[str, str]) -> list[dict[str, str]]:
    """Give every layer a pattern matches its policy; one row per such layer (path, class, pattern,
    policy). A pattern that matches no layer is a ModelError naming some of the paths there are."""
    if not patterns:
        return []
    refused = compat.needs_keras_3("precision.layers (a dtype policy per layer)")
    if refused:
        raise ModelError(refused)
    paths = list(layer_paths(model))
    rows = []
    for path, layer in paths:
        found = match(path, patterns)
        if found is None:
            continue
        pattern, policy = found
        compat.set_layer_policy(layer, policy)
        rows.append({"path": path, "class": type(layer).__name__, "pattern": pattern, "policy": policy})
    # A pattern an earlier one shadows still matches a layer: only one that matches none is a mistake.
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(path, p) for path, _ in paths)]
    if unused:
        shown = ", ".join(path for path, _ in paths[:SHOWN_PATHS])
        more = f" and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else ""
        raise ModelError(
            f'precision.layers."{unused[0]}": expected a pattern that matches a layer path of the model; '
            f'matches none (paths: {shown}{more}; `*` matches any characters, "/" too)'
        )
    return rows
