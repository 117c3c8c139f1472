"""Found by trying to break it, round two (issue 30): each mistake a user made ends as one clear
message and exit 2, bounded in time and memory, with nothing overwritten. Each test here failed
before its fix (the closing note of the issue says how each was broken to check it)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from runner import search, spec
from runner.cli import app
from runner.data import image_folder as folders
from runner.data import npz
from runner.data.files import DataError
from runner.reporting import plots
from runner.reporting.report import Epoch, resume_command
from runner.spec import SpecError, load_plan
from runner.training import distribution
from runner.training.distribution import ClusterError
from tests.conftest import ROOT, TINY_SPEC
from tests.test_image_folder import make_folder

cli = CliRunner()


def joined(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- sweeps: duplicates, sizes, one error once


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        (
            '"training.learning_rate" = [0.01, 0.01]',
            "expected distinct values (each is one experiment); got 0.01",
        ),
        ('"name" = ["a", "a"]', 'got "a" more than once'),
        ('"training.learning_rate" = [1, 1.0]', "are the same experiment (only their names differ)"),
    ],
    ids=["repeated-value", "repeated-name", "equal-values"],
)
def test_two_variants_of_the_same_experiment_are_refused(write_spec, sweep, expected):
    with pytest.raises(SpecError) as caught:
        load_plan(write_spec(TINY_SPEC + f"\n[sweep]\n{sweep}\n"))
    assert expected in str(caught.value)


def test_a_plan_is_counted_before_it_is_made(write_spec, monkeypatch):
    """10^6 variants (a grid of six lists of ten) are refused at once: no variant is made."""
    made = []
    real = spec.spec_from_dict
    monkeypatch.setattr(spec, "spec_from_dict", lambda *a, **k: made.append(1) or real(*a, **k))
    axes = "\n".join(
        f'"training.{f}" = {list(range(1, 11))}' for f in ("epochs", "batch_x", "a", "b", "c", "d")
    )
    with pytest.raises(SpecError) as caught:
        load_plan(write_spec(TINY_SPEC + f"\n[sweep]\n{axes}\n"))
    assert "1,000,000 experiments planned; expected at most 10,000" in str(caught.value) and not made
    random = (
        TINY_SPEC + '\n[sweep]\nmethod = "random"\nsamples = 1000000\n"seed" = { int_uniform = [0, 9] }\n'
    )
    with pytest.raises(SpecError, match="1,000,000 experiments planned"):
        load_plan(write_spec(random))
    assert not made


def test_run_asks_for_yes_before_making_a_large_plan(write_spec, tmp_path, monkeypatch):
    from runner import cli as cli_module

    def never(*args, **kwargs):
        raise AssertionError("the plan was made before it was counted")

    monkeypatch.setattr(cli_module, "load_plan", never)
    path = write_spec(TINY_SPEC + '\n[sweep]\n"seed" = ' + str(list(range(40))) + "\n")
    result = cli.invoke(app, ["run", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "40 experiments planned (more than 32)" in joined(result.stderr)


def test_an_error_every_variant_shares_is_told_once(write_spec):
    text = (
        TINY_SPEC.replace("epochs = 2", "epochz = 2") + '\n[sweep]\n"seed" = ' + str(list(range(30))) + "\n"
    )
    with pytest.raises(SpecError) as caught:
        load_plan(write_spec(text))
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 and "[every sweep variant]" in lines[0] and "epochz" in lines[0], lines


def test_a_table_that_is_no_distribution_is_named_as_such(write_spec):
    text = (
        TINY_SPEC
        + '\n[sweep]\nmethod = "random"\nsamples = 2\n"training.learning_rate" = { gaussian = [0, 1] }\n'
    )
    with pytest.raises(SpecError) as caught:
        load_plan(write_spec(text))
    assert 'sweep."training.learning_rate": { gaussian = ... } is not a distribution' in str(caught.value)


def test_a_keras_application_arguments_table_is_still_a_field_path(write_spec):
    text = """
name = "app"
[model]
kind = "keras_application"
name = "MobileNetV2"
[data]
source = "shapes"
[sweep]
"model.arguments.alpha" = [0.35, 0.5]
"""
    assert [v.spec.model.arguments["alpha"] for v in load_plan(write_spec(text))] == [0.35, 0.5]


def test_plan_size_counts_grids_and_samples():
    options, axes = search.read_sweep({"a": [1, 2, 3], "b": ["x", "y"]}, "s.toml")
    assert search.plan_size(options, axes) == 6 == len(search.points(options, axes, 0, "s.toml"))


# ---------------------------------------------------------------- TOML nested past any spec


@pytest.mark.parametrize("depth", [40, 500, 5000])
def test_deeply_nested_toml_is_one_message(write_spec, depth):
    path = write_spec(f'name = "x"\na = {"[" * depth}1{"]" * depth}\n')
    with pytest.raises(SpecError, match="nested more than 32 levels deep"):
        spec.read_toml(path)
    result = cli.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "nested more than 32 levels" in joined(result.stderr)
    deep = f"model.hidden_units={'[' * depth}1{']' * depth}"
    result = cli.invoke(app, ["validate", str(write_spec(TINY_SPEC, "tiny.toml")), "--set", deep])
    assert result.exit_code == 2 and "nested more than 32 levels" in joined(result.stderr)


# ---------------------------------------------------------------- npz


def _npz_with_header(path: Path, shape: tuple[int, ...]) -> Path:
    """A tiny npz whose x_train header declares `shape` (100 bytes of data follow)."""
    from numpy.lib import format as npy

    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.zeros(4, np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + bytes(100))
        archive.writestr("y_train.npy", labels.getvalue())
    return path


def test_an_npz_declaring_a_huge_array_is_refused_before_numpy_allocates_it(tmp_path):
    with pytest.raises(DataError) as caught:
        npz.read_npz(_npz_with_header(tmp_path / "huge.npz", (10**6, 1000, 1000, 3)))
    assert "x_train: its header declares shape (1000000, 1000, 1000, 3) of uint8" in str(caught.value)
    with pytest.raises(DataError, match="its header declares shape"):  # small, but more than the file holds
        npz.read_npz(_npz_with_header(tmp_path / "short.npz", (4, 8, 8, 3)))


def test_npz_test_images_of_another_shape_than_training_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 255, (20, 8, 8, 3), np.uint8),
        y_train=np.arange(20) % 2,
        x_test=rng.integers(0, 255, (6, 16, 16, 3), np.uint8),
        y_test=np.arange(6) % 2,
    )
    with pytest.raises(DataError) as caught:
        npz.read_npz(path)
    assert "x_test: expected images of x_train's shape (8, 8, 3)" in str(caught.value)
    assert "got (16, 16, 3)" in str(caught.value)


# ---------------------------------------------------------------- image folders: names and permissions


def test_a_file_name_that_is_not_utf8_is_read_fingerprinted_and_named(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=3)
    odd = os.fsdecode(os.fsencode(root / "red") + b"/bad\xff\xfename.png")
    os.rename(root / "red" / "000.png", odd)
    index = folders.scan_folder(root, "data.path")
    assert os.fsdecode(b"red/bad\xff\xfename.png") in index.files
    assert len(index.fingerprint()) == 64  # the bytes on disk, hashed
    assert folders.shown(odd).endswith("bad\\xff\\xfename.png")
    assert folders.undecodable_files([odd], (16, 16, 3)) == []  # TensorFlow reads it by its bytes


def test_a_class_folder_that_cannot_be_listed_says_so(tmp_path, monkeypatch):
    """chmod 000 (root reads it anyway, as in CI: the OS's refusal is stood in for)."""
    root = make_folder(tmp_path / "photos", per_class=2)
    locked = root / "blue"
    real = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError) as caught:
        folders.scan_folder(root, "data.path")
    assert f'"{locked}" cannot be listed (Permission denied)' in str(caught.value)


def test_tensorflow_assertion_text_becomes_the_reason(tmp_path):
    fake = tmp_path / "photos" / "red" / "note.png"
    fake.parent.mkdir(parents=True)
    fake.write_text("not an image at all")
    ((_, reason),) = folders.undecodable_files([str(fake)], (16, 16, 3))
    assert reason == "not a BMP, GIF, JPEG or PNG image (by its first bytes)"


# ---------------------------------------------------------------- Slurm node lists


@pytest.mark.parametrize(
    ("nodelist", "why"),
    [
        ("gpu[1-99999999]", "more than 65,536 nodes"),
        ("gpu[01-", "unbalanced brackets"),
        ("n[a-b]", "expected numbers and ranges"),
        ("n[9-1]", "a range from high to low"),
        ("a,,b", "an empty node name"),
        ("x[1-40000],y[1-40000]", "more than 65,536 nodes"),
    ],
)
def test_a_slurm_node_list_is_bounded_and_checked(nodelist, why):
    with pytest.raises(ClusterError) as caught:
        distribution.expand_hostlist(nodelist)
    assert "SLURM_STEP_NODELIST: expected a node list like" in str(caught.value) and why in str(caught.value)
    assert distribution.expand_hostlist("r[1-2]-n[1-2]") == ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]


def test_nodes_and_task_counts_that_differ_are_named_both():
    step = {"SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n[1-3]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
    with pytest.raises(ClusterError) as caught:
        distribution.from_environment("slurm", step)
    assert "names 3 node(s) and SLURM_STEP_TASKS_PER_NODE counts tasks for 2" in str(caught.value)
    with pytest.raises(ClusterError, match="at most 65,536 nodes"):
        distribution.expand_tasks_per_node("1(x99999999)")


# ---------------------------------------------------------------- messages that name the right command


def _multi_worker_run(tmp_path: Path, workers: int) -> Path:
    run_dir = tmp_path / "mw-run"
    run_dir.mkdir()
    text = TINY_SPEC + '\n[distribution]\nstrategy = "multi_worker"\ncluster = "tf_config"\n'
    (run_dir / "spec.toml").write_text(text)
    placement = {"strategy": "multi_worker", "workers": workers, "replicas": workers}
    placement |= {"global_batch": 32, "per_replica_batch": 32 // workers, "devices": []}
    report = {"name": "tiny", "status": "interrupted", "spec": {}, "spec_hash": "0", "schema_version": 2}
    report |= {"precision": {"policy": "mixed_float16"}, "distribution": placement}
    (run_dir / "report.json").write_text(json.dumps(report))
    return run_dir


def test_an_interrupted_multi_worker_run_names_the_command_that_resumes_it(tmp_path, monkeypatch):
    run_dir = _multi_worker_run(tmp_path, 3)
    assert resume_command(run_dir) == f"runner launch --workers 3 {run_dir}"
    (run_dir / "report.json").unlink()  # killed before its report: the spec says multi_worker
    assert resume_command(run_dir) == f"runner launch --workers N {run_dir}"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = cli.invoke(app, ["resume", str(run_dir)])
    assert result.exit_code == 2 and f"runner launch --workers N {run_dir}" in joined(result.stderr)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "spec.toml").write_text(TINY_SPEC)
    assert resume_command(plain) == f"runner resume {plain}"


def test_bad_input_every_worker_refused_is_printed_once(tmp_path, capfd):
    from runner.cluster.launch import _report_failed_peers

    (tmp_path / "worker-1.log").write_text("error: data.path: not found\n")
    peer = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    peer.wait(timeout=60)
    _report_failed_peers([peer, peer], tmp_path, chief=2)
    assert "data.path" not in capfd.readouterr().err
    _report_failed_peers([peer, peer], tmp_path, chief=3)  # the chief failed otherwise: the peer's words
    assert "worker 1 exited with 2" in capfd.readouterr().err


# ---------------------------------------------------------------- comparisons at 80 columns


def test_swept_floats_are_shown_as_short_as_keeps_them_apart():
    from runner.reporting.views import setting_texts

    assert setting_texts([0.004217892109349711, 0.0912, "adam"]) == ["0.00422", "0.0912", "adam"]
    assert setting_texts([0.0012341, 0.0012349]) == ["0.001234", "0.001235"]  # 4 figures tell them apart


def test_a_random_search_comparison_fits_80_columns_best_first(tmp_path):
    from rich.console import Console

    from runner.reporting.report import Baseline, Comparison, ComparisonRow
    from runner.reporting.views import comparison_table

    rates = [0.004217892109349711, 0.0009112345678901, 0.0123456789012345]
    rows = [
        ComparisonRow(
            label=f"v{i}",
            name=f"search-{i:02d}",
            settings={"training.learning_rate": rate},
            policy="float32",
            status="completed",
            images_per_second=1000.0 + i,
            speed_ratio=1.0,
            peak_host_memory_mb=900.0,
            test_accuracy=accuracy,
            accuracy_delta=0.0,
            skipped_steps=0,
            loss_scale_final=None,
            loss_scale_min=None,
            checks_passed=3,
            checks_total=3,
            failed_checks=[],
        )
        for i, (rate, accuracy) in enumerate(zip(rates, [0.81, 0.93, 0.62], strict=True))
    ]
    from runner.reporting.compare import rank

    options, _ = search.read_sweep({"method": "random", "samples": 3, "seed": [1, 2, 3]}, "s.toml")
    assert options.objective == ("test_accuracy", "max")  # a random search ranks without being told
    comparison = Comparison(
        baseline=Baseline(name="search-00", label="v0", index=0, note="baseline: v0"),
        differing_fields=["training.learning_rate"],
        objective=rank(rows, options.objective),
        rows=rows,
    )
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(comparison_table(comparison))
    text = console.export_text()
    assert "0.00422" in text and "0.000911" in text and "…" not in text.split("baseline")[0]
    body = [line for line in text.splitlines() if "0.0" in line and "%" not in line]
    assert [line.split()[:2] for line in body[:3]] == [["1", "0.000911"], ["2", "0.00422"], ["3", "0.0123"]]
    assert "ranks by test_accuracy (max), best: v1 (0.93)" in joined(text)


# ---------------------------------------------------------------- plots


def test_names_with_dollars_and_missing_glyphs_plot_without_a_warning(caplog, recwarn):
    records = [Epoch(epoch=1, loss=1.0, val_loss=1.1), Epoch(epoch=2, loss=0.5, val_loss=0.6)]
    with caplog.at_level(logging.WARNING):
        svg = plots.metric_curves({"a$x^2$": records, "b$\\alpha$ 猫": records}, "loss", "loss $y$")
    assert svg.startswith("<")
    assert not [r for r in caplog.records if r.name.startswith("matplotlib")], caplog.records
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


# ---------------------------------------------------------------- a signal before training


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "said"),
    [
        ("slow_to_build", "interrupted by SIGTERM before training started"),  # Python: its handler runs
        ("stuck_in_tensorflow", "TensorFlow did not return within"),  # one C++ call: the watch thread
    ],
)
def test_sigterm_before_training_stops_at_once_with_exit_130(tmp_path, factory, said):
    """A model that takes forever to build (a factory that waits, or one TensorFlow call that does not
    return): SIGTERM ends the run within seconds with exit 130, not after the build."""
    marker = tmp_path / "building"
    text = TINY_SPEC.replace(
        'kind = "mlp"\nhidden_units = [16]',
        f'kind = "factory"\nfactory = "tests.factories:{factory}"\narguments = {{ marker = "{marker}" }}',
    )
    path = tmp_path / "slow.toml"
    path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(path), "--output", str(tmp_path / "out")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    from tests.test_resume import wait_for

    try:
        wait_for(marker.exists, timeout=240)  # the factory is building (and would for an hour)
        child.terminate()
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()  # a failed test leaves no process spinning behind it
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and said in joined(stdout + stderr)


# ---------------------------------------------------------------- pretrained applications


def _base_weights_file(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """A MobileNetV2 (alpha 0.35, 32×32) base without its top, with seeded weights, saved as a weights
    file: the offline stand-in for downloaded ImageNet weights."""
    keras = __import__("runner.compat", fromlist=["keras"]).keras()
    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35, pooling="avg"
    )
    path = tmp_path / "mobilenet_v2_base.weights.h5"
    base.save_weights(str(path))
    return path, [np.asarray(w) for w in base.get_weights()]


def _pretrained(path: Path, freeze: int = 0) -> dict:
    return {
        "kind": "keras_application",
        "name": "MobileNetV2",
        "arguments": {"alpha": 0.35},
        "weights": str(path),
        "include_top": False,
        "freeze_base_epochs": freeze,
    }


def test_a_pretrained_base_gets_its_weights_its_preprocessing_and_runners_head(tmp_path):
    from runner import compat
    from runner.models import build_model
    from runner.precision import policy as precision
    from runner.spec import spec_from_dict

    path, saved = _base_weights_file(tmp_path)
    spec = spec_from_dict({"name": "t", "model": _pretrained(path, freeze=1)})
    with precision.policy_scope("mixed_float16"):
        model = build_model(spec.model, (32, 32, 3), 5, "float32")
        audit = precision.audit_model(model, compat.keras().optimizers.Adam())
    (base,) = compat.frozen_bases(model)
    assert not base.trainable and base.runner_frozen_epochs == 1
    for got, want in zip(base.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    # MobileNetV2's preprocess_input ("tf": pixels to [-1, 1]) as a fixed 1×1 convolution
    pre = model.get_layer("preprocess")
    kernel, bias = pre.get_weights()
    np.testing.assert_allclose(kernel[0, 0], np.eye(3) / 127.5, rtol=1e-6)
    np.testing.assert_allclose(bias, -1.0, rtol=1e-6)
    assert tuple(model.outputs[0].shape) == (None, 5)
    assert audit["output_dtype"] == "float32" if "output_dtype" in audit else True
    every = compat.variables_to_train(model)  # the frozen base's too: the optimizer's slots from the start
    assert len(every) > len(model.trainable_variables) and not base.trainable


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"arguments": {"weights": "imagenet"}},
            "arguments.weights: expected not to be given here (set model.weights",
        ),
        ({"freeze_base_epochs": 2}, "freeze_base_epochs: expected include_top = false"),
    ],
)
def test_pretrained_settings_in_the_wrong_place_are_named(model, expected):
    with pytest.raises(SpecError) as caught:
        spec.spec_from_dict(
            {"name": "t", "model": {"kind": "keras_application", "name": "MobileNetV2", **model}}
        )
    assert expected in str(caught.value)


def test_a_weights_file_that_is_missing_is_bad_input(tmp_path):
    from runner.models import ModelError, build_model
    from runner.precision import policy as precision

    model = spec.spec_from_dict({"name": "t", "model": _pretrained(tmp_path / "nope.h5")}).model
    with (
        precision.policy_scope("float32"),
        pytest.raises(ModelError, match='got ".*nope.h5" \\(not found\\)'),
    ):
        build_model(model, (32, 32, 3), 5, "float32")


@pytest.mark.slow
def test_a_frozen_base_trains_only_from_its_epoch_on(tmp_path):
    """Epoch 1: only runner's head trains (the base's weights are the file's); epoch 2: the base is
    fine-tuned (its weights move). The optimizer has the base's slots from the start, so every
    checkpoint holds the same variables."""
    from runner import compat
    from runner.models import build_model
    from runner.precision import policy as precision
    from runner.session import run_experiment
    from runner.training import checkpoints

    path, saved = _base_weights_file(tmp_path)
    raw = spec.tomllib.loads(
        TINY_SPEC.replace("mixed_float16", "float32") + "\n[runtime]\ntensorboard = false\n"
    )
    loaded = spec.spec_from_dict({**raw, "model": _pretrained(path, freeze=1)}, source="t.toml")
    events: list = []
    outcome = run_experiment(loaded, tmp_path / "out", events.append)
    assert outcome.status == "completed", outcome.report["error"]
    assert outcome.report["fine_tuning"]["unfrozen_at_epoch"] == 2
    assert any("unfrozen, fine-tuned from now on" in getattr(e, "message", "") for e in events)
    with precision.policy_scope("float32"):  # where the base's weights are among the model's variables
        model = build_model(loaded.model, (32, 32, 3), 10, "float32")
    paths = [compat.variable_path(v) for v in compat.model_variables(model)]
    (base,) = compat.frozen_bases(model)
    where = [paths.index(compat.variable_path(w)) for w in base.weights]
    metas = {p.stem: json.loads(p.read_text()) for p in (outcome.run_dir / "checkpoints").glob("step-*.json")}
    after_one = [
        name for name, m in metas.items() if m["position"]["epoch"] == 1 and m["position"]["step"] == 0
    ]
    assert after_one, metas
    final, _ = checkpoints.latest(outcome.run_dir)
    for name, frozen in ((after_one[0], True), (final, False)):
        with np.load(outcome.run_dir / "checkpoints" / f"{name}.npz") as arrays:
            moved = [
                not np.array_equal(arrays[f"model/{i}"], want) for i, want in zip(where, saved, strict=True)
            ]
        assert not any(moved) if frozen else any(moved), name


@pytest.mark.slow
def test_validate_data_reads_odd_names_and_keeps_libjpeg_off_the_terminal(tmp_path):
    """A photo named in bytes that are not UTF-8 and a truncated JPEG: one message naming the JPEG
    (exit 2), no traceback, and libjpeg's own "Premature end of JPEG data" not on the terminal."""
    from PIL import Image

    from tests.test_image_folder import SPEC

    root = make_folder(tmp_path / "photos", per_class=20)
    os.rename(root / "red" / "000.png", os.fsencode(root / "red") + b"/r\xf6t.png")  # Latin-1 "röt"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(root / "blue" / "cut.jpg", quality=90)
    whole = (root / "blue" / "cut.jpg").read_bytes()
    (root / "blue" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    spec_path = tmp_path / "photos.toml"
    spec_path.write_text(SPEC.format(path=root, extra=""))
    result = subprocess.run(
        [sys.executable, "-m", "runner", "validate", "--data", str(spec_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "cut.jpg" in result.stderr and "1 file(s) cannot be decoded" in result.stderr
    assert "Traceback" not in result.stderr and "Premature end of JPEG" not in result.stderr


def test_imagenet_weights_are_fetched_with_every_wait_bounded(monkeypatch):
    """Keras downloads them with urlretrieve, which waits forever on a network that drops packets:
    each socket wait is bounded while the application is built, and restored after; a failed
    download is one message."""
    import socket

    from runner import compat
    from runner.models import WEIGHTS_TIMEOUT_S, ModelError, build_model
    from runner.precision import policy as precision

    seen = []

    def offline(**kwargs):
        seen.append((kwargs["weights"], socket.getdefaulttimeout()))
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")  # what Keras raises

    monkeypatch.setattr(compat.keras().applications, "MobileNetV2", offline)
    model = spec.spec_from_dict(
        {
            "name": "t",
            "model": {
                "kind": "keras_application",
                "name": "MobileNetV2",
                "weights": "imagenet",
                "include_top": False,
            },
        }
    ).model
    with precision.policy_scope("float32"), pytest.raises(ModelError, match="is there a network"):
        build_model(model, (96, 96, 3), 5, "float32")
    assert seen == [("imagenet", WEIGHTS_TIMEOUT_S)] and socket.getdefaulttimeout() is None
