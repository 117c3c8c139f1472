"""Optuna, as runner opens it: the extra's check, a study's storage (SQLite, a journal file, an RDB
URL) and its pruner. Shared by the drivers (studies.py) and each trial's process (training/trial.py);
Optuna itself is imported only when called.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from runner.spec import BadInput

INSTALL = "pip install -e '.[optuna]'"
SQLITE_TIMEOUT_S = 60  # SQLite's wait for a lock another driver or trial holds


class StudyError(BadInput):
    """A study that cannot be opened or continued: the file, what was expected, what was found."""


def require_optuna() -> None:
    """Before a study starts: Optuna is the `optuna` extra (found without importing it)."""
    if importlib.util.find_spec("optuna") is None:
        raise BadInput(f"a [sweep] with trials is run by Optuna, which is not installed: {INSTALL}")


def load_optuna() -> Any:
    require_optuna()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # runner prints each trial itself
    return optuna


# ---------------------------------------------------------------- storage, sampler, pruner


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """The storage as Optuna's URL, or `journal:PATH` for a journal file: SQLite in the sweep
    directory by default."""
    if storage in (None, "sqlite"):
        return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    assert storage is not None
    if storage == "journal":
        return f"journal:{(sweep_dir / 'study.journal').resolve()}"
    if storage.startswith("journal:"):
        return f"journal:{Path(storage[len('journal:') :]).expanduser().resolve()}"
    return storage


def open_storage(url: str) -> Any:
    """Optuna's storage for `url`: a journal file (NFS-safe lock), or an RDB URL (SQLite waits
    SQLITE_TIMEOUT_S for a lock, not forever)."""
    optuna = load_optuna()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = url[len("journal:") :]
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's many errors: a URL the user must fix
        raise StudyError(
            f"sweep.storage: cannot open {url!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            'expected "sqlite", "journal", "journal:PATH" or a reachable Optuna RDB URL'
        ) from None


def make_pruner(pruning: dict[str, Any]) -> Any:
    optuna = load_optuna()
    kind = pruning.get("kind", "none")
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruning.get("startup_trials", 4), n_warmup_steps=pruning.get("warmup_epochs", 1)
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()
