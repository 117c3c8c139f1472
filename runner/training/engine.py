"""runner's own training loop on a tf.distribute strategy: one path for one device, several devices
(MirroredStrategy) and several machines (MultiWorkerMirroredStrategy), where Keras 3's `fit` cannot
go (keras-team/keras#20585).

An *execution* is `n` training steps inside one tf.function (a tf.range loop, like Keras' steps per
execution), each step Keras' own `train_step` run on every replica by `strategy.run`: the model's loss,
metrics and LossScaleOptimizer do what they do under `fit`. Each execution also records the loss
scale and the count of applied steps after every step, so the telemetry places every skipped step
however many steps an execution runs. Metrics are read across replicas (and workers) after each
execution; evaluation runs `test_step` the same way. n is a tensor: a shorter last execution of an
epoch reuses the trace.

Importing this module imports TensorFlow (through compat): the session imports it when it trains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner import compat
from runner.spec import DistributionSpec, SpecValueError
from runner.training.distribution import Role, rendezvous

tf: Any = compat.tensorflow()


@dataclass(frozen=True)
class StepRecord:
    """After each step of one execution: the learning rate the optimizer reported using, and (empty
    without loss scaling) the loss scale and the number of steps applied so far (a
    LossScaleOptimizer skips a step with non-finite gradients)."""

    rates: np.ndarray
    scales: np.ndarray
    applied: np.ndarray

    def __len__(self) -> int:
        return len(self.rates)


class Engine:
    """Train and evaluate `model` (compiled, built under `strategy.scope()`) on `strategy`."""

    def __init__(self, model: Any, strategy: Any, *, jit_compile: bool = False, workers: int = 1):
        self.model, self.strategy, self.workers, self.jit_compile = model, strategy, workers, jit_compile
        self._scale_state = compat.loss_scale_state(model.optimizer)
        self.retrace()
        self._evaluate = tf.function(self._evaluation)
        self._read = tf.function(model.get_metrics_result)

    def retrace(self) -> None:
        """A new training execution, traced at its first call: after the model's trainable variables
        changed (a frozen base set to train), which a traced step would not see."""
        step = self.model.train_step
        if self.jit_compile:  # XLA compiles each replica's step, as Keras' `fit` does
            step = tf.function(step, jit_compile=True, reduce_retracing=True)
        local = compat.replica_local_state(self.model)
        self._train = self._training(_averaging(step, local) if local else step)
        self._traced = False

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def distribute(self, dataset: Any) -> Any:
        """The dataset (batched to the global batch) split across replicas and, by elements, across
        workers: every worker reads the same pipeline and keeps its share of each batch."""
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def _training(self, step: Any) -> Any:
        strategy, state, optimizer = self.strategy, self._scale_state, self.model.optimizer
        rate = compat.learning_rate_variable(optimizer)

        @tf.function(reduce_retracing=True)
        def execution(iterator: Any, rates: Any) -> Any:
            n = tf.shape(rates)[0]
            used = tf.TensorArray(tf.float32, size=n, element_shape=())
            scales = tf.TensorArray(tf.float32, size=n if state else 0, element_shape=())
            applied = tf.TensorArray(tf.int64, size=n if state else 0, element_shape=())
            for i in tf.range(n):
                rate.assign(rates[i])
                strategy.run(step, args=(next(iterator),))
                # What the optimizer says it used (its public rate), not what was assigned: a rate
                # its update does not read (a schedule object of its own) shows up as a difference.
                used = used.write(i, tf.cast(compat.learning_rate(optimizer), tf.float32))
                if state:
                    scales = scales.write(i, tf.cast(state[0], tf.float32))
                    applied = applied.write(i, tf.cast(state[1], tf.int64))
            return used.stack(), scales.stack(), applied.stack()

        return execution

    def train(self, iterator: Any, rates: np.ndarray) -> StepRecord:
        """Run len(rates) training steps from `iterator` (a distributed dataset's) in one execution,
        step i with the learning rate rates[i] (none: the execution is traced and made ready)."""
        if not self._traced:  # for any number of steps: a first trace for n = 1 would be redone for 2
            self._train.get_concrete_function(iterator, tf.TensorSpec([None], tf.float32))
            self._traced = True
        used, scales, applied = self._train(iterator, tf.constant(rates, tf.float32))
        return StepRecord(used.numpy(), scales.numpy(), applied.numpy())

    def metrics(self) -> dict[str, float]:
        """The compiled metrics' running values, reduced over every replica and worker."""
        return {k: float(v) for k, v in self._read().items()}

    def _evaluation(self, dataset: Any) -> None:
        for batch in dataset:
            self.strategy.run(self.model.test_step, args=(batch,))

    def evaluate(self, distributed: Any) -> dict[str, float]:
        """Loss and metrics over a whole (distributed) dataset; the training metrics are reset."""
        self.model.reset_metrics()
        self._evaluate(distributed)
        result = self.metrics()
        self.model.reset_metrics()
        return result

    def agree(self, stop: bool, chief_steps: int, is_chief: bool) -> tuple[bool, int]:
        """Across workers: whether any asks to stop, and the chief's steps for the next execution
        (every worker must run the same steps between two collectives)."""
        if self.workers == 1:
            return stop, chief_steps
        values = np.array([float(stop), float(chief_steps if is_chief else 0)])
        stop_votes, steps = all_sum(self.strategy, values, self.workers)
        return stop_votes > 0, int(round(steps))


def _averaging(step: Any, local: list[Any]) -> Any:
    """`step`, then each replica's own state (BatchNormalization's moving statistics) averaged over
    every replica: the replicas keep one model, as one device would (the mean of equal per-replica
    batch means is the global batch's mean), and a checkpoint holds all of it."""

    def step_and_average(data: Any) -> Any:
        logs = step(data)
        with tf.control_dependencies(tf.nest.flatten(logs)):
            values = [tf.identity(tf.convert_to_tensor(v)) for v in local]
        averaged = tf.distribute.get_replica_context().all_reduce("MEAN", values)
        for variable, value in zip(local, averaged, strict=True):
            variable.assign(value)
        return logs

    return step_and_average


def weights_digest(model: Any) -> str:
    """SHA-256 of the model's variables as this process holds them (the first local replica's copy)."""
    digest = hashlib.sha256()
    for variable in compat.model_variables(model):
        digest.update(np.ascontiguousarray(_local(variable)[0]).tobytes())
    return digest.hexdigest()


def _local(variable: Any) -> list[np.ndarray]:
    """The values of a variable's copies on this worker's devices (one for a plain variable)."""
    inner = getattr(variable, "value", variable)  # Keras 3 wraps the tf.Variable
    if callable(inner):  # Keras 2: the variable is the tf.Variable (`value` is a method)
        inner = variable
    copies = getattr(inner, "values", None)  # a distributed variable: one per local device
    if isinstance(copies, tuple) and copies:
        return [np.asarray(c.numpy()) for c in copies]
    return [np.asarray(variable.numpy())]


def replicas_differing(model: Any) -> list[str]:
    """The model variables whose copies on this worker's devices differ (mirrored training keeps
    them equal; a difference is a bug in the strategy or the model)."""
    differing = []
    for variable in compat.model_variables(model):
        copies = _local(variable)
        if any(not np.array_equal(copies[0], c, equal_nan=True) for c in copies[1:]):
            differing.append(compat.variable_path(variable))
    return differing


_MULTI_WORKER: dict[str, Any] = {}  # TensorFlow joins a cluster once per process
# One MirroredStrategy per device set and process: a second one's collectives reuse the first one's
# instance keys (measured: "Shape mismatch in the collective instance" on the next run in a process).
_MIRRORED: dict[tuple[str, ...], Any] = {}


def make_strategy(distribution: DistributionSpec, role: Role, device: str) -> Any:
    """The tf.distribute strategy of the spec's `[distribution]` (the default one for "none")."""
    if distribution.strategy == "none":
        return tf.distribute.get_strategy()
    if distribution.strategy == "mirrored":
        devices = tuple(_mirrored_devices(distribution.replicas, device))
        if devices not in _MIRRORED:
            _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
        return _MIRRORED[devices]
    assert role.cluster is not None  # role_for reads it for multi_worker
    key = role.cluster.to_tf_config()
    if key not in _MULTI_WORKER:
        if _MULTI_WORKER:
            raise SpecValueError(
                "distribution: this process has joined another cluster already; TensorFlow joins one "
                "per process (run each multi-worker run in its own process, as `runner run` does)"
            )
        rendezvous(role.cluster, distribution.peer_timeout_s)
        cluster = role.cluster
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster.cluster), task_type=cluster.task_type, task_id=cluster.task_index
        )
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=distribution.peer_timeout_s)
        _MULTI_WORKER[key] = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
    return _MULTI_WORKER[key]


def _mirrored_devices(replicas: int | None, device: str) -> list[str]:
    """Every visible GPU (or `replicas` of them); without GPUs, the CPU split into `replicas` logical
    devices, which TensorFlow allows only before it starts its runtime."""
    gpus = tf.config.list_physical_devices("GPU") if device != "cpu" else []
    if gpus:
        count = replicas or len(gpus)
        if count > len(gpus):
            raise SpecValueError(
                f"distribution.replicas: expected at most {len(gpus)} (the visible GPUs); got {count}"
            )
        return [f"/gpu:{i}" for i in range(count)]
    count = replicas or 1
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = len(tf.config.get_logical_device_configuration(cpu) or [None])
    if current != count:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
            )
        except RuntimeError:
            raise SpecValueError(
                f"distribution.replicas: {count} CPU replicas split the CPU into logical devices, which "
                f"TensorFlow allows only before it starts; this process started it with {current}: "
                "run the spec in a new process (`runner run` is one)"
            ) from None
    return [f"/cpu:{i}" for i in range(count)]


def all_sum(strategy: Any, values: np.ndarray, workers: int) -> np.ndarray:
    """`values` summed over the workers (each worker's counted once, however many devices it has)."""
    if workers == 1:
        return values
    per_replica = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(values))
    summed = strategy.reduce("SUM", per_replica, axis=None).numpy()
    return summed / (strategy.num_replicas_in_sync // workers)


def broadcast_text(strategy: Any, text: str | None, workers: int, size: int = 4096) -> str:
    """The chief's `text` on every worker (the others pass None): a sum over workers where only the
    chief's bytes are not zero."""
    data = np.zeros(size, np.float64)
    if text is not None:
        encoded = text.encode("utf-8")[:size]
        data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    summed = all_sum(strategy, data, workers).round().astype(np.uint8)
    return bytes(summed[summed > 0]).decode("utf-8", errors="replace")
