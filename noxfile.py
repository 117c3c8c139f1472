"""nox sessions for runner: `nox --list` shows them; `nox` alone runs the fast quality gates.

The TensorFlow matrix installs each release (the `tensorflow` wheel runs on CPU) into its own
environment and runs the whole test suite there: `nox -s "tests(3.11-tf2.16)"`; Keras 2 in
`nox -s "legacy_keras(tf2.15)"` and `nox -s "legacy_keras(tf2.21-tf-keras)"`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck"]

PYPROJECT = tomllib.loads(Path("pyproject.toml").read_text())
# The project's Python versions, from its classifiers ("Programming Language :: Python :: 3.11").
PYTHONS = [
    m.group(1)
    for c in PYPROJECT["project"]["classifiers"]
    if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
]
# The Python versions each TensorFlow release publishes wheels for (checked on PyPI, 2026-11).
TENSORFLOW_PYTHONS = {
    "2.16": ("3.10", "3.11", "3.12"),
    "2.17": ("3.10", "3.11", "3.12"),
    "2.18": ("3.10", "3.11", "3.12"),
    "2.19": ("3.10", "3.11", "3.12"),
    "2.20": ("3.10", "3.11", "3.12", "3.13"),
    "2.21": ("3.10", "3.11", "3.12", "3.13"),
}
MATRIX = [(py, tf) for tf, pys in TENSORFLOW_PYTHONS.items() for py in pys if py in PYTHONS]


def _tests(
    session: nox.Session, tensorflow: str, *pytest_args: str, env: dict[str, str] | None = None
) -> None:
    """Install TensorFlow `tensorflow` (a version prefix, or a requirement), the project, and run pytest."""
    requirement = tensorflow if any(c in tensorflow for c in "<>=") else f"tensorflow=={tensorflow}.*"
    session.install(requirement)
    session.install("-e", ".[dev]")
    session.run("python", "-m", "runner", "env", env=env)  # the versions found, and whether supported
    session.run("python", "-m", "pytest", *pytest_args, *session.posargs, env=env)


@nox.session(default=False)
@nox.parametrize(("python", "tensorflow"), MATRIX, ids=[f"{py}-tf{tf}" for py, tf in MATRIX])
def tests(session: nox.Session, tensorflow: str) -> None:
    """The whole test suite on one TensorFlow release (Keras 3) and Python version."""
    _tests(session, tensorflow)


@nox.session(python="3.11", default=False)
@nox.parametrize("variant", ["tf2.15", "tf2.21-tf-keras"], ids=["tf2.15", "tf2.21-tf-keras"])
def legacy_keras(session: nox.Session, variant: str) -> None:
    """Keras 2: TensorFlow 2.15's tf.keras, or TensorFlow 2.21 with tf-keras and TF_USE_LEGACY_KERAS=1."""
    if variant == "tf2.15":
        _tests(session, "2.15")
    else:
        session.install("tf-keras==2.21.*")  # the tf-keras release of the same minor version
        _tests(session, "2.21", env={"TF_USE_LEGACY_KERAS": "1"})


@nox.session(python="3.11", default=False)
def properties(session: nox.Session) -> None:
    """Every hypothesis test (property and fuzz) with 40x the examples (profile 'thorough')."""
    # `hypothesis` is the marker Hypothesis' pytest plugin puts on every @given test.
    _tests(session, "2.21", "--hypothesis-profile=thorough", "-m", "hypothesis")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", "runner", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "runner", "tests", "benchmarks", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy on runner/ (spec and checks fully typed)."""
    # The typed dependencies only: TensorFlow and Keras are untyped, and take a minute to install.
    session.install("mypy", "pydantic>=2.6", "typer", "rich", "numpy", "tomli-w")
    session.run("mypy", "runner")
