"""examples/user-project, the worked example of docs/testing.md: a user's repository whose tests pass
as its CI line runs them, and whose three kinds of test (its specs as items, the invariants of its
factory under every policy, the exact resume) each fail when its model is given a known bug.

In-process pytest runs (pytester): each subprocess would pay a TensorFlow import."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytest_plugins = ["pytester"]
EXAMPLE = ROOT / "examples" / "user-project"
FACTORIES = "my_models/factories.py"
TEST_FILE = "tests/test_my_models.py"


def ci_arguments() -> list[str]:
    """The arguments of the pytest line of the example's ci.sh, which the docs show."""
    (line,) = [x for x in (EXAMPLE / "ci.sh").read_text().splitlines() if x.startswith("python -m pytest")]
    return shlex.split(line)[3:]


# The tutorial's order, as a factory can have it: the model built (under float32), the policy set after.
POLICY_AFTER_BUILD = """

def small_cnn(input_shape, num_classes, width=16):
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    model = _small_cnn(input_shape, num_classes, width)
    keras.mixed_precision.set_global_policy(policy)
    return model
"""
BUGS = {  # each known bug: what of the factory's source it replaces, and with what
    "float16_variable": ('name="conv1"', 'dtype="float16", name="conv1"'),
    "float16_softmax": ('dtype="float32", name="probabilities"', 'name="probabilities"'),
    "policy_after_build": ("def small_cnn(", "def _small_cnn("),
}


def with_bug(source: str, bug: str) -> str:
    """The example's factory module with one known mistake in it."""
    old, new = BUGS[bug]
    assert source.count(old) == 1, f"{FACTORIES} changed: {old!r} is no longer there once"
    return source.replace(old, new) + (POLICY_AFTER_BUILD if bug == "policy_after_build" else "")


def run_example(pytester: pytest.Pytester, bug: str | None = None) -> dict[str, ET.Element]:
    """The example copied into pytester's folder (its factory given `bug`), run by its CI line;
    each test case of the JUnit report by its name."""
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True)
    if bug is not None:
        factories = pytester.path / FACTORIES
        factories.write_text(with_bug(factories.read_text(), bug))
    result = pytester.runpytest_inprocess(*ci_arguments(), "-p", "no:randomly", "-p", "no:cacheprovider")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    report = ET.parse(pytester.path / "test-results.xml").getroot()
    return {case.get("name"): case for case in report.iter("testcase")}


def failure(case: ET.Element) -> str | None:
    found = case.find("failure")
    return None if found is None else " ".join((found.text or "").split())


@pytest.mark.slow  # trains: the spec with run_in_tests, and the resume test's three runs
def test_the_example_project_passes_its_ci_line(pytester, inprocess_pytest):
    cases = run_example(pytester)
    assert sorted(cases) == [
        "small-cnn-accuracy",
        "small-cnn[mixed_bfloat16]",
        "small-cnn[mixed_float16]",
        "test_an_interrupted_run_resumes_exactly",
        "test_the_factory_keeps_the_invariants_under_every_policy",
    ]
    assert {name: failure(case) for name, case in cases.items()} == dict.fromkeys(cases)
    # The spec with run_in_tests trained into pytest's temporary folder and passed its checks there.
    (run_dir,) = [
        p.get("value") for p in cases["small-cnn-accuracy"].iter("property") if p.get("name") == "run_dir"
    ]
    report = json.loads((Path(run_dir) / "report.json").read_text())
    assert Path(run_dir).is_relative_to(os.environ["PYTEST_DEBUG_TEMPROOT"])  # pytest's, as tmp_path
    assert not Path(run_dir).is_relative_to(pytester.path)  # not in the repository (nor its reports/)
    assert report["status"] == "completed" and report["metrics"]["test_accuracy"] >= 0.35


# What each kind of test says about each bug: the layer or variable it names.
NAMED = {
    "float16_variable": {"spec": "conv1/kernel is float16", "factory": "conv1/kernel is float16"},
    "float16_softmax": {
        "spec": "probabilities (Activation, softmax) computes in float16",  # runner's cast comes too late
        "factory": "expected a float32 model output; got float16 from probabilities",
    },
    "policy_after_build": {
        "spec": "conv1 (Conv2D) computes in float32",
        "factory": "conv1 (Conv2D) computes in float32",
    },
}


@pytest.mark.slow  # the example's whole pytest session in-process: six runner checks per bug
@pytest.mark.parametrize("bug", sorted(NAMED))
def test_each_kind_of_test_in_the_example_fails_on_a_known_bug(pytester, inprocess_pytest, bug):
    """None of these trains: each run stops at its preflight (or the audit) on the bug."""
    cases = run_example(pytester, bug)
    named = NAMED[bug]
    spec_item = failure(cases["small-cnn[mixed_float16]"])
    assert spec_item is not None and named["spec"] in spec_item and "Fix:" in spec_item
    invariants = failure(cases["test_the_factory_keeps_the_invariants_under_every_policy"])
    assert invariants is not None and named["factory"] in invariants
    resume = failure(cases["test_an_interrupted_run_resumes_exactly"])
    assert resume is not None and "the uninterrupted run: expected completed; it ended failed" in resume
    assert named["spec"] in resume
    trained = failure(cases["small-cnn-accuracy"])  # run_in_tests: a run, stopped by its preflight
    assert trained is not None and named["spec"] in trained and "run directory: " in trained


def test_the_docs_show_the_examples_own_code_and_ci_line():
    """docs/testing.md quotes the example: what it quotes is what runs."""
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    quoted = [block for block in page.split("```python\n")[1:] if "def build(policy)" in block]
    assert quoted and quoted[0].split("```")[0] in (EXAMPLE / TEST_FILE).read_text(encoding="utf-8")
    assert f"python -m pytest {shlex.join(ci_arguments())}\n" in page
