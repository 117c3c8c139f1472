"""The invariants of DESIGN.md as pure functions: audit (plain data) in, findings out.

No TensorFlow here, so hypothesis can drive these with any audit it can imagine, and the report
can print their results as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning", "hint"]
COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
# Layers that hold no computation of their own: their "compute dtype" is just the input's.
NON_COMPUTING = {"InputLayer"}


@dataclass(frozen=True)
class Finding:
    name: str
    passed: bool
    detail: str
    severity: Severity = "error"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def check_compute_dtype(audit: dict[str, Any], policy: str) -> Finding:
    """Invariant 1a: every computing layer uses the policy's compute dtype (the output layer may be
    float32, which invariant 2 asks for)."""
    expected = COMPUTE_DTYPE[policy]
    allowed_output = {expected, "float32"}
    wrong = [
        f"{layer['name']} ({layer['class']}) computes in {layer['compute_dtype']}"
        for layer in audit["layers"]
        if layer["class"] not in NON_COMPUTING
        and layer["compute_dtype"]
        not in (allowed_output if layer["name"] in audit["output_layers"] else {expected})
    ]
    if wrong:
        return Finding(
            "compute_dtype",
            False,
            f"expected every layer to compute in {expected} under {policy}; "
            + "; ".join(wrong)
            + ". Fix: set the policy before building the model (runner does; a factory must build "
            "its layers inside the call).",
        )
    return Finding("compute_dtype", True, f"every computing layer computes in {expected}")


def check_variable_dtype(audit: dict[str, Any]) -> Finding:
    """Invariant 1b: every variable is float32, whatever the compute dtype."""
    wrong = [
        f"{w['path']} is {w['dtype']}"
        for layer in audit["layers"]
        for w in layer["weights"]
        if w["dtype"] != "float32"
    ]
    count = sum(len(layer["weights"]) for layer in audit["layers"])
    if wrong:
        return Finding(
            "variable_dtype",
            False,
            "expected float32 variables (updates smaller than float16's resolution would be lost); "
            + "; ".join(wrong),
        )
    return Finding("variable_dtype", True, f"all {count} variables are float32")


def check_output_dtype(audit: dict[str, Any], policy: str, output_dtype: str) -> Finding:
    """Invariant 2: the model's outputs are float32 (softmax and loss in float32)."""
    found = audit["output_dtype"]
    if found == "float32":
        return Finding("output_dtype", True, "model output is float32")
    layers = ", ".join(audit["output_layers"])
    if output_dtype == "policy":
        return Finding(
            "output_dtype",
            False,
            f"model output is {found} ({layers}), as requested by precision.output_dtype = "
            '"policy" to reproduce the float16-softmax bug; a real run needs "float32"',
            severity="warning",
        )
    return Finding(
        "output_dtype",
        False,
        f"expected a float32 model output; got {found} from {layers}. Fix: give the last "
        'activation dtype="float32" (precision.output_dtype = "float32").',
    )


def check_optimizer(audit: dict[str, Any], policy: str, loss_scale: str) -> Finding:
    """Invariant 3: a LossScaleOptimizer exactly when the policy is mixed_float16 (with loss scaling)."""
    wanted = policy == "mixed_float16" and loss_scale == "dynamic"
    has = bool(audit["loss_scale_optimizer"])
    name = audit["optimizer"]
    if has == wanted:
        what = "wraps" if has else "is"
        return Finding("loss_scale_optimizer", True, f"optimizer {name} {what} {audit['inner_optimizer']}")
    if wanted:
        return Finding(
            "loss_scale_optimizer",
            False,
            f"expected a LossScaleOptimizer under mixed_float16; got {name}: small float16 "
            "gradients would underflow to zero",
        )
    return Finding(
        "loss_scale_optimizer",
        False,
        f"expected no LossScaleOptimizer under {policy} (loss_scale = {loss_scale}); got {name}",
    )


def check_loss_scale(scale: float | None, when: str, name: str = "loss_scale") -> Finding:
    """Invariant 4: the loss scale (if any) is finite and positive."""
    if scale is None:
        return Finding(name, True, f"no loss scaling {when}")
    if is_finite_positive(scale):
        return Finding(name, True, f"loss scale {scale:g} {when}, finite and > 0")
    return Finding(name, False, f"expected a finite loss scale > 0 {when}; got {scale}")


def check_policy_in_force(audit: dict[str, Any], policy: str) -> Finding:
    """Invariant 5a: the spec's policy was the global policy while the model was built."""
    found = audit["global_policy"]
    if found == policy:
        return Finding("policy_in_force", True, f"global dtype policy was {policy} while building")
    return Finding(
        "policy_in_force",
        False,
        f"expected the global dtype policy {policy} while building the model; got {found}",
    )


def check_policy_restored(before: str, after: str) -> Finding:
    """Invariant 5: the global policy is back to what it was once the run is over."""
    if before == after:
        return Finding("policy_restored", True, f"global dtype policy restored to {after}")
    return Finding(
        "policy_restored", False, f"expected the global dtype policy back at {before}; got {after}"
    )


def preflight_findings(
    audit: dict[str, Any], policy: str, loss_scale: str, output_dtype: str
) -> list[Finding]:
    """Invariants 1-5 on a freshly built, compiled model: before any training step."""
    return [
        check_compute_dtype(audit, policy),
        check_variable_dtype(audit),
        check_output_dtype(audit, policy, output_dtype),
        check_optimizer(audit, policy, loss_scale),
        check_loss_scale(audit["loss_scale"], "before training"),
        check_policy_in_force(audit, policy),
    ]


def check_finite_metrics(metrics: dict[str, Any]) -> Finding:
    bad = [k for k in ("test_loss", "test_accuracy") if not _finite(metrics.get(k))]
    if bad:
        return Finding(
            "finite_metrics",
            False,
            f"expected finite test metrics; got non-finite {', '.join(bad)}",
        )
    return Finding("finite_metrics", True, "test loss and accuracy are finite")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def blocking(findings: list[Finding]) -> list[Finding]:
    """Findings that fail a run: errors, not warnings or hints."""
    return [f for f in findings if not f.passed and f.severity == "error"]
