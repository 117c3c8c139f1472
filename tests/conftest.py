"""Shared fixtures: Keras' global state is restored after every test, so tests pass in any order."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# A larger example count for `nox -s properties`; the default suite stays fast.
settings.register_profile("default", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile("default")

ROOT = Path(__file__).resolve().parent.parent

# On a GPU machine TensorFlow reserves nearly all GPU memory for the first process that uses it: this
# pytest process (its in-process runs) would starve the `runner` processes tests start, which inherit
# this environment, as would four concurrent runs each other. Allocate on demand; a CPU ignores it.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


@pytest.fixture(autouse=True)
def restore_global_state():
    """Save and restore the dtype policy (if Keras is loaded) and the Python/NumPy RNG state."""
    py_state, np_state = random.getstate(), np.random.get_state()
    policy = _policy() if "tensorflow" in sys.modules else None  # not imported: nothing to restore
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
    if "tensorflow" in sys.modules:
        from runner import compat

        with contextlib.suppress(compat.UnsupportedEnvironment):  # a test that made it unsupported
            compat.set_global_policy(policy or "float32")


def _policy():
    from runner import compat

    try:
        return compat.global_policy()
    except compat.UnsupportedEnvironment:
        return None


@pytest.fixture(autouse=True)
def isolated_keras_cache(tmp_path_factory, monkeypatch):
    """No test reads the user's Keras cache or TFDS data_dir, or downloads anything."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path_factory.mktemp("tensorflow_datasets")))
    monkeypatch.setenv("RUNNER_OFFLINE", "1")
    # A bug in report.md/report.html fails the test, instead of becoming a run's warning.
    monkeypatch.setenv("RUNNER_STRICT_DOCUMENTS", "1")
    # The suite's many runs do not test export: its fresh-process reload (a TensorFlow import, seconds
    # per run) is paid by tests/test_export.py and the quickstart test, which unset this.
    monkeypatch.setenv("RUNNER_SKIP_EXPORT", "1")
    # Measured step times (runner/preflight/speed.py) are kept apart from the user's cache, and shared by the
    # whole session (both xdist workers: their temporary folders have one parent) and the runner
    # processes its tests start: a model is timed once. A test about the cache gives its own folder.
    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(shared / "runner_cache"))


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec file from text and return its path."""

    def write(text: str, name: str = "spec.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


TINY_SPEC = """
name = "tiny"
seed = 7

[precision]
policy = "mixed_float16"

[model]
kind = "mlp"
hidden_units = [16]

[data]
source = "shapes"
batch_size = 32
train_size = 256
test_size = 64

[training]
epochs = 2
learning_rate = 0.01
"""


@pytest.fixture(scope="module")
def inprocess_pytest():
    """What an in-process pytest run (pytester) loads, loaded before it: pytester removes every module
    a run imported once the run ends, and TensorFlow, Keras and runner's own modules must stay the
    ones this process already holds (TensorFlow cannot be imported twice)."""
    import importlib
    import pkgutil

    import runner
    from runner import compat

    compat.keras()
    for module in pkgutil.walk_packages(runner.__path__, "runner."):
        if module.name not in {"runner.cluster.ray", "runner.__main__"}:  # ray: an optional extra
            importlib.import_module(module.name)


# What runner writes for others to read, each against the JSON Schema `runner schema` publishes for it
# (not pydantic's own validation: the published schema is what users' tools hold it to).
WRITTEN_FILES = {
    "report.json": "report",
    "comparison.json": "comparison",
    "sweep.json": "sweep",
    "study.json": "study",
}


@pytest.fixture(autouse=True)
def written_files_match_their_schemas(request):
    """Every report.json, comparison.json, sweep.json and export.json a test's runs wrote under its
    tmp_path validates against its published JSON Schema. Files a test wrote by hand to be broken or
    old carry no current schema_version, and are left to that test."""
    # Taken now: at teardown the tmp_path fixture is gone (its folder stays, as pytest keeps them).
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is None:
        return
    import json

    from runner.reporting.report import SCHEMAS

    found = [(p, WRITTEN_FILES[p.name]) for p in folder.rglob("*.json") if p.name in WRITTEN_FILES]
    found += [(p, "export") for p in folder.rglob("export/export.json")]
    for path, kind in found:
        try:
            written = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        current = SCHEMAS[kind].model_fields["schema_version"].default
        if isinstance(written, dict) and written.get("schema_version") == current:
            schema_validator(kind).validate(written)


@functools.cache
def schema_validator(kind: str):
    """The published JSON Schema of `kind`, checked once and compiled (75 ms a file otherwise)."""
    import jsonschema

    from runner.reporting.report import json_schema

    schema = json_schema(kind)
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)
