"""README.md stays a five-minute read, and what it shows works: commands, spec files, links, the spec.

No test here trains or imports TensorFlow: commands are parsed with `--help`, specs validated.
"""

from __future__ import annotations

import re
import shlex
import sys
import unicodedata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.spec import load_spec, spec_from_dict
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # the project depends on tomli there
    import tomli as tomllib

README = ROOT / "README.md"
MAX_BYTES = 12_000  # about five minutes of reading; the rest lives in docs/
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_ENDS = {">", ">>", "|", "&&", ";", "2>"}  # a command line's runner part ends at these

cli = CliRunner()


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def _bash_lines(text: str) -> list[str]:
    return [line.strip() for block in _blocks(text, "bash") for line in block.splitlines() if line.strip()]


UV_RUN = "uv run "  # how the README runs every command: in the locked environment uv makes


def _commands(text: str) -> list[str]:
    """The README's command lines as they run inside that environment (`uv run ` taken off)."""
    return [line.removeprefix(UV_RUN) for line in _bash_lines(text)]


def _runner_args(line: str) -> list[str]:
    """`runner validate a.toml --set x=1   # why` → ["validate", "a.toml", "--set", "x=1"]."""
    words = shlex.split(line, comments=True)
    end = next((i for i, word in enumerate(words) if word in SHELL_ENDS), len(words))
    assert words[0] == "runner", line
    return words[1:end]


def _spec_paths(args: list[str]) -> list[str]:
    return [arg for arg in args if arg.endswith(".toml")]


def _overrides(args: list[str]) -> list[str]:
    """The values of `--set a=b` and `--set=a=b`."""
    after_flag = [arg for flag, arg in zip(args, args[1:], strict=False) if flag == "--set"]
    return after_flag + [arg.removeprefix("--set=") for arg in args if arg.startswith("--set=")]


RUNNER_LINES = [line for line in _commands(_readme()) if line.startswith("runner ")]
SPEC_LINES = [line for line in RUNNER_LINES if _spec_paths(_runner_args(line))]


def test_readme_is_at_most_12000_bytes():
    size = len(README.read_bytes())
    assert size <= MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


FIRST = [
    "command -v uv || pip install uv  # uv, where it is missing",
    "uv run runner run specs/quickstart.toml",
]


def test_the_first_command_sets_up_and_runs_the_quickstart():
    """On a fresh clone: uv where it is missing, then one `uv run` that installs the locked
    environment and runs the quickstart. No other line of the README installs anything."""
    first = _blocks(_readme(), "bash")[0]
    assert [line.strip() for line in first.splitlines() if line.strip()] == FIRST
    installs = [line for line in _bash_lines(_readme()) if "install" in line or "uv sync" in line]
    assert installs == FIRST[:1]
    assert all(line.startswith(UV_RUN) for line in _bash_lines(_readme())[1:]), "every command in uv run"


SUITE = "uv run --all-extras python -m pytest -n 2 --dist loadfile"  # the whole suite, as CI runs it


def test_readme_shows_the_offline_first_run_and_the_test_commands():
    lines = _bash_lines(_readme())
    assert "uv run runner run specs/quickstart.toml" in lines
    assert SUITE in lines
    fast = 'uv run --all-extras python -m pytest -m "not slow" -n 2 --dist loadfile'
    assert fast in lines  # the fast loop, same processes


def test_ci_runs_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert SUITE in _bash_lines(_readme()) and SUITE in ci


def test_readme_has_runner_command_lines():
    # The parametrized tests below see these lines; an empty list would leave them nothing to check.
    assert len(RUNNER_LINES) >= 4, RUNNER_LINES
    assert {_runner_args(line)[0] for line in RUNNER_LINES} >= {"run", "validate", "check"}
    assert any(_overrides(_runner_args(line)) for line in SPEC_LINES)


@pytest.mark.parametrize("line", RUNNER_LINES)
def test_readme_runner_command_parses(line):
    # `--help` stops before anything runs, but after the command and its options are resolved.
    result = cli.invoke(app, [*_runner_args(line), "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("line", SPEC_LINES)
def test_readme_spec_files_exist_and_validate(line, monkeypatch):
    args = _runner_args(line)
    for path in _spec_paths(args):
        assert (ROOT / path).is_file(), f"{line}: {path} does not exist"
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository
    result = cli.invoke(app, ["validate", *_spec_paths(args), *(f"--set={o}" for o in _overrides(args))])
    assert result.exit_code == 0, result.output


def test_every_spec_path_in_the_readme_exists():
    paths = set(re.findall(r"specs/[\w/.-]+\.toml", _readme()))
    assert "specs/quickstart.toml" in paths
    assert sorted(p for p in paths if not (ROOT / p).is_file()) == []


def test_readme_error_example_is_what_runner_prints(monkeypatch):
    (example,) = [b for b in _blocks(_readme(), "") if "\nerror: " in b]
    command, expected = example.strip().splitlines()
    assert command.startswith("$ runner ")
    monkeypatch.chdir(ROOT)
    result = cli.invoke(app, _runner_args(command.removeprefix("$ ")))
    assert result.exit_code == 2
    assert result.stderr.strip() == expected


def test_readme_annotated_spec_is_specs_quickstart():
    (block,) = _blocks(_readme(), "toml")
    # strict: an unknown or misspelt key in the README's spec is an error here
    shown = spec_from_dict(tomllib.loads(block), source="README.md")
    assert shown == load_spec(ROOT / "specs" / "quickstart.toml")


# ---------------------------------------------------------------- links


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in _anchors(linked)):
            broken.append(target)
    return broken


def test_readme_docs_links_name_files_that_exist():
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", _readme()))
    assert "docs/README.md" in linked
    assert sorted(p for p in linked if not (ROOT / p).is_file()) == []


def test_docs_index_links_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert sorted(pages - set(LINK.findall(index))) == []


@pytest.mark.parametrize(
    "page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_links_resolve(page):
    assert _broken_links(page) == []


def test_slug_matches_githubs_anchors():
    assert _slug("Know before you train: `runner check`") == "know-before-you-train-runner-check"
    assert _slug("First run (offline)") == "first-run-offline"
    assert _slug("Documents: `report.md`, `report.html`") == "documents-reportmd-reporthtml"


def test_a_missing_page_or_anchor_is_a_broken_link(tmp_path: Path):
    (tmp_path / "a.md").write_text("# A page\n\n## Real section\n", encoding="utf-8")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#real-section) [gone](c.md) [no anchor](a.md#nowhere) [web](https://x.org)")
    assert _broken_links(page) == ["c.md", "a.md#nowhere"]
