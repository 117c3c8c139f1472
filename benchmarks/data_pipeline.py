"""runner's image_folder pipeline against Keras' and against the machine, in one invocation.

    python benchmarks/data_pipeline.py [--images 20000] [--size 32] [--batch 32] [--repeats 15]
                                       [--p8-repeats 3] [--workdir /tmp/runner-bench-data]
    python benchmarks/data_pipeline.py --skip P8     # P7 only (P7, P8)

P7 input speed  images/s of the tf.data dataset `FolderSplits.train_dataset` returns (read, decode,
                resize, augment: flip, pad_crop, brightness, contrast; batch), no model, against
                `keras.utils.image_dataset_from_directory` (no augmentation) on the same folder of
                generated JPEGs, the same image size and batch; and the machine's JPEG limit, a
                decode-only loop (read_file + decode_jpeg, parallel map, batch: nothing else), one file
                per map call and, as runner reads them, a batch of files per call. One process: every
                side iterates one epoch untimed (tracing, page cache), then the sides alternate epoch
                by epoch, each round led by the next side; medians of images/s and of images per
                second of this process's CPU time (which other work on the machine moves less).
P8 memory       peak RSS of a whole `runner run` (image_folder, default splits: every file is read,
                as training, validation or test data; 1 epoch, a small seed_cnn) on 10 000 and on
                40 000 generated images, each in its own process, the two alternating; the kernel's
                maxrss of that child (os.wait4). The pipeline streams, so it should not grow.

The JPEG folders are generated once (numpy pixels, PIL) under --workdir and reused. Prints a table
and, last, one JSON line (as benchmarks/performance.py).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

PYTHON = sys.executable
CLASSES = 4
COMPLETE = ".complete"  # written last: a folder without it is regenerated
AUGMENTATION = {"horizontal_flip": True, "pad_crop": 4, "brightness": 0.1, "contrast": 0.1}

P8_SPEC = """
name = "p8-{images}"
seed = 0
[precision]
policy = "float32"
[model]
kind = "seed_cnn"
filters = [16, 32]
[data]
source = "image_folder"
path = "{path}"
image_size = [{size}, {size}]
batch_size = {batch}
[training]
epochs = 1
[runtime]
tensorboard = false
"""


# ---------------------------------------------------------------- the generated folders


def _pixels(rng: np.random.Generator, label: int, count: int, size: int) -> np.ndarray:
    """(count, size, size, 3) uint8: a random colour, stripes whose slope is the class, some noise.
    Smooth enough to compress like a photo (about 1 KB at 32 × 32), not a solid block."""
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = 60.0 * np.sin((xx * (label + 1) + yy) / 5.0)[None, :, :, None]
    base = rng.integers(0, 256, (count, 1, 1, 3))
    noise = rng.normal(0.0, 10.0, (count, size, size, 3))
    return np.clip(base + stripes + noise, 0, 255).astype(np.uint8)


def generated_folder(workdir: Path, images: int, size: int) -> Path:
    """`images` JPEGs of size × size in CLASSES class subfolders under workdir, made once and reused."""
    from PIL import Image

    root = workdir / f"jpeg-{images}-{size}px"
    if (root / COMPLETE).exists():
        return root
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        count = images // CLASSES + (label < images % CLASSES)
        for start in range(0, count, 1000):
            for i, pixels in enumerate(_pixels(rng, label, min(1000, count - start), size), start):
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
                (folder / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
    (root / COMPLETE).write_text(f"{images}\n")
    return root


# ---------------------------------------------------------------- P7: the pipelines alone


def runner_epochs(folder: Path, size: int, batch: int, augmented: bool) -> Callable[[int], Any]:
    """epoch → the training dataset a run would iterate for that epoch (every file in train)."""
    from runner.data.image_folder import load_folder
    from runner.data.pipeline import TrainingBatches
    from runner.spec import AugmentationSpec, DataSpec

    spec = DataSpec(
        source="image_folder",
        path=str(folder),
        image_size=[size, size],
        batch_size=batch,
        validation_fraction=0.0,
        test_fraction=0.0,
    )
    splits = load_folder(spec, seed=0)
    augmentation = AugmentationSpec(**AUGMENTATION) if augmented else None
    return lambda epoch: splits.train_dataset(
        TrainingBatches(batch, 0, range(epoch, epoch + 1), augmentation=augmentation)
    )


def keras_epochs(folder: Path, size: int, batch: int) -> Callable[[int], Any]:
    """Keras' defaults but the size and batch: shuffled each epoch, bilinear, float32 images."""
    from runner import compat

    dataset = compat.keras().utils.image_dataset_from_directory(
        str(folder), image_size=(size, size), batch_size=batch, seed=0
    )
    return lambda epoch: dataset


def decode_epochs(folder: Path, size: int, batch: int, batched: bool = False) -> Callable[[int], Any]:
    """The machine's limit: read and decode every JPEG in a parallel map, batched, nothing else;
    `batched`: a batch of files per call of the map (tf.map_fn inside) instead of one file per call."""
    from runner import compat

    tf = compat.tensorflow()
    paths = sorted(str(p) for p in folder.glob("*/*.jpg"))

    def decoded(path: Any) -> Any:
        return tf.io.decode_jpeg(tf.io.read_file(path), channels=3)

    files = tf.data.Dataset.from_tensor_slices(paths)
    if batched:  # one call of the parallel map per batch, a loop over its files inside, as runner's
        signature = tf.TensorSpec((size, size, 3), tf.uint8)
        files = files.batch(batch)
        dataset = files.map(
            lambda batch_paths: tf.map_fn(decoded, batch_paths, fn_output_signature=signature),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = files.map(decoded, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
    return lambda epoch: dataset.prefetch(tf.data.AUTOTUNE)


def epoch_rates(dataset: Any) -> tuple[float, float]:
    """One pass over `dataset` (iterator start included): images per second, and per second of this
    process's CPU time (all its threads), which other work on the machine moves far less."""
    start, cpu = time.perf_counter(), time.process_time()
    images = sum(int(x.shape[0]) for x, *_ in (b if isinstance(b, tuple) else (b,) for b in dataset))
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


# The sides, in the order they alternate, and how the table names them.
SIDES = {
    "runner_augmented": "runner, augmented",
    "runner_plain": "runner, no augmentation",
    "keras": "keras image_dataset_from_directory",
    "decode_only": "decode only (read_file + decode_jpeg)",
    "decode_only_batched": "decode only, a batch per map call",
}


def p7_sides(folder: Path, size: int, batch: int) -> dict[str, Callable[[int], Any]]:
    return {
        "runner_augmented": runner_epochs(folder, size, batch, augmented=True),
        "runner_plain": runner_epochs(folder, size, batch, augmented=False),
        "keras": keras_epochs(folder, size, batch),
        "decode_only": decode_epochs(folder, size, batch),
        "decode_only_batched": decode_epochs(folder, size, batch, batched=True),
    }


def p7(folder: Path, size: int, batch: int, repeats: int) -> dict:
    """Each side's median rates over `repeats` epochs, alternating, after one untimed epoch each."""
    sides = p7_sides(folder, size, batch)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    names = list(sides)
    for epoch in range(repeats + 1):
        for name in names[epoch % len(names) :] + names[: epoch % len(names)]:  # each leads in turn
            rate = epoch_rates(sides[name](epoch))
            if epoch:  # the first epoch traces and fills the page cache: not timed
                rates[name].append(rate)
    wall = {name: median([w for w, _ in r]) for name, r in rates.items()}
    cpu = {name: median([c for _, c in r]) for name, r in rates.items()}
    return {
        name: {
            "images_per_second": round(wall[name], 1),
            "ratio_to_keras": round(wall[name] / wall["keras"], 3),
            "fraction_of_decode_limit": round(wall[name] / wall["decode_only"], 3),
            "images_per_cpu_second": round(cpu[name], 1),
            "cpu_ratio_to_keras": round(cpu[name] / cpu["keras"], 3),
            "cpu_fraction_of_decode_limit": round(cpu[name] / cpu["decode_only"], 3),
            "all_images_per_second": [round(w, 1) for w, _ in r],
        }
        for name, r in rates.items()
    }


# ---------------------------------------------------------------- P8: a whole run's memory


def run_peak_rss_mb(folder: Path, images: int, size: int, batch: int) -> float:
    """`runner run` of one epoch on `folder` in its own process: the kernel's maxrss of that child."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "p8.toml"
        spec.write_text(P8_SPEC.format(images=images, path=folder, size=size, batch=batch))
        with open(Path(tmp) / "log", "wb") as log:
            child = subprocess.Popen(
                [PYTHON, "-m", "runner", "run", str(spec), "--output", tmp], stdout=log, stderr=log
            )
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise RuntimeError((Path(tmp) / "log").read_text()[-2000:])
        return usage.ru_maxrss / 1024  # KiB on Linux


def p8(folders: dict[int, Path], size: int, batch: int, repeats: int) -> dict:
    peaks: dict[int, list[float]] = {n: [] for n in folders}
    for _ in range(repeats):
        for n, folder in folders.items():
            peaks[n].append(run_peak_rss_mb(folder, n, size, batch))
    small, large = (median(peaks[n]) for n in sorted(folders))
    return {
        "peak_rss_mb": {str(n): round(median(p), 1) for n, p in peaks.items()},
        "all": {str(n): [round(x, 1) for x in p] for n, p in peaks.items()},
        "growth": round(large / small - 1, 4),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- the table


def print_table(f: dict, out: TextIO = sys.stdout) -> None:
    def line(text: str) -> None:
        print(text, file=out)

    line(f"{'measure':<44} {'images/s':>9} {'/ keras':>8} {'/ decode':>9} {'per CPU-s':>10} {'/ keras':>8}")
    for name, m in f.get("P7", {}).items():
        target = "  target >= 1.00" if name == "runner_augmented" else ""
        line(
            f"{'P7 ' + SIDES[name]:<44} {m['images_per_second']:>9,.0f} {m['ratio_to_keras']:>8.2f} "
            f"{m['fraction_of_decode_limit']:>9.2f} {m['images_per_cpu_second']:>10,.0f} "
            f"{m['cpu_ratio_to_keras']:>8.2f}{target}"
        )
    if "P8" in f:
        m = f["P8"]
        (small, a), (large, b) = m["peak_rss_mb"].items()
        line(
            f"{f'P8 peak RSS of runner run, {int(small):,} → {int(large):,} images':<52} "
            f"{a:>7,.0f} MB → {b:,.0f} MB  {m['growth']:+.1%}  target <= +10 %"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="P7's folder")
    parser.add_argument("--p8-images", default="10000,40000", help="P8's two folders")
    parser.add_argument("--size", type=int, default=32, help="files and image_size, square")
    parser.add_argument("--batch", type=int, default=32, help="runner's and Keras' default")
    parser.add_argument("--repeats", type=int, default=15, help="P7: timed epochs per side")
    parser.add_argument("--p8-repeats", type=int, default=3, help="P8: runs per folder")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "runner-bench-data")
    parser.add_argument("--skip", default="", help="comma-separated: P7,P8")
    args = parser.parse_args()
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}
    figures: dict = {
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "p8_repeats": args.p8_repeats,
    }
    if "P7" not in skip:
        figures["images"] = args.images
        figures["P7"] = p7(
            generated_folder(args.workdir, args.images, args.size), args.size, args.batch, args.repeats
        )
    if "P8" not in skip:
        counts = [int(n) for n in args.p8_images.split(",")]
        folders = {n: generated_folder(args.workdir, n, args.size) for n in counts}
        figures["P8"] = p8(folders, args.size, args.batch, args.p8_repeats)
    print_table(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
