"""docs/distributed.md shows what works: its specs validate, its command lines name shipped specs and
parse, and its cluster layouts (Slurm, an indexed Kubernetes Job, Vertex AI) are what runner builds.

No test here trains or starts a cluster: specs go through `runner validate`, TF_CONFIG through
runner.training.distribution, and the Kubernetes shell line through /bin/sh with a stand-in `runner`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomli_w
import typer
from typer.testing import CliRunner

from runner.cli import app
from runner.spec import load_spec, spec_from_dict
from runner.training import distribution
from runner.training.distribution import ClusterError, parse_tf_config
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # the project depends on tomli there
    import tomli as tomllib

DOC = ROOT / "docs" / "distributed.md"
QUICKSTART = ROOT / "specs" / "quickstart.toml"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_ENDS = {">", ">>", "|", "&&", ";", "2>"}  # a command line's runner part ends at these
SUBCOMMANDS = {"run", "resume", "launch", "validate", "check"}  # what the page may tell a worker to run

cli = CliRunner()


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(heading: str) -> str:
    """The text under `## heading` or `### heading`, up to the next heading of that level or above."""
    lines = _doc().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(heading)}\n", line)]
    assert starts, f"docs/distributed.md has no heading {heading!r}"
    level = len(lines[starts[0]]) - len(lines[starts[0]].lstrip("#"))
    body: list[str] = []
    fenced = False  # a `# comment` in a fenced block is no heading
    for line in lines[starts[0] + 1 :]:
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        body.append(line)
    return "".join(body)


def _blocks(language: str, text: str | None = None) -> list[str]:
    return [body for lang, body in FENCE.findall(_doc() if text is None else text) if lang == language]


# ---------------------------------------------------------------- TOML snippets


def _merged(base: dict, fragment: dict) -> dict:
    out = dict(base)
    for key, value in fragment.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def _snippet_as_spec(block: str) -> dict:
    """A full spec as it is; a fragment (no `name`) merged into specs/quickstart.toml's content."""
    raw = tomllib.loads(block)
    if "name" in raw:
        return raw
    return _merged(tomllib.loads(QUICKSTART.read_text(encoding="utf-8")), raw)


def _validate(raw: dict, tmp_path: Path, args: tuple[str, ...] = ()):
    path = tmp_path / "snippet.toml"
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return cli.invoke(app, ["validate", str(path), *args])


TOML_BLOCKS = _blocks("toml")


def test_the_page_has_toml_snippets():
    # The parametrized test below sees these; an empty list would leave it nothing to check.
    assert len(TOML_BLOCKS) >= 3
    strategies = {_snippet_as_spec(b).get("distribution", {}).get("strategy") for b in TOML_BLOCKS}
    assert strategies >= {"mirrored", "multi_worker"}


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[f"toml{i}" for i in range(len(TOML_BLOCKS))])
def test_toml_snippet_validates(block, tmp_path):
    result = _validate(_snippet_as_spec(block), tmp_path)
    assert result.exit_code == 0, f"{block}\n{result.output}"


def test_a_broken_snippet_fails_the_same_check(tmp_path):
    """The check above can fail: a misspelt strategy, or replicas with multi_worker, is exit 2."""
    for bad in (
        '[distribution]\nstrategy = "mirored"\n',
        '[distribution]\nstrategy = "multi_worker"\nreplicas = 2\n',
        '[distribution]\nstrategy = "mirrored"\nreplicas = 3\n',  # 64 is not a multiple of 3
    ):
        assert _validate(_snippet_as_spec(bad), tmp_path).exit_code == 2, bad


def test_a_snippet_that_names_a_shipped_spec_is_that_spec():
    """A block starting `# specs/x.toml` shows that file: the same spec, field for field."""
    shown = [b for b in TOML_BLOCKS if b.startswith("# specs/")]
    assert shown, "docs/distributed.md shows no shipped spec in full"
    for block in shown:
        path = block.splitlines()[0].removeprefix("# ").strip()
        assert spec_from_dict(tomllib.loads(block), source=path) == load_spec(ROOT / path), path


def test_the_shipped_distributed_specs_are_quickstart_sized():
    quickstart = load_spec(QUICKSTART)
    for name, strategy in (("distributed", "mirrored"), ("multi_worker", "multi_worker")):
        spec = load_spec(ROOT / "specs" / f"{name}.toml")
        assert spec.distribution.strategy == strategy
        for section in ("model", "data", "training"):
            assert getattr(spec, section) == getattr(quickstart, section), (name, section)
    assert load_spec(ROOT / "specs" / "distributed.toml").distribution.replicas == 2


# ---------------------------------------------------------------- command lines


def _logical_lines(block: str) -> list[str]:
    """Lines with shell continuations (`\\` at the end) joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _runner_args(line: str) -> list[str] | None:
    """`srun ... runner run a.toml --set x=1 > log` → ["run", "a.toml", "--set", "x=1"]; a YAML
    `command: ["runner", ...]` list likewise; None for a line that runs no runner."""
    yaml_list = re.match(r"^-?\s*command:\s*(\[.*\])\s*$", line)
    if yaml_list:
        words = json.loads(yaml_list.group(1))
    elif re.search(r"(?:^|\s)runner\s", line):
        words = shlex.split(line, comments=True)
    else:
        return None
    if "runner" not in words:
        return None
    words = words[words.index("runner") + 1 :]
    end = next((i for i, word in enumerate(words) if word in SHELL_ENDS), len(words))
    return words[:end]


def _args(line: str) -> list[str]:
    args = _runner_args(line)
    assert args, f"{line!r} runs no runner command"
    return args


def _find(pattern: str, text: str) -> str:
    """The first group of `pattern`'s first match in `text`; no match fails the test, naming it."""
    match = re.search(pattern, text, re.M)
    assert match, f"docs/distributed.md: nothing matches {pattern!r}"
    return match.group(1)


def _command_lines() -> list[str]:
    blocks = [b for lang in ("bash", "sh", "yaml") for b in _blocks(lang)]
    return [line for block in blocks for line in _logical_lines(block) if _runner_args(line) is not None]


def _overrides(args: list[str]) -> list[str]:
    after_flag = [arg for flag, arg in zip(args, args[1:], strict=False) if flag == "--set"]
    return after_flag + [arg.removeprefix("--set=") for arg in args if arg.startswith("--set=")]


COMMAND_LINES = _command_lines()
COMMAND_IDS = [f"runner {' '.join(_args(line))}" for line in COMMAND_LINES]


def test_the_page_has_runner_command_lines():
    # srun's, the YAML's and launch's lines all count; an empty list would leave the tests nothing.
    assert len(COMMAND_LINES) >= 6, COMMAND_LINES
    assert {_args(line)[0] for line in COMMAND_LINES} >= {"run", "launch"}
    assert any(line.startswith("srun ") for line in COMMAND_LINES)
    assert any("command:" in line for line in COMMAND_LINES)


@pytest.mark.parametrize("line", COMMAND_LINES, ids=COMMAND_IDS)
def test_command_line_names_a_shipped_spec_that_validates(line, monkeypatch):
    args = _args(line)
    assert args[0] in SUBCOMMANDS, line
    specs = [arg for arg in args if arg.endswith(".toml")]
    for path in specs:
        assert path.startswith("specs/") and (ROOT / path).is_file(), f"{line}: {path} is not a shipped spec"
    if specs:
        monkeypatch.chdir(ROOT)  # the page's paths are relative to the repository (the image's /app)
        result = cli.invoke(app, ["validate", *specs, *(f"--set={o}" for o in _overrides(args))])
        assert result.exit_code == 0, f"{line}\n{result.output}"


@pytest.mark.parametrize("line", COMMAND_LINES, ids=COMMAND_IDS)
def test_command_line_parses(line):
    """Options as the CLI has them: `--help` stops after the command and its options are resolved."""
    args = _args(line)
    assert args[0] in typer.main.get_group(app).commands, line
    result = cli.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output


def test_runner_args_finds_runner_in_shell_and_yaml_lines():
    assert _runner_args("srun -n 4 runner run specs/a.toml --output /x > log") == [
        "run",
        "specs/a.toml",
        "--output",
        "/x",
    ]
    assert _runner_args('command: ["runner", "resume", "/r/x"]') == ["resume", "/r/x"]
    assert _runner_args("exec runner launch --workers 2 specs/a.toml") == [
        "launch",
        "--workers",
        "2",
        "specs/a.toml",
    ]
    assert _runner_args('command: ["/bin/sh", "-c"]') is None
    assert _runner_args("image: registry.example.com/runner:0.1") is None


# ---------------------------------------------------------------- error messages


def test_tf_config_error_examples_are_what_runner_says():
    examples = [b for b in _blocks("") if "$ TF_CONFIG=" in b]
    lines = [line for block in examples for line in block.strip().splitlines()]
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(pairs) >= 2
    for command, expected in pairs:
        words = shlex.split(command.removeprefix("$ "))
        assert words[0].startswith("TF_CONFIG=") and words[1] == "runner", command
        with pytest.raises(ClusterError) as raised:
            parse_tf_config(words[0].removeprefix("TF_CONFIG="))
        assert f"error: {raised.value}" == expected


def test_the_slurm_error_quoted_is_what_runner_says():
    (quoted,) = re.findall(r"`(error: Slurm: [^`]+)`", _section("Slurm"))
    with pytest.raises(ClusterError) as raised:
        distribution.from_environment("slurm", {})
    assert f"error: {raised.value}" == quoted


# ---------------------------------------------------------------- cluster layouts


def test_the_slurm_recipe_is_the_layout_runner_builds():
    """Two nodes × two tasks: srun's variables for task 3 become the page's TF_CONFIG, four workers at
    node:8888 and node:8889, the chief the page names."""
    slurm = _section("Slurm")
    (env_block,) = [b for b in _blocks("", slurm) if "SLURM_PROCID=" in b]
    env = dict(word.split("=", 1) for word in shlex.split(env_block))
    (shown,) = _blocks("json", slurm)
    config = distribution.from_environment("slurm", env)
    assert json.loads(config.to_tf_config()) == json.loads(shown)

    (srun,) = [line for line in _logical_lines(_blocks("bash", slurm)[0]) if line.startswith("srun ")]
    flags = dict(re.findall(r"--([\w-]+)=(\d+)", srun.split(" runner ")[0]))
    workers = config.cluster["worker"]
    assert len(workers) == int(flags["ntasks"]) == config.num_workers
    assert distribution.expand_tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"]) == [
        int(flags["ntasks-per-node"])
    ] * (len(workers) // int(flags["ntasks-per-node"]))
    assert {address.rsplit(":", 1)[1] for address in workers} == {"8888", "8889"}
    assert "port 8888 + *i*" in slurm and distribution.SLURM_PORT_BASE == 8888

    (chief,) = re.findall(r"task 0 \(`([^`]+)`\) is the chief", slurm)
    chief_env = env | {"SLURM_PROCID": "0"}
    assert distribution.from_environment("slurm", chief_env).is_chief and workers[0] == chief

    # The srun line's spec, with its --set, is a Slurm multi-worker spec.
    args = _args(srun)
    spec = load_spec(ROOT / args[1], _overrides(args))
    assert (spec.distribution.strategy, spec.distribution.cluster) == ("multi_worker", "slurm")


def _block_scalar(yaml: str) -> str:
    """The text of the first `- |` block scalar in a YAML document (the container's shell script)."""
    lines = yaml.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("- |")) + 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        body.append(line)
    return textwrap.dedent("\n".join(body))


def test_the_indexed_job_builds_each_pods_tf_config(tmp_path):
    """The Job's shell line, run by /bin/sh for every completion index with a stand-in `runner` that
    records TF_CONFIG: one worker per completion at <job>-<i>.<service>:<port>, task index = i."""
    (yaml,) = _blocks("yaml", _section("Kubernetes: an indexed Job and a headless Service"))
    job = yaml[yaml.index("kind: Job") :]
    name = _find(r"^metadata:\n\s+name: (\S+)", job)
    completions = int(_find(r"^\s+completions: (\d+)", job))
    service = _find(r"^\s+subdomain: (\S+)", job)
    port = _find(r"containerPort: (\d+)", job)
    assert re.search(rf"kind: Service\nmetadata:\n\s+name: {service}\n", yaml)
    assert "clusterIP: None" in yaml and f"job-name: {name}" in yaml

    stand_in = tmp_path / "bin" / "runner"
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\nprintf \'%s\\n\' "$TF_CONFIG" "$@" > "$RECORD"\n', encoding="utf-8")
    stand_in.chmod(0o755)
    expected = [f"{name}-{i}.{service}:{port}" for i in range(completions)]
    for index in range(completions):
        record = tmp_path / f"pod-{index}.txt"
        env = os.environ | {
            "JOB_COMPLETION_INDEX": str(index),
            "PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}",
            "RECORD": str(record),
        }
        subprocess.run(["/bin/sh", "-c", _block_scalar(yaml)], env=env, check=True, timeout=30)
        tf_config, *args = record.read_text(encoding="utf-8").splitlines()
        config = parse_tf_config(tf_config)
        assert config.cluster == {"worker": expected}
        assert (config.task_type, config.task_index, config.is_chief) == ("worker", index, index == 0)
        assert args == ["run", "specs/multi_worker.toml", "--output", "/shared/reports"]


def test_vertex_and_kubeflow_tf_configs_parse_with_the_chief_the_page_names():
    """Vertex AI's TF_CONFIG (pool 0 `chief`, pool 1 `worker`, extra keys) and Kubeflow's (workers only,
    `environment`): the chief and the worker-<i>.json names are what the page says."""
    vertex = _section("Vertex AI custom training")
    (yaml,) = _blocks("yaml", vertex)
    chiefs, workers = (int(n) for n in re.findall(r"replicaCount: (\d+)", yaml))
    cluster = {
        "chief": ["workerpool0-0:2222"],
        "worker": [f"workerpool1-{i}:2222" for i in range(workers)],
    }
    configs = [
        parse_tf_config(
            json.dumps(
                {
                    "cluster": cluster,
                    "environment": "cloud",
                    "task": {"type": kind, "index": i, "trial": ""},
                    "job": {"worker_pool_specs": []},
                }
            )
        )
        for kind, count in (("chief", chiefs), ("worker", workers))
        for i in range(count)
    ]
    assert chiefs == 1 and [c.is_chief for c in configs] == [True] + [False] * workers
    named = sorted(int(i) for i in re.findall(r"workers/worker-(\d+)\.json", vertex))
    assert named == [c.worker_rank for c in configs if not c.is_chief]

    (tfjob,) = _blocks("yaml", _section("Kubernetes: Kubeflow TFJob"))
    replicas = int(_find(r"Worker:\n\s+replicas: (\d+)", tfjob))
    kubeflow = {"worker": [f"multi-worker-worker-{i}.default.svc:2222" for i in range(replicas)]}
    first = parse_tf_config(
        json.dumps({"cluster": kubeflow, "task": {"type": "worker", "index": 0}, "environment": "cloud"})
    )
    assert first.is_chief and first.num_workers == replicas
