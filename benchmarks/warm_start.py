"""A sweep's variants started warm (forked from a server that imported TensorFlow once: runner/
processes.py) against cold (each `python -m runner` imports it), on the same small sweep.

    python benchmarks/warm_start.py                 # 3 rounds of a 6-variant sweep each way
    python benchmarks/warm_start.py --variants 12 --rounds 1

Each round runs the sweep once with RUNNER_START=warm and once with RUNNER_START=cold, alternating
which goes first (a drift of the machine hits both). Figures per way, medians over the rounds: the
sweep's wall seconds, and the CPU seconds of the sweep and everything it started (the children's
rusage), per variant. Prints a table, then one JSON line with the CPU kind they are of.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.performance import describe, machine

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


def one_sweep(spec: Path, way: str) -> dict:
    """The sweep in a process of its own: its wall seconds and the CPU seconds of its whole tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


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
