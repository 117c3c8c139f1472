"""Fuzzed inputs: any bytes, any TOML document, any valid spec with random values in random fields
ends as a valid plan or one SpecError (exit 2 through the CLI), never another exception."""

from __future__ import annotations

import datetime as dt
import math

import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from benchmarks import fuzz_specs
from runner.cli import app
from runner.spec import SpecError, load_plan

KEYS = st.sampled_from(fuzz_specs.KEYS)
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.sampled_from(["float32", "mixed_float16", "seed_cnn", "resnet", "shapes", "adam", "../x"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=6)
VALID = fuzz_specs.VALID


def outcome(tmp_path, data: bytes) -> str:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    try:
        load_plan(path)
    except SpecError as exc:
        assert str(exc).strip()
        return "spec_error"
    return "valid"


def toml_bytes(document: dict) -> bytes:
    try:
        return tomli_w.dumps(document).encode()
    except (TypeError, ValueError):
        return repr(document).encode()


@given(st.binary(max_size=300))
def test_any_bytes(tmp_path_factory, data):
    outcome(tmp_path_factory.mktemp("f"), data)


@given(DOCUMENTS)
def test_any_toml_document(tmp_path_factory, document):
    outcome(tmp_path_factory.mktemp("f"), toml_bytes(document))


@given(st.lists(st.tuples(st.sampled_from(sorted(VALID)), KEYS, VALUES), min_size=1, max_size=3))
def test_any_valid_spec_with_random_values_in_random_fields(tmp_path_factory, changes):
    document = {k: dict(v) if isinstance(v, dict) else v for k, v in VALID.items()}
    for section, key, value in changes:
        if isinstance(document[section], dict):
            document[section][key] = value
        else:
            document[section] = value
    result = outcome(tmp_path_factory.mktemp("f"), toml_bytes(document))
    finite = all(not (isinstance(v, float) and not math.isfinite(v)) for *_, v in changes)
    assert result == "spec_error" or finite


def test_the_cli_answers_fuzz_with_exit_2_and_no_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    for data in (b"\x00\xff\xfe", b"name = 1e999", b'name="x"\n[model]\nkind = {a = [1, {}]}', b"[[sweep]]"):
        path.write_bytes(data)
        result = CliRunner().invoke(app, ["validate", str(path)])
        assert result.exit_code == 2, (data, result.output)
        assert "Traceback" not in result.output and str(path) in result.stderr
