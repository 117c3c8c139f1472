"""runner against the tutorial and against Keras' own `fit`, side by side, in one invocation.

    python benchmarks/performance.py            # everything; rewrites the generated part of the docs
    python benchmarks/performance.py --only P1,P2 --policies float32   # a part: prints, writes nothing
    python benchmarks/performance.py --levers   # P1 in float32 under each lever, against the tutorial
    python benchmarks/performance.py --redraw   # the docs again from docs/figures/performance.json

P1 throughput  images/s of `runner run` with the defaults (no --set) and of the tutorial
               (benchmarks/tutorial.py: its CNN, float64 arrays, `model.fit`, the policy set first),
               in float32, mixed_float16 and mixed_bfloat16, 50 000 CIFAR-shaped images, epochs after
               the first (no tracing). Target: runner ≥ 1.5× the tutorial in each policy. Beside
               it, the ceiling: the same model's compiled step on one batch held in memory
               (overhead.py --sides ceiling), what the arithmetic allows whatever the loop.
P2 memory      peak resident memory of each whole process on 50 000 + 10 000 images, with where it
               went phase by phase (runner.memory: a run's report.json has the same table). ≤ 0.25×.
P3 CLI latency `runner --help` and `runner validate` against `python -c "import tensorflow"`. ≤ 0.10×.
P4 observers   runner's loop with every observer a run has (telemetry, checkpoints, summaries,
               progress) against the same loop with none, on the seed CNN (overhead.py). ≤ +2 %.
P5 honesty     `runner check`'s predicted mixed_float16/float32 step-time ratio against P1's runs.
               Within 25 %.
P10 overhead   runner's loop and observers against `model.fit` on the same model, data pipeline and
               batch: ResNet-20 (built in) and MobileNetV2 (keras.applications) (overhead.py). ≤ +3 %.

The sides alternate (each run in its own process, P4/P10 in turns inside one) so that drifts of the
machine hit both; medians are reported. Prints a table and, last, one JSON line. Every figure is of
one CPU kind, recorded with it (its model and the flags that decide mixed precision's kernels: what
is fast on one kind can be 300x slower on another). A full invocation also writes that kind's
docs/figures/performance-<kind>.json and .svg (the ratios against their targets) and its section
between its own markers in docs/performance.md, leaving the other kinds' as they are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DOC, FIGURES = ROOT / "docs" / "performance.md", ROOT / "docs" / "figures"
BEGIN, END = (
    "<!-- BEGIN benchmarks/performance.py {kind} -->",
    "<!-- END benchmarks/performance.py {kind} -->",
)
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
MEASURES = ("P1", "P2", "P3", "P4", "P5", "P10")
P10_MODELS = {
    "ResNet-20": {"kind": "resnet", "depth": 20},
    "MobileNetV2": {"kind": "keras_application", "name": "MobileNetV2"},
}

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
test_size = {test_images}
validation_fraction = 0.0
[training]
epochs = {epochs}
learning_rate = 0.001
"""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _child(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


# ---------------------------------------------------------------- P1 and P2: runner against the tutorial


def runner_side(policy: str, args: argparse.Namespace, overrides: tuple[str, ...] = ()) -> dict:
    """One `runner run` in its own process: images/s of each epoch after the first, the process's
    peak resident memory and its phases (report.json). `overrides` are `--set` arguments."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(
            SPEC.format(policy=policy, images=args.images, test_images=args.test_images, epochs=args.epochs)
        )
        sets = [arg for o in overrides for arg in ("--set", o)]
        result = subprocess.run(
            [PYTHON, "-m", "runner", "run", str(spec), "--output", tmp, *sets], capture_output=True, text=True
        )
        if result.returncode not in (0, 1):
            raise RuntimeError(result.stderr[-3000:])
        (run_dir,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        performance = json.loads((run_dir / "report.json").read_text())["performance"]
        return {
            "images_per_second": [r["images_per_second"] for r in records[1:]],
            "peak_mb": performance["peak_host_memory_mb"],
            "memory_phases": performance["memory_phases"],
            "steps_per_execution": performance["steps_per_execution"],
        }


def tutorial_side(policy: str, args: argparse.Namespace) -> dict:
    command = [
        PYTHON,
        "benchmarks/tutorial.py",
        policy,
        str(args.images),
        str(args.test_images),
        str(args.epochs),
    ]
    result = json.loads(_child(command, "the tutorial").strip().splitlines()[-1])
    result["images_per_second"] = result["images_per_second"][1:]
    return result


def p1_p2(args: argparse.Namespace) -> dict:
    out: dict = {}
    for policy in args.policies:
        runs: dict[str, list[dict]] = {"runner": [], "tutorial": []}
        for repeat in range(args.repeats):
            sides = [("runner", runner_side), ("tutorial", tutorial_side)]
            for name, side in sides if repeat % 2 == 0 else sides[::-1]:
                runs[name].append(side(policy, args))
        ips = {name: [x for r in done for x in r["images_per_second"]] for name, done in runs.items()}
        peaks = {name: [r["peak_mb"] for r in done] for name, done in runs.items()}
        typical = {
            name: min(done, key=lambda r: abs(r["peak_mb"] - median(peaks[name])))
            for name, done in runs.items()
        }
        ceiling = overhead({"kind": "seed_cnn"}, args.p4_images, 4, policy, "ceiling")["images_per_second"]
        out[policy] = {
            "ceiling_images_per_second": ceiling["ceiling"],
            "ceiling_ratio": round(ceiling["ceiling"] / median(ips["tutorial"]), 3),
            "runner_images_per_second": round(median(ips["runner"]), 1),
            "tutorial_images_per_second": round(median(ips["tutorial"]), 1),
            "throughput_ratio": round(median(ips["runner"]) / median(ips["tutorial"]), 3),
            "runner_peak_mb": round(median(peaks["runner"]), 1),
            "tutorial_peak_mb": round(median(peaks["tutorial"]), 1),
            "memory_ratio": round(median(peaks["runner"]) / median(peaks["tutorial"]), 3),
            "steps_per_execution": [r["steps_per_execution"] for r in runs["runner"]],
            "all": {"images_per_second": ips, "peak_mb": peaks},
            "memory_phases": {name: r["memory_phases"] for name, r in typical.items()},
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
}


def levers(args: argparse.Namespace) -> dict:
    """float32 images/s of runner under each lever, and of the tutorial, alternating, medians."""
    rates: dict[str, list[float]] = {name: [] for name in [*LEVERS, "tutorial"]}
    for _ in range(args.repeats):
        for name, overrides in LEVERS.items():
            rates[name] += runner_side("float32", args, overrides)["images_per_second"]
            rates["tutorial"] += tutorial_side("float32", args)["images_per_second"]
    tutorial = median(rates["tutorial"])
    return {
        name: {"images_per_second": round(median(r), 1), "ratio_to_tutorial": round(median(r) / tutorial, 3)}
        for name, r in rates.items()
    }


# ---------------------------------------------------------------- P3: what a command costs before TensorFlow


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


# ---------------------------------------------------------------- P4 and P10: runner's loop against fit


def overhead(
    model: dict, images: int, rounds: int, policy: str = "float32", sides: str = "fit,runner,bare"
) -> dict:
    """overhead.py on `model`: medians of each side's images/s, and (fit, runner, bare) the overheads."""
    command = [PYTHON, "benchmarks/overhead.py", json.dumps(model), "--images", str(images)]
    command += ["--rounds", str(rounds), "--policy", policy, "--sides", sides]
    rates = json.loads(_child(command, "benchmarks/overhead.py").strip().splitlines()[-1])
    if "fit" not in rates:
        return {"images_per_second": {k: round(median(v), 1) for k, v in rates.items()}, "all": rates}
    fit, runner, bare = (median(rates[k]) for k in ("fit", "runner", "bare"))
    return {
        "images_per_second": {"fit": round(fit, 1), "runner": round(runner, 1), "bare": round(bare, 1)},
        "overhead_vs_fit": round(fit / runner - 1, 4),
        "observers_overhead": round(bare / runner - 1, 4),
        "all": rates,
    }


def p4(args: argparse.Namespace) -> dict:
    return overhead({"kind": "seed_cnn"}, args.p4_images, args.rounds)


def p10(args: argparse.Namespace) -> dict:
    return {name: overhead(model, args.p10_images, args.rounds) for name, model in P10_MODELS.items()}


# ---------------------------------------------------------------- P5: is `runner check`'s prediction right?


def p5(args: argparse.Namespace, measured: dict | None) -> dict:
    out = _child(
        [
            *(PYTHON, "-m", "runner", "check", "specs/quickstart.toml", "--steps", "10"),
            *("--set", "data.batch_size=32", "--set", "model.filters=[32,64,64]"),
        ],
        "runner check",
    )
    line = " ".join(out.split())  # the sentence may wrap
    found = re.search(r"([\d.]+)× (slower|faster) than float32|(as fast as)", line)
    predicted = None
    if found and found.group(1):
        predicted = float(found.group(1)) if found.group(2) == "slower" else 1 / float(found.group(1))
    elif found:
        predicted = 1.0
    actual = None
    if measured and {"float32", "mixed_float16"} <= set(measured):
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


# ---------------------------------------------------------------- the table, its targets, the documents


def rows(f: dict) -> list[dict[str, Any]]:
    """Every figure with its target: (id, what, runner, reference, value, target, higher-is-better)."""
    out: list[dict[str, Any]] = []

    def add(
        pid: str, what: str, runner: Any, reference: Any, value: float | None, target: float, higher: bool
    ) -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        out.append(
            {
                "id": pid,
                "what": what,
                "runner": runner,
                "reference": reference,
                "value": value,
                "target": target,
            }
            | {"higher_is_better": higher, "met": met}
        )

    for policy, m in f.get("P1_P2", {}).items():
        add(
            "P1",
            f"images/s, {policy}, / tutorial",
            m["runner_images_per_second"],
            m["tutorial_images_per_second"],
            m["throughput_ratio"],
            1.5,
            True,
        )
    for policy, m in f.get("P1_P2", {}).items():
        add(
            "P2",
            f"peak memory MB, {policy}, / tutorial",
            m["runner_peak_mb"],
            m["tutorial_peak_mb"],
            m["memory_ratio"],
            0.25,
            False,
        )
    for name, m in f.get("P3", {}).items():
        if name != "import tensorflow":
            tf = f["P3"]["import tensorflow"]["seconds"]
            add(
                "P3",
                f"seconds, {name}, / import tensorflow",
                m["seconds"],
                tf,
                m["ratio_to_import_tensorflow"],
                0.10,
                False,
            )
    if "P4" in f:
        m = f["P4"]
        add(
            "P4",
            "step time, observers on / off, seed CNN",
            m["images_per_second"]["runner"],
            m["images_per_second"]["bare"],
            m["observers_overhead"],
            0.02,
            False,
        )
    if "P5" in f and f["P5"]["relative_error"] is not None:
        m = f["P5"]
        add(
            "P5",
            "mixed_float16/float32 step time, check / runs",
            m["predicted_step_time_ratio"],
            m["measured_step_time_ratio"],
            m["relative_error"],
            0.25,
            False,
        )
    for name, m in f.get("P10", {}).items():
        add(
            "P10",
            f"step time, runner / model.fit, {name}",
            m["images_per_second"]["runner"],
            m["images_per_second"]["fit"],
            m["overhead_vs_fit"],
            0.03,
            False,
        )
    return out


def _value(row: dict) -> str:
    if row["value"] is None:
        return "—"
    if row["id"] in ("P4", "P5", "P10"):
        return f"{row['value']:+.1%}" if row["id"] != "P5" else f"{row['value']:.1%}"
    return f"{row['value']:.3f}"


def _target(row: dict) -> str:
    sign = "≥" if row["higher_is_better"] else "≤"
    if row["id"] in ("P4", "P10"):
        return f"{sign} +{row['target']:.0%}"
    if row["id"] == "P5":
        return f"within {row['target']:.0%}"
    return f"{sign} {row['target']:.2f}"


def _number(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def print_table(f: dict) -> None:
    print(f"{'':<4} {'measure':<48} {'runner':>10} {'reference':>10} {'ratio':>8}  target")
    for r in rows(f):
        mark = {True: "met", False: "MISSED", None: ""}[r["met"]]
        print(
            f"{r['id']:<4} {r['what']:<48} {_number(r['runner']):>10} {_number(r['reference']):>10} "
            f"{_value(r):>8}  {_target(r)} {mark}"
        )
    for policy, m in f.get("P1_P2", {}).items():
        print(
            f"P1 ceiling, {policy}: the compiled step alone {m['ceiling_images_per_second']:,.0f} images/s, "
            f"{m['ceiling_ratio']:.2f}x the tutorial: the most any loop reaches"
        )
    for policy, m in f.get("P1_P2", {}).items():
        floor = floor_mb(m["memory_phases"]["runner"])
        print(
            f"P2 floor, {policy}: {floor:,.0f} MB once TensorFlow and the data are in, "
            f"{floor / m['tutorial_peak_mb']:.3f}x the tutorial's peak"
        )
    phases = f.get("P1_P2", {}).get("float32", {}).get("memory_phases")
    if phases:
        print("\nmemory by phase, float32 (MB: resident at the phase's end, its peak)")
        for name, table in phases.items():
            print(
                f"  {name}: "
                + ", ".join(f"{p['phase']} {p['end_mb']:.0f} ({p['peak_mb']:.0f})" for p in table)
            )


def chart(table: list[dict]) -> str:
    """An SVG bar chart of each ratio against its target: throughput (higher is better), memory and
    latency (lower), overheads in percent (lower); the target is the black tick on each bar."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    rcParams["svg.hashsalt"] = "runner-performance"  # the same ids every time: a diff shows real change
    panels = [
        ("throughput / tutorial (higher is better)", [r for r in table if r["id"] == "P1"], 1.0),
        ("memory, latency / reference (lower is better)", [r for r in table if r["id"] in ("P2", "P3")], 1.0),
        (
            "overhead, error in % (lower is better)",
            [r for r in table if r["id"] in ("P4", "P5", "P10")],
            100.0,
        ),
    ]
    panels = [p for p in panels if p[1]]
    heights = [max(len(p[1]), 1) for p in panels]
    fig = Figure(figsize=(7.5, 0.45 * sum(heights) + 1.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, (title, items, scale) in zip(axes, panels, strict=True):
        labels = [f"{r['id']} {r['what']}" for r in items]
        values = [(r["value"] or 0) * scale for r in items]
        colours = ["#2a7f3f" if r["met"] else "#b3362c" for r in items]
        positions = range(len(items))
        ax.barh(positions, values, color=colours, height=0.6)
        for y, r in zip(positions, items, strict=True):
            ax.plot([r["target"] * scale] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
            ax.annotate(
                _value(r), (values[y], y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7
            )
        ax.set_yticks(list(positions), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_title(title, fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        low, high = ax.get_xlim()
        ax.set_xlim(min(low, 0), max(high, max(r["target"] * scale for r in items) * 1.15))
    import io

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    return re.sub(r"<metadata>.*?</metadata>", "", buffer.getvalue(), flags=re.S)


def markdown(f: dict, kind: str) -> str:
    """One CPU kind's generated section of docs/performance.md: the table, the chart, the memory by
    phase."""
    lines = [
        BEGIN.format(kind=kind),
        "",
        f"### {describe(f['machine'])}",
        "",
        f"Generated by `{f['command']}` on {f['date']}. Figures: "
        f"[figures/performance-{kind}.json](figures/performance-{kind}.json).",
        "",
        "| | measure | runner | reference | ratio | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows(f):
        mark = {True: "met", False: "**missed**", None: ""}[r["met"]]
        lines.append(
            f"| {r['id']} | {r['what']} | {_number(r['runner'])} | {_number(r['reference'])} | {_value(r)} | "
            f"{_target(r)} | {mark} |"
        )
    lines += ["", f"![The ratios against their targets](figures/performance-{kind}.svg)", ""]
    if f.get("P1_P2"):
        lines += [
            "P1's ceiling: the seed CNN's compiled step on one batch held in memory, repeated (no input "
            "pipeline, 32 steps per execution, XLA as the run chooses), what the arithmetic allows whatever "
            "the loop:",
            "",
            "| policy | ceiling images/s | runner images/s | tutorial images/s | ceiling / tutorial "
            "| runner / ceiling |",
            "|---|---|---|---|---|---|",
        ]
        for policy, m in f["P1_P2"].items():
            ceiling, runner = m["ceiling_images_per_second"], m["runner_images_per_second"]
            lines.append(
                f"| {policy} | {ceiling:,.0f} | {runner:,.0f} | {m['tutorial_images_per_second']:,.0f} | "
                f"{m['ceiling_ratio']:.2f} | {runner / ceiling:.2f} |"
            )
        lines.append("")
    for policy, m in f.get("P1_P2", {}).items():
        phases = m["memory_phases"]
        floor = floor_mb(phases["runner"])
        lines += [
            f"Resident memory by phase, {policy} (MB; one run of each side, the one with the median peak). "
            f"runner's floor, resident once TensorFlow is imported and the data loaded (before any model): "
            f"{floor:,.0f} MB, {floor / m['tutorial_peak_mb']:.3f}× the tutorial's peak.",
            "",
            "| side | phase | at its start | its peak | at its end |",
            "|---|---|---|---|---|",
        ]
        for side, table in phases.items():
            for p in table:
                figures = " | ".join(f"{p[k]:.0f}" for k in ("start_mb", "peak_mb", "end_mb"))
                lines.append(f"| {side} | {p['phase']} | {figures} |")
        lines.append("")
    lines.append(END.format(kind=kind))
    return "\n".join(lines)


def floor_mb(phases: list[dict]) -> float:
    """Resident memory at the end of the "tensorflow" phase: the process before any model exists."""
    return next(p["end_mb"] for p in phases if p["phase"] == "tensorflow")


def kind_of(m: dict) -> str:
    """A CPU kind's name in files and markers: its model and its mixed-precision flags, e.g.
    amd-epyc-avx512_bf16 or intel-xeon-avx512_bf16-avx512_fp16-amx_bf16."""
    words = re.sub(r"[^a-z0-9]+", "-", m["cpu"].lower()).strip("-").split("-")
    model = "-".join(w for w in words if w not in {"r", "tm", "cpu", "processor"})[:40].strip("-")
    flags = [f for f in m.get("flags", []) if f in DECISIVE_FLAGS]
    return "-".join([model, *flags]) or "unknown"


# The flags that change which kernels mixed precision gets (runner.precision.policy.CPU_NATIVE, AMX).
DECISIVE_FLAGS = ("avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def write_documents(f: dict) -> None:
    """This CPU kind's figures, chart and section of docs/performance.md; other kinds' stay."""
    kind = kind_of(f["machine"])
    FIGURES.mkdir(exist_ok=True)
    (FIGURES / f"performance-{kind}.json").write_text(json.dumps(f, indent=1) + "\n")
    (FIGURES / f"performance-{kind}.svg").write_text(chart(rows(f)))
    begin, end = BEGIN.format(kind=kind), END.format(kind=kind)
    text, section = DOC.read_text(), markdown(f, kind)
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def machine() -> dict:
    """The CPU kind every figure of an invocation is of: model, cores, the flags of note."""
    from runner.runs import INTERESTING_CPU_FLAGS, cpu_model_and_flags, environment_info

    env = environment_info()
    model, flags = cpu_model_and_flags()
    return {
        "device": env["device"],
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in INTERESTING_CPU_FLAGS if f in flags],
        "tensorflow": env.get("tensorflow", "?"),
    }


def describe(m: dict | str) -> str:
    if isinstance(m, str):  # figures written before the CPU's flags were recorded
        return m
    flags = ", ".join(m["flags"]) or "none of note"
    return f"{m['device']}, {m['cores']} cores, flags {flags}, TensorFlow {m['tensorflow']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000, help="P1/P2 training images")
    parser.add_argument("--test-images", type=int, default=10_000, help="P1/P2 test images")
    parser.add_argument("--epochs", type=int, default=2, help="per P1/P2 run; the first is not timed")
    parser.add_argument("--repeats", type=int, default=3, help="P1/P2 runs of each side and policy")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--rounds", type=int, default=7, help="P4/P10 epochs of each side (the first not timed)"
    )
    parser.add_argument("--p4-images", type=int, default=16_384)
    parser.add_argument("--p10-images", type=int, default=2_048)
    parser.add_argument("--only", default=",".join(MEASURES), help="some of " + ",".join(MEASURES))
    parser.add_argument("--levers", action="store_true", help="instead: P1 float32 under each lever")
    parser.add_argument(
        "--redraw",
        metavar="JSON",
        help="instead: a kind's docs again from its figures (docs/figures/...json)",
    )
    args = parser.parse_args()
    if args.redraw:
        figures = json.loads(Path(args.redraw).read_text())
        print_table(figures)
        write_documents(figures)
        return 0
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if args.levers:
        figures = {
            "images": args.images,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "levers": levers(args),
        }
        print(f"{'P1 float32, runner with':<36} {'images/s':>10} {'/ tutorial':>10}")
        for name, m in figures["levers"].items():
            print(f"{name:<36} {m['images_per_second']:>10,.0f} {m['ratio_to_tutorial']:>10.2f}")
        print(json.dumps(figures))
        return 0
    only = {s.strip().upper() for s in args.only.split(",") if s.strip()}
    figures: dict = {
        "command": "python " + " ".join(["benchmarks/performance.py", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("only", "levers")},
    }
    if only & {"P1", "P2", "P5"}:
        figures["P1_P2"] = p1_p2(args)
    if "P3" in only:
        figures["P3"] = p3(args)
    if "P4" in only:
        figures["P4"] = p4(args)
    if "P10" in only:
        figures["P10"] = p10(args)
    if "P5" in only:
        figures["P5"] = p5(args, figures.get("P1_P2"))
    print_table(figures)
    print(json.dumps(figures))
    if only >= set(MEASURES) and set(args.policies) == set(POLICIES):
        write_documents(figures)
        print(f"wrote {FIGURES / 'performance.json'}, {FIGURES / 'performance.svg'} and the table in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
