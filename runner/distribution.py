"""Cluster membership for multi-worker training, as TensorFlow's contract has it: the `TF_CONFIG`
environment variable (what Kubeflow's TFJob, Ray Train and Vertex AI set), a Slurm job step's variables
laid out as TensorFlow's SlurmClusterResolver lays them out (whose own use needs a GPU on every node),
TensorFlow's chief rule, and a `TF_CONFIG` per process for a cluster on one machine (127.0.0.1).

A `TF_CONFIG` that is not what MultiWorkerMirroredStrategy can use is bad input: one message saying
what was expected and what was found, before TensorFlow starts a server and waits on peers. Parsing
and the chief rule are plain Python (no TensorFlow), so they are checked before anything is loaded.
Nothing trains through this module yet: issue 17's strategies are to build on it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.spec import BadInput

TRAINING_TASKS = ("chief", "worker")  # what MultiWorkerMirroredStrategy trains with
ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")  # host:port, [v6]:port


class ClusterError(BadInput):
    """A cluster description runner cannot train with: exit 2, one message."""


@dataclass(frozen=True)
class ClusterConfig:
    """Who is in the cluster (task type → "host:port" addresses) and which task this process is."""

    cluster: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.cluster.get(kind, [])) for kind in TRAINING_TASKS)

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule (multi_worker_util.is_chief): the `chief` task if there is one, else worker 0.
        Only the chief writes the run directory."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def worker_rank(self) -> int:
        """0 for the chief, then the workers in order: a name for `workers/worker-<rank>.json`."""
        chiefs = len(self.cluster.get("chief", []))
        return self.task_index if self.task_type == "chief" else chiefs + self.task_index

    def to_tf_config(self) -> str:
        return json.dumps(
            {"cluster": self.cluster, "task": {"type": self.task_type, "index": self.task_index}}
        )


def _fail(detail: str) -> ClusterError:
    return ClusterError(f"TF_CONFIG: {detail}")


def _cluster(raw: Any) -> dict[str, list[str]]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(f"cluster: expected a table of task types to address lists; got {json.dumps(raw)[:80]}")
    other = sorted(set(raw) - set(TRAINING_TASKS))
    if other:
        raise _fail(
            f"cluster: expected only {' and '.join(TRAINING_TASKS)} tasks (MultiWorkerMirroredStrategy); "
            f"got {', '.join(other)} (parameter servers and evaluators are not supported)"
        )
    for kind, addresses in raw.items():
        if not isinstance(addresses, list) or not addresses:
            raise _fail(
                f'cluster.{kind}: expected a non-empty list of "host:port"; got {json.dumps(addresses)}'
            )
        bad = [
            a
            for a in addresses
            if not (isinstance(a, str) and ADDRESS.match(a) and int(a.rsplit(":", 1)[1]) < 65536)
        ]
        if bad:
            raise _fail(f'cluster.{kind}: expected "host:port" addresses; got {json.dumps(bad[0])}')
    if len(raw.get("chief", [])) > 1:
        raise _fail(f"cluster.chief: expected at most one chief; got {len(raw['chief'])}")
    everyone = [a for kind in TRAINING_TASKS for a in raw.get(kind, [])]
    if len(set(everyone)) != len(everyone):
        raise _fail(
            f"cluster: expected every task at its own address; {_first_repeat(everyone)} appears twice"
        )
    return {kind: list(raw[kind]) for kind in TRAINING_TASKS if kind in raw}


def _first_repeat(values: list[str]) -> str:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return ""


def _task(raw: Any, cluster: dict[str, list[str]]) -> tuple[str, int]:
    if not isinstance(raw, dict):
        raise _fail(f'task: expected {{"type": ..., "index": ...}}; got {json.dumps(raw)}')
    kind, index = raw.get("type"), raw.get("index", 0)
    if kind not in cluster:
        raise _fail(f"task.type: expected one of {', '.join(cluster)}; got {json.dumps(kind)}")
    if type(index) is not int or not 0 <= index < len(cluster[kind]):
        count = len(cluster[kind])
        raise _fail(
            f"task.index: expected 0..{count - 1} for the {count} {kind} task(s) of the cluster; "
            f"got {json.dumps(index)}"
        )
    return kind, index


def parse_tf_config(text: str | None) -> ClusterConfig:
    """The cluster and this process's task from `TF_CONFIG`'s text; every mistake is one ClusterError."""
    if text is None or not text.strip():
        raise ClusterError(
            "TF_CONFIG is not set: multi-worker training needs the cluster it describes. A cluster manager "
            "sets it for each process (Kubeflow TFJob, Ray Train, Vertex AI); under Slurm, its variables "
            "can stand in for it"
        )
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"expected JSON; {exc.msg} at character {exc.pos}") from None
    if not isinstance(raw, dict):
        raise _fail(f'expected {{"cluster": ..., "task": ...}}; got {json.dumps(raw)[:80]}')
    cluster = _cluster(raw.get("cluster"))
    kind, index = _task(raw.get("task"), cluster)
    return ClusterConfig(cluster, kind, index)


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed node list, in order: "n[1-2],m5,o[08-10]" → n1 n2 m5 o08 o09 o10."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", hostlist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if match is None:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            first, _, last = item.partition("-")
            width = len(first)  # zero padding: o[08-10] → o08, o09, o10
            hosts += [f"{prefix}{n:0{width}d}{suffix}" for n in range(int(first), int(last or first) + 1)]
    return hosts


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm's tasks per node: "2(x3),1" → 2, 2, 2, 1."""
    counts: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match is None:
            raise ClusterError(
                f'Slurm: SLURM_STEP_TASKS_PER_NODE: expected counts like "2(x3),1"; got "{text}"'
            )
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


SLURM_PORT_BASE = 8888  # TensorFlow's SlurmClusterResolver's: task i of a node listens on base + i


def _slurm_cluster(environ: Mapping[str, str]) -> dict[str, Any]:
    """The TF_CONFIG of a Slurm job step, laid out as TensorFlow's SlurmClusterResolver does it (nodes in
    sorted order, tasks packed per node, ports from 8888); GPUs are left to Slurm (--gpus-per-task)."""
    try:
        rank = int(environ["SLURM_PROCID"])
        nodes = expand_hostlist(environ["SLURM_STEP_NODELIST"])
        per_node = expand_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])
    except KeyError as exc:
        raise ClusterError(f"Slurm: {exc.args[0]} is not set; expected a process started by srun") from None
    except ValueError:
        raise ClusterError(
            f"Slurm: SLURM_PROCID: expected a number; got {environ['SLURM_PROCID']!r}"
        ) from None
    if len(nodes) != len(per_node):
        raise ClusterError(f"Slurm: {len(nodes)} nodes but tasks per node for {len(per_node)}")
    layout = sorted(zip(nodes, per_node, strict=True))
    addresses = [f"{node}:{SLURM_PORT_BASE + i}" for node, count in layout for i in range(count)]
    return {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": rank}}


def from_environment(kind: str, environ: Mapping[str, str] = os.environ) -> ClusterConfig:
    """This process's cluster: from TF_CONFIG, or ("slurm") from the Slurm job step's variables,
    checked the same way."""
    if kind == "tf_config":
        return parse_tf_config(environ.get("TF_CONFIG"))
    return parse_tf_config(json.dumps(_slurm_cluster(environ)))


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` ports free on `host` now (the OS picks them; all held until all are picked)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(workers: int, host: str = "127.0.0.1") -> list[ClusterConfig]:
    """One TF_CONFIG per process of a cluster of `workers` on this machine (worker 0 is the chief)."""
    if workers < 1:
        raise ClusterError(f"--workers: expected at least 1; got {workers}")
    addresses = [f"{host}:{port}" for port in free_ports(workers, host)]
    return [ClusterConfig({"worker": addresses}, "worker", index) for index in range(workers)]
