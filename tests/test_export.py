"""[export], `runner export` and `runner predict`: the files a run leaves reload without runner, take
uint8 images, return float32 probabilities; the float32 copy agrees within its stated tolerance; a
broken export fails `export_roundtrip`; bad input is exit 2. One trained run serves every test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from runner.cli import EXPORT_FORMATS, app
from runner.export import artifacts as export
from runner.spec import ExportFormat, SpecError, json_schema, load_spec, spec_from_dict
from runner.training import checkpoints
from tests.conftest import ROOT, TINY_SPEC
from tests.test_image_folder import COLOURS, make_folder, write_png

cli = CliRunner()

# TINY_SPEC (mixed_float16, an MLP) on a folder of three colours, which it separates in three epochs.
ON_COLOURS = [
    "data.source=image_folder",
    "data.image_size=[16, 16]",
    "data.batch_size=8",
    "seed=3",
    "training.epochs=3",
]
EXPORT_BOTH = '\n[export]\nformats = ["keras", "saved_model"]\n'


# ---------------------------------------------------------------- the spec (no TensorFlow)


def test_the_default_exports_keras_with_a_float32_copy_and_the_formats_match_the_cli():
    spec = spec_from_dict({"name": "t"})
    assert spec.export.formats == ["keras"] and spec.export.float32
    assert set(EXPORT_FORMATS) == set(ExportFormat.__args__)
    assert json_schema()["$defs"]["ExportSpec"]["properties"]["formats"]["items"]["enum"] == list(
        EXPORT_FORMATS
    )


@pytest.mark.parametrize(
    ("export_table", "expected"),
    [
        pytest.param({"formats": ["keras", "keras"]}, "export.formats: expected each value once", id="twice"),
        pytest.param(
            {"formats": ["tfjs"]},
            'export.formats.0: expected one of keras, saved_model, litert, onnx; got "tfjs"',
            id="tfjs",
        ),
        pytest.param({"formats": "keras"}, "export.formats: expected a valid list", id="not-a-list"),
        pytest.param({"float32": "yes"}, "export.float32: expected a valid boolean", id="float32"),
    ],
)
def test_bad_export_tables_name_the_field(export_table, expected):
    with pytest.raises(SpecError, match="export") as caught:
        spec_from_dict({"name": "t", "export": export_table})
    assert expected in str(caught.value)


def test_formats_empty_exports_nothing():
    assert export.planned([], "mixed_float16", True) == []
    assert [a.path for a in export.planned(["saved_model"], "float32", True)] == ["saved_model"]
    assert [a.path for a in export.planned(["keras"], "mixed_bfloat16", True)] == [
        "model.keras",
        "model-float32.keras",
    ]


def test_best_reads_best_json_and_is_none_without_it(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert checkpoints.best(tmp_path) is None
    np.savez(folder / "step-00000004.npz", x=np.zeros(2))
    (folder / "step-00000004.json").write_text(json.dumps({"position": {"epoch": 1}}))
    (folder / "best.json").write_text(
        json.dumps({"name": "step-00000004", "epoch": 1, "step": 0, "global_step": 4})
    )
    assert checkpoints.best(tmp_path) == ("step-00000004", {"position": {"epoch": 1}})
    (folder / "step-00000004.npz").write_bytes(b"PK")  # a pointer at a damaged checkpoint is named
    with pytest.raises(checkpoints.CheckpointError, match="step-00000004.npz: unreadable"):
        checkpoints.best(tmp_path)


# ---------------------------------------------------------------- bad input (no training)


def _bare_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.toml").write_text('name = "bare"\n')
    write_png(tmp_path / "red.png", COLOURS["red"], np.random.default_rng(0))
    return run_dir


BAD_INPUT = {
    "format": (
        ["export", "{run}", "--format", "tfjs"],
        '--format: expected one of keras, saved_model, litert, onnx; got "tfjs"',
    ),
    "checkpoint": (
        ["export", "{run}", "--checkpoint", "first"],
        '--checkpoint: expected latest or best; got "first"',
    ),
    "export-not-a-run": (["export", "{tmp}"], "not a run directory (no spec.toml)"),
    "no-best": (
        ["export", "{run}", "--checkpoint", "best"],
        "no best checkpoint (checkpoints/best.json): the run had no [training.early_stopping]",
    ),
    "no-checkpoint": (["export", "{run}"], "no checkpoint to export"),
    "predict-not-a-run": (["predict", "{tmp}", "{tmp}/red.png"], "not a run directory (no spec.toml)"),
    "no-model": (
        ["predict", "{run}", "{tmp}/red.png"],
        "model.keras: not found; expected the run's exported model",
    ),
    "no-image": (["predict", "{run}", "{tmp}/nowhere.png"], "nowhere.png: no such file or folder"),
}


@pytest.mark.parametrize(("args", "expected"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_exit_2_with_one_message(tmp_path, args, expected):
    run_dir = _bare_run(tmp_path)
    result = cli.invoke(app, [a.format(run=run_dir, tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.stderr.split()) and "Traceback" not in result.output


# ---------------------------------------------------------------- one trained run


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("colours"), per_class=50)


@pytest.fixture(scope="module")
def exported_run(colours, tmp_path_factory) -> Path:
    """A mixed_float16 run on the colours folder, exported as .keras and SavedModel (and float32 copies)."""
    out = tmp_path_factory.mktemp("out")
    spec = out / "spec.toml"
    spec.write_text(TINY_SPEC + EXPORT_BOTH)
    overrides = [arg for s in [*ON_COLOURS, f'data.path="{colours}"'] for arg in ("--set", s)]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(export.SKIP_ENV, raising=False)
        patch.setenv("RUNNER_OFFLINE", "1")
        result = cli.invoke(app, ["run", str(spec), *overrides, "--output", str(out / "runs")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


# A user's process: plain Keras and TensorFlow, runner refused on import (and absent from sys.modules).
USER = r"""
import importlib.abc, json, os, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "runner":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Refuse())
try:
    import runner
    refused = False
except ModuleNotFoundError:
    refused = True
import numpy as np, tensorflow as tf
if os.environ.get("TF_USE_LEGACY_KERAS"):
    import tf_keras as keras
else:
    import keras
run = sys.argv[1]
batch = np.load(os.path.join(run, "export", "batch.npy"))
out = {"batch_dtype": str(batch.dtype), "refused": refused}
for name in ("model.keras", "model-float32.keras"):
    model = keras.saving.load_model(os.path.join(run, name))
    p = np.asarray(model(batch, training=False))
    policies = sorted({layer.dtype_policy.name for layer in model.layers if layer.weights})
    out[name] = {"dtype": str(p.dtype), "p": p.tolist(), "policies": policies}
loaded = tf.saved_model.load(os.path.join(run, "saved_model"))  # kept: its functions need its variables
p = loaded.serve(tf.constant(batch)).numpy()
out["saved_model"] = {"dtype": str(p.dtype), "p": p.tolist()}
out["runner_modules"] = [m for m in sys.modules if m.split(".")[0] == "runner"]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_both_formats_reload_in_a_fresh_process_without_runner(exported_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.run(
        [sys.executable, "-I", "-c", USER, str(exported_run)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    got = json.loads(child.stdout.splitlines()[-1])
    assert got["refused"] and got["runner_modules"] == [] and got["batch_dtype"] == "uint8"
    expected = np.load(exported_run / "export" / "expected.npy")
    for name in ("model.keras", "saved_model"):
        assert got[name]["dtype"] == "float32"
        np.testing.assert_allclose(got[name]["p"], expected, atol=export.SAME_PRECISION_ATOL, rtol=0)
    assert got["model.keras"]["policies"] == ["mixed_float16"]
    assert got["model-float32.keras"]["policies"] == ["float32"]
    finding = next(c for c in _report(exported_run)["checks"] if c["name"] == "export_roundtrip")
    assert finding["passed"], finding["detail"]


@pytest.mark.slow
def test_the_float32_copy_is_float32_and_within_the_stated_tolerance(exported_run):
    record = _report(exported_run)["export"]
    lines = {line["path"]: line for line in record["files"]}
    assert set(lines) == {"model.keras", "saved_model", "model-float32.keras", "saved_model-float32"}
    for name in ("model-float32.keras", "saved_model-float32"):
        line = lines[name]
        assert line["passed"] and line["tolerance_from_run_model"] == export.FLOAT32_COPY_ATOL["float16"]
        assert 0 < line["max_abs_diff_from_run_model"] <= line["tolerance_from_run_model"]
    assert (
        all(line["bytes"] > 0 for line in lines.values()) and record["batch"]["images"] == export.BATCH_IMAGES
    )


@pytest.mark.slow
def test_runner_predict_names_the_classes_of_three_new_images(exported_run, tmp_path):
    rng = np.random.default_rng(99)
    for name in ("green", "red", "blue"):
        write_png(tmp_path / f"{name}.png", COLOURS[name], rng, size=40)  # another size: resized as trained
    paths = [str(tmp_path / f"{n}.png") for n in ("green", "red", "blue")]
    result = cli.invoke(app, ["predict", str(exported_run), *paths, "--json", "--top", "2"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [item["top"][0]["class"] for item in found] == ["green", "red", "blue"]
    assert all(len(item["top"]) == 2 and item["top"][0]["probability"] > 0.9 for item in found)
    table = cli.invoke(app, ["predict", str(exported_run), str(tmp_path)])  # a folder: its images, sorted
    assert table.exit_code == 0, table.output
    cells = [line.split("│") for line in table.stdout.splitlines()]
    classes = [row[2].strip() for row in cells if len(row) > 2 and row[2].strip()]  # wrapped paths: empty
    assert classes == ["blue", "green", "red"]


@pytest.mark.slow
def test_runner_predict_skips_what_does_not_decode_and_names_it(exported_run, tmp_path):
    """One bad file among good ones (one named in bytes that are not UTF-8): the others predicted,
    the bad one named on stderr, exit 0; --strict: the same output, exit 2."""
    rng = np.random.default_rng(5)
    write_png(tmp_path / "red.png", COLOURS["red"], rng)
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/gr\xfcn.png")  # Latin-1 "grün": not UTF-8
    write_png(Path(odd), COLOURS["green"], rng)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result = cli.invoke(app, ["predict", str(exported_run), str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [item["top"][0]["class"] for item in found] == [
        "green",
        "red",
    ]  # sorted by name: b"gr\xfc" < b"red"
    assert found[0]["file"].endswith("gr\\xfcn.png")
    warning = " ".join(result.stderr.split())
    assert "1 of 3 file(s) skipped" in warning and "broken.png" in warning
    strict = cli.invoke(app, ["predict", str(exported_run), str(tmp_path), "--json", "--strict"])
    assert strict.exit_code == 2 and json.loads(strict.stdout) == found
    assert "broken.png" in " ".join(strict.stderr.split())


def test_runner_predict_refuses_a_model_of_channels_no_image_has(tmp_path):
    from runner import compat

    keras = compat.keras()
    run_dir = tmp_path / "bands"
    run_dir.mkdir()
    (run_dir / "spec.toml").write_text('name = "bands"\n')
    inputs = keras.Input((8, 8, 5))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    model.save(str(run_dir / "model.keras"))
    write_png(tmp_path / "red.png", COLOURS["red"], np.random.default_rng(0))
    result = cli.invoke(app, ["predict", str(run_dir), str(tmp_path / "red.png")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "takes images of 5 channels; image files decode to 1, 3, 4 channels" in message
    assert "cannot be decoded" not in message


def _perturb_weights(path: Path) -> None:
    """Add 1 to the first dense kernel inside a .keras file: it still loads, and answers otherwise."""
    import h5py

    work = path.with_suffix(".work")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(work)
    with h5py.File(work / "model.weights.h5", "r+") as weights:
        kernels = []
        weights.visititems(
            lambda name, node: (
                kernels.append(node) if isinstance(node, h5py.Dataset) and node.ndim == 2 else None
            )
        )
        kernels[0][...] = kernels[0][...] + 1.0
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(work.iterdir()):
            archive.write(file, file.name)
    shutil.rmtree(work)


@pytest.mark.slow
def test_export_roundtrip_fails_when_an_export_does_not_match(exported_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported_run, run_dir)
    _perturb_weights(run_dir / "model.keras")
    (run_dir / "model-float32.keras").write_bytes((run_dir / "model-float32.keras").read_bytes()[:500])
    spec = load_spec(run_dir / "spec.toml")
    finding, record = export.verify(
        run_dir, export.planned(["keras", "saved_model"], "mixed_float16", True), spec
    )
    assert not finding.passed and finding.severity == "error"
    assert "model.keras: differs from the run's model by" in finding.detail
    assert "model-float32.keras: did not load" in finding.detail
    assert [line["passed"] for line in record["files"]] == [False, True, False, True]
    broken = cli.invoke(app, ["predict", str(run_dir), str(exported_run / "spec.toml")])  # not an image
    assert broken.exit_code == 2 and "spec.toml: cannot be decoded" in " ".join(broken.stderr.split())
    (run_dir / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    write_png(tmp_path / "red.png", COLOURS["red"], np.random.default_rng(0))
    corrupt = cli.invoke(app, ["predict", str(run_dir), str(tmp_path / "red.png")])
    assert corrupt.exit_code == 2, corrupt.output
    assert "model.keras: Keras cannot load it" in " ".join(corrupt.stderr.split())


@pytest.mark.slow
def test_runner_export_from_the_latest_checkpoint_of_an_interrupted_run(tmp_path):
    """tests/fixtures/v1-interrupted-run: interrupted in epoch 2 at step 27, never finished."""
    run_dir = tmp_path / "v1-interrupted-run"
    shutil.copytree(ROOT / "tests" / "fixtures" / "v1-interrupted-run", run_dir)
    assert _report(run_dir)["status"] == "interrupted"
    result = cli.invoke(app, ["export", str(run_dir), "--checkpoint", "latest"])
    assert result.exit_code == 0, result.output
    assert "step-00000027" in result.stdout and "model.keras" in result.stdout
    record = json.loads((run_dir / "export" / "export.json").read_text())
    assert record["checkpoint"] == "step-00000027" and [f["path"] for f in record["files"]] == [
        "model.keras",
        "model-float32.keras",
    ]
    assert all(f["passed"] for f in record["files"])
    from runner import compat  # the exported weights are the checkpoint's, not a fresh model's

    exported = compat.keras().models.load_model(str(run_dir / "model.keras")).get_weights()
    with np.load(run_dir / "checkpoints" / "step-00000027.npz") as saved:
        for i, weight in enumerate(exported):
            np.testing.assert_array_equal(weight, saved[f"model/{i}"])
