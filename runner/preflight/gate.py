"""What every run, resume and check does before training, in this order of scopes: the device and
strategy, the dtype policy in force while the model is built, the seeds and deterministic ops
(`training_scope`); the model from the spec (`build`); and the gate (`preflight`): the audit of
every layer, one probed training step, and the numerics against a float32 copy.

Imports TensorFlow only inside its functions. The session decides when each runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from runner import compat
from runner.data.sources import Source
from runner.precision import checks
from runner.precision import policy as precision
from runner.spec import ExperimentSpec, PrecisionSpec
from runner.training import loop


@contextlib.contextmanager
def device_scope(device: str, strategy: Any = None) -> Iterator[Any]:
    """Enter the run's tf.distribute strategy's scope (the default strategy's, placed on the spec's
    device, unless a distributed one is given: that one places its replicas)."""
    tf = compat.tensorflow()
    one_device = strategy is None
    placement = tf.device("/CPU:0") if device == "cpu" and one_device else contextlib.nullcontext()
    strategy = strategy or tf.distribute.get_strategy()
    with placement, strategy.scope():
        yield strategy


@contextlib.contextmanager
def training_scope(spec: ExperimentSpec, strategy: Any = None) -> Iterator[None]:
    """Everything a model is built and trained inside, the same for run, resume and check: the device
    and strategy, the dtype policy (restored after), the seeds, and deterministic ops if asked."""
    with (
        device_scope(spec.runtime.device, strategy),
        precision.policy_scope(spec.precision.policy),
        precision.seeded(spec.seed),
        compat.op_determinism(spec.runtime.deterministic),
    ):
        yield


def compiled_as(spec: ExperimentSpec, xla: bool) -> ExperimentSpec:
    """The spec with its jit_compile resolved (the spec written to the run directory keeps "auto")."""
    return spec.model_copy(update={"training": spec.training.model_copy(update={"jit_compile": xla})})


def with_policy(spec: ExperimentSpec, policy: str) -> ExperimentSpec:
    """The spec under another policy, everything else (loss scaling, output dtype) as it is."""
    return spec.model_copy(update={"precision": spec.precision.model_copy(update={"policy": policy})})


def build(spec: ExperimentSpec, splits: Source) -> tuple[Any, Any]:
    """Model, optimizer and compile: call inside the policy scope."""
    return loop.build_for_training(spec, splits.input_shape, splits.num_classes)


def ready_to_train(model: Any, splits: Source) -> None:
    """The optimizer's and metrics' variables made now (loop.ready_to_train), on one example."""
    loop.ready_to_train(model, *splits.first_batch(1))


def preflight(
    model: Any, optimizer: Any, spec: ExperimentSpec, splits: Source, xla_auto: bool = False
) -> tuple[dict, list, dict[str, Any]]:
    """Audit the built model and probe one training step on a real batch: the run's gate.
    Returns the audit, the findings, and the probe (loss, gradients, its time). `xla_auto`: XLA
    was chosen by "auto", so a model XLA cannot compile is probed (and trained) without it; the
    probe then says why in "xla_refused"."""
    audit = precision.audit_model(model, optimizer, spec.precision.layers)
    found = checks.preflight_findings(audit, spec.precision, spec.checks, spec.data.batch_size)
    x, y = splits.first_batch(spec.data.batch_size)
    xla = spec.training.jit_compile is True
    try:
        probe = precision.first_step_probe(model, x, y, jit_compile=xla)
    except compat.tensorflow().errors.OpError as exc:
        if not (xla and xla_auto):
            raise
        probe = precision.first_step_probe(model, x, y, jit_compile=False)
        probe["xla_refused"] = str(exc).strip().splitlines()[0]
    audit["numerics"] = numerics(model, spec, splits)
    audit["numerics"]["probe_compiled"] = probe["compiled"]
    found += checks.first_step_findings(probe)
    return audit, found + checks.numerics_findings(audit["numerics"], spec.precision, spec.checks), probe


def numerics(model: Any, spec: ExperimentSpec, splits: Source) -> dict[str, Any]:
    """Gradient fidelity against a float32 copy of the model and activation headroom, on the
    probe's batch (fidelity.numerics_probe); skipped under float32 (the reference itself) and
    under a distributed strategy (the probe's replicated step covers that)."""
    from runner.precision import fidelity

    if spec.precision.policy == "float32":
        return {"skipped": "float32 is the reference precision"}
    if compat.tensorflow().distribute.has_strategy():
        return {"skipped": "not measured under a distributed strategy"}
    start = time.perf_counter()
    reference_spec = spec.model_copy(update={"precision": PrecisionSpec(policy="float32")})
    with precision.policy_scope("float32"), precision.built_aside():
        reference, _ = build(reference_spec, splits)
    found = fidelity.numerics_probe(model, reference, *splits.first_batch(spec.data.batch_size))
    found["seconds"] = round(time.perf_counter() - start, 3)
    return found
