"""`runner` processes for the tests, started as a sweep starts its variants: warm, by
runner/processes.py (forked from a server that imported TensorFlow once per xdist worker), so the
suite's hundred-odd runs do not each import TensorFlow (4-6 s of CPU here). A test about how a process
starts cold (`python -m runner`, the CLI's import time) starts one itself; `RUNNER_START=cold` makes
every test process cold."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from runner import processes

ROOT = Path(__file__).resolve().parent.parent


class Started:
    """Popen's names for a warm or cold `runner` process whose stderr (and stdout, if captured) the
    test reads: `communicate`, `stderr.read()` after `wait`."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None, capture_stdout: bool):
        err_read, err_write = os.pipe()
        out_read, out_write = os.pipe() if capture_stdout else (None, None)
        try:
            self.child = processes.start(
                args,
                dict(os.environ if env is None else env),
                stdout=out_write if out_write is not None else subprocess.DEVNULL,
                stderr=err_write,
                cwd=ROOT,
            )
        finally:
            for fd in (err_write, out_write):
                if fd is not None:
                    os.close(fd)
        self.args = args
        self.pid = self.child.pid
        self.stderr: IO[bytes] = os.fdopen(err_read, "rb")
        self.stdout: IO[bytes] | None = os.fdopen(out_read, "rb") if out_read is not None else None

    @property
    def returncode(self) -> int | None:
        return self.child.poll()

    def poll(self) -> int | None:
        return self.child.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.child.wait(timeout)

    def send_signal(self, sig: int) -> None:
        self.child.send_signal(sig)

    def kill(self) -> None:
        self.child.kill()

    def communicate(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """Both streams read to their end (threads: neither pipe fills while the other is read),
        then the exit awaited; past `timeout` the process is killed and TimeoutExpired raised."""
        streams = [s for s in (self.stdout, self.stderr) if s is not None]
        read: dict[int, bytes] = {}
        readers = [
            threading.Thread(target=lambda s=s: read.__setitem__(id(s), s.read()), daemon=True)
            for s in streams
        ]
        for reader in readers:
            reader.start()
        try:
            self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            self.child.kill()
            raise
        for reader in readers:
            reader.join(timeout=60)  # every writer has exited: the pipes end
        out = read.get(id(self.stdout), b"") if self.stdout is not None else b""
        return out, read.get(id(self.stderr), b"")


def runner(*args: str | Path, wait: bool = True, env: Mapping[str, str] | None = None):
    """`runner ARGS` in ROOT: with `wait`, its CompletedProcess (text stdout and stderr, 600 s at
    most); without, the Started process (stdout discarded, stderr a pipe)."""
    argv = [str(a) for a in args]
    if not wait:
        return Started(argv, env, capture_stdout=False)
    started = Started(argv, env, capture_stdout=True)
    out, err = started.communicate(timeout=600)
    return subprocess.CompletedProcess(
        ["runner", *argv], started.wait(), out.decode(errors="replace"), err.decode(errors="replace")
    )
