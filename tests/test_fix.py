"""`runner check --fix` (runner/preflight/fix.py) and `--patch`: the override proposed, proven, applied."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner import compat
from runner.cli import app
from runner.precision.checks import Finding
from runner.preflight.check import CheckOutcome
from runner.preflight.fix import FixOutcome, bfloat16_verdict, candidates, patch_text, patched
from runner.spec import SpecError, load_spec, spec_hash

ROOT = Path(__file__).resolve().parents[1]
BUG = ROOT / "specs/bugs/attention_overflow.toml"


def test_candidates_grow_from_the_softmax_to_the_whole_layer():
    assert candidates("vit/block_0_attention") == [
        {"vit/block_0_attention/softmax*": "float32"},
        {"vit/block_0_attention": "float32", "vit/block_0_attention/*": "float32"},
    ]


def test_the_patch_file_is_toml_that_loads_as_the_patched_spec(tmp_path):
    spec_path = tmp_path / "vit.toml"
    spec_path.write_text(
        'name = "vit"\n[precision]\nlayers = {"*norm*" = "float32"}\n[model]\nkind = "vit"\n'
    )
    patch = {"block_0_attention": "float32", "block_0_attention/*": "float32"}
    text = patch_text(spec_path, patch, ["block_0_attention"])
    assert tomllib.loads(text) == {"precision": {"layers": patch}}
    (tmp_path / "vit.fix.toml").write_text(text)
    loaded = load_spec(spec_path, patches=[tmp_path / "vit.fix.toml"])
    spec = load_spec(spec_path)
    # What --fix checked is what --patch loads: the spec's own pattern first, then the patch's.
    assert loaded == patched(spec, patch)
    assert list(loaded.precision.layers) == ["*norm*", *patch]
    assert spec_hash(loaded) != spec_hash(spec)  # the hash covers the map


def test_a_patch_with_a_wrong_policy_names_both_files_and_the_field(tmp_path):
    spec_path = tmp_path / "vit.toml"
    spec_path.write_text('name = "vit"\n[model]\nkind = "vit"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[precision.layers]\n"block_0*" = "float64"\n')
    with pytest.raises(SpecError) as raised:
        load_spec(spec_path, patches=[bad])
    message = str(raised.value)
    assert f"{spec_path} + {bad}" in message and "precision.layers" in message and "float64" in message


def test_a_missing_patch_file_is_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["check", str(BUG), "--patch", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "none.toml: file not found" in result.output


@pytest.mark.slow
def test_check_refuses_the_overflow_and_fix_writes_a_patch_that_passes(tmp_path, monkeypatch):
    """The issue's acceptance: exit 1 naming the attention layer and its measured maximum; --fix writes
    a patch beside the spec (never editing it) with which the same check exits 0."""
    monkeypatch.chdir(ROOT)  # the spec's factory is specs.bugs.factories, found from here
    spec = tmp_path / "attention_overflow.toml"
    shutil.copy(BUG, spec)
    written = spec.read_bytes()
    cli = CliRunner()
    fixed = cli.invoke(app, ["check", str(spec), "--fix", "--steps", "0"])
    if compat.needs_keras_3("--fix"):  # Keras 2: no per-layer policies to propose; one clear refusal
        assert fixed.exit_code == 2 and "needs Keras 3" in fixed.output, fixed.output
        return
    assert fixed.exit_code == 0, fixed.output
    # The check as written comes first: the first layer that overflows and by how much, exit 1.
    flat = " ".join(fixed.output.split()).replace("│ ", "").replace(" │", "")  # the tables wrap cells
    assert "overflow is overflowing_vit/block_0_attention" in flat
    assert re.search(r"max \|x\| [0-9.]+e\+0[5-9]", flat) and "65,504" in flat
    assert re.search(r"FAILED: [1-9] error\(s\)", flat)  # the check as written fails (exit 1 alone)
    patch = spec.with_name("attention_overflow.fix.toml")
    assert tomllib.loads(patch.read_text())["precision"]["layers"] == {
        "overflowing_vit/block_0_attention": "float32",
        "overflowing_vit/block_0_attention/*": "float32",
    }
    assert spec.read_bytes() == written  # the user's spec is never edited
    assert "mixed_bfloat16" in fixed.output and "patch written" in fixed.output

    output = tmp_path / "reports"
    settings = ["--set", "training.epochs=1", "--set", "data.train_size=512", "--set", "data.test_size=128"]
    trained = cli.invoke(app, ["run", str(spec), "--patch", str(patch), "-o", str(output), *settings])
    assert trained.exit_code == 0, trained.output  # its preflight is the check with the patch: passed
    (run_dir,) = output.iterdir()
    import json

    report = json.loads((run_dir / "report.json").read_text())
    assert report["metrics"]["test_loss"] < 10 and report["status"] == "completed"
    (compute,) = [c for c in report["checks"] if c["name"] == "compute_dtype"]
    assert compute["passed"] and "as [precision.layers] declares" in compute["detail"]
    declared = {x["path"] for x in report["precision"]["declared_layers"]}
    assert "overflowing_vit/block_0_attention/query" in declared
    assert report["precision"]["layers_per_dtype"]["float32"] >= len(declared)
    document = " ".join((run_dir / "report.md").read_text().split())
    assert "Declared in [precision.layers]: overflowing_vit/block_0_attention (float32)" in document


def outcome_of(code: int, policy: str, step: float | None) -> CheckOutcome:
    speed = (
        None
        if step is None
        else {"xla": {"used": False}, "timings": [{"policy": policy, "xla": False, "step_ms": step}]}
    )
    return CheckOutcome(code, {}, [Finding("attention_headroom", code == 0, "")], speed, {})


@pytest.mark.parametrize(
    ("after", "bf16", "says"),
    [
        (outcome_of(0, "mixed_float16", 20.0), outcome_of(0, "mixed_bfloat16", 15.0), "is the better answer"),
        (
            outcome_of(0, "mixed_float16", 20.0),
            outcome_of(0, "mixed_bfloat16", 25.0),
            "the patch is the faster",
        ),
        (outcome_of(0, "mixed_float16", 20.0), outcome_of(1, "mixed_bfloat16", 15.0), None),
        (None, outcome_of(0, "mixed_bfloat16", None), "passes this check without any override"),
    ],
    ids=["bf16-faster", "patch-faster", "bf16-fails", "no-patch-found"],
)
def test_bfloat16_is_named_the_better_answer_only_when_measured_so(after, bf16, says):
    fix = FixOutcome(1, outcome_of(1, "mixed_float16", 60.0), after=after, bfloat16=bf16)
    verdict = bfloat16_verdict(fix, "mixed_float16")
    assert (verdict is None) if says is None else (says in verdict)
