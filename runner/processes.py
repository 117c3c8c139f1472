"""`runner` processes started warm: forked from a server that imported TensorFlow once.

A sweep or a study runs each variant in a process of its own, so that Keras' global state, memory
and a crash stay there. A process that starts cold imports TensorFlow first: 4-6 s of CPU (a 2-core
AMD EPYC), as much as a small variant's training. `start` forks it instead from a server started
once per driver: multiprocessing's fork server, a fresh interpreter started by exec (never the
driver's own process, whose TensorFlow may be running), which imports runner/warm_start.py (runner,
TensorFlow, Keras; no device probed, no runtime started) and forks each process from there. The
child is then what `python -m runner ARGS` would be: its own session, environment, standard streams,
devices and threads, its exit code or signal as Popen gives it; environment.json says how it began.

It starts cold instead (`subprocess.Popen` of `python -m runner`) off Linux, where RUNNER_START=cold
asks for it, where a setting read when TensorFlow and Keras are imported differs from the server's
(those the server imported with are the ones its children have), where the driver is a script of
the user's (multiprocessing would run it again in the child), and once the server has failed.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import multiprocessing
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

START_VARIABLE = "RUNNER_START"  # "cold": every child process imports TensorFlow itself
DRIVER_VARIABLE = "RUNNER_DRIVER_PID"  # the process that started it (a warm child's parent is the server)
IMPORT_TIME = ("TF_USE_LEGACY_KERAS", "KERAS_BACKEND", "PYTHONPATH", "PYTHONHASHSEED")  # read on import
_SERVER_ENV: dict[str, str | None] = {}  # the import-time settings the server started with
STARTED = ["cold"]  # how this process began: "warm" in a child forked by the server
_SERVER_FAILED: list[str] = []  # why the server could not fork a process: the rest start cold


class Child(Protocol):
    """What a driver does with a `runner` process it started: subprocess.Popen's own names."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def start(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    stdout: int | None = None,
    stderr: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Child:
    """`python -m runner ARGS` in a session of its own with environment `env`, in `cwd` (None: this
    process's); `stdout`/`stderr`: None (this process's), subprocess.DEVNULL or a file descriptor."""
    env = {**env, DRIVER_VARIABLE: str(os.getpid())}
    if _warm_possible(env):
        with contextlib.ExitStack() as opened:
            fds = [_descriptor(given, default, opened) for given, default in ((stdout, 1), (stderr, 2))]
            try:
                return _WarmChild(list(args), env, fds, os.fspath(cwd or os.getcwd()))
            except (OSError, EOFError) as exc:  # the server died or cannot be reached: start cold
                _SERVER_FAILED.append(f"{type(exc).__name__}: {exc}")
                print(f"runner: the fork server failed ({exc!r}); processes start cold", file=sys.stderr)
    command = [sys.executable, "-m", "runner", *args]
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=cwd, start_new_session=True)


def _warm_possible(env: Mapping[str, str]) -> bool:
    if not sys.platform.startswith("linux") or env.get(START_VARIABLE, "warm") == "cold" or _SERVER_FAILED:
        return False
    same = all(env.get(name) == _SERVER_ENV.get(name, os.environ.get(name)) for name in IMPORT_TIME)
    return same and _main_not_run_again()


def _main_not_run_again() -> bool:
    """multiprocessing runs this process's main module again in a forked child (as __mp_main__):
    harmless for a package's __main__ (skipped: `python -m runner`, pytest), no file (`python -c`, a
    notebook) or the `runner` script (it imports runner.cli); a script of the user's could do
    anything at its top level, so its children start cold, as `python -m runner` would."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return str(name).endswith("__main__")
    if getattr(main, "__file__", None) is None:
        return True
    return getattr(getattr(main, "main", None), "__module__", None) == "runner.cli"


def how_started() -> str:
    """ "warm" (forked from a server that had imported TensorFlow) or "cold" (it imported it)."""
    return STARTED[0]


def _descriptor(given: int | None, default: int, opened: contextlib.ExitStack) -> int:
    if given is None:
        return default
    if given == subprocess.DEVNULL:
        return opened.enter_context(open(os.devnull, "wb")).fileno()
    return given


def _context() -> Any:
    """The fork server's context, its modules to import set once per process (it starts on first use)."""
    context = multiprocessing.get_context("forkserver")
    if not _SERVER_ENV:
        _SERVER_ENV.update({name: os.environ.get(name) for name in IMPORT_TIME})
        context.set_forkserver_preload(["runner.warm_start"])
    return context


class _WarmChild:
    """A process forked by the server: Popen's interface over multiprocessing.Process, whose exit
    status one thread collects (Popen's poll and wait may then be called from any thread)."""

    def __init__(self, args: list[str], env: dict[str, str], fds: list[int], cwd: str):
        streams = [_Descriptor(fd) for fd in fds]  # sent with the fork request, as multiprocessing does
        self._process = _context().Process(target=_child_main, args=(args, env, streams, cwd))
        self._process.start()
        _forget(self._process)
        self.args = args
        self.pid: int = self._process.pid or 0  # set once started
        self._started_at = _started_at(self.pid)
        self.returncode: int | None = None
        self._done = threading.Event()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        self._process.join()
        code = self._process.exitcode
        if code == 255:  # also what the server's own end reports (killed): the child may run on
            _outlive(self.pid, self._started_at)
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(["runner", *self.args], timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _started_at(pid: int) -> str | None:
    """When process `pid` started (/proc: clock ticks since boot), None if there is none: with its
    pid, what tells a process from a later one given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _outlive(pid: int, started_at: str | None) -> None:
    """Wait until process `pid` (no child of this one: its server reaps it) exits, if it is still the
    one started then: a pidfd becomes readable when it does (Linux 5.3+; elsewhere, no wait)."""
    try:
        descriptor = os.pidfd_open(pid)
    except (OSError, AttributeError):  # already gone (or no pidfd here)
        return
    try:
        if started_at is not None and _started_at(pid) == started_at:
            select.select([descriptor], [], [])
    finally:
        os.close(descriptor)


class _Descriptor:
    """A file descriptor for the child: pickled with the fork request, it travels as multiprocessing
    sends a Connection's (SCM_RIGHTS), and arrives as the child's own descriptor number."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        from multiprocessing.reduction import DupFd

        return _arrived, (DupFd(self.fd),)


def _arrived(duplicate: Any) -> int:
    return int(duplicate.detach())


def _forget(process: multiprocessing.process.BaseProcess) -> None:
    """Leave the process out of multiprocessing's list of children, which it joins (or terminates)
    when this interpreter exits: like a Popen never waited for, a running child is left running."""
    getattr(multiprocessing.process, "_children", set()).discard(process)


def _child_main(args: list[str], env: dict[str, str], streams: list[int], cwd: str) -> None:
    """In the forked process: become what `python -m runner ARGS` would be, run it, exit its code."""
    code = 1
    try:
        os.setsid()
        os.chdir(cwd)
        _leave_the_server()
        STARTED[0] = "warm"
        os.environ.clear()
        os.environ.update(env)
        for fd, given in zip((1, 2), streams, strict=True):
            os.dup2(given, fd)
            os.close(given)
        _fresh_streams()
        sys.argv = ["-m", *args]  # runpy puts runner/__main__.py's path first, as `-m` does
        from runner import warm_start

        if not warm_start.READY:  # the server's runtime started: a fork of it is not safe
            os.execv(sys.executable, [sys.executable, "-m", "runner", *args])
        runpy.run_module("runner", run_name="__main__", alter_sys=True)  # as `python -m runner` runs it
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:  # as the interpreter ends on one: its exit functions, then SIGINT
        code = -signal.SIGINT
    except BaseException:  # as the interpreter would: the traceback on stderr, exit 1
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what a process's normal end runs (the server's modules' too)
        _flush()
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def _leave_the_server() -> None:
    """Close the fork server's 'a client is alive' pipe, inherited by every child it forks: the
    server then exits with the driver, and a trial sees its parent change (runner/training/trial.py)."""
    from multiprocessing import forkserver

    alive = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_alive_fd", None)
    if isinstance(alive, int):
        with contextlib.suppress(OSError):
            os.close(alive)


def _fresh_streams() -> None:
    """sys.stdout and sys.stderr as a new interpreter makes them for file descriptors 1 and 2 (the
    server's were made for its own streams): stderr line-buffered, escaping what it cannot encode."""
    encoding = (sys.__stdout__.encoding if sys.__stdout__ else None) or "utf-8"
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    made: list[IO[str]] = []
    for fd, errors in ((1, "strict"), (2, "backslashreplace")):
        raw = io.FileIO(fd, "w", closefd=False)
        interactive = raw.isatty()
        made.append(
            io.TextIOWrapper(
                io.BufferedWriter(raw),
                encoding=encoding,
                errors=errors,
                line_buffering=interactive or fd == 2,
                write_through=unbuffered,
            )
        )
    sys.stdout, sys.stderr = made
    for name, stream in zip(("__stdout__", "__stderr__"), made, strict=True):
        setattr(sys, name, stream)  # what faulthandler and the like write to


def _exit_code(code: object) -> int:
    """SystemExit's code as the interpreter turns it into an exit status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1
