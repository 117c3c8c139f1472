"""How long `runner run` takes to stop when a scheduler sends SIGTERM before training has started
(Kubernetes and Slurm give about 30 s before SIGKILL). The run is started, SIGTERM is sent after
each delay (so it lands in the TensorFlow import, the data, the speed timing, the model's build or
the preflight), and the time from the signal to the process's exit is printed with its exit code.

    python benchmarks/stop_latency.py [--spec specs/resnet50.toml] [--set model.name=DenseNet121]
                                      [--delays 2 5 10 20 30]

Target: exit 130 within 10 s of the signal, at every delay. Prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stop_after(spec: str, overrides: list[str], delay: float, output: Path) -> tuple[float, int, str]:
    """(seconds from SIGTERM to exit, exit code, the last line the run printed on stderr)."""
    command = [sys.executable, "-m", "runner", "run", spec, "--output", str(output)]
    command += [f"--set={s}" for s in overrides]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)  # a benchmark's schedule: the signal lands wherever the run is by then
    if child.poll() is not None:
        return 0.0, child.returncode, "finished before the signal"
    sent = time.perf_counter()
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=600)
    lines = [line for line in stderr.splitlines() if line.strip()]
    return time.perf_counter() - sent, child.returncode, (lines[-1] if lines else "")[:70]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/resnet50.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--delays", type=float, nargs="+", default=[2, 5, 10, 20, 30])
    args = parser.parse_args()
    from runner.runs import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    wanted = [f for f in flags if f.startswith(("avx512_fp16", "avx512_bf16", "amx"))]
    print(f"CPU: {model} ({', '.join(wanted) or 'no AVX-512 FP16/BF16, no AMX'})")
    print(f"{args.spec} {' '.join(args.overrides)}")
    print(f"{'SIGTERM after':>14} {'exit after':>11} {'code':>5}  last line on stderr")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for delay in args.delays:
            took, code, last = stop_after(args.spec, args.overrides, delay, Path(tmp))
            worst = max(worst, took)
            print(f"{delay:>12.0f} s {took:>9.1f} s {code:>5}  {last}")
    print(f"slowest stop: {worst:.1f} s (target: under 10 s, exit 130)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
