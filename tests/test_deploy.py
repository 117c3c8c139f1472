"""Deployment precision: LiteRT and ONNX exports, quantized, each run by its own runtime in a fresh process
without runner on the whole test split, and held to `[checks] max_export_accuracy_drop`; `runner export
--format/--quantize` later; `runner predict` of any artifact; damaged files are exit 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from runner import compat
from runner.cli import EXPORT_FORMATS, QUANTIZATIONS, app
from runner.export import artifacts as export
from runner.export import conversions
from runner.reporting.report import EXPORT_COLUMNS, export_rows
from runner.spec import QUANTIZATION_FORMATS, Quantization, SpecError, spec_from_dict
from tests.conftest import ROOT, TINY_SPEC
from tests.test_image_folder import COLOURS, write_png


def _png(path: Path, pixels: np.ndarray | None = None) -> Path:
    """An image file: `pixels` (H, W, 3 uint8), or a red square with noise."""
    if pixels is None:
        write_png(path, COLOURS["red"], np.random.default_rng(0))
    else:
        from PIL import Image

        Image.fromarray(pixels).save(path)
    return path


cli = CliRunner()

EVERY = '["keras", "saved_model", "litert", "onnx"]'
EVERY_QUANTIZATION = '["float16", "int8_dynamic", "int8", "keras_int8"]'


# ---------------------------------------------------------------- the spec and the plan (no TensorFlow)


def test_the_quantizations_match_the_cli_and_the_formats_they_apply_to():
    assert set(QUANTIZATIONS) == set(Quantization.__args__) == set(QUANTIZATION_FORMATS)
    assert {f for fs in QUANTIZATION_FORMATS.values() for f in fs} <= set(EXPORT_FORMATS)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        pytest.param(
            {"formats": ["keras"], "quantize": ["int8"]},
            "export.quantize: \"int8\" quantizes the litert export; expected 'litert' in export.formats",
            id="int8-without-litert",
        ),
        pytest.param(
            {"formats": ["litert"], "quantize": ["keras_int8"]},
            "expected 'keras' in export.formats",
            id="keras_int8-without-keras",
        ),
        pytest.param(
            {"formats": ["onnx"], "quantize": ["int8_dynamic", "int8_dynamic"]},
            "export.quantize: expected each value once",
            id="twice",
        ),
        pytest.param(
            {"formats": ["litert"], "quantize": ["int4"]},
            'export.quantize.0: expected one of float16, int8_dynamic, int8, keras_int8; got "int4"',
            id="unknown",
        ),
        pytest.param(
            {"formats": ["litert"], "calibration_images": 0},
            "export.calibration_images",
            id="no-calibration",
        ),
    ],
)
def test_a_quantization_without_its_format_is_refused_by_name(table, expected):
    with pytest.raises(SpecError, match=None) as raised:
        spec_from_dict({"name": "t", "export": table})
    assert expected in str(raised.value)


def test_the_plan_names_each_artifact_and_converts_from_the_float32_copy():
    planned = export.planned(["keras", "litert", "onnx"], "mixed_bfloat16", True, ["float16", "int8_dynamic"])
    assert [(a.path, a.precision, a.converted) for a in planned] == [
        ("model.keras", "policy", False),
        ("model-float32.keras", "float32", False),
        ("model.tflite", "float32", True),
        ("model.onnx", "float32", True),
        ("model-float16.tflite", "float16", True),
        ("model-int8_dynamic.tflite", "int8_dynamic", True),
        ("model-int8_dynamic.onnx", "int8_dynamic", True),
    ]
    assert all(a.float32_copy for a in planned if a.converted)
    # Under float32 the run's model is what is converted: no float32 copy to compare with.
    assert not any(a.float32_copy for a in export.planned(["litert"], "float32", True, ["int8"]))


def _record(drops: dict[str, float]) -> dict:
    files = [
        {"path": path, "format": "litert", "precision": "int8", "passed": True, "accuracy": 0.9 - drop}
        | {"accuracy_drop": drop, "agreement": 0.95, "bytes": 2**20, "max_abs_diff": 0.01, "tolerance": None}
        for path, drop in drops.items()
    ]
    return {"files": files, "evaluation": {"split": "test", "images": 500, "accuracy": 0.9}}


def test_the_accuracy_budget_names_each_artifact_that_misses_it():
    record = _record({"model-float16.tflite": 0.002, "model-int8.tflite": 0.2})
    finding = export.accuracy_finding(record, 0.01)
    assert finding is not None and not finding.passed and finding.severity == "error"
    assert "model-int8.tflite (int8) 0.7000, +0.2000 below" in finding.detail
    assert "model-float16" not in finding.detail and "on 500 test images" in finding.detail
    passed = export.accuracy_finding(_record({"model-float16.tflite": 0.002}), 0.01)
    assert passed is not None and passed.passed and "+0.0020 (model-float16.tflite)" in passed.detail
    assert export.accuracy_finding(record, None) is None  # no budget, no check
    none_measured = export.accuracy_finding({"files": [], "skipped": "RUNNER_SKIP_EXPORT is set"}, 0.01)
    assert (
        none_measured is not None
        and not none_measured.passed
        and "RUNNER_SKIP_EXPORT" in none_measured.detail
    )


def test_each_row_shows_the_runtime_the_drop_and_a_skip_with_its_reason():
    record = _record({"model-int8.tflite": 0.05})
    record["files"].append(
        {"path": "model-keras_int8.keras", "format": "keras", "precision": "keras_int8", "passed": True}
        | {"skipped": "model.quantize quantizes Dense, EinsumDense and Embedding layers; this model has none"}
    )
    rows = [dict(zip(EXPORT_COLUMNS, row, strict=True)) for row in export_rows(record)]
    assert (
        rows[0]["runtime"] == "LiteRT" and rows[0]["Δ vs run"] == "-0.0500" and rows[0]["size"] == "1.00 MB"
    )
    assert rows[1]["round trip"].startswith("skipped: model.quantize quantizes Dense")
    assert rows[1]["accuracy"] == "—"


def test_a_format_without_its_extra_is_exit_2_naming_the_install_before_anything_trains(
    tmp_path, monkeypatch
):
    """What a core install sees: the format's packages are not importable (one made absent here)."""
    monkeypatch.setitem(conversions.NEEDS, "litert", {"runner_no_such_runtime": "ai-edge-litert"})
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY_SPEC + '\n[export]\nformats = ["litert"]\n')
    result = cli.invoke(app, ["run", str(spec), "--output", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "export.formats: litert needs ai-edge-litert, not installed here" in result.output
    assert "pip install -e '.[export]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.toml").write_text(TINY_SPEC)
    return run_dir


@pytest.mark.parametrize(
    ("name", "content", "runtime"),
    [
        pytest.param("model-int8.tflite", b"TFL3" + bytes(range(256)) * 4, "LiteRT", id="tflite"),
        pytest.param("model.onnx", b"\x08\x07" + os.urandom(64), "ONNX Runtime", id="onnx"),
    ],
)
def test_runner_predict_of_a_damaged_artifact_is_exit_2_naming_it(tmp_path, name, content, runtime):
    run_dir = _run_dir(tmp_path)
    (run_dir / name).write_bytes(content)
    image = _png(tmp_path / "red.png")
    result = cli.invoke(app, ["predict", str(run_dir / name), str(image)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"{run_dir / name}: {runtime} cannot load it" in message and "Traceback" not in message
    assert f"export it again with `runner export {run_dir}`" in message


def test_runner_predict_of_a_file_no_runtime_reads_is_exit_2(tmp_path):
    run_dir = _run_dir(tmp_path)
    (run_dir / "model.pt").write_bytes(b"torch")
    result = cli.invoke(app, ["predict", str(run_dir / "model.pt"), str(_png(tmp_path / "red.png"))])
    assert result.exit_code == 2
    assert (
        "model.pt: not a model file; expected a run directory, a .keras, .tflite or .onnx file"
        in " ".join(result.output.split())
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["--quantize", "int3"],
            '--quantize: expected one of float16, int8_dynamic, int8, keras_int8; got "int3"',
            id="unknown",
        ),
        pytest.param(
            ["--format", "keras", "--quantize", "int8"],
            '--format/--quantize: export.quantize: "int8" quantizes the litert export',
            id="no-litert",
        ),
    ],
)
def test_runner_export_refuses_a_quantization_it_cannot_apply(tmp_path, args, expected):
    run_dir = _run_dir(tmp_path)
    result = cli.invoke(app, ["export", str(run_dir), *args])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())


# ---------------------------------------------------------------- real runs (slow)


def _run(spec: Path, out: Path, *overrides: str) -> tuple[int, str, Path | None]:
    sets = [arg for s in overrides for arg in ("--set", s)]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(export.SKIP_ENV, raising=False)
        result = cli.invoke(app, ["run", str(spec), *sets, "--output", str(out)])
    found = sorted(out.iterdir()) if out.exists() else []
    return result.exit_code, result.output, (found[-1] if found else None)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """The README's quickstart (mixed_float16, its own check: test accuracy >= 0.9), exported to Keras,
    LiteRT and ONNX with every quantization those take, each artifact's accuracy held to 0.01. The
    one mixed_float16 quickstart run of the suite (tests/test_quickstart.py runs it in float32)."""
    out = tmp_path_factory.mktemp("deployed")
    code, output, run_dir = _run(
        ROOT / "specs" / "quickstart.toml",
        out,
        'export.formats=["keras", "litert", "onnx"]',
        'export.quantize=["float16", "int8_dynamic", "int8"]',
        "checks.max_export_accuracy_drop=0.01",
    )
    assert code == 0, output
    assert run_dir is not None
    return run_dir


@pytest.mark.slow
def test_the_quickstart_reaches_090_in_mixed_float16_with_every_invariant(deployed):
    """The README's first run: every check passes, float16 compute, float32 variables and output, a
    finite positive loss scale, model.keras and its float32 copy exported and checked."""
    report = json.loads((deployed / "report.json").read_text())
    assert report["metrics"]["test_accuracy"] >= 0.90
    assert all(check["passed"] for check in report["checks"]), report["checks"]
    precision, audit = report["precision"], report["audit"]
    assert precision["compute_dtype"] == "float16" and precision["variable_dtype"] == "float32"
    assert audit["output_dtype"] == "float32"
    assert audit["optimizer"].startswith("LossScaleOptimizer")  # V3 in Keras 2
    assert 0 < precision["loss_scale"]["final"] < float("inf")
    assert {"model.keras", "model-float32.keras"} <= {p.name for p in deployed.iterdir()}


def _rows(run_dir: Path) -> dict[str, dict]:
    return {x["path"]: x for x in json.loads((run_dir / "report.json").read_text())["export"]["files"]}


@pytest.mark.slow
def test_the_quickstart_exports_every_format_each_measured_by_its_runtime_without_runner(deployed):
    rows = _rows(deployed)
    runtimes = {
        "model.keras": "keras",
        "model-float32.keras": "keras",
        "model.tflite": "ai-edge-litert",
        "model-float16.tflite": "ai-edge-litert",
        "model-int8_dynamic.tflite": "ai-edge-litert",
        "model-int8.tflite": "ai-edge-litert",
        "model.onnx": "onnxruntime",
        "model-int8_dynamic.onnx": "onnxruntime",
    }
    assert set(rows) == set(runtimes)
    record = json.loads((deployed / "report.json").read_text())["export"]
    reference = record["evaluation"]
    assert reference["split"] == "test" and reference["images"] == 2000
    labels_seen = reference["accuracy"]
    for path, runtime in runtimes.items():
        row = rows[path]
        assert (deployed / path).is_file() and row["bytes"] == (deployed / path).stat().st_size
        assert row["runtime"].split(" ")[0] == runtime, row
        assert row["passed"] and row["runner_importable"] is False, row  # tried there, and refused
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["agreement"] <= 1 and row["latency_ms_per_image"] > 0
        assert row["accuracy_drop"] == pytest.approx(labels_seen - row["accuracy"], abs=2e-6)
        assert row["accuracy_drop"] <= 0.01
    for path in ("model.tflite", "model.onnx"):  # float32 conversions: the float32 copy's probabilities
        assert rows[path]["max_abs_diff"] <= export.CONVERTED_ATOL and rows[path]["agreement"] >= 0.99
    assert rows["model-int8.tflite"]["bytes"] < rows["model.tflite"]["bytes"] / 3  # int8 weights
    assert rows["model-int8.tflite"]["calibration_images"] == 256
    checks = {c["name"]: c for c in json.loads((deployed / "report.json").read_text())["checks"]}
    assert checks["export_accuracy"]["passed"] and checks["export_roundtrip"]["passed"]
    markdown = (deployed / "report.md").read_text()
    assert "## Exported" in markdown and "| model-int8.tflite | LiteRT | int8 |" in markdown
    assert not list((deployed / "export").glob(".*"))  # the evaluation images and predictions are removed


@pytest.mark.slow
def test_runner_predict_runs_each_artifact_through_its_runtime(deployed, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shapes = np.load(deployed / "export" / "batch.npy")[:3]
    for i, image in enumerate(shapes):
        _png(images / f"{i}.png", image)
    answers = {}
    for name in ("model.keras", "model-int8.tflite", "model.onnx"):
        result = cli.invoke(app, ["predict", str(deployed / name), str(images), "--json"])
        assert result.exit_code == 0, result.output
        answers[name] = [x["top"][0]["index"] for x in json.loads(result.output)]
    assert answers["model.onnx"] == answers["model.keras"]  # float32 of the same weights
    assert len(answers["model-int8.tflite"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model-int8.tflite", "model-int8_dynamic.onnx"])
def test_an_artifact_damaged_after_export_is_exit_2(deployed, tmp_path, name):
    damaged = tmp_path / "run"
    shutil.copytree(deployed, damaged, ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    content = (damaged / name).read_bytes()
    (damaged / name).write_bytes(content[: len(content) // 2])  # cut off half-way, as a failed copy is
    image = _png(tmp_path / "red.png")
    result = cli.invoke(app, ["predict", str(damaged / name), str(image)])
    assert result.exit_code == 2, result.output
    assert "cannot load it" in " ".join(result.output.split()) and "Traceback" not in result.output


@pytest.mark.slow
def test_runner_export_adds_a_quantization_to_a_finished_run_beside_what_it_holds(deployed):
    result = cli.invoke(app, ["export", str(deployed), "--format", "litert", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    (target,) = (deployed / "exports").iterdir()
    record = json.loads((target / "export" / "export.json").read_text())
    assert [x["path"] for x in record["files"]] == ["model.tflite", "model-int8.tflite"]
    assert all(x["runtime"].startswith("ai-edge-litert") for x in record["files"])
    before = _rows(deployed)["model-int8.tflite"]
    assert record["files"][1]["accuracy"] == pytest.approx(before["accuracy"], abs=0.02)  # same weights
    assert "model-int8.tflite" in result.output


@pytest.mark.slow
def test_full_int8_that_clips_an_outlier_channel_misses_the_budget_and_float16_keeps_it(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)  # the factory is specs.bugs.factories
    code, output, run_dir = _run(ROOT / "specs" / "int8_outliers.toml", tmp_path / "runs")
    assert code == 1, output
    assert run_dir is not None
    checks = {c["name"]: c for c in json.loads((run_dir / "report.json").read_text())["checks"]}
    failed = checks["export_accuracy"]
    assert not failed["passed"] and "got model-int8.tflite (int8)" in failed["detail"]
    assert "float16" not in failed["detail"].split("got", 1)[1]
    rows = _rows(run_dir)
    assert rows["model-int8.tflite"]["accuracy_drop"] > 0.02 >= rows["model-float16.tflite"]["accuracy_drop"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_every_policy_exports_to_every_format_from_its_float32_model(tmp_path, policy):
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY_SPEC + f"\n[export]\nformats = {EVERY}\nquantize = {EVERY_QUANTIZATION}\n")
    code, output, run_dir = _run(spec, tmp_path / "runs", f"precision.policy={policy}")
    assert code == 0, output
    assert run_dir is not None
    rows = _rows(run_dir)
    converted = [
        x for x in rows.values() if x["format"] in ("litert", "onnx") or x["precision"] == "keras_int8"
    ]
    assert len(converted) == 7, converted
    assert [x for x in converted if not x["passed"]] == []
    keras_2 = compat.needs_keras_3("keras_int8")
    for row in converted:
        if keras_2 and row["precision"] == "keras_int8":  # Keras 2 has no model.quantize: a recorded skip
            assert "needs Keras 3" in row["skipped"]
        else:
            assert "accuracy" in row and row["precision"] != "policy", row
    copy = "the float32 copy" if policy != "float32" else "the float32 model"
    assert {x["converted_from"] for x in converted if "converted_from" in x} == {copy}


@pytest.mark.slow
def test_a_conversion_that_cannot_be_made_is_a_recorded_skip_with_its_reason(tmp_path, monkeypatch):
    """keras_int8 of a model without Dense layers: a row marked skipped, a warning, exit 0."""
    monkeypatch.chdir(ROOT)  # the factory is tests.factories
    spec = tmp_path / "spec.toml"
    spec.write_text(
        TINY_SPEC.replace(
            'kind = "mlp"\nhidden_units = [16]',
            'kind = "factory"\nfactory = "tests.factories:convolutions_only"',
        )
        + '\n[export]\nformats = ["keras", "litert"]\nquantize = ["keras_int8", "int8_dynamic"]\n'
    )
    code, output, run_dir = _run(spec, tmp_path / "runs", "training.epochs=1")
    assert code == 0, output
    assert run_dir is not None
    rows = _rows(run_dir)
    skipped = rows["model-keras_int8.keras"]
    why = "needs Keras 3" if compat.needs_keras_3("keras_int8") else "this model has none"
    assert why in skipped.get("skipped", ""), skipped
    assert not (run_dir / "model-keras_int8.keras").exists()
    assert rows["model-int8_dynamic.tflite"]["passed"] and "accuracy" in rows["model-int8_dynamic.tflite"]
    checks = {c["name"]: c for c in json.loads((run_dir / "report.json").read_text())["checks"]}
    warning = checks["export_conversions"]
    assert warning["severity"] == "warning" and "model-keras_int8.keras: " in warning["detail"]
    assert why in warning["detail"]
    assert "Traceback" not in output
