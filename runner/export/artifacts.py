"""Export: the model a run leaves to deploy, run by its own runtime in a fresh process, and measured.

A run directory gets `model.keras` and/or `saved_model/` (and under a mixed policy a float32 copy of
each: `model-float32.keras`, `saved_model-float32/`), the deployment formats converted from the
float32 copy (`model.tflite`, `model.onnx`, and each quantization: `model-int8.tflite`, …; see
conversions.py), plus `export/`: the fixed batch the check predicts (`batch.npy`, the first test
images as uint8), the in-process predictions of the run's model (`expected.npy`) and of its float32
copy (`expected-float32.npy`), and `export.json`.

Every file is then run in ONE fresh `python -I` (runner/export/fresh_reload.py, runner
unimportable) by its runtime: on the fixed batch (the `export_roundtrip` check: the same model
must give the same probabilities) and on the whole test split (its accuracy, its agreement with the
run's model, the largest probability difference, its latency per image: the `export_accuracy`
check holds the accuracy to `[checks] max_export_accuracy_drop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import compat, runs
from runner.export import conversions
from runner.models import build_model
from runner.precision import policy as precision
from runner.precision.checks import Finding
from runner.reporting.report import ExportRecord
from runner.spec import COMPUTE_DTYPE, ExperimentSpec

EXPORT_DIR = "export"
BATCH_IMAGES = 16
# Same precision, reloaded: probabilities in [0, 1] agree to about 80 float32 ulps at 1.0. Measured
# 0 for .keras files (the same eager ops) and up to 5.7e-6 for a float16 SavedModel (its graph
# rounds float16 intermediates in another order than eager calls do).
SAME_PRECISION_ATOL = 2e-5
# The float32 copy against the mixed model, by the mixed policy's compute dtype: about five times
# the dtype's epsilon (float16 9.8e-4, bfloat16 7.8e-3). Measured maxima over seed_cnn, mlp with
# batch norm and resnet8 on 512 shapes test images, untrained and after 3 epochs:
# float16 7.2e-4, bfloat16 1.4e-2 (docs/spec.md, [export]).
FLOAT32_COPY_ATOL = {"float16": 5e-3, "bfloat16": 5e-2}
# A float32 conversion (LiteRT, ONNX) against the float32 copy: another compiler's kernels sum in
# another order. Measured up to 2.2e-6 (LiteRT's XNNPACK, onnxruntime; docs/export.md's tables).
CONVERTED_ATOL = 1e-4
RELOAD_TIMEOUT_S = 600  # one fresh process imports TensorFlow (seconds) and runs every file on the test split
LATENCY_BATCH = 32  # images per timed call of each artifact
SKIP_ENV = "RUNNER_SKIP_EXPORT"  # the test suite sets it: its many runs do not test export


@dataclass(frozen=True)
class Artifact:
    """One exported file (or SavedModel folder), relative to the run directory."""

    path: str
    format: str  # "keras" | "saved_model" | "litert" | "onnx"
    float32_copy: bool  # made from the float32 copy (every conversion is)
    quantization: str | None = None  # conversions.APPLIES_TO's keys; None: not quantized
    converted: bool = False  # LiteRT, ONNX, keras_int8: made by a converter from the float32 copy

    @property
    def precision(self) -> str:
        """ "policy" (the run's), "float32", or the quantization."""
        if self.quantization is not None:
            return self.quantization
        return "float32" if self.float32_copy or self.converted else "policy"


def artifact_path(fmt: str, float32_copy: bool) -> str:
    stem = "model" if fmt == "keras" else "saved_model"
    suffix = "-float32" if float32_copy else ""
    return f"{stem}{suffix}.keras" if fmt == "keras" else f"{stem}{suffix}"


def planned(
    formats: Sequence[str], policy: str, float32: bool, quantize: Sequence[str] = ()
) -> list[Artifact]:
    """The files an export writes: each format Keras and TensorFlow save, and its float32 copy under a
    mixed policy; then the conversions (from the float32 copy), plain and quantized."""
    native = [f for f in formats if f in ("keras", "saved_model")]
    copies = [False, True] if float32 and policy != "float32" else [False]
    saved = [Artifact(artifact_path(f, copy), f, copy) for copy in copies for f in native]
    converted = [
        Artifact(c.path, c.format, policy != "float32", c.quantization, converted=True)
        for c in conversions.planned(formats, quantize)
    ]
    return saved + converted


def every_artifact_path() -> list[str]:
    """Every name an export may write (runner export writes beside a run that holds any of them)."""
    names = {
        a.path
        for policy in ("float32", "mixed_float16")
        for a in planned(
            ["keras", "saved_model", "litert", "onnx"], policy, True, list(conversions.APPLIES_TO)
        )
    }
    return sorted(names)


def skipped_by_environment() -> bool:
    return bool(os.environ.get(SKIP_ENV))


def fixed_batch(splits: Any) -> np.ndarray:
    """The check's batch: the first test images (training images where there is no test split)."""
    split = "test" if splits.count("test") else "train"
    x, _ = next(iter(splits.eval_dataset(split, BATCH_IMAGES)))
    return np.asarray(x)  # (n, H, W, C) uint8


def probabilities(model: Any, batch: np.ndarray) -> np.ndarray:
    """The model's output on `batch`, called as the reload calls it (eagerly, not training)."""
    tf = compat.tensorflow()
    return np.asarray(model(tf.constant(batch), training=False))


def inference_copy(model: Any, spec: ExperimentSpec, policy: str) -> Any:
    """The same weights in the model built anew under `policy` (restored after): uncompiled, so the
    file holds no optimizer state (a quarter of the size) and loads without a LossScaleOptimizer."""
    shape, classes = tuple(model.inputs[0].shape[1:]), int(model.outputs[0].shape[-1])
    with precision.policy_scope(policy):
        copy = build_model(spec.model, shape, classes, "float32")
    copy.set_weights(model.get_weights())
    return copy


@dataclass
class Evaluation:
    """The images every artifact is measured on (the whole test split; the training split where there is
    none), their labels, and the run's model's probabilities on them."""

    split: str
    images: np.ndarray  # (n, H, W, C) uint8
    labels: np.ndarray  # (n,) class indices
    expected: np.ndarray  # (n, classes) the run's model, in process

    @property
    def accuracy(self) -> float:
        return _accuracy(self.expected, self.labels)


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


def _class_indices(labels: Any) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.argmax(axis=-1) if labels.ndim > 1 else labels.astype(np.int64)


def evaluation_split(model: Any, splits: Any) -> Evaluation:
    """The test split (else the training split) as arrays, and the run's model's probabilities on it."""
    split = "test" if splits.count("test") else "train"
    images, labels, expected = [], [], []
    for x, y in splits.eval_dataset(split, 256):
        images.append(np.asarray(x))
        labels.append(_class_indices(y))
        expected.append(probabilities(model, images[-1]))
    return Evaluation(split, np.concatenate(images), np.concatenate(labels), np.concatenate(expected))


def calibration_images(splits: Any, wanted: int) -> np.ndarray:
    """`wanted` training images spread evenly over the training split (a split sorted by class, as a
    folder of images is, still gives every class), for full-int8 calibration."""
    total = splits.count("train")
    step = max(1, total // max(1, wanted))
    kept, seen = [], 0
    for x, _ in splits.eval_dataset("train", 256):
        batch = np.asarray(x)
        chosen = [i for i in range(len(batch)) if (seen + i) % step == 0]
        kept.append(batch[chosen])
        seen += len(batch)
        if sum(len(k) for k in kept) >= wanted:
            break
    return np.concatenate(kept)[:wanted]


def _save(model: Any, run_dir: Path, artifact: Artifact) -> None:
    """Write beside the target, then rename: a crash leaves the previous export or none, not half."""
    target = run_dir / artifact.path
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".export-") as scratch:
        written = Path(scratch) / Path(artifact.path).name
        if artifact.format == "keras":
            compat.save_keras_file(model, written)
        else:
            compat.export_saved_model(model, written)
        _replace(written, target)


def _replace(written: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    os.replace(written, target)


def _convert(converter: conversions.Converter, run_dir: Path, artifact: Artifact) -> dict[str, Any]:
    """One conversion, written beside its target then renamed; what was done, or why it was skipped."""
    conversion = conversions.Conversion(artifact.path, artifact.format, artifact.quantization)
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".export-") as scratch:
        written = Path(scratch) / Path(artifact.path).name
        try:
            done = converter.write(conversion, written)
        except conversions.ConversionSkipped as exc:
            return {"skipped": str(exc)}
        _replace(written, run_dir / artifact.path)
    return done


def write_exports(
    run_dir: Path,
    model: Any,
    spec: ExperimentSpec,
    batch: np.ndarray,
    formats: Sequence[str],
    quantize: Sequence[str] = (),
    splits: Any = None,
) -> tuple[list[Artifact], dict[str, dict[str, Any]]]:
    """Save the model (and its float32 copy) in `formats`, convert the float32 copy to the deployment
    formats and quantizations, and write the check's batch and expectations. Returns the artifacts
    and, per converted path, what the converter did (or why it skipped)."""
    folder = run_dir / EXPORT_DIR
    folder.mkdir(exist_ok=True)
    np.save(folder / "batch.npy", batch)
    np.save(folder / "expected.npy", probabilities(model, batch))
    policy = spec.precision.policy
    artifacts = planned(formats, policy, spec.export.float32, quantize)
    copies = {False: inference_copy(model, spec, policy)}
    if any(a.float32_copy for a in artifacts):
        copies[True] = inference_copy(model, spec, "float32")
        np.save(folder / "expected-float32.npy", probabilities(copies[True], batch))
    for artifact in artifacts:
        if not artifact.converted:
            _save(copies[artifact.float32_copy], run_dir, artifact)
    converted = [a for a in artifacts if a.converted]
    done: dict[str, dict[str, Any]] = {}
    if converted:
        needs_calibration = any(a.quantization == "int8" for a in converted)
        calibration = (
            calibration_images(splits, spec.export.calibration_images)
            if needs_calibration and splits is not None
            else batch
        )
        converter = conversions.Converter(copies[policy != "float32"], calibration)
        try:
            for artifact in converted:
                done[artifact.path] = _convert(converter, run_dir, artifact)
        finally:
            converter.close()
    return artifacts, done


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _reload(
    run_dir: Path, artifacts: list[Artifact], sys_path: list[str], evaluation: Path | None
) -> tuple[dict[str, Any], str]:
    """Every artifact's predictions from one fresh process: {path: result}, and why none came back."""
    run_dir = run_dir.resolve()  # the child runs in export/: every path it reads is absolute
    folder = run_dir / EXPORT_DIR
    job = {
        "batch": str(folder / "batch.npy"),
        "evaluation": None if evaluation is None else str(evaluation.resolve()),
        "latency_batch": LATENCY_BATCH,
        "artifacts": [
            {
                "path": str(run_dir / a.path),
                "format": a.format,
                "out": str(folder / f"{a.path}.npy"),
                "evaluation_out": str(folder / f".{a.path}.evaluation.npy"),
            }
            for a in artifacts
        ],
        "sys_path": sys_path,
    }
    job_path = folder / "reload-job.json"
    runs.write_json_atomic(job_path, job)
    script = Path(__file__).with_name("fresh_reload.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        done = subprocess.run(
            [sys.executable, "-I", str(script), str(job_path)],
            capture_output=True,
            text=True,
            timeout=RELOAD_TIMEOUT_S,
            env=env,
            cwd=folder,
        )
    except subprocess.TimeoutExpired:
        return {}, f"the fresh process did not finish within {RELOAD_TIMEOUT_S} s"
    results = {}
    for line in done.stdout.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            result = json.loads(line)
            results[Path(result["path"]).name] = result
    last = done.stderr.strip().splitlines()[-1:] or ["no output"]
    why = "" if results else f"the fresh process exited {done.returncode} ({last[0][:300]})"
    return results, why


def _distance(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max())


def _tolerance(artifact: Artifact) -> float | None:
    """How far its fixed-batch probabilities may be from what it was made from; None: quantized (its
    accuracy is what is held to a budget, not its probabilities)."""
    if artifact.quantization is not None:
        return None
    return CONVERTED_ATOL if artifact.converted else SAME_PRECISION_ATOL


def _measured(
    folder: Path, artifact: Artifact, result: dict[str, Any], evaluation: Evaluation | None
) -> dict[str, Any]:
    """The artifact's figures on the evaluation split, from the predictions its runtime saved."""
    if evaluation is None:
        return {}
    saved = folder / f".{artifact.path}.evaluation.npy"
    if not saved.is_file():
        return {}
    got = np.load(saved)
    if got.shape != evaluation.expected.shape:
        return {}
    accuracy = _accuracy(got, evaluation.labels)
    return {
        "accuracy": round(accuracy, 6),
        "accuracy_drop": round(evaluation.accuracy - accuracy, 6),
        "agreement": round(float((got.argmax(1) == evaluation.expected.argmax(1)).mean()), 6),
        "max_probability_diff": float(np.abs(got - evaluation.expected).max()) if len(got) else None,
        "latency_ms_per_image": result.get("latency_ms_per_image"),
    }


def _compare(
    run_dir: Path,
    artifact: Artifact,
    result: dict[str, Any] | None,
    compute_dtype: str,
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    """One artifact's line of the export record: loaded by its runtime? the right dtype? how far from
    what it must equal? its figures on the evaluation split."""
    folder, target = run_dir / EXPORT_DIR, run_dir / artifact.path
    line: dict[str, Any] = {
        "path": artifact.path,
        "format": artifact.format,
        "precision": artifact.precision,
        "bytes": _size(target) if target.exists() else None,
    }
    if artifact.converted:
        line["converted_from"] = "the float32 copy" if artifact.float32_copy else "the float32 model"
    if result is None or not result.get("ok"):
        return {
            **line,
            "passed": False,
            "problem": f"did not load: {(result or {}).get('error', 'no result')}",
        }
    expected = np.load(folder / ("expected-float32.npy" if artifact.float32_copy else "expected.npy"))
    got = np.load(folder / f"{artifact.path}.npy")
    tolerance = _tolerance(artifact)
    line.update(dtype=result["dtype"], runtime=result.get("runtime"), reload_seconds=result["seconds"])
    if result.get("delegate"):
        line["delegate"] = result["delegate"]
    line["tolerance"] = tolerance
    line.update(_measured(folder, artifact, result, evaluation))
    line["runner_importable"] = not result.get("runner_refused", False)
    if result.get("runner_imported") or line["runner_importable"]:
        return {**line, "passed": False, "problem": "runner was importable where it ran"}
    if result["dtype"] != "float32" or got.shape != expected.shape:
        problem = f"expected float32 {expected.shape}; got {result['dtype']} {got.shape}"
        return {**line, "passed": False, "problem": problem}
    line["max_abs_diff"] = _distance(got, expected)
    problems = []
    if not np.isfinite(got).all():
        problems.append("its probabilities are not all finite")
    if tolerance is not None and line["max_abs_diff"] > tolerance:
        saved_from = "its float32 copy" if artifact.float32_copy else "the run's model"
        problems.append(f"differs from {saved_from} by {line['max_abs_diff']:.3g} (> {tolerance:g})")
    if artifact.float32_copy and not artifact.converted:
        copy_tolerance = FLOAT32_COPY_ATOL[compute_dtype]
        line["max_abs_diff_from_run_model"] = _distance(got, np.load(folder / "expected.npy"))
        line["tolerance_from_run_model"] = copy_tolerance
        if line["max_abs_diff_from_run_model"] > copy_tolerance:
            off = line["max_abs_diff_from_run_model"]
            problems.append(
                f"differs from the run's {compute_dtype} model by {off:.3g} (> {copy_tolerance:g})"
            )
    return {**line, "passed": not problems, **({"problem": "; ".join(problems)} if problems else {})}


def _evaluation_file(run_dir: Path, evaluation: Evaluation | None) -> Path | None:
    if evaluation is None:
        return None
    path = run_dir / EXPORT_DIR / ".evaluation-images.npy"
    np.save(path, evaluation.images)
    return path


def verify(
    run_dir: Path,
    artifacts: list[Artifact],
    spec: ExperimentSpec,
    evaluation: Evaluation | None = None,
    skipped: dict[str, str] | None = None,
) -> tuple[Finding, dict[str, Any]]:
    """Run every artifact by its runtime in a fresh process and compare its predictions: the finding
    and the record (`files`: one line per artifact; `skipped`: conversions not made, and why)."""
    start = time.perf_counter()
    skipped = skipped or {}
    made = [a for a in artifacts if a.path not in skipped]
    sys_path = [str(Path.cwd())] if spec.model.kind == "factory" else []
    images = _evaluation_file(run_dir, evaluation)
    try:
        results, why = _reload(run_dir, made, sys_path, images)
        compute = COMPUTE_DTYPE[spec.precision.policy]
        lines = [_compare(run_dir, a, results.get(Path(a.path).name), compute, evaluation) for a in made]
    finally:  # the evaluation images and predictions are scratch, whatever happened (a timeout included)
        for scratch in (run_dir / EXPORT_DIR).glob(".*.npy"):
            scratch.unlink(missing_ok=True)
    lines += [
        {
            "path": a.path,
            "format": a.format,
            "precision": a.precision,
            "passed": True,
            "skipped": skipped[a.path],
        }
        for a in artifacts
        if a.path in skipped
    ]
    record: dict[str, Any] = {
        "files": lines,
        "batch": {
            "path": f"{EXPORT_DIR}/batch.npy",
            "images": int(np.load(run_dir / EXPORT_DIR / "batch.npy").shape[0]),
        },
        "reload_seconds": round(time.perf_counter() - start, 2),
    }
    if evaluation is not None:
        record["evaluation"] = {
            "split": evaluation.split,
            "images": len(evaluation.labels),
            "accuracy": round(evaluation.accuracy, 6),
            "latency_batch": LATENCY_BATCH,
            "cpu": runs.cpu_model_and_flags()[0],  # latencies are this CPU's
        }
    failed = [f"{x['path']}: {x['problem']}" for x in lines if not x["passed"]]
    if why:
        failed.insert(0, why)
    if failed:
        return Finding(
            "export_roundtrip", False, "expected every export to reload equal; " + "; ".join(failed)
        ), record
    figures = ", ".join(_figure(x) for x in lines if "skipped" not in x)
    ran = "run by its own runtime" if any(a.converted for a in made) else "reloaded"
    return Finding("export_roundtrip", True, f"{ran} in a fresh process without runner: {figures}"), record


def _figure(line: dict[str, Any]) -> str:
    text = f"{line['path']} max |Δ| {line['max_abs_diff']:.2g}"
    if line.get("tolerance") is None:
        text = f"{line['path']} loads ({line['precision']}: held to its accuracy)"
    if "max_abs_diff_from_run_model" in line:
        text += f" ({line['max_abs_diff_from_run_model']:.2g} from the run's model)"
    return text


def accuracy_finding(record: dict[str, Any], budget: float | None) -> Finding | None:
    """`[checks] max_export_accuracy_drop`: every artifact measured within the budget of the run's
    model's accuracy on the same images. None without a budget."""
    if budget is None:
        return None
    evaluation = record.get("evaluation")
    measured = [x for x in record.get("files", []) if x.get("accuracy") is not None]
    if evaluation is None or not measured:
        why = record.get("skipped") or record.get("error") or "no artifact was measured"
        return Finding(
            "export_accuracy", False, f"expected each export's accuracy measured; none was ({why})"
        )
    reference = evaluation["accuracy"]
    misses = [x for x in measured if x["accuracy_drop"] > budget]
    split = f"{evaluation['images']:,} {evaluation['split']} images"
    if misses:
        named = "; ".join(
            f"{x['path']} ({x['precision']}) {x['accuracy']:.4f}, {x['accuracy_drop']:+.4f} below"
            for x in misses
        )
        return Finding(
            "export_accuracy",
            False,
            f"expected every export within {budget:g} of the run's accuracy {reference:.4f} on {split}; "
            f"got {named}",
        )
    worst = max(measured, key=lambda x: x["accuracy_drop"])
    return Finding(
        "export_accuracy",
        True,
        f"expected every export within {budget:g} of the run's accuracy {reference:.4f} on {split}; "
        f"the largest drop {worst['accuracy_drop']:+.4f} ({worst['path']})",
    )


def skipped_finding(record: dict[str, Any]) -> Finding | None:
    """A warning naming each conversion this TensorFlow, Keras or converter could not make."""
    skipped = [x for x in record.get("files", []) if x.get("skipped")]
    if not skipped:
        return None
    named = "; ".join(f"{x['path']}: {x['skipped']}" for x in skipped)
    return Finding("export_conversions", False, f"not converted: {named}", "warning")


def export_model(
    run_dir: Path,
    model: Any,
    spec: ExperimentSpec,
    batch: np.ndarray,
    formats: Sequence[str],
    checkpoint: str | None = None,
    quantize: Sequence[str] | None = None,
    splits: Any = None,
) -> tuple[list[Finding], dict[str, Any]]:
    """Write the exports, run each by its runtime and compare and measure them; the record also goes to
    export/export.json. A failure to write (a model Keras cannot save, a full disk) is the finding's,
    not a crash's. `splits`: the run's data (the evaluation split and the calibration images); without
    it only the fixed batch is checked."""
    start = time.perf_counter()
    quantize = list(spec.export.quantize if quantize is None else quantize)
    head = {
        "formats": list(formats),
        "quantize": quantize,
        "float32_copy": spec.export.float32,
        "checkpoint": checkpoint,
        "policy": spec.precision.policy,
    }
    try:
        artifacts, done = write_exports(run_dir, model, spec, batch, formats, quantize, splits)
        evaluation = evaluation_split(model, splits) if splits is not None else None
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure, the run stays completed
        detail = f"expected the model to export as {', '.join(formats)}; {type(exc).__name__}: {exc}"
        return [Finding("export_roundtrip", False, detail[:1000])], {**head, "error": detail[:1000]}
    skipped = {path: meta["skipped"] for path, meta in done.items() if "skipped" in meta}
    finding, record = verify(run_dir, artifacts, spec, evaluation, skipped)
    for line in record["files"]:
        line.update({k: v for k, v in done.get(line["path"], {}).items() if k != "skipped"})
    record = {**head, **record, "seconds": round(time.perf_counter() - start, 2)}
    record = ExportRecord.model_validate(record).to_json()  # the shape export.json promises
    runs.write_json_atomic(run_dir / EXPORT_DIR / "export.json", record)
    findings = [finding]
    for extra in (accuracy_finding(record, spec.checks.max_export_accuracy_drop), skipped_finding(record)):
        if extra is not None:
            findings.append(extra)
    return findings, record
