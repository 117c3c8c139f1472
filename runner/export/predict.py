"""`runner predict`: class probabilities for image files, from a run's exported model.

The images go through the run's own preprocessing: decoded as the image_folder source decodes them
(runner/data/image_folder.py partial_decoder: channels converted, bilinear resize to the model's input size,
rounded to uint8); the model scales them itself, as in training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner import compat
from runner.data.image_folder import IMAGE_EXTENSIONS, op_message, partial_decoder, shown
from runner.reporting.report import RUNTIME_NAMES, load_report
from runner.spec import BadInput

IMAGE_CHANNELS = (1, 3, 4)  # what decode_image makes of a file: grey, RGB, RGBA

MODEL_FILE = "model.keras"


def image_files(paths: list[Path]) -> list[Path]:
    """The files given, a folder standing for its images (sorted); each missing path is bad input."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            images = sorted(
                p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not images:
                raise BadInput(
                    f"{path}: holds no .bmp, .gif, .jpeg, .jpg or .png images; expected images to classify"
                )
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise BadInput(f"{path}: no such file or folder; expected an image or a folder of images")
    return found


def class_names(run_dir: Path | None, count: int) -> list[str]:
    """report.json's data.class_names (an image folder's subfolders), else the class indices."""
    try:
        data = load_report(run_dir).data if run_dir is not None else None
    except BadInput:
        data = None
    names = data.class_names if data is not None else None
    if names is not None and len(names) == count:
        return names
    return [str(i) for i in range(count)]


SUFFIXES = {".keras": "keras", ".tflite": "litert", ".onnx": "onnx"}
RUN_DIR_LEVELS = 3  # an artifact's run directory: its folder, or up to exports/<checkpoint>/ above it


@dataclass(frozen=True)
class Target:
    """What `runner predict` runs: the artifact, its format, and the run it came from (class names)."""

    artifact: Path
    format: str
    run_dir: Path | None


def resolve(given: Path) -> Target:
    """A run directory (its model.keras) or an exported artifact: a .keras, .tflite or .onnx file or a
    SavedModel folder; anything else is bad input naming what is expected."""
    if given.is_dir() and (given / "spec.toml").is_file():
        path = given / MODEL_FILE
        if not path.is_file():
            raise BadInput(
                f"{path}: not found; expected the run's exported model: run `runner export {given}` first"
            )
        return Target(path, "keras", given)
    if given.is_dir() and (given / "saved_model.pb").is_file():
        fmt = "saved_model"
    elif given.is_file() and given.suffix.lower() in SUFFIXES:
        fmt = SUFFIXES[given.suffix.lower()]
    elif not given.exists():
        raise BadInput(f"{given}: no such file or folder; expected a run directory or an exported model")
    else:
        what = "not a run directory (no spec.toml) nor a SavedModel" if given.is_dir() else "not a model file"
        raise BadInput(
            f"{given}: {what}; expected a run directory, a .keras, .tflite or .onnx file or a SavedModel "
            "folder"
        )
    run_dir = next((p for p in given.resolve().parents[:RUN_DIR_LEVELS] if (p / "spec.toml").is_file()), None)
    return Target(given, fmt, run_dir)


def load_exported(target: Target) -> Any:
    """The artifact loaded by its own runtime (runner/export/fresh_reload.py, as the export check runs
    it); a missing runtime or a damaged file is bad input naming it."""
    from runner.export import conversions, fresh_reload

    if target.format in conversions.NEEDS:
        conversions.require_extra([target.format], str(target.artifact))
    if target.format in ("keras", "saved_model"):
        compat.tensorflow()  # imported quietly (its C++ notices go where runner sends them)
    runtime = RUNTIME_NAMES[target.format]
    try:
        return fresh_reload.load(str(target.artifact), target.format)
    except Exception as exc:  # noqa: BLE001 - a truncated file, bad weights, a foreign file: all the same to the user
        again = f"runner export {target.run_dir}" if target.run_dir else "runner export RUN_DIR"
        raise BadInput(
            f"{target.artifact}: {runtime} cannot load it ({type(exc).__name__}: {_first_line(exc)}); "
            f"expected a {target.format} model written by runner: export it again with `{again}`"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else "")[:200]


MAX_SKIPPED_SHOWN = 20  # `runner predict` names this many undecodable files, and counts them all


@dataclass(frozen=True)
class Predictions:
    """`runner predict`'s answer: each decoded image's most probable classes, and the files skipped."""

    found: list[dict[str, Any]]  # [{file, top: [{class, index, probability}]}]
    skipped: list[tuple[str, str]]  # (file, why it does not decode)


def decode(
    files: list[Path], shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[Path], list[tuple[str, str]]]:
    """(n, H, W, C) uint8 of the files that decode, as training decoded its images, those files, and
    (file, reason) of each one that does not."""
    tf = compat.tensorflow()
    decoder = partial_decoder(tf, shape)
    images, decoded, skipped = [], [], []
    for path in files:
        try:
            images.append(decoder(tf.constant(os.fsencode(path))).numpy())
            decoded.append(path)
        except tf.errors.OpError as exc:
            skipped.append((shown(path), op_message(exc.message)[:200]))
    batch = np.stack(images) if images else np.zeros((0, *shape), np.uint8)
    return batch, decoded, skipped


def predict_files(target: Path, paths: list[Path], top: int) -> Predictions:
    """Each image's `top` classes, most probable first, from a run's model.keras or any artifact it
    exported (run by its runtime); a file that does not decode is skipped and named (none decoding at
    all is bad input)."""
    files = image_files(paths)
    found = resolve(target)
    with compat.native_stderr_to(os.devnull):  # the runtimes' C++ notices, not the user's output
        return _predict(found, files, top)


def _image_shape(target: Target, declared: tuple[Any, ...]) -> tuple[int, int, int]:
    if len(declared) != 3 or not all(isinstance(d, int) and d > 0 for d in declared):
        raise BadInput(
            f"{target.artifact}: expected a model of (height, width, channels) images; got {declared}"
        )
    return int(declared[0]), int(declared[1]), int(declared[2])


def _predict(target: Target, files: list[Path], top: int) -> Predictions:
    model = load_exported(target)
    shape = _image_shape(
        target, tuple(d if d is None or isinstance(d, str) else int(d) for d in model.input_shape)
    )
    if shape[2] not in IMAGE_CHANNELS:  # e.g. an npz of 5-band arrays: no image file decodes to that
        raise BadInput(
            f"{target.artifact}: takes images of {shape[2]} channels; image files decode to "
            f"{', '.join(map(str, IMAGE_CHANNELS))} channels: this model predicts from arrays, "
            "not image files"
        )
    batch, decoded, skipped = decode(files, (shape[0], shape[1], shape[2]))
    if not decoded:
        named = "".join(f"\n  {file}: cannot be decoded ({why})" for file, why in skipped[:MAX_SKIPPED_SHOWN])
        raise BadInput(
            f"none of the {len(files)} file(s) can be decoded; expected BMP, GIF, JPEG or PNG images:{named}"
        )
    try:
        from runner.export.fresh_reload import predict_all

        probabilities = np.asarray(predict_all(model, batch), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a file that loads but cannot run (a damaged tensor)
        raise BadInput(
            f"{target.artifact}: {type(exc).__name__} while running it ({_first_line(exc)}); expected "
            "a model written by runner"
        ) from None
    names = class_names(target.run_dir, probabilities.shape[1])
    found = []
    for path, row in zip(decoded, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        ranked = [{"class": names[i], "index": int(i), "probability": float(row[i])} for i in best]
        found.append({"file": shown(path), "top": ranked})
    return Predictions(found, skipped)
