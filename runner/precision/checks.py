"""The invariants of DESIGN.md as pure functions: audit (plain data) in, findings out.

No TensorFlow here, so hypothesis can drive these with any audit it can imagine, and the report
can print their results as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from runner.spec import (
    COMPUTE_DTYPE,
    DEFAULT_INITIAL_SCALE,
    PROBABILITY_ACTIVATIONS,
    ChecksSpec,
    PrecisionSpec,
)

Severity = Literal["error", "warning", "hint"]
# Layers that hold no computation of their own: their "compute dtype" is just the input's.
NON_COMPUTING = {"InputLayer"}
# Activations whose small outputs underflow in float16 before the loss takes their log.


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


def _weighted(audit: dict[str, Any]) -> list[dict[str, Any]]:
    return [x for x in audit["layers"] if x["class"] not in NON_COMPUTING and x["weights"]]


def _names(layers: list[dict[str, Any]], limit: int = 6) -> str:
    shown = [f"{x['name']} ({x['class']}) computes in {x['compute_dtype']}" for x in layers[:limit]]
    more = f" and {len(layers) - limit} more" if len(layers) > limit else ""
    return "; ".join(shown) + more


def check_compute_dtype(audit: dict[str, Any], policy: str, float32_layers: Sequence[str] = ()) -> Finding:
    """Invariant 1a: layers with weights compute in the policy's dtype.

    All of them in another dtype is the tutorial's bug (the policy was set after the model was
    built: a "mixed" run that is float32 throughout): an error. Some of them is either a deliberate
    float32 island (list it in [checks] float32_layers) or a layer built outside the policy: a warning.
    """
    expected = COMPUTE_DTYPE[policy]
    weighted = _weighted(audit)
    off = [
        x
        for x in weighted
        if x["compute_dtype"] != expected and x["name"] not in float32_layers and not _as_declared(x)
    ]
    fix = (
        "Fix: build every layer while the policy is in force (no dtype= on layers), or declare "
        'deliberate float32 layers in [precision.layers] ("<layer path>" = "float32").'
    )
    if off and len(off) == len(weighted):
        return Finding(
            "compute_dtype",
            False,
            f"expected layers to compute in {expected} under {policy}; none does: {_names(off)}. "
            f"The model was built before the policy was set, so this run is not {policy}. {fix}",
        )
    if off:
        return Finding(
            "compute_dtype",
            False,
            f"expected {expected} under {policy}; {_names(off)}. {fix}",
            severity="warning",
        )
    listed = [x["name"] for x in weighted if x["name"] in float32_layers]
    kept = f" ({', '.join(listed)} kept in float32 as declared)" if listed else ""
    declared = [x for x in audit["layers"] if _as_declared(x) and x["compute_dtype"] != expected]
    if declared:
        dtypes = sorted({x["compute_dtype"] for x in declared})
        kept += (
            f"; {len(declared)} layer(s) in {'/'.join(dtypes)} as [precision.layers] declares "
            f"({_layer_list(declared, lambda x: x.get('path', x['name']), 4)})"
        )
    return Finding("compute_dtype", True, f"every layer with weights computes in {expected}{kept}")


def _as_declared(layer: Mapping[str, Any]) -> bool:
    """A layer [precision.layers] gave a policy, computing in that policy's dtype."""
    declared = layer.get("declared")
    return declared is not None and COMPUTE_DTYPE[declared] == layer["compute_dtype"]


def is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


# Layers whose non-trainable variables are constants set before training (by adapt() or the
# constructor) and never updated by it: Keras 2 keeps them in the compute dtype by design.
PREPROCESSING_CONSTANTS = {"Normalization"}


def exemption(layer: dict[str, Any], weight: dict[str, Any]) -> str | None:
    """Why a variable that is not float32 need not be, or None (float32, or it must be). The rule
    exists because a training update smaller than float16's resolution is lost; state that no
    such update touches is exempt."""
    if weight["dtype"] == "float32":
        return None
    if not is_floating(weight["dtype"]):
        return "integer/boolean state"  # counters, seeds, flags: exact in any precision
    if layer["class"] in PREPROCESSING_CONSTANTS and not weight["trainable"]:
        return "preprocessing constants"
    return None


def describe_variables(layer: dict[str, Any]) -> str:
    """ "2 × float32" or "2 × float32, 1 × int64 (exempt: integer/boolean state)" for a layer."""
    groups: dict[str | None, list[str]] = {}
    for weight in layer["weights"]:
        groups.setdefault(exemption(layer, weight), []).append(weight["dtype"])
    parts = [
        f"{len(dtypes)} × {'/'.join(sorted(set(dtypes)))}" + (f" (exempt: {why})" if why else "")
        for why, dtypes in sorted(groups.items(), key=lambda item: item[0] or "")
    ]
    return ", ".join(parts) or "—"


def check_variable_dtype(audit: dict[str, Any]) -> Finding:
    """Invariant 1b: every variable training updates is float32, whatever the compute dtype."""
    variables = [(layer, w) for layer in audit["layers"] for w in layer["weights"]]
    exempt = [f"{w['path']} ({w['dtype']}, {exemption(x, w)})" for x, w in variables if exemption(x, w)]
    wrong = [
        f"{w['path']} is {w['dtype']}"
        for x, w in variables
        if w["dtype"] != "float32" and not exemption(x, w)
    ]
    if wrong:
        return Finding(
            "variable_dtype",
            False,
            "expected float32 variables (updates smaller than float16's resolution would be lost); "
            + "; ".join(wrong[:8])
            + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else "")
            + ". Fix: use the mixed policy (float16 compute, float32 variables), "
            + 'not dtype="float16" on layers.',
        )
    detail = f"all {len(variables) - len(exempt)} trained variables are float32"
    if exempt:
        shown = ", ".join(exempt[:4]) + (f" and {len(exempt) - 4} more" if len(exempt) > 4 else "")
        detail += f"; {len(exempt)} exempt (no training update to lose): {shown}"
    return Finding("variable_dtype", True, detail)


def _low_precision_probabilities(final: dict[str, Any] | None) -> bool:
    """A softmax/sigmoid (the probabilities the loss takes the log of) computing below float32."""
    if final is None:
        return False
    return final["activation"] in PROBABILITY_ACTIVATIONS and final["compute_dtype"] != "float32"


def _cast_too_late(final: dict[str, Any]) -> Finding:
    name, dtype = f"{final['name']} ({final['class']}, {final['activation']})", final["compute_dtype"]
    fix = (
        f'Fix: dtype="float32" on {final["name"]} (the mixed-precision rule: the last activation in '
        'float32), or return logits and set model.output = "logits" (runner adds a float32 softmax).'
    )
    if dtype == "float16":
        return Finding(
            "output_dtype",
            False,
            f"expected the final activation to compute in float32; {name} computes in float16 and is "
            "only cast to float32 afterwards: probabilities below 6e-8 are already 0, the loss takes "
            "log(0) and the gradients overflow. " + fix,
        )
    return Finding(
        "output_dtype",
        False,
        f"expected the final activation to compute in float32; {name} computes in {dtype}: its "
        "probabilities keep float32's range but only 2-3 significant digits. " + fix,
        severity="warning",
    )


def check_output_dtype(audit: dict[str, Any], policy: str, output_dtype: str) -> Finding:
    """Invariant 2: the final activation computes in float32, so the outputs (and the loss) are float32.

    A float32 output is not enough: a cast after a float16 softmax keeps the zeros it underflowed to.
    """
    found = audit["output_dtype"]
    final = audit.get("final_activation")  # absent from audits written before it was recorded
    layers = ", ".join(audit["output_layers"])
    if output_dtype == "policy" and (found != "float32" or _low_precision_probabilities(final)):
        return Finding(
            "output_dtype",
            False,
            f"model output is {found} ({layers}), as requested by precision.output_dtype = "
            '"policy" to reproduce the float16-softmax bug; a real run needs "float32"',
            severity="warning",
        )
    if found != "float32":
        return Finding(
            "output_dtype",
            False,
            f"expected a float32 model output; got {found} from {layers}. Fix: give the last "
            'activation dtype="float32" (precision.output_dtype = "float32").',
        )
    if final is not None and _low_precision_probabilities(final):
        return _cast_too_late(final)
    if final is not None and final["activation"] in PROBABILITY_ACTIVATIONS:
        return Finding(
            "output_dtype", True, f"model output is float32; its {final['activation']} computes in float32"
        )
    return Finding("output_dtype", True, "model output is float32")


def check_optimizer(audit: dict[str, Any], precision: PrecisionSpec) -> Finding:
    """Invariant 3: a LossScaleOptimizer exactly when the policy is mixed_float16 (with loss scaling)."""
    policy, loss_scale, wanted = precision.policy, precision.loss_scale, precision.uses_loss_scaling
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
            'gradients would underflow to zero. Fix: precision.loss_scale = "dynamic".',
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


def check_tensor_core_alignment(audit: dict[str, Any], policy: str, batch_size: int) -> Finding:
    """Hint: float16 Tensor Cores want widths, filters and batch sizes that are multiples of 8."""
    if policy != "mixed_float16":
        return Finding("tensor_core_alignment", True, f"not applicable under {policy}", "hint")
    weighted = [x for x in _weighted(audit) if x.get("width")]
    # The classifier's width is the number of classes: the data's, not the user's, choice.
    odd = [f"{x['name']} ({x['width']})" for x in weighted[:-1] if x["width"] % 8]
    if batch_size % 8:
        odd.append(f"batch size ({batch_size})")
    if odd:
        return Finding(
            "tensor_core_alignment",
            False,
            "expected multiples of 8 for float16 Tensor Cores; got "
            + ", ".join(odd[:8])
            + ". Fix: round them up to a multiple of 8 (matters on GPUs only).",
            "hint",
        )
    return Finding("tensor_core_alignment", True, "widths, filters and batch size are multiples of 8", "hint")


def preflight_findings(
    audit: dict[str, Any], precision: PrecisionSpec, declared: ChecksSpec, batch_size: int
) -> list[Finding]:
    """Invariants 1-5 on a freshly built, compiled model, before any training step; plus hints."""
    policy = precision.policy
    return [
        check_compute_dtype(audit, policy, declared.float32_layers),
        check_variable_dtype(audit),
        check_output_dtype(audit, policy, precision.output_dtype),
        check_optimizer(audit, precision),
        check_loss_scale(audit["loss_scale"], "before training"),
        check_policy_in_force(audit, policy),
        check_tensor_core_alignment(audit, policy, batch_size),
    ]


def first_step_findings(step: dict[str, Any]) -> list[Finding]:
    """The first training step on a real batch: loss and gradients finite, unscaled and scaled.

    `step` holds: loss (float), nonfinite_gradients (variable paths, unscaled), and for a loss-scaled
    optimizer scale (float) and overflowed_gradients (variable paths whose scaled gradient overflowed).
    """
    found = []
    loss = step["loss"]
    if not math.isfinite(loss):
        detail = (
            f"expected a finite loss on the first batch; got {loss}. "
            "Fix: check the data (NaN pixels, labels out of range) and the learning rate."
        )
        found.append(Finding("first_step_loss", False, detail))
    else:
        found.append(Finding("first_step_loss", True, f"first-step loss {loss:.4g} is finite"))
    bad = step["nonfinite_gradients"]
    if bad:
        detail = (
            f"expected finite gradients; {len(bad)} variable(s) have non-finite gradients even "
            f"unscaled: {', '.join(bad[:5])}"
        )
        found.append(Finding("first_step_gradients", False, detail))
    else:
        found.append(Finding("first_step_gradients", True, "every gradient of the first step is finite"))
    overflowed = step.get("overflowed_gradients") or []
    if overflowed and not bad:
        # Starting high and halving is how dynamic loss scaling finds its level: at Keras' default a
        # few skipped first steps are expected (a hint); above it they are the spec's doing.
        severity: Severity = "hint" if step["scale"] <= DEFAULT_INITIAL_SCALE else "warning"
        detail = (
            f"at loss scale {step['scale']:g} the scaled gradients of {len(overflowed)} variable(s) "
            f"overflow float16 (e.g. {overflowed[0]}): the LossScaleOptimizer will skip steps and halve "
            "the scale until they fit"
        )
        if severity == "warning":
            detail += f". Fix: a lower precision.initial_scale (Keras' default is {DEFAULT_INITIAL_SCALE:g})."
        found.append(Finding("first_step_overflow", False, detail, severity))
    return found


def declared_findings(
    declared: ChecksSpec, metrics: dict[str, Any], overflow_steps: int, total_steps: int
) -> list[Finding]:
    """The [checks] a spec declares, evaluated after training."""
    found = []
    accuracy, loss = metrics.get("test_accuracy"), metrics.get("test_loss")
    if declared.min_test_accuracy is not None:
        ok = accuracy is not None and _finite(accuracy) and accuracy >= declared.min_test_accuracy
        detail = f"expected test accuracy >= {declared.min_test_accuracy}; got {_show(accuracy)}"
        found.append(Finding("min_test_accuracy", ok, detail))
    if declared.max_test_loss is not None:
        ok = loss is not None and _finite(loss) and loss <= declared.max_test_loss
        found.append(
            Finding("max_test_loss", ok, f"expected test loss <= {declared.max_test_loss}; got {_show(loss)}")
        )
    if declared.max_skipped_step_fraction is not None:
        fraction = overflow_steps / total_steps if total_steps else 0.0
        ok = fraction <= declared.max_skipped_step_fraction
        found.append(Finding(
            "max_skipped_step_fraction", ok,
            f"expected at most {declared.max_skipped_step_fraction:.2%} skipped steps; got {fraction:.2%} "
            f"({overflow_steps} of {total_steps})",
        ))  # fmt: skip
    return found


def _show(value: Any) -> str:
    return f"{value:.4f}" if _finite(value) else str(value)


def check_finite_metrics(metrics: dict[str, Any]) -> Finding:
    bad = [k for k in ("test_loss", "test_accuracy") if not _finite(metrics.get(k))]
    if bad:
        return Finding(
            "finite_metrics",
            False,
            f"expected finite test metrics; got non-finite {', '.join(bad)}",
        )
    return Finding("finite_metrics", True, "test loss and accuracy are finite")


RATE_TOLERANCE = 1e-5  # relative: the optimizer holds its rate in float32 (eps 1.2e-7)


def check_learning_rates(recorded: Sequence[float | None], expected: Sequence[float]) -> Finding:
    """Each epoch's rate as the optimizer reported it (its last step's) against the schedule's own
    value: a scheduler that never reaches the optimizer (the silent-scheduler bug) fails here."""
    pairs = [(i + 1, r, e) for i, (r, e) in enumerate(zip(recorded, expected, strict=True)) if r is not None]
    wrong = [(epoch, r, e) for epoch, r, e in pairs if abs(r - e) > RATE_TOLERANCE * max(abs(e), 1e-12)]
    if wrong:
        epoch, r, e = wrong[0]
        frozen = len({r for _, r, _ in pairs}) == 1 and len({round(e, 12) for _, _, e in pairs}) > 1
        said = " and never changed" if frozen else ""
        return Finding(
            "learning_rate_schedule",
            False,
            f"expected the schedule's rate at each epoch's end; epoch {epoch}: the optimizer used {r:.6g}, "
            f"the schedule says {e:.6g} ({len(wrong)} of {len(pairs)} epochs differ{said})",
        )
    if not pairs:
        return Finding("learning_rate_schedule", True, "no epoch recorded a rate", "hint")
    return Finding(
        "learning_rate_schedule",
        True,
        f"the optimizer used the schedule's rate at every epoch's end "
        f"({pairs[0][1]:.6g} → {pairs[-1][1]:.6g})",
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class Judged(Protocol):
    """A finding as the run holds it (Finding) or as report.json holds it (report.CheckResult)."""

    @property
    def passed(self) -> bool: ...

    @property
    def severity(self) -> str: ...


def is_blocking(finding: Judged) -> bool:
    """A finding that fails a run: a failed error, not a warning or a hint; the run, the report and a
    comparison judge alike."""
    return not finding.passed and finding.severity == "error"


def blocking(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if is_blocking(f)]


def fails_a_test(finding: Finding) -> bool:
    """What fails a test (runner.testing's assertions, a spec under pytest): an error or a warning,
    stricter than a run, which a warning does not stop; a hint never fails."""
    return not finding.passed and finding.severity != "hint"


def describe_failures(findings: Sequence[Finding], what: str) -> str:
    """The failed findings of `what`, one per line with its mark, as an assertion message."""
    failed = [f for f in findings if fails_a_test(f)]
    lines = [f"{what}: {len(failed)} of {len(findings)} checks failed"]
    return "\n".join([*lines, *(f"  {mark(f)} {f.name}: {f.detail}" for f in failed)])


MARKS: dict[str, str] = {"passed": "✓", "error": "✗", "warning": "!", "hint": "i"}


def mark(finding: Judged) -> str:
    """✓ for a passed finding, else its severity's mark: the same in the terminal, md and html."""
    return MARKS["passed"] if finding.passed else MARKS[finding.severity]


def check_replicas_in_sync(digests: Sequence[str], differing_copies: Sequence[str]) -> Finding:
    """Every worker ends with the same weights (`digests`, by worker rank), and on each worker every
    device's copy is the same (`differing_copies`: the variables whose copies differ)."""
    if differing_copies:
        return Finding(
            "replicas_in_sync",
            False,
            f"the devices of one worker hold different values of {_names_of(differing_copies)}: "
            "mirrored variables drifted apart",
        )
    odd = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if odd:
        return Finding(
            "replicas_in_sync",
            False,
            f"expected every worker's final weights equal; worker(s) {', '.join(map(str, odd))} differ "
            f"from worker 0 (SHA-256 {digests[odd[0]][:12]}… against {digests[0][:12]}…)",
        )
    where = f"{len(digests)} workers" if len(digests) > 1 else "every device"
    return Finding("replicas_in_sync", True, f"final weights equal on {where} (SHA-256 {digests[0][:12]}…)")


def _names_of(paths: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


FLOAT16_TINY = 2.0**-14  # float16's smallest normal (6.1e-5): below it subnormals, then 0
HEADROOM_FACTOR = 2.0**4  # a layer's largest output within this factor of its dtype's maximum
DTYPE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}  # the dtypes' largest finite values


def numerics_findings(
    numerics: dict[str, Any], precision: PrecisionSpec, declared: ChecksSpec
) -> list[Finding]:
    """Gradient fidelity, underflow and activation headroom from `fidelity.numerics_probe`'s data."""
    if "skipped" in numerics:
        return []
    found = [
        check_gradient_fidelity(numerics, declared, precision.policy),
        check_gradient_underflow(numerics, precision, declared),
        check_activation_headroom(numerics["activations"]),
    ]
    if numerics.get("internals"):  # a model with attention or normalisation layers
        found.append(check_attention_headroom(numerics["internals"]))
    return found


def _layer_list(rows: Sequence[Mapping[str, Any]], describe: Any, limit: int = 5) -> str:
    shown = "; ".join(describe(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


# (min cosine, max relative error) of the whole model's gradient against float32 when [checks] leaves
# them unset: below the worst that benchmarks/numerics.py measured on the built-in kinds and untrained
# MobileNetV2, ResNet50 and EfficientNetB0 (docs/precision-checks.md), with margin. Deep untrained
# networks are chaotic at the first step: bfloat16's 8-bit mantissa alone turns ResNet50's gradient
# to cosine 0.19 (ResNet50V2's on a batch of 4 to -0.07), so under bfloat16 the default judges only
# the error (a gradient far larger than float32's), not the direction.
GRADIENT_FIDELITY_DEFAULTS = {
    "mixed_float16": (0.5, 1.0),
    "mixed_bfloat16": (-1.0, 2.0),
    "float32": (1.0, 0.0),
}


def gradient_thresholds(policy: str, declared: ChecksSpec) -> tuple[float, float]:
    cosine, error = GRADIENT_FIDELITY_DEFAULTS[policy]
    if declared.min_gradient_cosine is not None:
        cosine = declared.min_gradient_cosine
    if declared.max_gradient_error is not None:
        error = declared.max_gradient_error
    return cosine, error


def check_gradient_fidelity(numerics: Mapping[str, Any], declared: ChecksSpec, policy: str) -> Finding:
    """The model's gradient (every layer's, unscaled) against the float32 reference's: cosine and
    relative L2 error, judged on the whole model; the layers that contribute most of the difference
    are named. (Layer by layer, deep untrained networks differ far more than the model does: a
    BatchNorm whose gradient cancels out in exact arithmetic keeps only rounding noise.)"""
    overall, rows = numerics["overall"], [r for r in numerics["layers"] if r["finite"]]
    if not overall["finite"] or not rows:
        return Finding("gradient_fidelity", True, "no finite gradient to compare", "warning")
    cosine, error = overall["cosine"], overall["relative_error"]
    rows = sorted(rows, key=lambda r: -r["difference"])
    total = sum(r["difference"] ** 2 for r in rows) or 1.0

    def describe(r: Mapping[str, Any]) -> str:
        return (
            f"{r['layer']} ({r['difference'] ** 2 / total:.0%} of the difference; cosine {r['cosine']:.3f}, "
            f"error {r['relative_error']:.3g})"
        )

    measured = f"cosine {cosine:.5f}, relative error {error:.3g} over {len(rows)} layers"
    scale = numerics.get("compared_at_scale")
    if scale is not None and scale != numerics.get("loss_scale"):
        measured += f" (at loss scale {scale:g}: {numerics['loss_scale']:g} overflowed)"
    min_cosine, max_error = gradient_thresholds(policy, declared)
    if cosine < min_cosine or error > max_error:
        return Finding(
            "gradient_fidelity",
            False,
            f"expected the gradient within cosine >= {min_cosine:g} and relative error "
            f"<= {max_error:g} of float32's under {policy}; got {measured}; most of it from "
            f"{_layer_list(rows, describe, 3)}. Fix: keep these layers in float32 ([precision.layers] "
            '"<layer path>" = "float32"), or look for a large intermediate value they compute',
            "warning",
        )
    return Finding(
        "gradient_fidelity", True, f"gradient matches float32: {measured}; largest difference in "
        f"{_layer_list(rows, describe, 1)}", "warning",
    )  # fmt: skip


def check_gradient_underflow(
    numerics: Mapping[str, Any], precision: PrecisionSpec, declared: ChecksSpec
) -> Finding:
    """Gradient elements that are 0 in the mixed run but not in float32; with the loss scale that would
    keep them (float16) or the layers to keep in float32 (bfloat16 has no loss scale)."""
    rows = numerics["layers"]
    heavy = [r for r in rows if r["underflow"] > declared.max_underflow_fraction]
    worst = max((r["underflow"] for r in rows), default=0.0)
    if not heavy:
        return Finding(
            "gradient_underflow",
            True,
            f"no layer loses more than {declared.max_underflow_fraction:.2%} of its gradient to underflow "
            f"(worst {worst:.3%})",
            "hint",
        )
    heavy.sort(key=lambda r: -r["underflow"])
    names = _layer_list(heavy, lambda r: f"{r['layer']} ({r['underflow']:.1%})")
    detail = f"gradient elements that are 0 under {precision.policy} but not in float32: {names}"
    suggested, scale = numerics.get("suggested_loss_scale"), numerics.get("loss_scale")
    if precision.policy == "mixed_float16" and suggested is not None:
        now = f"{scale:g}" if scale is not None else "none"
        detail += (
            f". Fix: precision.initial_scale = {suggested:g} (now {now}): the smallest power of two "
            "that lifts the smallest non-zero gradient above float16's smallest normal (2**-14) "
            "without the largest overflowing 65504"
        )
    else:
        detail += ". Fix: keep these layers in float32 (no loss scaling under this policy)"
    return Finding("gradient_underflow", False, detail, "hint")


def check_activation_headroom(ranges: Sequence[Mapping[str, Any]]) -> Finding:
    """Each low-precision layer's largest output against its dtype's maximum; inf or NaN outputs."""
    near = [
        r
        for r in ranges
        if r["nonfinite"] or r["max_abs"] * HEADROOM_FACTOR > DTYPE_MAX.get(r["dtype"], math.inf)
    ]

    def describe(r: Mapping[str, Any]) -> str:
        if r["nonfinite"]:
            return f"{r['layer']} ({r['class']}) outputs inf/NaN in {r['dtype']}"
        limit = DTYPE_MAX[r["dtype"]]
        return f"{r['layer']} ({r['class']}) reaches {r['max_abs']:.4g} of {r['dtype']}'s {limit:.6g}"

    if near:
        return Finding(
            "activation_headroom",
            False,
            f"expected every layer's output below 1/{HEADROOM_FACTOR:g} of its dtype's maximum; "
            f'{_layer_list(near, describe)}. Fix: compute these layers in float32 (dtype="float32") '
            "or scale their inputs down",
            "warning",
        )
    if not ranges:
        return Finding("activation_headroom", True, "no layer computes below float32", "warning")
    top = max(ranges, key=lambda r: r["max_abs"] / DTYPE_MAX.get(r["dtype"], math.inf))
    headroom = DTYPE_MAX[top["dtype"]] / top["max_abs"] if top["max_abs"] else math.inf
    return Finding(
        "activation_headroom",
        True,
        f"{len(ranges)} layers' outputs stay finite; least headroom {top['layer']} "
        f"(max |x| {top['max_abs']:.4g}, {headroom:.3g}x below {top['dtype']}'s maximum)",
        "warning",
    )


def headroom_misses(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(rows that overflow their dtype: inf, NaN or at least its maximum; rows within HEADROOM_FACTOR
    of it), each in the order given (the order the model computed them)."""

    def limit(r: Mapping[str, Any]) -> float:
        return DTYPE_MAX.get(r["dtype"], math.inf)

    over = [r for r in rows if r["nonfinite"] or r["max_abs"] >= limit(r)]
    near = [r for r in rows if r not in over and r["max_abs"] * HEADROOM_FACTOR > limit(r)]
    return over, near


def check_attention_headroom(internals: Sequence[Mapping[str, Any]]) -> Finding:
    """The tensors inside attention and normalisation layers (fidelity.recording_internals): the
    first one, in the order the model computes them, that overflows its dtype (inf, NaN, or beyond
    its maximum: an error, the step is lost) or comes within HEADROOM_FACTOR of it (a warning)."""

    def limit(r: Mapping[str, Any]) -> float:
        return DTYPE_MAX.get(r["dtype"], math.inf)

    over, near = headroom_misses(internals)

    def describe(r: Mapping[str, Any]) -> str:
        measured = "inf/NaN" if r["nonfinite"] and not r["max_abs"] else f"max |x| {r['max_abs']:.4g}"
        if r["nonfinite"] and r["max_abs"]:
            measured += " and inf/NaN"
        return f"{r['layer']} ({r['class']}): {r['tensor']} {measured} against {r['dtype']}'s {limit(r):,.0f}"

    fix = (
        "Fix: `runner check SPEC --fix` proposes the [precision.layers] override (this layer in float32) "
        "and proves it; or mixed_bfloat16, whose range is float32's"
    )
    if over:
        more = (
            f"; {len(over) - 1} tensor(s) computed after it overflow too or take its inf/NaN"
            if len(over) > 1
            else ""
        )
        return Finding(
            "attention_headroom",
            False,
            f"expected the values inside attention and normalisation layers to fit their dtype; the first "
            f"to overflow is {describe(over[0])}{more}. {fix}",
        )
    if near:
        return Finding(
            "attention_headroom",
            False,
            f"expected the values inside attention and normalisation layers below 1/{HEADROOM_FACTOR:g} of "
            f"their dtype's maximum; the first within it is {describe(near[0])}. {fix}",
            "warning",
        )
    top = max(internals, key=lambda r: r["max_abs"] / limit(r))
    layers = len({r["layer"] for r in internals})
    headroom = limit(top) / top["max_abs"] if top["max_abs"] else math.inf
    return Finding(
        "attention_headroom",
        True,
        f"{len(internals)} tensors inside {layers} attention/normalisation layers fit their dtype; least "
        f"headroom {top['layer']}: {top['tensor']} max |x| {top['max_abs']:.4g} "
        f"({headroom:.3g}x below {top['dtype']}'s maximum)",
    )


def longest_run_at_or_below(history: Sequence[Sequence[float]], steps: int, floor: float = 1.0) -> int:
    """The most consecutive steps the loss scale spent at or below `floor`, from its change points
    ((step, scale): the scale after `step` steps) up to `steps` steps in all."""
    longest = run = 0
    points = [(int(s), float(v)) for s, v in history]
    for (start, scale), (end, _) in zip(points, [*points[1:], (steps, 0.0)], strict=True):
        run = run + (end - start) if scale <= floor else 0
        longest = max(longest, run)
    return longest


def skipped_per_interval(history: Sequence[Sequence[float]], steps: int, interval: int) -> list[float]:
    """The share of skipped steps in each growth interval of the run ([0, interval), …), a skip seen as
    a fall of the scale (a skip at Keras 2's floor of 1 leaves the scale, and so no trace, there)."""
    windows = [0] * max(math.ceil(steps / interval), 1)
    for (_, before), (step, after) in zip(history, history[1:], strict=False):
        if after < before:
            windows[min(max(int(step) - 1, 0) // interval, len(windows) - 1)] += 1
    sizes = [min(interval, steps - i * interval) or 1 for i in range(len(windows))]
    return [round(k / n, 6) for k, n in zip(windows, sizes, strict=True)]


def check_steps_at_min_scale(loss_scale: Mapping[str, Any], limit: int) -> Finding:
    """The loss scale at or below 1 for more than `limit` steps in a row: the gradients overflow float16
    even unscaled, so the model is not learning in float16 (Keras 2 holds the scale at 1, Keras 3
    halves on below it)."""
    run = longest_run_at_or_below(loss_scale["history"], loss_scale["steps"])
    if run > limit:
        return Finding(
            "max_steps_at_min_scale",
            False,
            f"expected the loss scale above 1 but for at most {limit} consecutive steps; it stayed at or "
            f"below 1 for {run} (final {loss_scale['final']:g}): float16 overflows even unscaled. Fix: "
            "find the layer that overflows (runner check: activation_headroom) and keep it in float32",
            "warning",
        )
    return Finding(
        "max_steps_at_min_scale",
        True,
        f"the loss scale was at or below 1 for at most {run} consecutive steps (limit {limit})",
        "warning",
    )
