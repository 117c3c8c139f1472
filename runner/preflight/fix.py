"""`runner check SPEC --fix`: the smallest [precision.layers] override that removes an overflow inside
a layer, proven by checking the spec again with it, and mixed_bfloat16 measured beside it.

The check names the attention layers whose tensors overflow float16 (or come within the headroom
factor of it); the candidates grow from those layers' softmax, to those whole layers, to every
attention layer of the model, and the first with which the check passes is written as a TOML patch
beside the spec (the spec file itself is never edited). What each costs is measured: the step time
of the spec as it was, patched, and under mixed_bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runner import compat, exits
from runner.precision import checks
from runner.preflight.check import CheckOutcome, check_experiment
from runner.preflight.gate import with_policy
from runner.spec import ExperimentSpec, SpecValueError

ATTENTION_TENSORS = ("attention logits", "softmax output")  # fidelity's rows inside attention layers


@dataclass
class FixOutcome:
    exit_code: int
    before: CheckOutcome
    patch: dict[str, str] = field(default_factory=dict)  # the override proposed ({} : none)
    after: CheckOutcome | None = None  # the check with the patch applied
    tried: list[tuple[dict[str, str], int]] = field(default_factory=list)  # each candidate, its exit
    bfloat16: CheckOutcome | None = None  # the spec under mixed_bfloat16, unpatched
    patch_file: Path | None = None
    reason: str = ""  # why nothing was proposed


def overflowing_attention(outcome: CheckOutcome) -> list[str]:
    """The attention layers (paths) whose tensors overflow, else those within the headroom factor,
    in the order the model computes them (the first is the cause; the later ones may only have
    taken its inf)."""
    internals = (outcome.audit.get("numerics") or {}).get("internals") or []
    inside = [r for r in internals if r["tensor"].startswith(ATTENTION_TENSORS)]
    over, near = checks.headroom_misses(inside)
    return list(dict.fromkeys(r["layer"] for r in over or near))


def attention_layers(outcome: CheckOutcome) -> list[str]:
    internals = (outcome.audit.get("numerics") or {}).get("internals") or []
    return list(dict.fromkeys(r["layer"] for r in internals if r["tensor"].startswith(ATTENTION_TENSORS)))


def candidates(layer: str) -> list[dict[str, str]]:
    """Overrides of one attention layer from the smallest up: its softmax in float32 (enough where the
    softmax is what overflows); the whole layer (its projections, the product Q·Kᵀ, the softmax)."""
    return [{f"{layer}/softmax*": "float32"}, {layer: "float32", f"{layer}/*": "float32"}]


def patched(spec: ExperimentSpec, patch: dict[str, str]) -> ExperimentSpec:
    """The spec with `patch` merged into its [precision.layers] as a patch file merges: the spec's
    own patterns first (the first that matches a layer wins), then the patch's."""
    layers = {**spec.precision.layers, **{k: v for k, v in patch.items() if k not in spec.precision.layers}}
    precision = spec.precision.model_copy(update={"layers": layers})
    return spec.model_copy(update={"precision": precision})


def fixed(outcome: CheckOutcome) -> bool:
    """The check passes and nothing inside an attention layer overflows or comes near it."""
    attention = next((f for f in outcome.findings if f.name == "attention_headroom"), None)
    return outcome.exit_code == exits.COMPLETED and (attention is None or attention.passed)


def fix_experiment(spec: ExperimentSpec, spec_path: Path, timing_steps: int = 5) -> FixOutcome:
    """Check the spec; while an attention layer overflows, take the first (the cause: later ones may
    only carry its inf) and try its candidates, smallest first, each checked without timing, keeping
    the first that removes that layer's overflow. The override that leaves none is checked again as
    the run would be (timed as asked), the spec under mixed_bfloat16 beside it, and written beside
    the spec as a patch; the spec itself is never edited."""
    refused = compat.needs_keras_3("runner check --fix (its fixes are [precision.layers] overrides)")
    if refused:
        raise SpecValueError(refused)
    before = check_experiment(spec, timing_steps)
    outcome, current = FixOutcome(exits.CHECK_FAILED, before), before
    for _ in range(len(attention_layers(before))):
        offending = overflowing_attention(current)
        if not offending:
            break
        found = _remove_overflow(spec, outcome, offending[0])
        if found is None:
            outcome.reason = (
                f"no float32 override of {offending[0]} removed its overflow ({len(outcome.tried)} tried): "
                "see the checks"
            )
            break
        current = found
    if not outcome.tried:
        outcome.exit_code = before.exit_code
        outcome.reason = (
            "nothing inside an attention layer overflows: no override to propose"
            if attention_layers(before)
            else "the model has no attention layer whose values the probe measures: no override to propose"
        )
    elif fixed(current):
        outcome.after = check_experiment(patched(spec, outcome.patch), timing_steps)
        outcome.exit_code = outcome.after.exit_code
        outcome.patch_file = write_patch(
            spec_path, outcome.patch, list(dict.fromkeys(_fixed_layers(outcome)))
        )
    if spec.precision.policy != "mixed_bfloat16":
        outcome.bfloat16 = check_experiment(with_policy(spec, "mixed_bfloat16"), timing_steps)
    return outcome


def _remove_overflow(spec: ExperimentSpec, outcome: FixOutcome, layer: str) -> CheckOutcome | None:
    """Try `layer`'s candidates on top of the patch so far; the first after which `layer` no longer
    overflows joins the patch, and its check is returned (None: none of them did)."""
    for proposal in candidates(layer):
        patch = {**outcome.patch, **proposal}
        tried = check_experiment(patched(spec, patch), timing_steps=0)
        outcome.tried.append((patch, tried.exit_code))
        if layer not in overflowing_attention(tried):
            outcome.patch = patch
            return tried
    return None


def _fixed_layers(outcome: FixOutcome) -> list[str]:
    return [pattern.removesuffix("/*").removesuffix("/softmax*") for pattern in outcome.patch]


def patch_path(spec_path: Path) -> Path:
    return spec_path.with_name(f"{spec_path.stem}.fix.toml")


def patch_text(spec_path: Path, patch: dict[str, str], offending: list[str]) -> str:
    import tomli_w

    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = [
        f"# Written by `runner check {spec_path} --fix` ({when}).",
        "# The smallest [precision.layers] override found that removes the overflow in:",
        *(f"#   {layer}" for layer in offending),
        "# proven by checking the spec again with it. The spec is not edited; apply the patch:",
        f"#   runner run {spec_path} --patch {patch_path(spec_path)}",
    ]
    return "\n".join(header) + "\n" + tomli_w.dumps({"precision": {"layers": patch}})


def write_patch(spec_path: Path, patch: dict[str, str], offending: list[str]) -> Path:
    target = patch_path(spec_path)
    target.write_text(patch_text(spec_path, patch, offending), encoding="utf-8")
    return target


def step_ms(outcome: CheckOutcome | None, policy: str) -> float | None:
    """The measured step time of `policy` as the check would run it (its XLA choice), else None."""
    if outcome is None or not outcome.speed:
        return None
    used = (outcome.speed.get("xla") or {}).get("used")
    rows = [t for t in outcome.speed.get("timings", []) if t.get("policy") == policy and t.get("step_ms")]
    chosen = [t for t in rows if t.get("xla") == used] or rows
    return min((t["step_ms"] for t in chosen), default=None)


def first_overflow(outcome: CheckOutcome | None) -> dict[str, Any] | None:
    """The first tensor inside a layer that overflows or comes near it, or None."""
    if outcome is None:
        return None
    internals = (outcome.audit.get("numerics") or {}).get("internals") or []
    over, near = checks.headroom_misses(internals)
    return dict((over or near)[0]) if over or near else None


def bfloat16_verdict(outcome: FixOutcome, policy: str) -> str | None:
    """When mixed_bfloat16 is the better answer, say so with the measurements: it passes unpatched,
    and its step is no slower than the patched spec's (or nothing was found to patch)."""
    bf16 = outcome.bfloat16
    if bf16 is None or not fixed(bf16):
        return None
    mine, theirs = step_ms(outcome.after or outcome.before, policy), step_ms(bf16, "mixed_bfloat16")
    if outcome.after is None:
        if fixed(outcome.before):
            return None  # nothing to answer
        return 'mixed_bfloat16 passes this check without any override: precision.policy = "mixed_bfloat16"'
    if mine is None or theirs is None:
        return None
    if theirs <= mine:
        return (
            f"mixed_bfloat16 needs no override and its step is {theirs:.1f} ms against the patched "
            f'spec\'s {mine:.1f} ms here: precision.policy = "mixed_bfloat16" is the better answer on '
            "this machine"
        )
    return (
        f"mixed_bfloat16 needs no override but its step is {theirs:.1f} ms against the patched spec's "
        f"{mine:.1f} ms here: the patch is the faster answer on this machine"
    )
