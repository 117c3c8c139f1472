"""runner/pytest_plugin.py: experiment specs as pytest items, and a pytest run that does not ask for
them left alone. Runs pytest in-process (pytester): a subprocess would pay a TensorFlow import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from runner.pytest_plugin import variant_id
from tests.conftest import ROOT

pytest_plugins = ["pytester"]
QUIET = ("-p", "no:cacheprovider", "-p", "no:randomly")  # no .pytest_cache; items in file order

SPEC = 'name = "{name}"\n[model]\nkind = "mlp"\nhidden_units = [8]\n[data]\nsource = "shapes"\n'
# A spec that fails at once, before TensorFlow: its data file is missing.
MISSING_DATA = 'name = "{name}"\n[data]\nsource = "npz"\npath = "no/such/file.npz"\n'
SWEEP = SPEC + '[sweep]\n"precision.policy" = ["float32", "mixed_float16"]\n'


@pytest.fixture
def project(pytester):
    """A user's repository: tests, specs at the top and in a folder, and TOML files that are not specs."""
    pytester.makepyfile(**{"tests/test_plain.py": "def test_plain():\n    assert True\n"})
    pytester.makefile(".toml", one=SPEC.format(name="one"), grid=SWEEP.format(name="grid"))
    pytester.makefile(".toml", ruff="line-length = 100\n", pyproject='[project]\nname = "x"\n')
    (pytester.path / "specs" / "more").mkdir(parents=True)
    (pytester.path / "specs" / "two.toml").write_text(SPEC.format(name="two"))
    (pytester.path / "specs" / "more" / "three.toml").write_text(SPEC.format(name="three"))
    (pytester.path / "specs" / "more" / "pyproject.toml").write_text(SPEC.format(name="not-a-spec-file"))
    return pytester


def collected(pytester, *args: str) -> list[str]:
    """The items a run would have; a collection error (a TOML taken for a spec that is not) fails."""
    result = pytester.runpytest_inprocess("--collect-only", "-q", *QUIET, *args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), result.outlines
    return sorted(line for line in result.outlines if "::" in line)


def test_a_run_that_names_no_spec_collects_none(project):
    """Plain `pytest`: the repository's tests only; no TOML file, spec or not, becomes an item."""
    assert collected(project) == ["tests/test_plain.py::test_plain"]
    project.makefile(".toml", pyproject='[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    assert collected(project) == ["tests/test_plain.py::test_plain"]  # testpaths are not named


def test_named_files_and_directories_collect_specs_and_never_pyproject(project):
    # A named directory: the spec-like TOML files directly in it (not ruff.toml, not pyproject.toml).
    assert collected(project, ".") == [
        "grid.toml::grid[float32]",
        "grid.toml::grid[mixed_float16]",
        "one.toml::one",
        "tests/test_plain.py::test_plain",
    ]
    assert collected(project, "specs") == ["specs/two.toml::two"]
    assert collected(project, "one.toml") == ["one.toml::one"]
    named = project.runpytest_inprocess("--collect-only", "pyproject.toml", *QUIET)
    assert named.ret == pytest.ExitCode.USAGE_ERROR and "not found" in named.stderr.str()  # not an item


def test_runner_specs_collects_a_whole_tree_beside_the_usual_tests(project):
    """Beside `testpaths`, or the paths named: the tree is added to what pytest collects."""
    project.makefile(".toml", pyproject='[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    assert collected(project, "tests", "--runner-specs", "specs/more") == [
        "specs/more/three.toml::three",
        "tests/test_plain.py::test_plain",
    ]
    assert collected(project, "--runner-specs", "specs") == [
        "specs/more/three.toml::three",
        "specs/two.toml::two",
        "tests/test_plain.py::test_plain",
    ]
    result = project.runpytest_inprocess("--collect-only", "--runner-specs", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--runner-specs" in result.stderr.str() and "expected a directory" in result.stderr.str()


def test_sweep_variants_are_items_that_k_and_markers_select(project):
    assert collected(project, "grid.toml", "-k", "mixed") == ["grid.toml::grid[mixed_float16]"]
    assert collected(project, ".", "-m", "runner_train") == []
    assert len(collected(project, ".", "-m", "runner_train", "--runner-train")) == 3
    assert variant_id("compare", "compare-mixed_float16") == "compare[mixed_float16]"


def test_a_bad_spec_is_one_collection_error_line_without_a_traceback(project):
    project.makefile(".toml", bad='name = "bad"\n[precision]\npolicy = "mixed_fp16"\n')
    result = project.runpytest_inprocess("bad.toml", *QUIET)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    expected = (
        "bad.toml: precision.policy: expected one of float32, mixed_float16, mixed_bfloat16, auto; "
        'got "mixed_fp16"'
    )
    assert expected in result.outlines
    assert "Traceback" not in result.stdout.str() and "pydantic" not in result.stdout.str()


def test_x_and_last_failed_work_on_spec_items(pytester):
    """Items that fail before TensorFlow loads (their data is missing): -x stops at the first, --lf
    reruns only what failed, and the failure is the spec's one message."""
    pytester.makefile(".toml", a=MISSING_DATA.format(name="a"), b=MISSING_DATA.format(name="b"))
    first = pytester.runpytest_inprocess("a.toml", "b.toml", "-x", "-p", "no:randomly")
    first.assert_outcomes(failed=1)
    assert any(line.startswith("a.toml: data.path:") for line in first.outlines), first.outlines
    again = pytester.runpytest_inprocess(".", "--lf", "-p", "no:randomly")
    again.assert_outcomes(failed=1)
    assert "rerun previous 1 failure" in again.stdout.str() and "b.toml" not in again.stdout.str()


# A pytest run in a fresh process, as a user's: what it collected, whether runner's plugin was
# registered (by its entry point), and which heavy modules it imported.
PLAIN_RUN = """
import json, sys, pytest
import runner.pytest_plugin  # first: -X importtime measures this import
seen = {}
class Recorder:
    def pytest_collection_finish(self, session):
        seen["items"] = [item.nodeid for item in session.items]
        seen["registered"] = session.config.pluginmanager.get_plugin("runner_specs") is runner.pytest_plugin
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[Recorder()])
heavy = ["tensorflow", "keras", "runner.spec", "pydantic"]
print(json.dumps({**seen, "code": int(code), "imported": [m for m in heavy if m in sys.modules]}))
"""


def test_the_plugin_leaves_a_run_that_does_not_use_it_without_tensorflow(pytester):
    """Loaded in every pytest run of an environment that has runner: it must not import TensorFlow
    (nor the spec's loader) when no spec is collected, and costs next to nothing to import."""
    pytester.makepyfile(**{"tests/test_plain.py": "def test_plain():\n    assert True\n"})
    pytester.makefile(".toml", experiment=SPEC.format(name="experiment"))  # beside, but not named
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PLAIN_RUN],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout.splitlines()[-1])
    assert run == {
        "items": ["tests/test_plain.py::test_plain"],
        "registered": True,
        "code": 0,
        "imported": [],
    }
    timed = [line.split("|") for line in result.stderr.splitlines() if line.endswith("runner.pytest_plugin")]
    assert int(timed[0][1]) < 100_000  # microseconds, the import's with what it imports: about 2000 here


# Each bug spec's item: the layer (or variable) its message names, and the fix it gives.
BUG_MESSAGES = {
    "float16_output": ["model output is float16 (probabilities)", 'a real run needs "float32"'],
    "float16_softmax_cast": [
        "probabilities (Activation, softmax) computes in float16",
        'Fix: dtype="float32"',
    ],
    "float16_variables": ["conv1/kernel is float16", "Fix: use the mixed policy"],
    "float32_layer": ["dense (Dense) computes in float32", "Fix: build every layer"],
    "float32_model": ["conv1 (Conv2D) computes in float32", "Fix: build every layer"],
    "overflow": ["overflow float16 (e.g. conv1/kernel)", "Fix: a lower precision.initial_scale"],
    "attention_overflow": [
        "overflowing_vit/block_0_attention (MultiHeadAttention): attention logits",
        "against float16's 65,504",
        "runner check SPEC --fix",
    ],
}


@pytest.mark.slow  # a whole pytest session in-process: seven runner checks
def test_the_bug_specs_fail_naming_the_layer_and_the_fix_and_the_quickstart_passes(
    pytester, inprocess_pytest
):
    """`pytest specs/bugs/ specs/quickstart.toml`, as in the repository: one failing item per bug
    spec whose message names the layer and the fix; the quickstart passes its preflight, untrained."""
    shutil.copytree(ROOT / "specs" / "bugs", pytester.path / "specs" / "bugs")
    shutil.copy(ROOT / "specs" / "quickstart.toml", pytester.path / "specs")
    result = pytester.runpytest_inprocess(
        "specs/bugs/", "specs/quickstart.toml", "--junitxml=out.xml", *QUIET
    )
    result.assert_outcomes(failed=len(BUG_MESSAGES), passed=1)
    assert "Traceback" not in result.stdout.str()
    cases = {
        case.get("name"): case for case in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")
    }
    assert cases["quickstart"].find("failure") is None
    assert cases["quickstart"].find("properties") is None  # no run directory: the preflight only
    for spec, named in BUG_MESSAGES.items():
        message = " ".join(cases["bug-" + spec.replace("_", "-")].find("failure").text.split())
        assert all(text in message for text in named), message
