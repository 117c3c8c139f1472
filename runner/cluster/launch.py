"""`runner launch`: one spec trained by N worker processes on this machine, for trying multi-worker
training and for testing it. Real clusters start their workers themselves and set `TF_CONFIG`
(Slurm, Kubernetes, Ray, Vertex AI: docs/distributed.md); this sets it the same way, on 127.0.0.1.

Worker 0 is the chief: its output (progress, the report) is this command's; the others' goes to a
log file each, named if they fail. Ctrl-C or SIGTERM is passed to every worker once per time it is
received (the first: all stop at the same step and the chief checkpoints; a second: at once). The
exit code is the chief's. Once the chief has exited, the others get PEER_EXIT_GRACE_S to follow,
then are killed: no process is left waiting on a peer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner import exits, processes
from runner.spec import BadInput, load_plan, load_spec
from runner.sweeps import sigterm_as_interrupt
from runner.training.distribution import local_cluster

PEER_EXIT_GRACE_S = 60.0
POLL_S = 0.2  # how often the workers' exits are looked at (Popen.wait with a timeout: no busy loop)
STOP_TIMEOUT_S = 300.0  # workers asked to stop checkpoint first; past this they are killed


def worker_command(target: Path, output: Path, overrides: list[str]) -> list[str]:
    """The `runner` command every worker runs: `run` for a spec (as multi_worker, from TF_CONFIG),
    `resume` for a run directory. Bad input is found here, once, not by N workers at once."""
    if target.is_dir():
        if overrides:
            raise BadInput(
                f"--set: a resumed run keeps its spec ({target / 'spec.toml'}); got {overrides[0]}"
            )
        spec = load_spec(target / "spec.toml")
        if spec.distribution.strategy != "multi_worker":
            raise BadInput(
                f"{target}: distribution.strategy: expected a multi_worker run to resume on several workers; "
                f'got "{spec.distribution.strategy}" (resume it with `runner resume`)'
            )
        return ["resume", str(target)]
    settings = [*overrides, "distribution.strategy=multi_worker", "distribution.cluster=tf_config"]
    plan = load_plan(target, settings)
    if len(plan) > 1:
        raise BadInput(f"{target}: expected one experiment to launch; got a plan of {len(plan)} (a [sweep])")
    return ["run", str(target), "--output", str(output), *(f"--set={s}" for s in settings)]


def launch(target: Path, workers: int, output: Path, overrides: list[str]) -> int:
    """Start the workers, wait for them (bounded: see the module's docstring); the chief's exit code."""
    command = worker_command(target, output, overrides)
    configs = local_cluster(workers)
    with tempfile.TemporaryDirectory(prefix="runner-launch-") as logs:
        children = [
            _start(command, config.to_tf_config(), Path(logs), rank) for rank, config in enumerate(configs)
        ]
        code = _wait(children)
        _report_failed_peers(children, Path(logs), code)
    return code


def _start(command: list[str], tf_config: str, logs: Path, rank: int) -> processes.Child:
    """Worker `rank`, started warm (runner/processes.py: TensorFlow imported once for all of them)."""
    env = {**os.environ, "TF_CONFIG": tf_config}
    if rank == 0:  # the chief speaks for the run
        return processes.start(command, env)
    log = (logs / f"worker-{rank}.log").open("wb")
    with log:
        return processes.start(command, env, stdout=log.fileno(), stderr=log.fileno())


def _wait(children: list[processes.Child]) -> int:
    chief = children[0]
    deadline: float | None = None
    with sigterm_as_interrupt():
        while True:
            try:
                if chief.poll() is not None:
                    deadline = deadline or time.monotonic() + PEER_EXIT_GRACE_S
                    if all(c.poll() is not None for c in children) or time.monotonic() > deadline:
                        _kill(children)
                        return chief.wait()  # ended: its code at once
                if deadline is not None and time.monotonic() > deadline:
                    _kill(children)
                    return chief.wait()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    chief.wait(timeout=POLL_S)
            except KeyboardInterrupt:
                for child in children:
                    if child.poll() is None:
                        child.send_signal(signal.SIGINT)
                deadline = time.monotonic() + STOP_TIMEOUT_S


def _kill(children: list[processes.Child]) -> None:
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _report_failed_peers(children: list[processes.Child], logs: Path, chief: int) -> None:
    """A worker other than the chief that failed: its log's tail on stderr (the chief's is on screen).
    Bad input that the chief refused too is the same message: said once, by the chief."""
    for rank, child in enumerate(children[1:], 1):
        if child.returncode in (exits.COMPLETED, exits.INTERRUPTED):
            continue
        if child.returncode == chief == exits.BAD_INPUT:
            continue
        tail = (logs / f"worker-{rank}.log").read_bytes()[-3000:].decode("utf-8", errors="replace")
        print(
            f"worker {rank} exited with {child.returncode}; the end of its output:\n{tail}", file=sys.stderr
        )
