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
from runner.reporting.report import load_report
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


def class_names(run_dir: Path, count: int) -> list[str]:
    """report.json's data.class_names (an image folder's subfolders), else the class indices."""
    try:
        data = load_report(run_dir).data
    except BadInput:
        data = None
    names = data.class_names if data is not None else None
    if names is not None and len(names) == count:
        return names
    return [str(i) for i in range(count)]


def load_exported(run_dir: Path) -> Any:
    """model.keras, loaded with Keras; a missing or damaged file is bad input naming it."""
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise BadInput(
            f"{path}: not found; expected the run's exported model: run `runner export {run_dir}` first"
        )
    try:
        return compat.keras().models.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - a truncated zip, bad weights, a foreign file: all the same to the user
        raise BadInput(
            f"{path}: cannot be loaded ({type(exc).__name__}: {str(exc)[:200]}); expected a Keras model "
            f"written by runner: export it again with `runner export {run_dir}`"
        ) from None


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


def predict_files(run_dir: Path, paths: list[Path], top: int) -> Predictions:
    """Each image's `top` classes, most probable first; a file that does not decode is skipped and
    named (none decoding at all is bad input)."""
    if not (run_dir / "spec.toml").is_file():
        raise BadInput(f"{run_dir}: not a run directory (no spec.toml)")
    files = image_files(paths)
    with compat.native_stderr_to(os.devnull):  # TensorFlow's C++ notices, not the user's output
        return _predict(run_dir, files, top)


def _predict(run_dir: Path, files: list[Path], top: int) -> Predictions:
    model = load_exported(run_dir)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    if len(shape) != 3:
        raise BadInput(
            f"{run_dir / MODEL_FILE}: expected a model of (height, width, channels) images; got {shape}"
        )
    if shape[2] not in IMAGE_CHANNELS:  # e.g. an npz of 5-band arrays: no image file decodes to that
        raise BadInput(
            f"{run_dir / MODEL_FILE}: takes images of {shape[2]} channels; image files decode to "
            f"{', '.join(map(str, IMAGE_CHANNELS))} channels: this model predicts from arrays, "
            "not image files"
        )
    batch, decoded, skipped = decode(files, (shape[0], shape[1], shape[2]))
    if not decoded:
        named = "".join(f"\n  {file}: cannot be decoded ({why})" for file, why in skipped[:MAX_SKIPPED_SHOWN])
        raise BadInput(
            f"none of the {len(files)} file(s) can be decoded; expected BMP, GIF, JPEG or PNG images:{named}"
        )
    probabilities = np.asarray(model.predict(batch, verbose=0), dtype=np.float64)
    names = class_names(run_dir, probabilities.shape[1])
    found = []
    for path, row in zip(decoded, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        ranked = [{"class": names[i], "index": int(i), "probability": float(row[i])} for i in best]
        found.append({"file": shown(path), "top": ranked})
    return Predictions(found, skipped)
