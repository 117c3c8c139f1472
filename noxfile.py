"""nox sessions: `nox --list` shows them. The TensorFlow matrix comes with a later issue."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


def _tests(session: nox.Session, *pytest_args: str) -> None:
    """Install the project with its dev extra and run pytest with the given arguments."""
    session.install("-e", ".[dev]")
    session.run("pytest", *pytest_args, *session.posargs)


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The default test suite (the README's test command) in a fresh environment."""
    _tests(session)


@nox.session(python="3.11", default=False)
def properties(session: nox.Session) -> None:
    """The hypothesis property tests with many more examples."""
    _tests(session, "--hypothesis-profile=thorough", "-k", "property or any_")
