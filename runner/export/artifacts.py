"""Export: the model a run leaves to deploy, reloaded in a fresh process and checked.

A run directory gets `model.keras` and/or `saved_model/` (and under a mixed policy a float32 copy of
each: `model-float32.keras`, `saved_model-float32/`), plus `export/`: the fixed batch the check
predicts (`batch.npy`, the first test images as uint8), the in-process predictions of the run's
model (`expected.npy`) and of its float32 copy (`expected-float32.npy`), and `export.json`.
Every file is then loaded in ONE fresh `python -I` (runner/export/fresh_reload.py, runner unimportable)
and its predictions compared: the `export_roundtrip` check.
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
RELOAD_TIMEOUT_S = 300  # one fresh process imports TensorFlow (seconds) and loads every file
SKIP_ENV = "RUNNER_SKIP_EXPORT"  # the test suite sets it: its many runs do not test export


@dataclass(frozen=True)
class Artifact:
    """One exported file (or SavedModel folder), relative to the run directory."""

    path: str
    format: str  # "keras" | "saved_model"
    float32_copy: bool


def artifact_path(fmt: str, float32_copy: bool) -> str:
    stem = "model" if fmt == "keras" else "saved_model"
    suffix = "-float32" if float32_copy else ""
    return f"{stem}{suffix}.keras" if fmt == "keras" else f"{stem}{suffix}"


def planned(formats: Sequence[str], policy: str, float32: bool) -> list[Artifact]:
    """The files an export writes: each format, and its float32 copy under a mixed policy."""
    copies = [False, True] if float32 and policy != "float32" else [False]
    return [Artifact(artifact_path(f, copy), f, copy) for copy in copies for f in formats]


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


def _save(model: Any, run_dir: Path, artifact: Artifact) -> None:
    """Write beside the target, then rename: a crash leaves the previous export or none, not half."""
    target = run_dir / artifact.path
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".export-") as scratch:
        written = Path(scratch) / Path(artifact.path).name
        if artifact.format == "keras":
            compat.save_keras_file(model, written)
        else:
            compat.export_saved_model(model, written)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(written, target)


def write_exports(
    run_dir: Path, model: Any, spec: ExperimentSpec, batch: np.ndarray, formats: Sequence[str]
) -> list[Artifact]:
    """Save the model (and its float32 copy) in `formats`, and the check's batch and expectations."""
    folder = run_dir / EXPORT_DIR
    folder.mkdir(exist_ok=True)
    np.save(folder / "batch.npy", batch)
    np.save(folder / "expected.npy", probabilities(model, batch))
    artifacts = planned(formats, spec.precision.policy, spec.export.float32)
    copies = {False: inference_copy(model, spec, spec.precision.policy)}
    if any(a.float32_copy for a in artifacts):
        copies[True] = inference_copy(model, spec, "float32")
        np.save(folder / "expected-float32.npy", probabilities(copies[True], batch))
    for artifact in artifacts:
        _save(copies[artifact.float32_copy], run_dir, artifact)
    return artifacts


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _reload(run_dir: Path, artifacts: list[Artifact], sys_path: list[str]) -> tuple[dict[str, Any], str]:
    """Every artifact's predictions from one fresh process: {path: result}, and why none came back."""
    run_dir = run_dir.resolve()  # the child runs in export/: every path it reads is absolute
    folder = run_dir / EXPORT_DIR
    job = {
        "batch": str(folder / "batch.npy"),
        "artifacts": [
            {"path": str(run_dir / a.path), "format": a.format, "out": str(folder / f"{a.path}.npy")}
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
        with contextlib.suppress(ValueError):
            result = json.loads(line)
            results[Path(result["path"]).name] = result
    last = done.stderr.strip().splitlines()[-1:] or ["no output"]
    why = "" if results else f"the fresh process exited {done.returncode} ({last[0][:300]})"
    return results, why


def _distance(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max())


def _compare(
    run_dir: Path, artifact: Artifact, result: dict[str, Any] | None, compute_dtype: str
) -> dict[str, Any]:
    """One artifact's line of the export record: loaded? float32? how far from what it must equal?"""
    folder, target = run_dir / EXPORT_DIR, run_dir / artifact.path
    line: dict[str, Any] = {
        "path": artifact.path,
        "format": artifact.format,
        "precision": "float32" if artifact.float32_copy else "policy",
        "bytes": _size(target) if target.exists() else None,
    }
    if result is None or not result.get("ok"):
        return {
            **line,
            "passed": False,
            "problem": f"did not load: {(result or {}).get('error', 'no result')}",
        }
    expected = np.load(folder / ("expected-float32.npy" if artifact.float32_copy else "expected.npy"))
    got = np.load(folder / f"{artifact.path}.npy")
    line.update(dtype=result["dtype"], reload_seconds=result["seconds"], tolerance=SAME_PRECISION_ATOL)
    if result.get("runner_imported"):
        return {**line, "passed": False, "problem": "loading it imported runner"}
    if result["dtype"] != "float32" or got.shape != expected.shape:
        problem = f"expected float32 {expected.shape}; got {result['dtype']} {got.shape}"
        return {**line, "passed": False, "problem": problem}
    line["max_abs_diff"] = _distance(got, expected)
    problems = []
    if line["max_abs_diff"] > SAME_PRECISION_ATOL:
        saved_from = "its float32 copy" if artifact.float32_copy else "the run's model"
        problems.append(
            f"differs from {saved_from} by {line['max_abs_diff']:.3g} (> {SAME_PRECISION_ATOL:g})"
        )
    if artifact.float32_copy:
        tolerance = FLOAT32_COPY_ATOL[compute_dtype]
        line["max_abs_diff_from_run_model"] = _distance(got, np.load(folder / "expected.npy"))
        line["tolerance_from_run_model"] = tolerance
        if line["max_abs_diff_from_run_model"] > tolerance:
            off = line["max_abs_diff_from_run_model"]
            problems.append(f"differs from the run's {compute_dtype} model by {off:.3g} (> {tolerance:g})")
    return {**line, "passed": not problems, **({"problem": "; ".join(problems)} if problems else {})}


def verify(run_dir: Path, artifacts: list[Artifact], spec: ExperimentSpec) -> tuple[Finding, dict[str, Any]]:
    """Reload every artifact in a fresh process and compare its predictions: the finding and the record."""
    start = time.perf_counter()
    sys_path = [str(Path.cwd())] if spec.model.kind == "factory" else []
    results, why = _reload(run_dir, artifacts, sys_path)
    compute = COMPUTE_DTYPE[spec.precision.policy]
    lines = [_compare(run_dir, a, results.get(Path(a.path).name), compute) for a in artifacts]
    record = {
        "files": lines,
        "batch": {
            "path": f"{EXPORT_DIR}/batch.npy",
            "images": int(np.load(run_dir / EXPORT_DIR / "batch.npy").shape[0]),
        },
        "reload_seconds": round(time.perf_counter() - start, 2),
    }
    failed = [f"{x['path']}: {x['problem']}" for x in lines if not x["passed"]]
    if why:
        failed.insert(0, why)
    if failed:
        return Finding(
            "export_roundtrip", False, "expected every export to reload equal; " + "; ".join(failed)
        ), record
    figures = ", ".join(_figure(x) for x in lines)
    return Finding("export_roundtrip", True, f"reloaded in a fresh process without runner: {figures}"), record


def _figure(line: dict[str, Any]) -> str:
    text = f"{line['path']} max |Δ| {line['max_abs_diff']:.2g}"
    if "max_abs_diff_from_run_model" in line:
        text += f" ({line['max_abs_diff_from_run_model']:.2g} from the run's model)"
    return text


def export_model(
    run_dir: Path,
    model: Any,
    spec: ExperimentSpec,
    batch: np.ndarray,
    formats: Sequence[str],
    checkpoint: str | None = None,
) -> tuple[Finding, dict[str, Any]]:
    """Write the exports, reload and compare them; the record also goes to export/export.json. A
    failure to write (a model Keras cannot save, a full disk) is the finding's, not a crash's."""
    start = time.perf_counter()
    head = {"formats": list(formats), "float32_copy": spec.export.float32, "checkpoint": checkpoint}
    try:
        artifacts = write_exports(run_dir, model, spec, batch, formats)
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure, the run stays completed
        detail = f"expected the model to export as {', '.join(formats)}; {type(exc).__name__}: {exc}"
        return Finding("export_roundtrip", False, detail[:1000]), {**head, "error": detail[:1000]}
    finding, record = verify(run_dir, artifacts, spec)
    record = {**head, **record, "seconds": round(time.perf_counter() - start, 2)}
    record = ExportRecord.model_validate(record).to_json()  # the shape export.json promises
    runs.write_json_atomic(run_dir / EXPORT_DIR / "export.json", record)
    return finding, record
