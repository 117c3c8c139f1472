"""runner/processes.py: `runner` processes started warm (forked from a server that imported TensorFlow
once) are what cold ones (`python -m runner`) are: same exit codes, messages, signals and numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner import processes
from tests.conftest import ROOT, TINY_SPEC
from tests.started import Started, runner
from tests.test_resume import model_metrics, only_run, wait_for

BAD_SPEC = 'name = "bad"\n[precision]\npolicy = "mixed_fp16"\n'


def started(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """A process `processes.start` chose for `env`, run to its end: exit code, stdout, stderr."""
    child = Started(args, env, capture_stdout=True)
    out, err = child.communicate(timeout=300)
    return subprocess.CompletedProcess(args, child.wait(), out.decode(), err.decode())


@pytest.mark.parametrize(
    "setting",
    [{"RUNNER_START": "cold"}, {"TF_USE_LEGACY_KERAS": "1"}, {"KERAS_BACKEND": "jax"}],
    ids=["asked-for", "legacy-keras-differs", "keras-backend-differs"],
)
def test_a_process_starts_cold_where_asked_or_where_an_import_time_setting_differs(tmp_path, setting):
    """Cold: a plain `python -m runner` (Popen), never a fork of a server whose TensorFlow and Keras
    were imported under other settings. `validate` imports no TensorFlow: a quick process."""
    spec = tmp_path / "bad.toml"
    spec.write_text(BAD_SPEC)
    env = {**os.environ, **setting}
    if any(os.environ.get(name) == value for name, value in setting.items() if name != "RUNNER_START"):
        pytest.fail(f"this test needs {setting} to differ from the suite's environment")
    out_read, out_write = os.pipe()
    child = processes.start(["validate", str(spec)], env, stdout=out_write, stderr=out_write, cwd=ROOT)
    os.close(out_write)
    with os.fdopen(out_read) as out:
        said = out.read()
    assert isinstance(child, subprocess.Popen)
    assert child.wait(timeout=60) == 2 and "precision.policy" in said


@pytest.mark.parametrize(
    ("code", "status"), [(None, 0), (0, 0), (2, 2), (130, 130), (256 + 3, 3), ("a message", 1)]
)
def test_a_system_exit_becomes_the_status_the_interpreter_gives_it(code, status, capsys):
    assert processes._exit_code(code) == status
    assert capsys.readouterr().err == ("a message\n" if isinstance(code, str) else "")


@pytest.mark.slow
def test_a_warm_process_says_what_a_cold_one_says_and_trains_the_same_numbers(tmp_path):
    """The same bad spec: exit 2, the same message; the same deterministic run: the same metrics, and
    environment.json says how each began."""
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_SPEC)
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC + "[runtime]\ndeterministic = true\n")
    said = {}
    for start in ("warm", "cold"):
        env = {**os.environ, processes.START_VARIABLE: start}
        refused = started(["run", str(bad), "--output", str(tmp_path / start)], env)
        assert refused.returncode == 2 and refused.stdout == "", refused.stderr
        said[start] = refused.stderr
        ran = started(["run", str(spec), "--output", str(tmp_path / start)], env)
        assert ran.returncode == 0, ran.stderr
    assert said["warm"] == said["cold"] and "precision.policy" in said["warm"]
    warm, cold = only_run(tmp_path / "warm"), only_run(tmp_path / "cold")
    assert model_metrics(warm) == model_metrics(cold) and model_metrics(warm)
    for run_dir, start in ((warm, "warm"), (cold, "cold")):
        assert json.loads((run_dir / "environment.json").read_text())["started"] == start


@pytest.mark.slow
def test_a_warm_process_killed_by_a_signal_reports_it_as_popen_does(tmp_path):
    """-9 for SIGKILL, as Popen gives it (SIGINT's 130 after a checkpoint: tests/test_resume.py's
    interruptions, whose processes are warm too)."""
    spec = tmp_path / "long.toml"
    spec.write_text(TINY_SPEC.replace("epochs = 2", "epochs = 1000"))
    child = runner("run", spec, "--output", tmp_path / "out", wait=False)
    assert child.poll() is None
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=120) == -signal.SIGKILL


DRIVER = """
import os, sys
from runner import processes
child = processes.start(["run", sys.argv[1], "--output", sys.argv[2]], dict(os.environ))
print(child.pid, flush=True)
sys.stdin.read()  # until the test kills this driver
"""


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_the_server_ends_with_its_driver_so_a_warm_child_sees_its_parent_change(tmp_path):
    """What a study's trial watches (runner/training/trial.py): its parent, here the fork server,
    which must end when the driver is killed, though the child it forked still runs."""
    spec = tmp_path / "long.toml"
    spec.write_text(TINY_SPEC.replace("epochs = 2", "epochs = 1000"))
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(spec), str(tmp_path / "out")],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(driver.stdout.readline())
    try:
        server = parent_of(child)
        assert server not in (driver.pid, os.getpid())  # a warm child: the server forked it
        driver.kill()
        driver.wait(timeout=60)
        wait_for(lambda: not Path(f"/proc/{server}").exists() or parent_of(child) != server, timeout=60)
        assert parent_of(child) != server
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_a_server_whose_tensorflow_runtime_started_is_not_ready_to_fork():
    """A fork of a started runtime (thread pools, devices) is not safe: such a server's children run
    cold instead (runner/processes.py), so warm_start says whether the runtime stayed unstarted."""
    probe = (
        "from runner import compat, warm_start\n"
        "print(warm_start.READY)\n"
        "compat.tensorflow().constant(1.0)\n"
        "print(warm_start._import_everything())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.stdout.split() == ["True", "False"], result.stderr[-2000:]


def test_started_reads_both_streams_of_a_quick_cold_process(tmp_path, monkeypatch):
    """The suite's own helper (tests/started.py): a cold `validate` (no TensorFlow) gives its exit
    code and stderr as subprocess.run would."""
    monkeypatch.setenv(processes.START_VARIABLE, "cold")
    spec = tmp_path / "bad.toml"
    spec.write_text(BAD_SPEC)
    result = runner("validate", spec)
    assert result.returncode == 2 and "precision.policy" in result.stderr + result.stdout
    child = runner("validate", spec, wait=False)
    assert isinstance(child, Started) and child.communicate(timeout=60)[0] == b""
    assert child.wait() == 2


SERVER_KILLER = """
import os, signal, sys
from runner import processes
child = processes.start(["run", sys.argv[1], "--output", sys.argv[2]], dict(os.environ))
server = int(open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[1])
os.kill(server, signal.SIGKILL)
try:
    child.wait(timeout=3)
    print("ended with its server")
except Exception:
    print("still running")
os.kill(child.pid, signal.SIGKILL)
print(child.wait(timeout=60))
"""


@pytest.mark.slow
def test_a_warm_child_outlives_a_killed_server_and_is_waited_for_until_it_ends(tmp_path):
    """The server reaps its children and tells their exit: killed (the OOM killer's pick), it can
    tell nothing, and a child it forked runs on. Its Child is not `done` until the child has ended."""
    spec = tmp_path / "long.toml"
    spec.write_text(TINY_SPEC.replace("epochs = 2", "epochs = 1000"))
    result = subprocess.run(
        [sys.executable, "-c", SERVER_KILLER, str(spec), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.split("\n")[:2] == ["still running", "255"], result.stdout + result.stderr[-2000:]


def test_a_driver_that_is_a_script_of_its_own_starts_its_processes_cold(tmp_path):
    """multiprocessing would run a driver's main script again in each forked child (as __mp_main__):
    a user's script may do anything at its top level, so its processes start cold (a `python -c`
    driver's start warm: test_the_server_ends_with_its_driver...). The child runs `validate` (no
    TensorFlow); the driver says which kind of process it got, and its exit code."""
    spec = tmp_path / "bad.toml"
    spec.write_text(BAD_SPEC)
    script = tmp_path / "my_sweep.py"
    script.write_text(
        "import os, subprocess, sys\nfrom runner import processes\n"
        "child = processes.start(['validate', sys.argv[1]], dict(os.environ), stderr=subprocess.DEVNULL)\n"
        "print(type(child).__name__, child.wait(timeout=60))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), str(spec)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["Popen", "2"], done.stderr
