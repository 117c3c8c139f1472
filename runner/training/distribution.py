"""Cluster membership for multi-worker training, as TensorFlow's contract has it: the `TF_CONFIG`
environment variable (what Kubeflow's TFJob, Ray Train and Vertex AI set), a Slurm job step's variables
laid out as TensorFlow's SlurmClusterResolver lays them out (whose own use needs a GPU on every node),
TensorFlow's chief rule, and a `TF_CONFIG` per process for a cluster on one machine (127.0.0.1).

A `TF_CONFIG` that is not what MultiWorkerMirroredStrategy can use is bad input: one message saying
what was expected and what was found, before TensorFlow starts a server and waits on peers. Parsing
and the chief rule are plain Python (no TensorFlow), so they are checked before anything is loaded.
The session asks it for this process's role, and (before TensorFlow joins the cluster, which has no
bound of its own) for a bounded rendezvous of the workers.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
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

    def address_of(self, rank: int) -> str:
        """The address of the worker of that rank (the chief's 0, then the workers in order)."""
        return [a for kind in TRAINING_TASKS for a in self.cluster.get(kind, [])][rank]

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


MAX_NODES = 65_536  # more than any Slurm step has: a longer node list is a mistake, not a cluster
HOSTLIST_EXAMPLE = '"n[1-2],m5,o[08-10]"'
_RANGES = re.compile(r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*")


def _hostlist_error(variable: str, hostlist: str, why: str) -> ClusterError:
    shown = hostlist if len(hostlist) <= 80 else hostlist[:77] + "..."
    return ClusterError(
        f'Slurm: {variable}: expected a node list like {HOSTLIST_EXAMPLE}; got "{shown}" ({why})'
    )


def _host_groups(part: str, fail: Callable[[str], ClusterError]) -> list[list[str]]:
    """One host expression ("rack[1-2]-n[01-04]") as the lists of strings whose product it is."""
    groups: list[list[str]] = []
    for piece in re.split(r"(\[[^\[\]]*\])", part):
        if not piece.startswith("["):
            if "[" in piece or "]" in piece:
                raise fail("unbalanced brackets")
            groups.append([piece])
            continue
        inside = piece[1:-1]
        if _RANGES.fullmatch(inside) is None:
            raise fail(f"[{inside}]: expected numbers and ranges like [1-3,7]")
        values: list[str] = []
        for item in inside.split(","):
            first, _, last = item.partition("-")
            low, high = int(first), int(last or first)
            if high < low:
                raise fail(f"[{item}]: a range from high to low")
            if high - low + 1 > MAX_NODES:
                raise fail(f"more than {MAX_NODES:,} nodes")
            values += [f"{n:0{len(first)}d}" for n in range(low, high + 1)]  # o[08-10]: o08 o09 o10
        groups.append(values)
    return groups


def expand_hostlist(hostlist: str, variable: str = "SLURM_STEP_NODELIST") -> list[str]:
    """Slurm's compressed node list, in order: "n[1-2],m5,o[08-10]" → n1 n2 m5 o08 o09 o10 (and
    "r[1-2]-n[1-2]" → r1-n1 r1-n2 r2-n1 r2-n2). Counted before it is expanded: at most MAX_NODES;
    anything malformed is one ClusterError."""

    def fail(why: str) -> ClusterError:
        return _hostlist_error(variable, hostlist, why)

    if hostlist.count("[") != hostlist.count("]"):
        raise fail("unbalanced brackets")
    parts = re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist)
    if not parts or ",".join(parts) != hostlist or not all(parts):
        raise fail("an empty node name")
    planned = [_host_groups(part, fail) for part in parts]
    if sum(math.prod(len(g) for g in groups) for groups in planned) > MAX_NODES:
        raise fail(f"more than {MAX_NODES:,} nodes")
    return ["".join(names) for groups in planned for names in itertools.product(*groups)]


def expand_tasks_per_node(text: str) -> list[int]:
    """Slurm's tasks per node: "2(x3),1" → 2, 2, 2, 1 (for at most MAX_NODES nodes)."""
    counts: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if match is None:
            raise ClusterError(
                f'Slurm: SLURM_STEP_TASKS_PER_NODE: expected counts like "2(x3),1"; got "{text[:80]}"'
            )
        repeat = int(match.group(2) or 1)
        if len(counts) + repeat > MAX_NODES:
            raise ClusterError(
                f"Slurm: SLURM_STEP_TASKS_PER_NODE: expected counts for at most {MAX_NODES:,} nodes; "
                f'got "{text[:80]}"'
            )
        counts += [int(match.group(1))] * repeat
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
        raise ClusterError(
            f"Slurm: SLURM_STEP_NODELIST names {len(nodes)} node(s) and SLURM_STEP_TASKS_PER_NODE counts "
            f"tasks for {len(per_node)}; expected one count per node "
            f'(got "{environ["SLURM_STEP_NODELIST"][:80]}" and "{environ["SLURM_STEP_TASKS_PER_NODE"][:80]}")'
        )
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


@dataclass(frozen=True)
class Role:
    """This process's part in a run: the strategy, and on several workers which one it is. Only the
    chief writes the run directory; a single process is its own chief."""

    strategy: str = "none"
    cluster: ClusterConfig | None = None

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def rank(self) -> int:
        return 0 if self.cluster is None else self.cluster.worker_rank

    @property
    def workers(self) -> int:
        return 1 if self.cluster is None else self.cluster.num_workers

    def describe(self) -> str:
        if self.cluster is None:
            return "this process"
        return f"worker {self.rank} ({self.cluster.task_type}:{self.cluster.task_index})"


def role_for(strategy: str, cluster: str, environ: Mapping[str, str] = os.environ) -> Role:
    """The role the spec's `[distribution]` gives this process (its cluster read from the environment)."""
    if strategy != "multi_worker":
        return Role(strategy)
    return Role(strategy, from_environment(cluster, environ))


RENDEZVOUS_HELLO = b"runner-rendezvous "


def _own_address(config: ClusterConfig) -> tuple[str, int]:
    host, port = config.cluster[config.task_type][config.task_index].rsplit(":", 1)
    host = host.strip("[]")
    literal = re.fullmatch(r"[0-9.]+|[0-9A-Fa-f:]+", host) is not None
    return (host if literal else "", int(port))  # a name: every interface (the cluster's resolves it)


def _peers(config: ClusterConfig) -> dict[int, tuple[str, int]]:
    ranked = [a for kind in TRAINING_TASKS for a in config.cluster.get(kind, [])]
    peers = {}
    for rank, address in enumerate(ranked):
        if rank != config.worker_rank:
            host, port = address.rsplit(":", 1)
            peers[rank] = (host.strip("[]"), int(port))
    return peers


def rendezvous(config: ClusterConfig, timeout_s: float) -> None:
    """Wait, at most `timeout_s`, until every worker of the cluster is up: each listens on its own
    address and says hello to every other. TensorFlow's own join has no bound (a worker that never
    starts keeps the others waiting for ever), so this bounded one comes first; a missing worker is
    one ClusterError naming it. The listening socket is closed before TensorFlow takes the port."""
    deadline = time.monotonic() + timeout_s
    peers = _peers(config)
    heard: set[int] = set()
    reached: set[int] = set()
    with socket.socket(socket.AF_INET6 if ":" in _own_address(config)[0] else socket.AF_INET) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(_own_address(config))
        server.listen(len(peers) + 4)
        server.settimeout(0.2)
        while heard != set(peers) or reached != set(peers):
            if time.monotonic() > deadline:
                missing = sorted(set(peers) - (heard & reached))
                raise ClusterError(
                    f"TF_CONFIG: worker {config.worker_rank} waited {timeout_s:g} s "
                    f"(distribution.peer_timeout_s) for the cluster; worker(s) "
                    f"{', '.join(f'{r} ({peers[r][0]}:{peers[r][1]})' for r in missing)} did not join"
                )
            reached |= {r for r in set(peers) - reached if _hello(peers[r], config.worker_rank)}
            heard |= _accept_hellos(server)


def _hello(address: tuple[str, int], rank: int) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5) as connection:
            connection.sendall(RENDEZVOUS_HELLO + str(rank).encode() + b"\n")
        return True
    except OSError:
        return False


def _accept_hellos(server: socket.socket) -> set[int]:
    """The ranks that said hello (a peer's TensorFlow already probing this port is not one)."""
    heard = set()
    try:
        while True:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(0.5)
                try:
                    message = connection.recv(64)
                except OSError:
                    continue
                if message.startswith(RENDEZVOUS_HELLO):
                    heard.add(int(message[len(RENDEZVOUS_HELLO) :].strip() or -1))
    except (TimeoutError, BlockingIOError):
        return heard
