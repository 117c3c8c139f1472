"""Run directories: unique creation, atomic writes, provenance (environment, versions, git)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from runner import processes
from runner.spec import BadInput


def utc_stamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


LOCK_NAME = ".lock"


class OutputError(BadInput):
    """An output folder that cannot take a run: not a folder, read-only, full."""


class RunDirBusy(BadInput):
    """Another live process trains in this run directory."""


def require_writable(output: Path) -> None:
    """Prove a run directory can be made under `output` (by making and removing one in it, or in the
    nearest folder that exists, without creating any): read-only, a file, no permission are bad
    input, said before any work is done."""
    existing = next((p for p in (output, *output.parents) if p.exists()), Path("."))
    expected = "expected a folder runner can write run directories in"
    if not existing.is_dir():
        what = "is a file" if existing == output else f"{existing} is a file"
        raise OutputError(f"--output {output}: {what}; {expected}")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".runner-probe-").cleanup()
    except OSError as exc:
        raise OutputError(f"--output {output}: {(exc.strerror or str(exc)).lower()}; {expected}") from None


def create_run_dir(output: Path, name: str, spec_hash: str) -> Path:
    """`output/<name>-<UTC timestamp>-<hash>/`, created exclusively: two runs never share one.
    (Callers probe `output` first with `require_writable`, before their slow work.)"""
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--output {output}: cannot create it ({exc.strerror})") from None
    base = f"{name}-{utc_stamp()}-{spec_hash}"
    for attempt in range(1, 1000):
        candidate = output / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"--output {output}: cannot create {candidate.name} ({exc.strerror})") from None
        return candidate
    raise OutputError(f"--output {output}: could not create a unique run directory for {base}")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on `run_dir` for the block: a second trainer in the same directory
    would write every epoch twice. flock dies with the process, so kill -9 leaves no stale lock."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputError(f"{run_dir}: cannot lock the run directory ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirBusy(
                f"{run_dir}: a run is training in this directory (PID {holder}); wait for it to end, "
                f"or stop it (kill -INT {holder}) and resume"
            ) from None
        with contextlib.suppress(OSError):  # the PID is for that message: a full disk must not stop us
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the PID goes with the lock; the empty file stays
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def waiting_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """An exclusive OS lock on the file `path` for the block, waited for at most `timeout_s` (then
    OutputError naming `what` holds it). flock dies with its process: no stale lock after a kill."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputError(f"{path}: cannot lock ({exc.strerror})") from None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OutputError(
                        f"{path}: {what} for more than {timeout_s:.0f} s; try again later"
                    ) from None
                time.sleep(LOCK_POLL_S)  # flock has no timeout of its own: polled, bounded above
        yield
    finally:
        os.close(fd)


LOCK_POLL_S = 0.05


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A temp file in the same folder, fsynced and renamed onto `path` when the block ends well:
    readers see the old file or the new one, never half of one (a kill leaves at most a .tmp)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a report is as readable as any file
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def environment_set(variables: dict[str, str]) -> Iterator[None]:
    """`variables` set in os.environ for the block (child processes inherit them), restored after."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a .jsonl file; a torn last line (a killed writer) is ignored."""
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and every flag the kernel reports for it (Linux; elsewhere the
    processor's name and no flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model, flags = platform.machine(), list[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = value.split()
    return model, flags


INTERESTING_CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
    "amx_int8",
)


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


PACKAGES = (
    "tensorflow",
    "keras",
    "tf-keras",  # Keras 2 for TensorFlow >= 2.16, with TF_USE_LEGACY_KERAS=1
    "numpy",
    "pydantic",
    "typer",
    "rich",
    "tomli-w",
    "matplotlib",
    "tensorboard",
    "h5py",
    "ai-edge-litert",  # the export extra: LiteRT and ONNX artifacts are run by these
    "tf2onnx",
    "onnx",
    "onnxruntime",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of what a run depends on: enough to rebuild the environment."""
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_facts() -> dict[str, Any]:
    """CPU model and flags, and the first visible GPU with its compute capability (imports TF)."""
    from runner import compat

    tf = compat.tensorflow()
    cpu, flags = cpu_model_and_flags()
    facts: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_flags": [f for f in INTERESTING_CPU_FLAGS if f in flags],
        "gpu": None,
    }
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        facts["gpu"] = {
            "name": details.get("device_name", gpus[0].name),
            "compute_capability": list(details.get("compute_capability") or (0, 0)),
            "count": len(gpus),
        }
    return facts


def environment_info() -> dict[str, Any]:
    from runner import __version__, compat

    tf = compat.tensorflow()
    import numpy as np

    facts = device_facts()
    packages = package_versions()
    supported, why = compat.support()
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": compat.keras_version(),  # the one TensorFlow trains with: tf-keras's if asked for
        "supported": {"ok": supported, "detail": why},
        "numpy": np.__version__,
        "runner": __version__,
        "platform": platform.platform(),
        "device": "GPU: " + facts["gpu"]["name"] if facts["gpu"] else "CPU: " + facts["cpu"],
        "device_facts": facts,
        "packages": packages,
        "git_commit": git_commit(Path.cwd()),
        "argv": sys.argv,
        "started": processes.how_started(),  # "warm": forked from a server that imported TensorFlow
    }
