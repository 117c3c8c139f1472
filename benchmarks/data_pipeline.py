"""runner's image_folder pipeline against Keras' and against the machine, in one invocation.

    python benchmarks/data_pipeline.py [--images 20000] [--repeats 5] [--workdir /tmp/runner-bench-data]
    python benchmarks/data_pipeline.py --skip P8     # P7 only (P7, P8)

P7 input speed  images/s of the tf.data dataset `FolderSplits.train_dataset` returns (read, decode,
                resize, augment: flip, pad_crop, brightness, contrast; batch), no model, against
                `keras.utils.image_dataset_from_directory` (no augmentation) on the same folder of
                generated JPEGs, the same image size and batch; and a decode-only loop (read_file +
                decode_jpeg, parallel map, batch: nothing else), this machine's JPEG limit. One process:
                every side iterates one epoch untimed (warm-up: tracing, page cache), then the sides
                alternate epoch by epoch; medians.
P8 memory       peak RSS of a whole `runner run` (image_folder, 1 epoch, the small seed_cnn) on 10 000
                and on 40 000 generated images, each in its own process, the two alternating; the
                kernel's maxrss of the child (os.wait4). The pipeline streams, so it should not grow.

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
from typing import Any

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
validation_fraction = 0.0
test_fraction = 0.0
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
    from runner.folders import load_folder
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
    return lambda epoch: splits.train_dataset(batch, 0, range(epoch, epoch + 1), augmentation=augmentation)


def keras_epochs(folder: Path, size: int, batch: int) -> Callable[[int], Any]:
    """Keras' defaults but the size and batch: shuffled each epoch, bilinear, float32 images."""
    from runner import compat

    dataset = compat.keras().utils.image_dataset_from_directory(
        str(folder), image_size=(size, size), batch_size=batch, seed=0, verbose=False
    )
    return lambda epoch: dataset


def decode_epochs(folder: Path, batch: int) -> Callable[[int], Any]:
    """The machine's limit: read and decode every JPEG in a parallel map, batched, nothing else."""
    from runner import compat

    tf = compat.tensorflow()
    paths = sorted(str(p) for p in folder.glob("*/*.jpg"))

    def decoded(path: Any) -> Any:
        return tf.io.decode_jpeg(tf.io.read_file(path), channels=3)

    files = tf.data.Dataset.from_tensor_slices(paths)
    dataset = files.map(decoded, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)
    return lambda epoch: dataset


def images_per_second(dataset: Any) -> float:
    """One pass over `dataset` (iterator start included), its images counted from the batches."""
    start = time.perf_counter()
    images = sum(int(x.shape[0]) for x, *_ in (b if isinstance(b, tuple) else (b,) for b in dataset))
    return images / (time.perf_counter() - start)


def p7_sides(folder: Path, size: int, batch: int) -> dict[str, Callable[[int], Any]]:
    return {
        "runner, augmented": runner_epochs(folder, size, batch, augmented=True),
        "runner, no augmentation": runner_epochs(folder, size, batch, augmented=False),
        "keras image_dataset_from_directory": keras_epochs(folder, size, batch),
        "decode only (read_file + decode_jpeg)": decode_epochs(folder, batch),
    }


def p7(folder: Path, size: int, batch: int, repeats: int) -> dict:
    """Each side's median images/s over `repeats` epochs, alternating, after one untimed epoch each."""
    sides = p7_sides(folder, size, batch)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for epoch in range(repeats + 1):
        for name, epochs in sides.items():
            rate = images_per_second(epochs(epoch))
            if epoch:  # the first epoch traces and fills the page cache: not timed
                rates[name].append(rate)
    keras, limit = median(rates["keras image_dataset_from_directory"]), median(rates[DECODE])
    return {
        name: {
            "images_per_second": round(median(r), 1),
            "ratio_to_keras": round(median(r) / keras, 3),
            "fraction_of_decode_limit": round(median(r) / limit, 3),
            "all": [round(x, 1) for x in r],
        }
        for name, r in rates.items()
    }


DECODE = "decode only (read_file + decode_jpeg)"


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


def print_table(f: dict) -> None:
    print(f"{'measure':<52} {'images/s':>10} {'/ keras':>8} {'/ decode':>9}  target")
    for name, m in f.get("P7", {}).items():
        target = ">= 1.00" if name == "runner, augmented" else ""
        print(
            f"{'P7 ' + name:<52} {m['images_per_second']:>10,.0f} {m['ratio_to_keras']:>8.2f} "
            f"{m['fraction_of_decode_limit']:>9.2f}  {target}"
        )
    if "P8" in f:
        m = f["P8"]
        (small, a), (large, b) = m["peak_rss_mb"].items()
        print(
            f"{f'P8 peak RSS of runner run, {int(small):,} → {int(large):,} images':<52} "
            f"{a:>7,.0f} MB → {b:,.0f} MB  {m['growth']:+.1%}  <= +10 %"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="P7's folder")
    parser.add_argument("--p8-images", default="10000,40000", help="P8's two folders")
    parser.add_argument("--size", type=int, default=32, help="files and image_size, square")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="P7 epochs per side (P8 runs: 2 fewer)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "runner-bench-data")
    parser.add_argument("--skip", default="", help="comma-separated: P7,P8")
    args = parser.parse_args()
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}
    figures: dict = {"size": args.size, "batch": args.batch, "repeats": args.repeats}
    if "P7" not in skip:
        figures["images"] = args.images
        figures["P7"] = p7(
            generated_folder(args.workdir, args.images, args.size), args.size, args.batch, args.repeats
        )
    if "P8" not in skip:
        counts = [int(n) for n in args.p8_images.split(",")]
        folders = {n: generated_folder(args.workdir, n, args.size) for n in counts}
        figures["P8"] = p8(folders, args.size, args.batch, max(args.repeats - 2, 1))
    print_table(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
