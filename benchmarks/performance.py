"""runner against the hand-written tutorial script, side by side, in one invocation.

    python benchmarks/performance.py [--images 50000] [--epochs 3] [--repeats 3] [--skip P2,...]
    python benchmarks/performance.py --levers     # P1 float32 under each lever, against the tutorial

P1 throughput   images/s of `runner run` and of the tutorial script (policy order fixed, model.fit on
                NumPy float64 arrays as the tutorial does), float32 and mixed_float16, on 50 000
                CIFAR-shaped uint8 images, epochs after the first (no tracing/compile time).
P2 memory       peak RSS of each whole process on that data.
P3 CLI latency  `runner --help` and `runner validate` against `python -c "import tensorflow"`.
P4 telemetry    the runner's callbacks (progress, throughput, loss-scale telemetry, checkpoints) on
                against off, on the same model and data (step time).
P5 honesty      `runner check`'s predicted policy/float32 step-time ratio against the ratio of the
                full runs of P1.

The sides alternate (A B A B ...) so that drifts of the machine hit both; medians are reported.
Every measurement runs in its own process. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

SPEC = """
name = "bench-{policy}"
seed = 0
[precision]
policy = "{policy}"
[model]
kind = "seed_cnn"
[data]
source = "shapes"
batch_size = 32
train_size = {images}
test_size = 1000
validation_fraction = 0.0
[training]
epochs = {epochs}
learning_rate = 0.001
[runtime]
tensorboard = {telemetry}
"""

# The tutorial, with its policy bug fixed (set before the model is built) and nothing else changed:
# float64 arrays scaled on the host, model.fit on NumPy, Keras' own progress bar off.
BASELINE = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras
    from runner.data import make_shapes

    policy, images, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    keras.mixed_precision.set_global_policy(policy)
    x, y = make_shapes(images, seed=0)
    x = x / 255.0  # float64, as in the tutorial
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10),
        keras.layers.Activation("softmax", dtype="float32"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()
        def on_epoch_end(self, epoch, logs=None):
            rates.append(images / (self.end - self.start))

    rates = []
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[Clock()])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_second": rates[1:], "peak_rss_mb": peak}))
    """
)


def _peak_rss_mb(run_dir: Path) -> float:
    return json.loads((run_dir / "report.json").read_text())["performance"]["peak_host_memory_mb"]


def runner_side(
    policy: str, images: int, epochs: int, telemetry: bool = True, overrides: tuple[str, ...] = ()
) -> dict:
    """One `runner run` in its own process: per-epoch images/s after the first epoch, peak RSS.
    `overrides` are `--set` arguments ("training.steps_per_execution=16")."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(
            SPEC.format(policy=policy, images=images, epochs=epochs, telemetry=str(telemetry).lower())
        )
        sets = [arg for o in overrides for arg in ("--set", o)]
        result = subprocess.run(
            [PYTHON, "-m", "runner", "run", str(spec), "--output", tmp, *sets], capture_output=True, text=True
        )
        if result.returncode not in (0, 1):
            raise RuntimeError(result.stderr[-2000:])
        (run_dir,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {
            "images_per_second": [r["images_per_second"] for r in records[1:]],
            "peak_rss_mb": _peak_rss_mb(run_dir),
        }


def baseline_side(policy: str, images: int, epochs: int) -> dict:
    result = subprocess.run(
        [PYTHON, "-c", BASELINE, policy, str(images), str(epochs)], capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p1_p2(args: argparse.Namespace) -> dict:
    out: dict = {}
    for policy in ("float32", "mixed_float16"):
        runner_ips, base_ips, runner_rss, base_rss = [], [], [], []
        for _ in range(args.repeats):
            r = runner_side(policy, args.images, args.epochs)
            b = baseline_side(policy, args.images, args.epochs)
            runner_ips += r["images_per_second"]
            base_ips += b["images_per_second"]
            runner_rss.append(r["peak_rss_mb"])
            base_rss.append(b["peak_rss_mb"])
        out[policy] = {
            "runner_images_per_second": round(median(runner_ips), 1),
            "baseline_images_per_second": round(median(base_ips), 1),
            "throughput_ratio": round(median(runner_ips) / median(base_ips), 3),
            "runner_peak_rss_mb": round(median(runner_rss), 1),
            "baseline_peak_rss_mb": round(median(base_rss), 1),
            "memory_ratio": round(median(runner_rss) / median(base_rss), 3),
        }
    return out


# The P1 levers, each measured on its own against the tutorial in the same rounds (float32).
LEVERS = {
    "runner defaults": (),
    "steps_per_execution=1": ("training.steps_per_execution=1",),
    "steps_per_execution=8": ("training.steps_per_execution=8",),
    "steps_per_execution=32": ("training.steps_per_execution=32",),
    "steps_per_execution=128": ("training.steps_per_execution=128",),
    "jit_compile (XLA)": ("training.jit_compile=true",),
    "steps_per_execution=32 + XLA": ("training.steps_per_execution=32", "training.jit_compile=true"),
}


def levers(args: argparse.Namespace) -> dict:
    """float32 images/s of runner under each lever, and of the tutorial, alternating, medians."""
    rates: dict[str, list[float]] = {name: [] for name in [*LEVERS, "tutorial"]}
    for _ in range(args.repeats):
        for name, overrides in LEVERS.items():
            rates[name] += runner_side("float32", args.images, args.epochs, overrides=overrides)[
                "images_per_second"
            ]
            rates["tutorial"] += baseline_side("float32", args.images, args.epochs)["images_per_second"]
    tutorial = median(rates["tutorial"])
    return {
        name: {"images_per_second": round(median(r), 1), "ratio_to_tutorial": round(median(r) / tutorial, 3)}
        for name, r in rates.items()
    }


def _seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, cwd=ROOT, check=True)
    return time.perf_counter() - start


def p3(args: argparse.Namespace) -> dict:
    commands = {
        "runner --help": [PYTHON, "-m", "runner", "--help"],
        "runner validate": [PYTHON, "-m", "runner", "validate", "specs/mixed.toml"],
        "import tensorflow": [PYTHON, "-c", "import tensorflow"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(max(args.repeats, 5)):
        for name, command in commands.items():
            times[name].append(_seconds(command))
    tf = median(times["import tensorflow"])
    return {
        name: {"seconds": round(median(t), 3), "ratio_to_import_tensorflow": round(median(t) / tf, 3)}
        for name, t in times.items()
    }


# P4 in one process: the same compiled model fits alternately with runner's callbacks and with none;
# a minimal clock (on both sides) times each epoch's training steps.
TELEMETRY = textwrap.dedent(
    """
    import json, sys, tempfile, time
    from pathlib import Path
    from runner import callbacks as cb, compat, loop, precision, telemetry
    from runner.data import load_data, train_pipeline
    from runner.session import _build
    from runner.spec import spec_from_dict

    images, rounds = int(sys.argv[1]), int(sys.argv[2])
    spec = spec_from_dict({"name": "p4", "precision": {"policy": "float32"},
                           "data": {"source": "shapes", "train_size": images, "validation_fraction": 0.0}})
    splits = load_data(spec.data, 0)
    keras = compat.keras()
    steps = loop.steps_per_epoch(len(splits.y_train), spec.data.batch_size)

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()

    with precision.policy_scope("float32"):
        model, _ = _build(spec, splits)
    times = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        log, epoch = telemetry.TrainingLog(), 0
        for i in range(2 * rounds + 1):
            side = "on" if i % 2 else "off"
            segment = telemetry.Segment(epoch, epoch + 1, 0, steps)
            clock = Clock()
            callbacks = [clock]
            if side == "on":
                callbacks = [
                    cb.Telemetry(log, 32, images, segment, Path(tmp) / "m.jsonl"),
                    cb.Checkpoints(Path(tmp), log, segment, telemetry.StopRequest(), None),
                    cb.EpochSummaries(log, Path(tmp) / "tb"),
                    cb.ProgressEvents(lambda event: None, 1000, steps, 32, segment),
                    clock,
                ]
            ds = train_pipeline(splits.x_train, splits.y_train, 32, 0, range(epoch, epoch + 1))
            loop.fit(model, ds, None, segment, steps, callbacks)
            if i:  # the first fit traces: not timed
                times[side].append(images / (clock.end - clock.start))
            epoch += 1
    print(json.dumps(times))
    """
)


def p4(args: argparse.Namespace) -> dict:
    result = subprocess.run(
        [PYTHON, "-c", TELEMETRY, str(args.images), str(max(args.repeats, 3))],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    times = json.loads(result.stdout.strip().splitlines()[-1])
    on, off = median(times["on"]), median(times["off"])
    return {
        "images_per_second_on": round(on, 1),
        "images_per_second_off": round(off, 1),
        "step_time_overhead": round(off / on - 1, 4),
    }


def p5(args: argparse.Namespace, measured: dict | None) -> dict:
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "runner",
            "check",
            "specs/quickstart.toml",
            "--steps",
            "10",
            "--set",
            "data.batch_size=32",
            "--set",
            "model.filters=[32,64,64]",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    line = next(x for x in result.stdout.splitlines() if "than float32" in x or "as fast as" in x)
    predicted = None
    for word in line.split():
        if word.endswith("×"):
            predicted = float(word[:-1])
    if predicted is not None and "faster" in line:
        predicted = 1 / predicted
    actual = None
    if measured:
        actual = (
            measured["float32"]["runner_images_per_second"]
            / measured["mixed_float16"]["runner_images_per_second"]
        )
    return {
        "predicted_step_time_ratio": predicted,
        "measured_step_time_ratio": None if actual is None else round(actual, 3),
        "relative_error": None
        if actual is None or predicted is None
        else round(abs(predicted - actual) / actual, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: P1,P2,P3,P4,P5 (P1 and P2 run together)")
    parser.add_argument(
        "--levers", action="store_true", help="instead: P1 float32 per lever (steps_per_execution, XLA)"
    )
    args = parser.parse_args()
    if args.levers:
        figures = {"images": args.images, "epochs": args.epochs, "repeats": args.repeats}
        figures["levers"] = levers(args)
        print(f"{'P1 float32, runner with':<36} {'images/s':>10} {'/ tutorial':>10}")
        for name, m in figures["levers"].items():
            print(f"{name:<36} {m['images_per_second']:>10,.0f} {m['ratio_to_tutorial']:>10.2f}")
        print(json.dumps(figures))
        return 0
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}
    figures: dict = {"images": args.images, "epochs": args.epochs, "repeats": args.repeats}
    if not {"P1", "P2"} <= skip:
        figures["P1_P2"] = p1_p2(args)
    if "P3" not in skip:
        figures["P3"] = p3(args)
    if "P4" not in skip:
        figures["P4"] = p4(args)
    if "P5" not in skip:
        figures["P5"] = p5(args, figures.get("P1_P2"))
    print_table(figures)
    print(json.dumps(figures))
    return 0


def print_table(f: dict) -> None:
    print(f"{'measure':<44} {'runner':>12} {'reference':>12} {'ratio':>8}  target")
    for policy, m in f.get("P1_P2", {}).items():
        print(
            f"{'P1 images/s, ' + policy:<44} {m['runner_images_per_second']:>12,.0f} "
            f"{m['baseline_images_per_second']:>12,.0f} {m['throughput_ratio']:>8.2f}  >= 1.10 (float32)"
        )
        print(
            f"{'P2 peak RSS MB, ' + policy:<44} {m['runner_peak_rss_mb']:>12,.0f} "
            f"{m['baseline_peak_rss_mb']:>12,.0f} {m['memory_ratio']:>8.2f}  <= 0.50"
        )
    for name, m in f.get("P3", {}).items():
        if name != "import tensorflow":
            tf = f["P3"]["import tensorflow"]["seconds"]
            print(
                f"{'P3 seconds, ' + name:<44} {m['seconds']:>12.3f} {tf:>12.3f} "
                f"{m['ratio_to_import_tensorflow']:>8.3f}  <= 0.10"
            )
    if "P4" in f:
        m = f["P4"]
        print(
            f"{'P4 images/s, telemetry on / off':<44} {m['images_per_second_on']:>12,.0f} "
            f"{m['images_per_second_off']:>12,.0f} {m['step_time_overhead']:>+8.2%}  <= +2 %"
        )
    if "P5" in f:
        m = f["P5"]
        print(
            f"{'P5 mixed/float32 step time, check vs runs':<44} {m['predicted_step_time_ratio'] or 0:>12.2f} "
            f"{m['measured_step_time_ratio'] or 0:>12.2f} {m['relative_error'] or 0:>8.2%}  within 25 %"
        )


if __name__ == "__main__":
    sys.exit(main())
