"""The measured figures behind [checks]' gradient fidelity defaults (docs/precision-checks.md): for every
built-in kind and keras.applications MobileNetV2, ResNet50 and EfficientNetB0 (weights none) under
mixed_float16 and mixed_bfloat16, what `runner check` measures on the first batch of the shapes data.

    python benchmarks/numerics.py [--models seed_cnn,resnet50] [--policies mixed_float16] [--batch 64]

Prints one row per (model, policy): the worst layer's gradient cosine and relative L2 error against
float32, the largest underflow share, the least activation headroom, the pass's seconds, and any
fidelity/headroom/underflow finding that did not pass.
"""

from __future__ import annotations

import argparse
import math

from runner.preflight.check import check_experiment
from runner.spec import spec_from_dict

MODELS = {
    "seed_cnn": {"kind": "seed_cnn"},
    "seed_cnn_bn_dropout": {"kind": "seed_cnn", "batch_norm": True, "dropout": 0.3},
    "mlp": {"kind": "mlp"},
    "mlp_bn_dropout": {"kind": "mlp", "batch_norm": True, "dropout": 0.3},
    "resnet": {"kind": "resnet"},
    "mobilenetv2": {"kind": "keras_application", "name": "MobileNetV2"},
    "resnet50": {"kind": "keras_application", "name": "ResNet50"},
    "efficientnetb0": {"kind": "keras_application", "name": "EfficientNetB0"},
}
NUMERIC_CHECKS = {"gradient_fidelity", "gradient_underflow", "activation_headroom"}


def spec_for(model: dict, policy: str, batch: int):
    return spec_from_dict({
        "name": "numerics", "seed": 0,
        "precision": {"policy": policy},
        "model": model,
        "data": {"source": "shapes", "batch_size": batch, "train_size": 4 * batch, "test_size": batch},
        "training": {"epochs": 1},
    })  # fmt: skip


def row(name: str, policy: str, batch: int) -> str:
    outcome = check_experiment(spec_for(MODELS[name], policy, batch), timing_steps=0)
    numerics = outcome.audit["numerics"]
    layers = [r for r in numerics["layers"] if r["finite"]]
    overall = numerics["overall"]
    cosine = min(layers, key=lambda r: r["cosine"])
    error = max(layers, key=lambda r: r["relative_error"])
    underflow = max(r["underflow"] for r in numerics["layers"])
    top = max(numerics["activations"], key=lambda r: r["max_abs"])
    headroom = (65504.0 if top["dtype"] == "float16" else 3.39e38) / top["max_abs"]
    failed = [f"{f.name}: {f.detail}" for f in outcome.findings if f.name in NUMERIC_CHECKS and not f.passed]
    return (
        f"| {name} | {policy} | {overall['cosine']:.5f} | {overall['relative_error']:.3g} | "
        f"{numerics['compared_at_scale'] or '-'} | {len(layers)} | "
        f"{cosine['cosine']:.4f} ({cosine['layer']}) | "
        f"{error['relative_error']:.3g} ({error['layer']}) | {underflow:.3%} | "
        f"{math.log2(headroom):.1f} | {numerics['seconds']:.2f} | {'; '.join(failed) or 'none'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--policies", default="mixed_float16,mixed_bfloat16")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(
        "| model | policy | cosine | relative error | at loss scale | layers | worst layer cosine "
        "| worst layer relative error | max underflow "
        "| least headroom (log2) | seconds | findings |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for policy in args.policies.split(","):
            print(row(name, policy, args.batch), flush=True)


if __name__ == "__main__":
    main()
