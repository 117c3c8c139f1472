"""Tried carelessly (issue 15): every mistake ends as one message and a documented exit code, with
nothing lost, never a hang and never a traceback. Real processes where signals, locks or disks are
involved."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner import runs
from runner.cli import app
from runner.training import checkpoints
from tests.conftest import TINY_SPEC
from tests.test_resume import only_run, report, runner, wait_for

cli = CliRunner()

# Two steps an epoch, forever: a run that only a signal ends, whose epochs (and checkpoints) come fast.
ENDLESS = """
name = "endless"
[precision]
policy = "float32"
[model]
kind = "mlp"
hidden_units = [8]
[data]
source = "shapes"
batch_size = 32
train_size = 64
test_size = 32
validation_fraction = 0.0
[training]
epochs = 1000000000
steps_per_execution = 1
[runtime]
tensorboard = false
"""


def epochs_done(run_dir: Path) -> int:
    return len(runs.read_jsonl(run_dir / "metrics.jsonl"))


def run_dir_in(folder: Path) -> Path | None:
    found = [p for p in folder.iterdir() if (p / "metrics.jsonl").exists()] if folder.exists() else []
    return found[0] if found else None


@pytest.fixture
def endless(tmp_path):
    """A billion-epoch run in a child process, once it has finished two epochs: (process, run_dir)."""
    spec = tmp_path / "endless.toml"
    spec.write_text(ENDLESS)
    out = tmp_path / "out"
    child = runner("run", spec, "--output", out, wait=False)
    try:
        wait_for(lambda: (d := run_dir_in(out)) is not None and epochs_done(d) >= 2)
        yield child, only_run(out)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)


@pytest.mark.slow
def test_a_billion_epochs_costs_nothing_up_front_and_stops_on_ctrl_c(endless):
    """Item 1: no plan in proportion to `epochs` (it was one segment per epoch: out of memory), and
    Ctrl-C stops the run with its report. Item 3: while it trains, a resume into it exits 2."""
    child, run_dir = endless
    lines = (run_dir / "metrics.jsonl").read_bytes()
    second = runner("resume", run_dir)
    assert second.returncode == 2, second.stderr
    assert f"a run is training in this directory (PID {child.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(lines)  # not rewritten by the second one
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    data = report(run_dir)
    assert data["status"] == "interrupted" and data["spec"]["training"]["epochs"] == 10**9
    assert data["performance"]["peak_host_memory_mb"] < 4096


@pytest.mark.slow
def test_files_respect_the_umask(endless):
    """Item 9: mkstemp makes 0600 files; a report folder served to a group must be readable."""
    child, run_dir = endless
    child.send_signal(signal.SIGINT)
    child.wait(timeout=120)
    expected = 0o666 & ~_umask()
    (newest,) = [checkpoints.latest(run_dir)[0]]  # type: ignore[index]
    for name in ("report.json", "report.md", "spec.toml", "environment.json", f"checkpoints/{newest}.npz"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == expected, name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writes_take_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        runs.write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask


def test_a_killed_trainer_leaves_no_stale_lock(tmp_path):
    """Item 3: the lock is the OS's (flock): it dies with the process, even with kill -9."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(runs.RunDirBusy, match=f"PID {holder.pid}"), runs.run_lock(tmp_path):
            pass
        holder.kill()
        holder.wait(timeout=60)
        with runs.run_lock(tmp_path):  # free again
            assert (tmp_path / runs.LOCK_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        holder.kill()
        holder.wait(timeout=60)


# Takes the lock, says so, and holds it until its stdin closes (no sleep: it waits on the pipe).
_HOLD_LOCK = """
import sys
from pathlib import Path
from runner import runs
with runs.run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.mark.slow
def test_resume_falls_back_past_a_corrupt_newest_checkpoint(endless):
    """Item 4: a truncated newest checkpoint is skipped, named, and the one before it resumes."""
    child, run_dir = endless
    wait_for(lambda: len(list((run_dir / "checkpoints").glob("step-*.npz"))) >= 2)
    child.send_signal(signal.SIGINT)
    child.wait(timeout=120)
    newest = checkpoints.latest(run_dir)[0]  # type: ignore[index]
    os.truncate(run_dir / "checkpoints" / f"{newest}.npz", 1000)
    found, skipped = checkpoints.latest_restorable(run_dir)
    assert found is not None and found[0] < newest
    assert len(skipped) == 1 and skipped[0].startswith(f"{newest}: {newest}.npz unreadable")
    done = epochs_done(run_dir)
    resumed = runner("resume", run_dir, wait=False)
    try:
        wait_for(lambda: epochs_done(run_dir) > done)  # it trains again: the fallback served
        resumed.send_signal(signal.SIGINT)
        _, stderr = resumed.communicate(timeout=120)
    finally:
        resumed.kill()
    assert resumed.returncode == 130, stderr
    assert f"checkpoint skipped, {newest}" in stderr.decode()
    last = report(run_dir)["resumes"][-1]
    assert last["from"] == found[0] and newest in last["skipped"][0]


# ---------------------------------------------------------------- outputs that cannot take a run


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A small tmpfs (root, as here and in CI): a read-only folder or a full disk, for real."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def _run(spec: Path, output: Path, *extra: str):
    return cli.invoke(app, ["run", str(spec), "--output", str(output), *extra])


def test_output_on_a_read_only_folder_is_exit_2(write_spec, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        result = _run(write_spec(TINY_SPEC), folder)
    assert result.exit_code == 2, result.output
    assert f"--output {folder}: read-only file system; expected a folder" in result.stderr
    assert "Traceback" not in result.output


def test_output_pointing_at_a_file_is_exit_2(write_spec, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    result = _run(write_spec(TINY_SPEC), target)
    assert result.exit_code == 2, result.output
    assert f"--output {target}: is a file" in result.stderr


def test_a_full_disk_before_the_run_is_exit_2_and_leaves_nothing(write_spec, tmp_path):
    with mounted_tmpfs(tmp_path / "full", "size=64k") as folder:
        _fill(folder)
        result = _run(write_spec(TINY_SPEC), folder)
        left = [p.name for p in folder.iterdir()]
    assert result.exit_code == 2, result.output
    assert "cannot write the run directory (No space left on device)" in result.stderr
    assert left == ["filler"]  # no empty run directory


@pytest.mark.slow
def test_compare_output_to_an_unwritable_place_is_exit_2(write_spec, tmp_path):
    assert _run(write_spec(TINY_SPEC.replace("epochs = 2", "epochs = 1")), tmp_path / "runs").exit_code == 0
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        result = cli.invoke(app, ["compare", str(only_run(tmp_path / "runs")), "--output", str(folder)])
    assert result.exit_code == 2, result.output
    assert f"--output {folder}: read-only file system" in result.stderr


# ---------------------------------------------------------------- bad input found after TensorFlow loads


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ('kind = "keras_application"\nname = "ResNet9000"', 'got "ResNet9000"; did you mean "ResNet50"?'),
        ('kind = "factory"\nfactory = "tests.factories:exits"', "raised SystemExit"),
        (
            'kind = "factory"\nfactory = "tests.factories:wrong_output_size"',
            "expected one output of shape (batch, 10), a probability per class of the data; got (batch, 7)",
        ),
    ],
    ids=["unknown_application", "factory_exits", "wrong_output_size"],
)
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_model_that_cannot_be_built_is_exit_2_naming_the_file_and_leaves_no_run(
    write_spec, tmp_path, model, message, command
):
    """Items 5, 8, 11: found only once TensorFlow builds the model, still bad input: exit 2, the spec
    file and the field named, and no `failed` run directory left behind."""
    path = write_spec(f'name = "t"\n[model]\n{model}\n[data]\ntrain_size = 64\ntest_size = 32\n')
    args = [command, str(path)] + (["--output", str(tmp_path / "out")] if command == "run" else [])
    result = cli.invoke(app, args)
    assert result.exit_code == 2, result.output
    stderr = " ".join(result.stderr.split())
    assert f"{path}: model" in stderr and message in stderr
    assert "Traceback" not in result.output
    if command == "run":
        assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- smaller


def test_a_spec_with_a_byte_order_mark_loads(write_spec):
    path = write_spec("\ufeff" + TINY_SPEC)
    assert cli.invoke(app, ["validate", str(path)]).exit_code == 0


def test_set_on_a_swept_field_is_an_error_naming_both(write_spec):
    path = write_spec(TINY_SPEC + '\n[sweep]\n"precision.policy" = ["float32", "mixed_float16"]\n')
    result = cli.invoke(app, ["validate", str(path), "--set", "precision.policy=mixed_bfloat16"])
    assert result.exit_code == 2
    assert '--set precision.policy=mixed_bfloat16 and sweep."precision.policy" both set' in result.stderr


def test_a_large_sweep_asks_for_yes_before_it_starts(write_spec, tmp_path):
    path = write_spec(TINY_SPEC + "\n[sweep]\nseed = [" + ", ".join(map(str, range(40))) + "]\n")
    result = _run(path, tmp_path / "out")
    assert result.exit_code == 2
    assert "40 experiments planned (more than 32)" in result.stderr and "--yes" in result.stderr
    assert not (tmp_path / "out").exists()


def test_report_on_a_killed_run_suggests_resume(tmp_path):
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    (run_dir / "spec.toml").write_text(TINY_SPEC)
    result = cli.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 2
    assert f"runner resume {run_dir}" in " ".join(result.stderr.split())


def test_data_errors_name_the_spec_file_and_the_field(write_spec, tmp_path):
    path = write_spec(TINY_SPEC.replace('source = "shapes"', 'source = "mnist"\npath = "/no/such/mnist.npz"'))
    result = cli.invoke(app, ["run", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{path}: data.path" in " ".join(result.stderr.split())


def test_check_names_the_spec_file_for_data_errors_too(write_spec):
    path = write_spec(TINY_SPEC.replace('source = "shapes"', 'source = "mnist"\npath = "/no/such/mnist.npz"'))
    result = cli.invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: data.path" in " ".join(result.stderr.split())


def test_fuzzed_set_and_sweep_inputs_end_as_a_plan_or_one_spec_error(tmp_path):
    from benchmarks import fuzz_specs

    rng = __import__("random").Random(15)
    for _ in range(300):
        family, data, overrides = fuzz_specs.random_input(rng)
        assert fuzz_specs.check(data, tmp_path, overrides) in {"valid", "spec_error"}


@pytest.mark.slow
def test_a_sweep_variant_that_cannot_be_built_names_the_real_file_and_its_sweep_values(write_spec, tmp_path):
    """The variant runs in a child process from a temporary copy of its spec; its message still
    names the file the user wrote and the sweep values that made the variant."""
    path = write_spec(
        'name = "s"\n[model]\nkind = "keras_application"\nname = "MobileNetV2"\n'
        '[data]\ntrain_size = 64\ntest_size = 32\n[sweep]\n"model.name" = ["ResNet9000", "MobileNetV2"]\n'
    )
    result = runner("run", path, "--output", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert f"{path} [sweep model.name=ResNet9000]: model.name: expected a keras.applications model" in message
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "out").iterdir()) == []  # no empty sweep directory either


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_and_leaves_the_running_variant_resumable(tmp_path):
    """Issue 16: the sweep waited on its variant and swallowed every Ctrl-C. Now the SIGINT (sent to
    the sweep's process only, as a scheduler or `kill -INT` would) reaches the variant once: it
    checkpoints and stops, the comparison is written for it, and the sweep exits 130."""
    spec = tmp_path / "sweep.toml"
    spec.write_text(ENDLESS + "\n[sweep]\nseed = [0, 1]\n")
    out = tmp_path / "out"
    sweep = runner("run", spec, "--output", out, wait=False)
    try:
        wait_for(lambda: any(epochs_done(p.parent) >= 2 for p in out.glob("*/*/metrics.jsonl")))
        sweep.send_signal(signal.SIGINT)
        _, stderr = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, stderr
    (group,) = [p for p in out.iterdir() if p.is_dir()]
    (variant,) = [p.parent for p in group.glob("*/report.json")]  # the second variant never started
    assert report(variant)["status"] == "interrupted" and variant.name.startswith("endless-0")
    assert json.loads((group / "comparison.json").read_text())["rows"][0]["status"] == "interrupted"
    done = epochs_done(variant)
    resumed = runner("resume", variant, wait=False)
    try:
        wait_for(lambda: epochs_done(variant) > done)
        resumed.send_signal(signal.SIGINT)
        resumed.communicate(timeout=120)
    finally:
        resumed.kill()
    assert resumed.returncode == 130
