"""A sweep's variants started warm (forked from a server that imported TensorFlow once: runner/
processes.py) against cold (each `python -m runner` imports it), on the same small sweep.

    python benchmarks/warm_start.py                 # 3 rounds of a 6-variant sweep each way
    python benchmarks/warm_start.py --variants 12 --rounds 1

Each round runs the sweep once with RUNNER_START=warm and once with RUNNER_START=cold, alternating
which goes first (a drift of the machine hits both). Figures per way, medians over the rounds: the
sweep's wall seconds, and the machine's busy CPU seconds while it ran (/proc/stat: run it on an
otherwise idle machine), per variant. Prints a table, then one JSON line with the CPU kind they are of.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = """
name = "warm"
seed = 3
[precision]
policy = "float32"
[model]
kind = "mlp"
hidden_units = [16]
[data]
source = "shapes"
batch_size = 32
train_size = 256
test_size = 64
[training]
epochs = 1
[runtime]
tensorboard = false
[export]
formats = []
[sweep]
seed = {seeds}
"""


def machine() -> dict:
    """The CPU kind the figures are of (without importing TensorFlow in this process)."""
    from runner.runs import INTERESTING_CPU_FLAGS, cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in INTERESTING_CPU_FLAGS if f in flags]}


def describe(where: dict) -> str:
    return f"{where['cpu']}, {where['cores']} cores, flags {', '.join(where['flags']) or 'none of note'}"


def busy_cpu_seconds() -> float:
    """The machine's CPU seconds not idle so far (/proc/stat): a warm variant's CPU is not the
    sweep's rusage (the fork server, not the sweep, reaps it), so the whole machine's is counted."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def one_sweep(spec: Path, way: str) -> dict:
    """The sweep in a process of its own: its wall seconds and the machine's busy CPU seconds (run it
    on an otherwise idle machine)."""
    before = busy_cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(spec), "--output", out, "--yes"],
            cwd=ROOT,
            env={**os.environ, "RUNNER_START": way},
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"the {way} sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": busy_cpu_seconds() - before}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[dict]] = {"warm": [], "cold": []}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "sweep.toml"
        spec.write_text(SWEEP.format(seeds=list(range(1, args.variants + 1))))
        for round_ in range(args.rounds):
            for way in ("warm", "cold") if round_ % 2 == 0 else ("cold", "warm"):
                figures[way].append(one_sweep(spec, way))
                print(f"round {round_ + 1} {way}: {figures[way][-1]}", file=sys.stderr)
    summary = {
        way: {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "cpu_s")}
        for way, rows in figures.items()
    }
    where = machine()
    print(f"A sweep of {args.variants} variants, medians of {args.rounds} rounds, on {describe(where)}")
    print(f"{'start':6} {'wall s':>8} {'CPU s':>8} {'CPU s a variant':>16}")
    for way, row in summary.items():
        print(f"{way:6} {row['wall_s']:8.1f} {row['cpu_s']:8.1f} {row['cpu_s'] / args.variants:16.2f}")
    warm, cold = summary["warm"], summary["cold"]
    print(f"warm/cold: wall {warm['wall_s'] / cold['wall_s']:.2f}x, CPU {warm['cpu_s'] / cold['cpu_s']:.2f}x")
    print(json.dumps({"machine": where, "variants": args.variants, "rounds": figures, "medians": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
