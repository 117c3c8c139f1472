"""noxfile.py: the TensorFlow matrix comes from pyproject's range, and the support matrix from records."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from runner import compat
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def noxfile():
    spec = importlib.util.spec_from_file_location("noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RANGES = {
    "project": ("tensorflow>=2.15,<2.22", ["2.15", "2.16", "2.17", "2.18", "2.19", "2.20", "2.21"]),
    "patch_bounds": ("tensorflow>=2.15.1,<=2.17.0", ["2.15", "2.16", "2.17"]),
    "compatible_release": ("tensorflow~=2.16.0", ["2.16"]),
    "excluded_release": ("tensorflow>=2.16,<2.19,!=2.17.*", ["2.16", "2.18"]),
}


@pytest.mark.parametrize(("requirement", "releases"), RANGES.values(), ids=RANGES.keys())
def test_tensorflow_releases_are_those_the_requirement_admits(noxfile, requirement, releases):
    assert noxfile.tensorflow_releases(["numpy>=1.26", requirement]) == releases


def test_an_unbounded_tensorflow_range_is_refused(noxfile):
    with pytest.raises(ValueError, match="expected a bounded range"):
        noxfile.tensorflow_releases(["tensorflow>=2.15"])


def _tensorflow_requirement(noxfile) -> str:
    (requirement,) = [d for d in noxfile.PYPROJECT["project"]["dependencies"] if d.startswith("tensorflow")]
    return requirement


def test_the_matrix_tests_every_release_of_pyprojects_range(noxfile):
    releases = noxfile.tensorflow_releases([_tensorflow_requirement(noxfile)])
    tested = {tf for _, tf in noxfile.MATRIX} | {tf for tf, _ in noxfile.LEGACY}
    assert sorted(tested, key=noxfile.Version) == releases == noxfile.TENSORFLOW


def test_runner_states_the_range_the_matrix_tests(noxfile):
    # runner/compat.py still writes the range down itself; this keeps the copies equal.
    first, *_, last = (tuple(int(part) for part in tf.split(".")) for tf in noxfile.TENSORFLOW)
    keras_3_from = tuple(noxfile.KERAS_3_FROM.release)
    assert (first, last) == compat.TESTED_TENSORFLOW
    assert keras_3_from == compat.KERAS_3_FROM
    too_old = compat.support_status("2.0.0", "2.0.0", False)[1]
    assert f'pip install "{_tensorflow_requirement(noxfile)}"' in too_old


def test_docs_state_pyprojects_tensorflow_range(noxfile):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = re.findall(r"TensorFlow (\d+\.\d+)–(\d+\.\d+)", readme)  # "TensorFlow 2.15–2.21"
    assert stated == [(noxfile.TENSORFLOW[0], noxfile.NEWEST)]
    versions = (ROOT / "docs" / "supported-versions.md").read_text(encoding="utf-8")
    assert f"`{_tensorflow_requirement(noxfile)}`" in versions


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="{errors}" failures="{failures}" skipped="{skipped}" tests="{tests}"
 time="{time}"></testsuite></testsuites>"""

SUMMARIES = {
    "all_passed": (dict(tests=233, failures=0, errors=0, skipped=0, time=1803.21), True),
    "some_failed": (dict(tests=233, failures=2, errors=0, skipped=1, time=44.5), False),
    "an_error": (dict(tests=8, failures=0, errors=1, skipped=0, time=150.0), False),
    "nothing_ran": (dict(tests=0, failures=0, errors=0, skipped=0, time=0.1), False),
}
SUMMARY_LINES = {
    "all_passed": "233 passed in 1803.21s (0:30:03)",
    "some_failed": "2 failed, 230 passed, 1 skipped in 44.50s",
    "an_error": "7 passed, 1 error in 150.00s (0:02:30)",
    "nothing_ran": "no tests ran in 0.10s",
}


@pytest.mark.parametrize(("name", "counts", "passed"), [(k, *v) for k, v in SUMMARIES.items()], ids=SUMMARIES)
def test_pytest_summary_is_read_from_junit_xml(noxfile, tmp_path, name, counts, passed):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT.format(**counts), encoding="utf-8")
    assert noxfile._pytest_summary(junit) == (SUMMARY_LINES[name], passed)


def test_a_session_without_junit_xml_did_not_pass(noxfile, tmp_path):
    outcome, passed = noxfile._pytest_summary(tmp_path / "missing.xml")
    assert not passed and "failed before pytest finished" in outcome


def _record(session: str, recorded_at: str, outcome: str = "233 passed", passed: bool = True) -> dict:
    return {
        "session": session,
        "python": "3.11",
        "tensorflow": "2.21.0",
        "keras": "3.15.1",
        "date": recorded_at[:10],
        "commit": "abc1234",
        "outcome": outcome,
        "passed": passed,
        "note": "",
        "recorded_by": "nox",
        "machine": "Linux x86_64, 2 CPUs",
        "recorded_at": recorded_at,
    }


def test_merge_keeps_each_sessions_latest_record(noxfile):
    kept = {"lint": _record("lint", "2026-11-28"), "properties": _record("properties", "2026-11-30T10:00:00")}
    new = [_record("lint", "2026-11-29T09:00:00", "failed", False), _record("properties", "2026-11-29")]
    merged = noxfile.merge_records(kept, new)
    assert merged["lint"]["outcome"] == "failed"  # newer than the kept one
    assert merged["properties"] == kept["properties"]  # the kept one is newer


def test_support_matrix_lists_every_session_and_marks_the_missing_and_the_failed(noxfile):
    records = {
        "lint": _record("lint", "2026-11-29"),
        "typecheck": _record("typecheck", "2026-11-29", "failed", False),
        "tests(3.9-tf2.14)": _record("tests(3.9-tf2.14)", "2026-01-01"),
    }
    page = noxfile.render_support_matrix(records, ["lint", "typecheck", "properties"])
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")}
    assert list(rows) == ["`lint`", "`typecheck`", "`properties`", "`tests(3.9-tf2.14)`"]
    assert "✓ **233 passed**" in rows["`lint`"] and "✗ **failed**" in rows["`typecheck`"]
    assert "not run yet" in rows["`properties`"]
    assert "1 of 3 sessions passed at their latest record; 1 not run yet." in page
    assert page.index("no longer in the matrix") < page.index("tests(3.9-tf2.14)")


def test_committed_support_matrix_is_rendered_from_its_records(noxfile):
    # docs/support-matrix.md is generated: `nox -s support_matrix` rewrites it from the JSON.
    records = json.loads((ROOT / "docs" / "support-matrix.json").read_text(encoding="utf-8"))
    by_session = {record["session"]: record for record in records}
    expected = noxfile.render_support_matrix(by_session, noxfile.session_names())
    assert (ROOT / "docs" / "support-matrix.md").read_text(encoding="utf-8") == expected


def test_the_typecheck_session_installs_every_typed_module_runner_imports():
    """`nox -s typecheck` runs mypy in a fresh environment of its own: every third-party module that
    runner/ imports is installed there, or listed in pyproject's mypy overrides as untyped (it failed
    on pytest, hypothesis and absl while CI, which runs mypy in the dev environment, stayed green)."""
    import ast
    import contextlib
    import fnmatch
    import sys
    import tomllib

    imported = set()
    for path in (ROOT / "runner").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "runner"}
    session = next(
        node
        for node in ast.walk(ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name == "typecheck"
    )
    (install,) = [
        node
        for node in ast.walk(session)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "install"
    ]
    installed = {re.split(r"[<>=!~\[]", arg.value)[0].replace("-", "_") for arg in install.args}
    overrides = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"][
        "overrides"
    ]
    # mypy's "package.*" covers the package itself too
    untyped = [
        p.removesuffix(".*") for o in overrides if o.get("ignore_missing_imports") for p in o["module"]
    ]
    from importlib import metadata

    def requirement_name(text: str) -> str:
        return re.split(r"[<>=!~\[; ]", text)[0].lower().replace("-", "_")

    # what pip installs with them (pydantic brings pydantic_core)
    for name in list(installed):
        with contextlib.suppress(metadata.PackageNotFoundError):
            installed |= {requirement_name(r) for r in metadata.requires(name) or [] if "extra ==" not in r}
    owners = metadata.packages_distributions()
    missing = sorted(
        name
        for name in third_party
        if not {name, *(requirement_name(d) for d in owners.get(name, []))} & installed
        and not any(fnmatch.fnmatch(name, p) for p in untyped)
    )
    assert missing == [], f"installed in nox -s typecheck: {sorted(installed)}"
