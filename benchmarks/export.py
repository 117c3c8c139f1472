"""The tables of docs/export.md, made by running them: the quickstart's model through every format and
quantization (and specs/int8_outliers.toml, the model full int8 breaks), each artifact run by its own
runtime in a fresh process on the whole test split.

    python benchmarks/export.py            # runs both, prints the tables, rewrites the docs' section
    python benchmarks/export.py --print    # runs both and prints the tables only

Each run is a real `runner run` (training included) into a scratch folder; the section between the
markers in docs/export.md is replaced with the commands, the CPU and the date, and one table per run
built from its report.json (the same rows report.md shows).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "export.md"
BEGIN, END = "<!-- BEGIN benchmarks/export.py -->", "<!-- END benchmarks/export.py -->"
EVERY = [
    'export.formats=["keras", "saved_model", "litert", "onnx"]',
    'export.quantize=["float16", "int8_dynamic", "int8", "keras_int8"]',
    "checks.max_export_accuracy_drop=0.01",
]
RUNS = {
    "quickstart": ("specs/quickstart.toml", EVERY),
    "int8_outliers": ("specs/int8_outliers.toml", []),
}


def run(spec: str, sets: list[str], output: Path) -> tuple[dict, int, str]:
    """`runner run SPEC --set ...` from the repository (factories resolve there): its report.json,
    exit code and the command as a user types it."""
    args = [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}
    env.pop("RUNNER_SKIP_EXPORT", None)
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", spec, *args, "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    found = sorted(output.iterdir())
    if not found:
        raise SystemExit(f"{spec}: no run directory ({done.stderr[-2000:]})")
    shown = " ".join(["runner run", spec, *(f"--set '{s}'" for s in sets)])
    return json.loads((found[-1] / "report.json").read_text()), done.returncode, shown


def table(report: dict) -> str:
    from runner.reporting.report import EXPORT_COLUMNS, export_caption, export_rows

    record = report["export"]
    lines = [
        "| " + " | ".join(EXPORT_COLUMNS) + " |",
        "|" + "---|" * len(EXPORT_COLUMNS),
        *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in export_rows(record)),
    ]
    checks = [c for c in report["checks"] if c["name"].startswith("export")]
    verdicts = [f"- `{c['name']}` {'✓' if c['passed'] else '✗'} {c['detail']}" for c in checks]
    return "\n".join([export_caption(record) or "", "", *lines, "", *verdicts])


def section() -> str:
    from runner.runs import cpu_model_and_flags

    cpu, flags = cpu_model_and_flags()
    shown = [f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    parts = [
        f"Made by `python benchmarks/export.py` on {date.today():%Y-%m-%d}, a {os.cpu_count()}-core {cpu} "
        f"({', '.join(shown) or 'no AVX-512'}); figures from another machine will differ, latencies most.",
    ]
    with tempfile.TemporaryDirectory(prefix="runner-export-bench-") as scratch:
        for name, (spec, sets) in RUNS.items():
            report, code, command = run(spec, sets, Path(scratch) / name)
            metrics = report["metrics"]
            parts += [
                "",
                f"### {name}",
                "",
                f"`{command}` — exit {code}, {report['precision']['policy']}, test accuracy "
                f"{metrics['test_accuracy']:.4f}, export {report['export']['seconds']:.1f} s.",
                "",
                table(report),
            ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the section only; leave the docs")
    made = section()
    if parser.parse_args().print:
        print(made)
        return
    print(made)
    text = DOC.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC}: no {BEGIN} … {END} markers")
    DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{made}\n{END}", text))


if __name__ == "__main__":
    main()
