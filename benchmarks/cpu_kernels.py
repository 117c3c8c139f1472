"""TensorFlow's kernels on this CPU, op by op: the time and the error of float16 and bfloat16
against float32 and float64, forward and forward + backward, with oneDNN on and off, XLA or not.

    python benchmarks/cpu_kernels.py                    # every op, both oneDNN settings
    python benchmarks/cpu_kernels.py --ops conv2d --onednn 1

Why: on an Intel Xeon with AVX-512 FP16 and AMX, TensorFlow 2.21's float16 convolution gradients
were measured ~280x slower than float32's (the forward pass as fast), and a float16 gradient
check of DenseNet121 disagreed with the AMD EPYC's. Which op, which path (oneDNN's kernels,
which TF_ENABLE_ONEDNN_OPTS turns off at import; Eigen's; XLA's CPU compiler) and which error
come from here, on any CPU, instead of from a rule about its flags.

Each oneDNN setting runs in its own process (the variable is read when TensorFlow is imported).
Each op: the first call (tracing, and XLA's compile) is not timed; then calls are timed until
about a second has passed (at least one: a call past CUTOFF_S is timed once), the median taken.
The error of an output or gradient is its relative L2 distance from the same op in float64 on the
same (float16-rounded) values. Prints one table and, last, one JSON line with every figure and the
CPU's model and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("float32", "float16", "bfloat16")
CUTOFF_S = 2.0  # one call past this is timed once (a float16 convolution gradient can take 48 s)
BUDGET_S = 1.0  # timed calls of one measure, past the first, add up to about this


def _shapes() -> dict[str, dict[str, Any]]:
    """Each op's inputs (float64 numpy, seeded) and what it computes, on batch 16 (the issue's
    convolution, 64x32x32x32 * 3x3 -> 64, on a quarter of the batch)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 32, 32))
    return {
        "conv2d": {"x": x, "w": rng.standard_normal((3, 3, 32, 64)) * 0.05},
        "depthwise_conv2d": {"x": x, "w": rng.standard_normal((3, 3, 32, 1)) * 0.2},
        "batch_norm": {"x": x * 3 + 1, "w": np.ones(32)},
        "avg_pool": {"x": x, "w": None},
        "max_pool": {"x": x, "w": None},
        "matmul": {"x": rng.standard_normal((256, 1024)), "w": rng.standard_normal((1024, 1024)) * 0.03},
        "softmax": {"x": rng.standard_normal((256, 1000)) * 4, "w": None},
        "concat_relu": {"x": x, "w": rng.standard_normal((16, 32, 32, 16))},
    }


def _op(tf: Any, name: str) -> Any:
    def conv2d(x, w):
        return tf.nn.conv2d(x, w, 1, "SAME")

    def depthwise_conv2d(x, w):
        return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")

    def batch_norm(x, w):  # training mode: the batch's statistics (in the dtype itself: Keras 3 casts
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])  # float16 to float32 for them, raw ops do not)
        return tf.nn.batch_normalization(x, mean, variance, None, w, 1e-3)

    def avg_pool(x, w):
        return tf.nn.avg_pool2d(x, 2, 2, "VALID")

    def max_pool(x, w):
        return tf.nn.max_pool2d(x, 2, 2, "VALID")

    def matmul(x, w):
        return tf.matmul(x, w)

    def softmax(x, w):
        return tf.nn.softmax(x)

    def concat_relu(x, w):
        return tf.nn.relu(tf.concat([x, w], axis=-1))

    return locals()[name]


def _measure(tf: Any, name: str, inputs: dict[str, Any], dtype: str, xla: bool) -> dict[str, Any]:
    """Forward, and forward + backward (the gradients of sum(y * upstream) with respect to x and w),
    timed and compared with float64."""
    op = _op(tf, name)
    weights = inputs["w"] is not None
    rounded = {
        k: None if v is None else tf.cast(tf.cast(v, dtype), "float64").numpy() for k, v in inputs.items()
    }

    def forward(x, w):
        return op(x, w)

    upstream = None  # what flows back into y: fixed random weights (a plain sum has a zero gradient
    # through a normalisation or a softmax, whose outputs sum to a constant)

    def both(x, w):
        with tf.GradientTape() as tape:
            tape.watch(x)
            if weights:
                tape.watch(w)
            y = op(x, w)
            loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
        return y, tape.gradient(loss, [x, w] if weights else [x])

    result: dict[str, Any] = {"op": name, "dtype": dtype, "xla": xla}
    args = [tf.constant(rounded["x"], dtype), tf.constant(rounded["w"] if weights else 0.0, dtype)]
    reference = [
        tf.constant(rounded["x"], "float64"),
        tf.constant(rounded["w"] if weights else 0.0, "float64"),
    ]
    shape = op(*reference).shape
    upstream = tf.constant(np.random.default_rng(1).standard_normal(shape) * 1e-3, "float32")
    exact_y, exact_grads = _exact(tf, op, reference, upstream, weights)
    for what, fn in (("forward", forward), ("backward", both)):
        compiled = tf.function(fn, jit_compile=xla)
        try:
            out, seconds = _time(compiled, args)
        except tf.errors.OpError as exc:
            result[what] = {"error": str(exc).strip().splitlines()[0][:160]}
            continue
        y, grads = (out, []) if what == "forward" else out
        found = {"ms": round(seconds * 1000, 3), "y_error": _error(y, exact_y)}
        for index, (grad, exact) in enumerate(zip(grads, exact_grads, strict=False)):
            found[f"grad{index}_error"] = _error(grad, exact)
        result[what] = found
    return result


def _exact(tf: Any, op: Any, reference: list[Any], upstream: Any, weights: bool) -> tuple[Any, list[Any]]:
    """The op and its gradients in float64 (the upstream weights cast to float64 too)."""
    with tf.GradientTape() as tape:
        tape.watch(reference[0])
        if weights:
            tape.watch(reference[1])
        y = op(*reference)
        loss = tf.reduce_sum(y * tf.cast(upstream, "float64"))
    return y, tape.gradient(loss, reference if weights else reference[:1])


def _time(fn: Any, args: list[Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = _materialise(fn(*args))
    first = time.perf_counter() - start
    times: list[float] = []
    while not times or (sum(times) < BUDGET_S and max(times) < CUTOFF_S and first < CUTOFF_S * 5):
        start = time.perf_counter()
        out = _materialise(fn(*args))
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _materialise(out: Any) -> Any:
    if isinstance(out, tuple):
        return out[0].numpy(), [g.numpy() for g in out[1]]
    return out.numpy()


def _error(got: Any, exact: Any) -> float:
    got = np.asarray(got, np.float64)
    exact = np.asarray(exact, np.float64)
    norm = float(np.linalg.norm(exact))
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - exact) / norm) if norm else 0.0


def child(args: argparse.Namespace) -> None:
    """One oneDNN setting (this process's TF_ENABLE_ONEDNN_OPTS): every op, dtype and XLA setting."""
    import tensorflow as tf

    shapes = _shapes()
    rows = []
    for name in args.ops:
        for dtype in DTYPES:
            for xla in (False, True):
                rows.append(_measure(tf, name, shapes[name], dtype, xla))
                print(json.dumps({"progress": rows[-1]}), file=sys.stderr, flush=True)
    print(json.dumps({"onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "rows": rows}))


def cpu() -> dict[str, Any]:
    from runner.runs import INTERESTING_CPU_FLAGS, cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in INTERESTING_CPU_FLAGS if f in flags]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default=",".join(_shapes()), help="comma-separated ops")
    parser.add_argument("--onednn", default="1,0", help="TF_ENABLE_ONEDNN_OPTS values, one process each")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.ops = args.ops.split(",")
    if args.child:
        child(args)
        return
    results = []
    for setting in args.onednn.split(","):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, __file__, "--child", "--ops", ",".join(args.ops)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            sys.exit(f"oneDNN {setting}: the measuring process failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print_table(results)
    import tensorflow as tf

    print(json.dumps({"machine": {**cpu(), "tensorflow": tf.__version__}, "results": results}))


def print_table(results: list[dict[str, Any]]) -> None:
    header = f"{'op':17} {'dtype':9} {'oneDNN':6} {'XLA':4} {'fwd ms':>9} {'fwd+bwd ms':>11} {'× f32':>7}"
    header += f" {'y err':>8} {'grad err':>9}"
    print(header)
    for result in results:
        float32 = {(r["op"], r["xla"]): r for r in result["rows"] if r["dtype"] == "float32"}
        for r in result["rows"]:
            forward, backward = r.get("forward", {}), r.get("backward", {})
            reference = float32[(r["op"], r["xla"])].get("backward", {}).get("ms")
            ratio = backward.get("ms") / reference if backward.get("ms") and reference else float("nan")
            grads = [v for k, v in backward.items() if k.startswith("grad")]
            times = f"{forward.get('ms', float('nan')):9.2f} {backward.get('ms', float('nan')):11.2f}"
            print(
                f"{r['op']:17} {r['dtype']:9} {result['onednn']!s:6} {'yes' if r['xla'] else 'no':4} "
                f"{times} {ratio:7.2f} "
                f"{forward.get('y_error', float('nan')):8.1e} {max(grads, default=float('nan')):9.1e}"
                + (
                    f"  {forward.get('error') or backward.get('error')}"
                    if "error" in forward or "error" in backward
                    else ""
                )
            )


if __name__ == "__main__":
    main()
