"""Fuzz the spec loader: random bytes, random TOML documents, and valid specs with random values in
random fields; tables and arrays nested thousands deep (in the file or a --set); sweeps of up to
10^12 variants; and the data readers: npz files whose headers declare random (and huge) shapes, and
image folders with file names that are not UTF-8. Every input must end as a valid plan (or data) or
one SpecError (DataError); anything else is counted.

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


FAMILIES = ("bytes", "toml", "valid", "overrides", "nesting", "huge_sweep", "npz", "folder")


def nested_input(rng: random.Random) -> tuple[bytes, list[str]]:
    """Arrays or inline tables nested 1 to 5000 deep, in the file or in a --set."""
    depth = rng.choice([rng.randint(1, 40), rng.randint(40, 400), rng.randint(400, 5000)])
    arrays = rng.random() < 0.5
    value = "[" * depth + "1" + "]" * depth if arrays else "{ a = " * depth + "1" + " }" * depth
    base = tomli_w.dumps(VALID)
    if rng.random() < 0.5:
        return (base + f"\nextra = {value}\n").encode(), []
    return base.encode(), [f"model.{rng.choice(['filters', 'arguments', 'depth'])}={value}"]


def huge_sweep_input(rng: random.Random) -> bytes:
    """A grid of up to 12 axes of up to 10 values (up to 10^12 variants), or random search asking for
    up to 10^12 samples: counted and refused before any variant is made, or a small valid plan."""
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
    if rng.random() < 0.5:
        doc["sweep"] = {"method": "random", "samples": rng.choice([2, 10**4 + 1, 10**6, 10**12])}
        doc["sweep"]["seed"] = {"int_uniform": [0, 10**9]}
    else:
        axes = rng.randint(1, 12)
        doc["sweep"] = {f"runtime.a{i}": list(range(rng.randint(1, 10))) or [0] for i in range(axes)}
        if rng.random() < 0.3:  # small and valid: two seeds
            doc["sweep"] = {"seed": [0, 1]}
    return tomli_w.dumps(doc).encode()


def npz_file(rng: random.Random, path: Path) -> None:
    """An npz whose x_train header declares a random shape (sometimes huge) of a random dtype, with
    as many bytes as it says, fewer, or none."""
    import io
    import zipfile

    import numpy as np
    from numpy.lib import format as npy

    shape = tuple(rng.choice([0, 1, 2, 8, 32, 10**3, 10**6, 2**40]) for _ in range(rng.randint(0, 5)))
    dtype = np.dtype(rng.choice(["u1", "f4", "f8", "i8", "<U3", "b1"]))
    header = io.BytesIO()
    npy.write_array_header_1_0(
        header, {"descr": npy.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
    body = bytes(rng.randrange(256) for _ in range(min(declared, 4096))) if declared <= 4096 else bytes(64)
    labels = io.BytesIO()
    np.save(labels, np.array([rng.randrange(3) for _ in range(rng.choice([0, 2, 8]))], np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + body[: rng.choice([len(body), len(body) // 2])])
        archive.writestr("y_train.npy", labels.getvalue())


def image_folder(rng: random.Random, root: Path) -> None:
    """Two class folders whose file names are random bytes (often not UTF-8), some of them images."""
    import os
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    for label in (b"a", b"b\xff" if rng.random() < 0.5 else b"b"):
        folder = os.path.join(os.fsencode(root), label)
        os.makedirs(folder)
        for _ in range(rng.randint(0, 3)):
            name = bytes(rng.choice([*range(32, 47), *range(48, 127), 0xFF, 0xFE, 0xC3]) for _ in range(6))
            with open(os.path.join(folder, name + rng.choice([b".png", b".jpg", b".txt"])), "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n" if rng.random() < 0.5 else b"")


def check_data(family: str, rng: random.Random, folder: Path) -> str:
    """'valid', 'data_error', or raises what the reader let escape."""
    from runner.data import files, npz
    from runner.data import image_folder as folders

    try:
        if family == "npz":
            npz_file(rng, folder / "x.npz")
            npz.read_npz(folder / "x.npz")
        else:
            image_folder(rng, folder / "photos")
            folders.scan_folder(folder / "photos", "data.path").fingerprint()
    except files.DataError as exc:
        if not str(exc).strip():
            raise AssertionError("empty DataError message") from None
        return "data_error"
    return "valid"


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
        for i in range(args.count):
            kind = FAMILIES[4 + (i // 2) % 4] if i % 2 else None  # half the inputs from the newer families
            data, overrides = b"", []
            try:
                if kind in ("npz", "folder"):
                    family = kind
                    outcomes[family, check_data(kind, rng, Path(tmp))] += 1
                    continue
                if kind == "nesting":
                    family, (data, overrides) = kind, nested_input(rng)
                elif kind == "huge_sweep":
                    family, data = kind, huge_sweep_input(rng)
                else:
                    family, data, overrides = random_input(rng)
                outcomes[family, check(data, Path(tmp), overrides)] += 1
            except Exception:  # noqa: BLE001 - counting them is the point
                outcomes[family, "UNEXPECTED"] += 1
                unexpected.append(
                    f"{family}: {data[:200]!r} --set {str(overrides)[:200]}\n{traceback.format_exc()}"
                )
    elapsed = time.perf_counter() - start
    print(f"{'family':<10} {'valid':>8} {'error':>8} {'unexpected':>11}")
    for family in FAMILIES:
        errors = outcomes[family, "spec_error"] + outcomes[family, "data_error"]
        print(f"{family:<10} {outcomes[family, 'valid']:>8} {errors:>8} {outcomes[family, 'UNEXPECTED']:>11}")
    print(f"{args.count} inputs in {elapsed:.1f} s")
    for sample in unexpected[:3]:
        print("---", sample, sep="\n", file=sys.stderr)
    print(f"unexpected exceptions: {len(unexpected)}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
