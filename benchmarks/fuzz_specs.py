"""Fuzz the spec loader: random bytes, random TOML documents, and valid specs with random values in
random fields. Every input must end as a valid plan or one SpecError; anything else is counted.

    python benchmarks/fuzz_specs.py [--count 10000] [--seed 0]

Prints a table of outcomes per family and, last, the count of unexpected exceptions (target 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import string
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import tomli_w

from runner.spec import SpecError, load_plan, spec_from_dict, spec_to_dict

KEYS = [
    "name",
    "seed",
    "precision",
    "policy",
    "model",
    "kind",
    "data",
    "source",
    "training",
    "epochs",
    "optimizer",
    "sweep",
    "checks",
    "runtime",
    "filters",
    "batch_size",
    "path",
    "arguments",
    "factory",
    "precision.policy",
    "model.kind",
    "",
    " ",
    "ü",
    "a.b.c",
]


def random_scalar(rng: random.Random):
    choice = rng.randrange(9)
    if choice == 0:
        return rng.randint(-(2**63), 2**63 - 1)
    if choice == 1:
        return rng.choice(
            [0.0, -0.0, 1e308, -1e-308, float("nan"), float("inf"), float("-inf"), rng.random()]
        )
    if choice == 2:
        return rng.choice([True, False])
    if choice == 3:
        return "".join(rng.choice(string.printable + "éü漢\u2028") for _ in range(rng.randrange(12)))
    if choice == 4:
        return dt.datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28))
    if choice == 5:
        return rng.choice(
            ["float32", "mixed_float16", "mixed_bfloat16", "seed_cnn", "resnet", "shapes", "adam"]
        )
    if choice == 6:
        return [random_scalar(rng) for _ in range(rng.randrange(4))]
    if choice == 7:
        return rng.randint(-5, 300)
    return dt.time(rng.randrange(24), rng.randrange(60))


def random_table(rng: random.Random, depth: int = 0) -> dict:
    table = {}
    for _ in range(rng.randrange(6)):
        key = rng.choice(KEYS)
        table[key] = random_table(rng, depth + 1) if depth < 3 and rng.random() < 0.35 else random_scalar(rng)
    return table


VALID = spec_to_dict(
    spec_from_dict({"name": "base", "model": {"kind": "resnet"}, "checks": {"min_test_accuracy": 0.5}})
)


def mutated_valid(rng: random.Random) -> dict:
    """A valid spec, then a few fields (existing or new, at any depth) given random values."""
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
    for _ in range(rng.randint(1, 3)):
        section = rng.choice(list(doc))
        if isinstance(doc[section], dict) and rng.random() < 0.8:
            key = rng.choice([*doc[section], rng.choice(KEYS)])
            doc[section][key] = random_scalar(rng) if rng.random() < 0.8 else random_table(rng, 2)
        else:
            doc[section] = random_scalar(rng)
    if rng.random() < 0.2:
        doc["sweep"] = {rng.choice(["precision.policy", "seed", "model.depth", "nope"]): [random_scalar(rng)]}
    return doc


SWEEP_VALUES = {  # axes a sweep may vary, with values that are valid for them
    "precision.policy": ["float32", "mixed_float16", "mixed_bfloat16"],
    "seed": [0, 1, 7],
    "data.batch_size": [16, 32, 64],
    "training.learning_rate": [0.001, 0.01],
    "model.depth": [8, 14, 20],
}
SWEEP_AXES = list(SWEEP_VALUES)
BOM = "\ufeff".encode()


VALID_OVERRIDES = [
    "training.epochs=3",
    "data.train_size=64",
    "seed=3",
    "precision.policy=float32",
    "data.batch_size=32",
]


def random_override(rng: random.Random) -> str:
    """A --set as a user might type it: a valid one (on a swept field or not), a prefix, or junk."""
    if rng.random() < 0.6:
        return rng.choice(VALID_OVERRIDES)
    key = rng.choice([*SWEEP_AXES, "training.epochs", "data.train_size", "precision", "seed.x", *KEYS])
    value = rng.choice([str(rng.randint(1, 64)), repr(random_scalar(rng)), "float32", "[1, 2]", "", '"x'])
    return rng.choice([f"{key}={value}", f"{key} = {value}", key, f"={value}", f"{key}=={value}"])


def random_input(rng: random.Random) -> tuple[str, bytes, list[str]]:
    family = rng.choice(["bytes", "toml", "valid", "overrides"])
    if family == "bytes":
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        return family, (BOM + data if rng.random() < 0.2 else data), []
    doc = random_table(rng) if family == "toml" else mutated_valid(rng)
    overrides: list[str] = []
    if family == "overrides":  # a valid spec, a sweep over one to three axes, and --set on top
        doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
        axes = rng.sample(SWEEP_AXES, rng.randint(0, 3))
        doc["sweep"] = {
            axis: rng.sample(SWEEP_VALUES[axis], rng.randint(1, 2))
            if rng.random() < 0.8
            else [random_scalar(rng)]
            for axis in axes
        } or {rng.choice(SWEEP_AXES): []}
        overrides = [random_override(rng) for _ in range(rng.randint(1, 2))]
    try:
        text = tomli_w.dumps(doc).encode()
    except (TypeError, ValueError):  # not expressible in TOML (e.g. a list of mixed tables)
        text = repr(doc).encode()
    return family, (BOM + text if rng.random() < 0.1 else text), overrides


def check(data: bytes, folder: Path, overrides: list[str] | None = None) -> str:
    """'valid', 'spec_error', or raises what the loader let escape."""
    path = folder / "spec.toml"
    path.write_bytes(data)
    try:
        load_plan(path, overrides or ())
    except SpecError as exc:
        if not str(exc).strip():
            raise AssertionError("empty SpecError message") from None
        return "spec_error"
    return "valid"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: Counter[tuple[str, str]] = Counter()
    unexpected: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.count):
            family, data, overrides = random_input(rng)
            try:
                outcomes[family, check(data, Path(tmp), overrides)] += 1
            except Exception:  # noqa: BLE001 - counting them is the point
                outcomes[family, "UNEXPECTED"] += 1
                unexpected.append(f"{data[:200]!r} --set {overrides}\n{traceback.format_exc()}")
    elapsed = time.perf_counter() - start
    print(f"{'family':<8} {'valid':>8} {'spec_error':>11} {'unexpected':>11}")
    for family in ("bytes", "toml", "valid", "overrides"):
        print(
            f"{family:<8} {outcomes[family, 'valid']:>8} {outcomes[family, 'spec_error']:>11} "
            f"{outcomes[family, 'UNEXPECTED']:>11}"
        )
    print(f"{args.count} inputs in {elapsed:.1f} s")
    for sample in unexpected[:3]:
        print("---", sample, sep="\n", file=sys.stderr)
    print(f"unexpected exceptions: {len(unexpected)}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
