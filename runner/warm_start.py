"""What runner/processes.py's fork server imports once, before it forks any `runner` process: runner's
modules, TensorFlow and Keras, without starting TensorFlow's runtime (no device probed, no thread
pool, no eager context), so that a forked process inherits code and not state.

`READY` says whether that held once everything was imported: a server where it does not (a future
import that starts the runtime) still serves, but each process it forks replaces itself with a cold
`python -m runner` at once (runner/processes.py), since forking a started runtime is not safe.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil

import runner
from runner import compat

# Not what a run uses: the entry point, this module, users' test helpers (pytest, hypothesis)
NOT_FOR_RUNS = ("runner.__main__", "runner.warm_start", "runner.pytest_plugin", "runner.testing")


def _import_everything() -> bool:
    tf = compat.import_tensorflow()
    _ = tf.keras.__name__  # tf.keras is lazy: the Keras TensorFlow drives (or tf-keras), imported now
    for module in pkgutil.walk_packages(runner.__path__, "runner."):
        if not module.name.startswith(NOT_FOR_RUNS):
            with contextlib.suppress(ImportError):  # an extra not installed (ray): imported if used
                importlib.import_module(module.name)
    for name in ("matplotlib.figure", "matplotlib.backends.backend_svg"):  # every run's plots: 0.4 s
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    return not compat.runtime_started()


try:
    READY = _import_everything()
except Exception:  # TensorFlow that does not import here: each child imports it cold and says why
    READY = False
