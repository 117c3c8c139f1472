"""nox sessions for runner: `nox --list` shows them; `nox` alone runs the fast quality gates.

The TensorFlow matrix installs each release (the `tensorflow` wheel runs on CPU) into its own
environment and runs the whole test suite there: `nox -s "tests(3.11-tf2.16)"`; Keras 2 in
`nox -s "legacy_keras(tf2.15)"` and `nox -s "legacy_keras(tf2.21-tf-keras)"`. Each session records its
outcome under .nox/outcomes/; `nox -s support_matrix` turns the records into docs/support-matrix.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import nox
from packaging.requirements import Requirement
from packaging.version import Version

nox.needs_version = ">=2025.2.9"  # nox.project.python_versions
# uv where it is installed (it resolves and installs in seconds), else the standard library's venv.
nox.options.default_venv_backend = "uv|venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck"]

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)  # from the classifiers
# pyproject's [dependency-groups] test: what the suite needs besides the project and its extras.
TEST_GROUP = nox.project.dependency_groups(PYPROJECT, "test")


def tensorflow_releases(dependencies: list[str]) -> list[str]:
    """The TensorFlow minor releases ("2.15", ...) the project's `tensorflow` requirement admits.

    pyproject.toml's `tensorflow>=2.15,<2.22` is the one place the supported range is written.
    A release counts when the requirement admits any of its patch versions.
    """
    (requirement,) = [r for r in map(Requirement, dependencies) if r.name == "tensorflow"]
    releases = [
        f"2.{minor}"
        for minor in range(100)
        if any(requirement.specifier.contains(f"2.{minor}.{patch}") for patch in range(20))
    ]
    if not releases or releases[-1] == "2.99":
        raise ValueError(f"{requirement}: expected a bounded range such as tensorflow>=2.15,<2.22")
    return releases


TENSORFLOW = tensorflow_releases(PYPROJECT["project"]["dependencies"])
NEWEST = TENSORFLOW[-1]
KERAS_3_FROM = Version("2.16")  # TensorFlow 2.15's tf.keras is Keras 2; from 2.16 Keras 3 (or tf-keras)
# The Python versions each TensorFlow release publishes wheels for (checked on PyPI, 2026-11): a fact
# about TensorFlow, not a choice of ours. A release the range admits must be listed here.
TENSORFLOW_PYTHONS = {
    "2.15": ("3.10", "3.11"),
    "2.16": ("3.10", "3.11", "3.12"),
    "2.17": ("3.10", "3.11", "3.12"),
    "2.18": ("3.10", "3.11", "3.12"),
    "2.19": ("3.10", "3.11", "3.12"),
    "2.20": ("3.10", "3.11", "3.12", "3.13"),
    "2.21": ("3.10", "3.11", "3.12", "3.13"),
}


def _wheel_pythons(tensorflow: str) -> tuple[str, ...]:
    if tensorflow not in TENSORFLOW_PYTHONS:
        raise ValueError(
            f"pyproject.toml admits TensorFlow {tensorflow}: add the Python versions it has wheels for "
            "to TENSORFLOW_PYTHONS in noxfile.py"
        )
    return TENSORFLOW_PYTHONS[tensorflow]


MATRIX = [
    (py, tf) for tf in TENSORFLOW if Version(tf) >= KERAS_3_FROM for py in _wheel_pythons(tf) if py in PYTHONS
]
# Keras 2: the releases whose tf.keras is Keras 2 (2.15), and the newest release through tf-keras.
LEGACY = [(tf, False) for tf in TENSORFLOW if Version(tf) < KERAS_3_FROM] + [(NEWEST, True)]
LEGACY_IDS = [f"tf{tf}-tf-keras" if tf_keras else f"tf{tf}" for tf, tf_keras in LEGACY]

OUTCOMES = ROOT / ".nox" / "outcomes"  # one JSON record per session, written when it ends
SUPPORT_JSON = ROOT / "docs" / "support-matrix.json"  # every session's latest record, committed
SUPPORT_MD = ROOT / "docs" / "support-matrix.md"  # rendered from SUPPORT_JSON by `support_matrix`

# Run inside a session's environment: the versions installed there, without importing TensorFlow.
VERSIONS_SCRIPT = """
import importlib.metadata as m, json, platform
def v(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print(json.dumps({"python": platform.python_version(), "tensorflow": v("tensorflow"),
                  "keras": v("keras"), "tf_keras": v("tf-keras")}))
"""


def _tests(
    session: nox.Session, tensorflow: str, *pytest_args: str, env: dict[str, str] | None = None
) -> None:
    """Install TensorFlow `tensorflow` (a version prefix), the project, run pytest, record the outcome."""
    junit = Path(session.create_tmp()) / "junit.xml"
    junit.unlink(missing_ok=True)  # a reused environment keeps the last run's file
    versions: dict[str, Any] = {}
    try:
        session.install(f"tensorflow=={tensorflow}.*")
        # The release named again: without it pip upgrades TensorFlow to satisfy the newest onnx and
        # onnxruntime (measured: the export extra turned tf2.16's environment into 2.21's).
        session.install("-e", ".[ray,mlflow,export,optuna]", f"tensorflow=={tensorflow}.*", *TEST_GROUP)
        versions = _installed_versions(session)
        session.run("python", "-m", "runner", "env", env=env)  # the versions found, and whether supported
        session.run("python", "-m", "pytest", f"--junitxml={junit}", *pytest_args, *session.posargs, env=env)
    finally:
        if session.posargs:  # `nox -s ... -- -k x`: not the whole suite, so not the session's outcome
            session.log("outcome not recorded for the support matrix: pytest arguments narrow the suite")
        else:
            outcome, passed = _pytest_summary(junit)
            _record(session, outcome, passed, **_keras_trained(versions, env))


def _installed_versions(session: nox.Session) -> dict[str, Any]:
    output = session.run("python", "-c", VERSIONS_SCRIPT, silent=True)
    assert isinstance(output, str)
    versions: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return versions


def _keras_trained(versions: dict[str, Any], env: dict[str, str] | None) -> dict[str, str]:
    """Python, the TensorFlow release and the Keras that trains with it, as the support matrix shows them."""
    tensorflow = versions.get("tensorflow")
    if not tensorflow:
        return {}
    if (env or {}).get("TF_USE_LEGACY_KERAS") == "1":
        keras = f"tf-keras {versions['tf_keras']}"
    elif Version(tensorflow) < KERAS_3_FROM:
        keras = f"{versions['keras']} (`tf.keras`)"
    else:
        keras = str(versions["keras"])
    return {"python": versions["python"], "tensorflow": tensorflow, "keras": keras}


def _pytest_summary(junit: Path) -> tuple[str, bool]:
    """(pytest's summary line, whether it passed) from the JUnit XML file pytest wrote."""
    if not junit.is_file():
        return "no test results: the session failed before pytest finished", False
    root = ElementTree.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, f"{junit}: no <testsuite>"
    count = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    parts = [(count["failures"], "failed"), (passed, "passed"), (count["skipped"], "skipped")]
    parts.append((count["errors"], "error" if count["errors"] == 1 else "errors"))  # as pytest says it
    seconds = float(suite.get("time", "0"))
    duration = f"{seconds:.2f}s" + (f" ({datetime.timedelta(seconds=int(seconds))})" if seconds >= 60 else "")
    summary = ", ".join(f"{n} {word}" for n, word in parts if n) or "no tests ran"
    return f"{summary} in {duration}", count["failures"] + count["errors"] == 0 and passed > 0


def _commit() -> str:
    """The short commit the session ran at; "-dirty" when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/support-matrix.*"
    )
    return f"{commit}-dirty" if changed else commit


def _record(session: nox.Session, outcome: str, passed: bool, **fields: str) -> None:
    """Write this session's outcome to .nox/outcomes/ (`support_matrix` collects it from there)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    record = {
        "session": session.name,
        "python": session.python,
        "tensorflow": "—",
        "keras": "—",
        "date": now.date().isoformat(),
        "commit": _commit(),
        "outcome": outcome,
        "passed": passed,
        "note": "",
        "recorded_by": "nox",
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "recorded_at": now.isoformat(timespec="seconds"),
    }
    record.update(fields)
    OUTCOMES.mkdir(parents=True, exist_ok=True)
    filename = re.sub(r"[^\w.-]+", "_", session.name) + ".json"  # tests(3.11-tf2.21): tests_3.11-tf2.21_.json
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    (OUTCOMES / filename).write_text(text, encoding="utf-8")


@nox.session(default=False)
@nox.parametrize(("python", "tensorflow"), MATRIX, ids=[f"{py}-tf{tf}" for py, tf in MATRIX])
def tests(session: nox.Session, tensorflow: str) -> None:
    """The whole test suite on one TensorFlow release (Keras 3) and Python version."""
    _tests(session, tensorflow)


@nox.session(python="3.11", default=False)
@nox.parametrize(("tensorflow", "tf_keras"), LEGACY, ids=LEGACY_IDS)
def legacy_keras(session: nox.Session, tensorflow: str, tf_keras: bool) -> None:
    """Keras 2: TensorFlow 2.15's tf.keras, or the newest release with tf-keras and TF_USE_LEGACY_KERAS=1."""
    if not tf_keras:
        _tests(session, tensorflow)
    else:
        session.install(f"tf-keras=={tensorflow}.*")  # the tf-keras release of the same minor version
        _tests(session, tensorflow, env={"TF_USE_LEGACY_KERAS": "1"})


@nox.session(python="3.11", default=False)
def properties(session: nox.Session) -> None:
    """Every hypothesis test (property and fuzz) with 40x the examples (profile 'thorough')."""
    # `hypothesis` is the marker Hypothesis' pytest plugin puts on every @given test.
    _tests(session, NEWEST, "--hypothesis-profile=thorough", "-m", "hypothesis")


def _gate(session: nox.Session, *commands: tuple[str, ...]) -> None:
    """Run quality-gate commands and record whether they all passed."""
    try:
        for command in commands:
            session.run(*command)
    except nox.command.CommandFailed:
        _record(session, "failed", False)
        raise
    _record(session, "passed", True)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    paths = ("runner", "tests", "benchmarks", "noxfile.py", "examples")
    _gate(session, ("ruff", "check", *paths), ("ruff", "format", "--check", *paths))


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy on runner/ (spec and checks fully typed)."""
    # The typed dependencies only: TensorFlow and Keras are untyped, and take a minute to install.
    # pytest and hypothesis: runner's pytest plugin and runner.testing import them (typed).
    session.install(
        "mypy", "pydantic>=2.6", "typer", "rich", "numpy", "tomli-w", "pytest>=8", "hypothesis>=6.100"
    )
    _gate(session, ("mypy", "runner"))


# ---------------------------------------------------------------- the support matrix document


def session_names() -> list[str]:
    """Every session this file defines, in the order the support matrix lists them."""
    return [
        *(f"tests({py}-tf{tf})" for py, tf in MATRIX),
        *(f"legacy_keras({name})" for name in LEGACY_IDS),
        "properties",
        "lint",
        "typecheck",
    ]


def merge_records(kept: dict[str, dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each session's latest record (by `recorded_at`, an ISO date or time) from both."""
    merged = dict(kept)
    for record in new:
        old = merged.get(record["session"])
        if old is None or record["recorded_at"] >= old["recorded_at"]:
            merged[record["session"]] = record
    return merged


def render_support_matrix(records: dict[str, dict[str, Any]], sessions: list[str]) -> str:
    """docs/support-matrix.md: a row per session of the matrix, then records of sessions it no longer has."""
    lines = [
        "# Support matrix: recorded outcomes",
        "",
        "Generated by `nox -s support_matrix` from `docs/support-matrix.json`; do not edit by hand.",
        "Each nox session records its pytest summary line under `.nox/outcomes/` when it ends;",
        '`nox -s "tests(3.11-tf2.21)" support_matrix` runs one and then updates this page. What is',
        "supported, and why, is in [supported-versions.md](supported-versions.md).",
        "",
        f"{sum(1 for s in sessions if records.get(s, {}).get('passed'))} of {len(sessions)} sessions "
        f"passed at their latest record; {sum(1 for s in sessions if s not in records)} not run yet.",
        "",
        "| nox session | Python | TensorFlow / Keras | date, commit | outcome | recorded by |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_row(name, records.get(name)) for name in sessions]
    stale = sorted(set(records) - set(sessions))
    if stale:
        lines += ["", "Sessions no longer in the matrix (their last record):", ""]
        lines += ["| nox session | Python | TensorFlow / Keras | date, commit | outcome | recorded by |"]
        lines += ["|---|---|---|---|---|---|", *(_row(name, records[name]) for name in stale)]
    return "\n".join(lines) + "\n"


def _row(name: str, record: dict[str, Any] | None) -> str:
    if record is None:
        return f"| `{name}` | | | | not run yet | |"
    versions = "—" if record["tensorflow"] == "—" else f"{record['tensorflow']} / {record['keras']}"
    mark = "✓" if record["passed"] else "✗"
    note = f" ({record['note']})" if record["note"] else ""
    return (
        f"| `{name}` | {record['python']} | {versions} | {record['date']}, {record['commit']} "
        f"| {mark} **{record['outcome']}**{note} | {record['recorded_by']} ({record['machine']}) |"
    )


@nox.session(python=False, default=False)
def support_matrix(session: nox.Session) -> None:
    """Merge the sessions' recorded outcomes into docs/support-matrix.json; render docs/support-matrix.md."""
    kept = json.loads(SUPPORT_JSON.read_text(encoding="utf-8")) if SUPPORT_JSON.is_file() else []
    new = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(OUTCOMES.glob("*.json"))]
    records = merge_records({record["session"]: record for record in kept}, new)
    names = session_names()
    rank = {name: i for i, name in enumerate(names)}  # the matrix's order; sessions it lost go last
    ordered = sorted(records.values(), key=lambda r: (rank.get(r["session"], len(rank)), r["session"]))
    SUPPORT_JSON.write_text(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    SUPPORT_MD.write_text(render_support_matrix(records, names), encoding="utf-8")
    session.log(f"{len(new)} new record(s); wrote {SUPPORT_MD.relative_to(ROOT)}")
