"""Every CLI command through typer's CliRunner: exit codes and what the user reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from runner.cli import app
from tests.conftest import ROOT, TINY_SPEC

cli = CliRunner()


# The CLI contract (DESIGN.md): every command a user may type.
COMMANDS = {
    "run",
    "sweep-create",
    "sweep-worker",
    "validate",
    "check",
    "compare",
    "report",
    "resume",
    "env",
    "schema",
    "launch",
    "export",
    "predict",
    "mlflow-sync",
}


def _listed_commands(help_text: str) -> list[str]:
    """The first word of each row of the help's Commands panel (a wrapped description's rows start
    with spaces, so they list nothing)."""
    panel = help_text[help_text.index("─ Commands ─") :]
    panel = panel[panel.index("\n") + 1 : panel.index("╰")]
    return [m.group(1) for m in re.finditer(r"^│ (\S+)\s", panel, re.MULTILINE)]


def test_help_lists_the_commands():
    """Each command of the contract is registered and has its own row in `runner --help` (a substring
    test passed for "run" in "runner" whatever the help listed)."""
    import typer

    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0
    registered = set(typer.main.get_command(app).commands)
    assert registered == COMMANDS
    listed = _listed_commands(result.output)
    assert sorted(listed) == sorted(COMMANDS), result.output


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]], ids=["runner", "run"])
def test_help_prints_sweep_in_brackets(args):
    # Rich reads a bare "[sweep]" as a style tag; escaped wrongly, a backslash shows instead.
    result = cli.invoke(app, args)
    assert result.exit_code == 0
    assert "[sweep]" in result.output and "\\[" not in result.output


def test_validate_prints_the_resolved_spec():
    result = cli.invoke(app, ["validate", str(ROOT / "specs" / "quickstart.toml")])
    assert result.exit_code == 0, result.output
    assert 'policy = "mixed_float16"' in result.stdout and "initial_scale = 32768.0" in result.stdout
    assert "1 spec file(s) valid: 1 experiment(s) planned" in result.stdout


BAD_SPECS = {
    "typo_in_key": ('name = "t"\n[precision]\npolcy = "float32"\n', "precision.polcy"),
    "wrong_policy": ('name = "t"\n[precision]\npolicy = "mixed_fp16"\n', "precision.policy"),
    "negative_batch": ('name = "t"\n[data]\nbatch_size = -32\n', "data.batch_size"),
    "nan_learning_rate": (
        'name = "t"\n[training]\nlearning_rate = nan\n',
        "training.learning_rate",
    ),
    "bad_toml": ('name = "t"\n[data\n', "invalid TOML"),
}


@pytest.mark.parametrize(("text", "field"), BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_validate_rejects_bad_specs_with_exit_2_and_one_message(write_spec, text, field):
    path = write_spec(text)
    result = cli.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.stderr and field in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_unknown_set_key_is_exit_2_with_a_suggestion():
    result = cli.invoke(
        app, ["validate", str(ROOT / "specs/quickstart.toml"), "--set", "precision.polcy=float32"]
    )
    assert result.exit_code == 2
    assert 'did you mean "policy"' in result.stderr


def test_missing_spec_file_is_exit_2():
    result = cli.invoke(app, ["validate", "does/not/exist.toml"])
    assert result.exit_code == 2 and "file not found" in result.stderr


def test_validate_and_schema_never_import_tensorflow():
    code = (
        "import sys; from typer.testing import CliRunner; from runner.cli import app; "
        "r = CliRunner(); a = r.invoke(app, ['validate', 'specs/quickstart.toml']); "
        "b = r.invoke(app, ['schema']); c = r.invoke(app, ['validate', 'specs/bugs/float32_layer.toml']); "
        "print(a.exit_code, b.exit_code, c.exit_code, 'tensorflow' in sys.modules, "
        "'specs.bugs.factories' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["0", "0", "0", "False", "False"]


def test_schema_is_json_schema():
    result = cli.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "ExperimentSpec" and "precision" in schema["properties"]


def _printed_schema_validator():
    import jsonschema

    schema = json.loads(cli.invoke(app, ["schema"]).stdout)
    validator = jsonschema.validators.validator_for(schema, default=None)  # chosen by its $schema
    assert validator is jsonschema.Draft202012Validator
    validator.check_schema(schema)
    return validator(schema)


SPEC_FILES = sorted([*ROOT.glob("specs/*.toml"), *ROOT.glob("specs/bugs/*.toml")])


@pytest.mark.parametrize("path", SPEC_FILES, ids=[str(p.relative_to(ROOT)) for p in SPEC_FILES])
def test_shipped_specs_validate_against_the_printed_schema(path):
    from runner.spec import read_toml

    errors = [e.message for e in _printed_schema_validator().iter_errors(read_toml(path))]
    assert errors == [], errors


SCHEMA_CASES = {
    "unknown_top_level_key": ('name = "t"\ncolour = "red"\n', False),
    "dotted_sweep": ('name = "t"\n[sweep]\n"precision.policy" = ["float32"]\n', True),
    "nested_sweep": ('name = "t"\n[sweep.data]\nbatch_size = [32, 64]\n', True),
    "empty_sweep": ('name = "t"\n[sweep]\n', False),
    "sweep_of_an_empty_list": ('name = "t"\n[sweep]\n"seed" = []\n', False),
    "sweep_of_a_value": ('name = "t"\n[sweep.data]\nbatch_size = 32\n', False),
}


@pytest.mark.parametrize(("text", "valid"), SCHEMA_CASES.values(), ids=SCHEMA_CASES.keys())
def test_the_printed_schema_agrees_with_load_plan(write_spec, text, valid):
    from runner.spec import SpecError, load_plan, read_toml

    path = write_spec(text)
    assert _printed_schema_validator().is_valid(read_toml(path)) is valid
    if valid:
        load_plan(path)
    else:
        with pytest.raises(SpecError):
            load_plan(path)


@pytest.mark.slow
def test_env_reports_versions_and_each_policy_measured_here(tmp_path, monkeypatch):
    """The versions of this environment, and every policy's step measured on this machine both
    ways: the table shows what was measured (machine.json), whatever this CPU makes of it."""
    import platform

    from runner import compat
    from runner.preflight import speed
    from tests.test_views import table_rows

    monkeypatch.setenv(speed.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.setenv("COLUMNS", "160")  # one line per row: every cell whole
    result = cli.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert ["python", platform.python_version()] in rows
    assert ["tensorflow", compat.tensorflow().__version__] in rows
    assert ["keras", compat.keras_version()] in rows
    measured = json.loads((tmp_path / "machine.json").read_text())
    for t in measured["timings"]:
        assert t["step_ms"] is not None or "budget" in t["note"], t
        (row,) = [r for r in rows if r[0] == t["policy"]] or [result.stdout]
        cell = row[2 if t["xla"] else 1]
        assert cell == (f"{t['step_ms']:.1f} ms" if t["step_ms"] else cell), (row, t)


def test_run_cifar10_without_the_archive_is_exit_2_and_says_what_to_do(tmp_path):
    result = cli.invoke(app, ["run", str(ROOT / "specs/mixed.toml"), "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "cifar-10-python.tar.gz" in result.stderr and "data.source=shapes" in result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing half-made


@pytest.mark.slow
def test_run_writes_a_run_directory_and_prints_the_report(write_spec, tmp_path):
    path = write_spec(TINY_SPEC)
    result = cli.invoke(
        app, ["run", str(path), "--output", str(tmp_path / "out"), "--set", "training.epochs=1"]
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "out").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["spec"]["training"]["epochs"] == 1
    assert "completed" in result.stdout and "LossScaleOptimizer" in result.stdout
    assert str(run_dir.name) in result.stdout.replace("\n", "").replace("│", "").replace(" ", "")


def test_python_dash_m_runner():
    out = subprocess.run([sys.executable, "-m", "runner", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and sorted(_listed_commands(out.stdout)) == sorted(COMMANDS), out.stdout


def _tf_config():
    from runner import compat

    return compat.tensorflow().config


def test_run_on_a_missing_gpu_is_exit_2(write_spec, tmp_path, monkeypatch):
    """As if no GPU were visible, whatever this machine has (on a GPU machine the run would train)."""
    visible = _tf_config().list_physical_devices

    def no_gpu(device_type=None):
        return [] if device_type == "GPU" else visible(device_type)

    monkeypatch.setattr(_tf_config(), "list_physical_devices", no_gpu)
    path = write_spec(TINY_SPEC)
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(path), "--output", str(out), "--set", "runtime.device=gpu"])
    assert result.exit_code == 2
    assert "runtime.device" in result.stderr and "found none" in result.stderr
    assert not out.exists()


# ---------------------------------------------------------------- runner check


# What `runner check` says of the measured ratio, on the device it ran on.
SPEED = (
    r"mixed_float16 is (?:[\d.]+× (?:slower|faster) than|about as fast as) float32 "
    r"on this (?P<device>CPU|GPU) \("
)


@pytest.mark.slow
def test_check_quickstart_prints_the_audit_and_the_measured_ratio():
    result = cli.invoke(app, ["check", str(ROOT / "specs/quickstart.toml"), "--steps", "2"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Audit: every layer" in out and "conv1" in out and "probabilities" in out
    # Slower, faster or as fast, on the device this machine has (not "this CPU" on a GPU machine).
    gpu = _tf_config().list_physical_devices("GPU")
    said = re.search(SPEED, " ".join(out.split()))
    assert said is not None and said["device"] == ("GPU" if gpu else "CPU"), out
    assert "OK: 0 error(s)" in out


@pytest.mark.parametrize(
    ("spec", "code", "named"),
    [
        ("float32_model.toml", 1, "conv1 (Conv2D) computes in float32"),
        ("float16_variables.toml", 1, "conv1/kernel is float16"),
        ("float32_layer.toml", 0, "dense (Dense) computes in float32"),
        ("float16_output.toml", 0, "model output is float16 (probabilities)"),
        ("float16_softmax_cast.toml", 1, "probabilities (Activation, softmax) computes in float16"),
        ("overflow.toml", 0, "overflow float16"),
    ],
    ids=["float32_model", "float16_variables", "float32_layer", "float16_output", "softmax_cast", "overflow"],
)
def test_check_catches_each_bug_and_names_the_layer(spec, code, named):
    result = cli.invoke(app, ["check", str(ROOT / "specs/bugs" / spec), "--steps", "0"])
    assert result.exit_code == code, result.output
    assert named in " ".join(result.stdout.replace("│", " ").split())
    if code:
        assert "FAILED: 1 error(s)" in result.stdout


def test_the_float16_softmax_cast_is_fixed_by_returning_logits():
    spec = str(ROOT / "specs/bugs/float16_softmax_cast.toml")
    result = cli.invoke(app, ["check", spec, "--steps", "0"])
    assert result.exit_code == 1, result.output
    assert 'model.output = "logits"' in " ".join(result.stdout.replace("│", " ").split())
    fixed = ["--set", "model.factory=specs.bugs.factories:logits", "--set", "model.output=logits"]
    result = cli.invoke(app, ["check", spec, "--steps", "0", *fixed])
    assert result.exit_code == 0, result.output
    assert "softmax in float32 appended by runner" in result.stdout
    assert "OK: 0 error(s), 0 warning(s)" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("application", ["mobilenetv2"])  # ResNet: ResNet50V2 below (resnet50.toml: 27 s)
def test_check_keras_applications_in_mixed_float16(application):
    # The audit of a model we did not write, not XLA: "auto" would compile the probe with XLA on a
    # CPU without float16 arithmetic (tens of seconds for these models; test_fidelity covers XLA).
    no_xla = ["--set", "training.jit_compile=false"]
    # The audit does not depend on the batch; the probe's passes do (ResNet50 halves its loss scale
    # 7 times, a forward and backward pass each: 50 s at the spec's 64, a quarter of it at 16).
    small = ["--set", "data.batch_size=16"]
    result = cli.invoke(
        app, ["check", str(ROOT / f"specs/{application}.toml"), "--steps", "0", *no_xla, *small]
    )
    assert result.exit_code == 0, result.output
    assert "softmax in float32 appended by runner" in result.stdout
    assert "0 error(s)" in result.stdout


FULL_SIZE = pytest.mark.slow  # millions of weights: 5-30 s each to build and probe layer by layer


@pytest.mark.parametrize(
    ("application", "policy"),
    [
        # One small application under the policy that fails most stays in the fast loop; the rest,
        # 2-30 s each, run in the full suite (CI).
        pytest.param(application, policy, marks=[] if fast else FULL_SIZE, id=f"{application}-{policy}")
        for application in ("MobileNetV3Small", "EfficientNetB0", "DenseNet121", "ResNet50V2")
        for policy in ("float32", "mixed_float16", "mixed_bfloat16")
        for fast in [(application, policy) == ("MobileNetV3Small", "mixed_float16")]
    ],
)
def test_check_passes_for_applications_we_did_not_write(write_spec, application, policy):
    """Issue 14: EfficientNet (a Normalization layer with an int64 count, a softmax fused into its
    Dense) and the others pass every invariant under every policy: one step on a small batch."""
    path = write_spec(
        f'name = "app"\n[precision]\npolicy = "{policy}"\n'
        f'[model]\nkind = "keras_application"\nname = "{application}"\n'
        '[data]\nsource = "shapes"\nbatch_size = 4\ntrain_size = 16\ntest_size = 8\n'
    )
    no_xla = ["--set", "training.jit_compile=false"]  # the audit, not XLA (as above: its compile is slow)
    result = cli.invoke(app, ["check", str(path), "--steps", "0", *no_xla])
    assert result.exit_code == 0, result.output
    assert "0 error(s), 0 warning(s)" in result.stdout


def test_check_a_broken_factory_is_exit_2(write_spec):
    path = write_spec('name = "t"\n[model]\nkind = "factory"\nfactory = "no_such_module:build"\n')
    result = cli.invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert 'model.factory: cannot import "no_such_module"' in result.stderr


# ---------------------------------------------------------------- sweeps, compare, report


def test_validate_lists_the_planned_variants():
    result = cli.invoke(app, ["validate", str(ROOT / "specs/compare.toml")])
    assert result.exit_code == 0, result.output
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert f'precision.policy="{policy}"' in result.stdout
    assert "3 experiment(s) planned (3 sweep variant(s))" in result.stdout


@pytest.mark.slow
def test_run_compare_toml_leaves_a_sweep_directory_with_a_comparison(tmp_path):
    # The shipped sweep as written, on an eighth of its images for one of its epochs (the full-size
    # run's accuracy is the quickstart test's; this one is about the sweep and its comparison).
    smaller = [
        "data.train_size=1024",
        "data.test_size=256",
        "training.epochs=1",
        "checks.min_test_accuracy=0.0",  # too few images to learn the shapes: not what this tests
    ]
    command = ["run", str(ROOT / "specs/compare.toml"), "--output", str(tmp_path)]
    result = cli.invoke(app, [*command, *(f"--set={s}" for s in smaller)])
    assert result.exit_code == 0, result.output
    (sweep,) = tmp_path.iterdir()
    runs = [p for p in sweep.iterdir() if (p / "report.json").exists()]
    assert len(runs) == 3
    comparison = json.loads((sweep / "comparison.json").read_text())
    rows = {r["settings"]["precision.policy"]: r for r in comparison["rows"]}
    assert set(rows) == {"float32", "mixed_float16", "mixed_bfloat16"}
    for row in rows.values():
        assert row["images_per_second"] > 0 and 0 <= row["test_accuracy"] <= 1
        assert row["speed_ratio"] is not None and row["accuracy_delta"] is not None
    assert rows["float32"]["speed_ratio"] == 1.0
    assert (sweep / "comparison.md").exists() and (sweep / "comparison.html").exists()
    assert "Comparison" in result.stdout and "ratios against the float32 run" in result.stdout


def _table(output: str) -> str:
    """The comparison table: from its title to its caption line."""
    start = output.index("Comparison")
    end = output.index("\n", output.index("ratios against", start))
    return output[start:end]


@pytest.mark.slow
def test_compare_separate_runs_prints_the_same_table_as_their_sweep(write_spec, tmp_path):
    sweep_spec = write_spec(
        TINY_SPEC + '\n[sweep]\n"precision.policy" = ["float32", "mixed_float16"]\n', "s.toml"
    )
    swept = cli.invoke(
        app, ["run", str(sweep_spec), "-o", str(tmp_path / "sweep"), "--set", "training.epochs=1"]
    )
    assert swept.exit_code == 0, swept.output
    (sweep_dir,) = (tmp_path / "sweep").iterdir()
    compared = cli.invoke(app, ["compare", str(sweep_dir), "--output", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output
    assert _table(compared.stdout) == _table(swept.stdout)
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text()) == json.loads(
        (sweep_dir / "comparison.json").read_text()
    )
    # Two separate `runner run` calls, compared afterwards.
    spec = write_spec(TINY_SPEC, "one.toml")
    for policy in ("float32", "mixed_float16"):
        args = ["run", str(spec), "-o", str(tmp_path / policy), "--set", f"precision.policy={policy}"]
        assert cli.invoke(app, [*args, "--set", "training.epochs=1"]).exit_code == 0
    dirs = [next((tmp_path / p).iterdir()) for p in ("float32", "mixed_float16")]
    separate = cli.invoke(app, ["compare", *map(str, dirs)])
    assert separate.exit_code == 0
    assert "ratios against the float32 run tiny" in separate.stdout
    assert "mixed_float16" in separate.stdout and "float32" in separate.stdout


def test_compare_runs_of_one_spec_shows_each_under_its_policy(tmp_path):
    from tests.test_compare import fake_epochs, fake_report

    # The README's first-run flow: quickstart three times, --set precision.policy=..., then compare.
    dirs = []
    for i, policy in enumerate(("float32", "mixed_float16", "mixed_bfloat16")):
        run_dir = tmp_path / f"quickstart-{i}"
        run_dir.mkdir()
        ips = 1000.0 * (i + 1)
        epochs = fake_epochs(1.0, ips)
        report = fake_report("quickstart", policy, ips, 0.9, run_dir=str(run_dir), epochs=epochs)
        (run_dir / "report.json").write_text(json.dumps(report.to_json()))
        dirs.append(str(run_dir))
    result = cli.invoke(app, ["compare", *dirs, "--output", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["float32", "mixed_float16", "mixed_bfloat16"]
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    throughput = html[html.index('<figure id="plot-throughput">') :]
    assert re.findall(r'<g id="(bar-\d+)"', throughput) == ["bar-0", "bar-1", "bar-2"]
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert f"<td>{policy}</td><td>{policy}</td>" in html  # the label, then precision.policy
        assert f"<!-- {policy} train -->" in html


def test_compare_rejects_a_directory_that_is_not_a_run(tmp_path):
    result = cli.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "no report.json" in result.stderr


@pytest.mark.slow
def test_report_re_renders_a_finished_run(write_spec, tmp_path):
    spec = write_spec(TINY_SPEC)
    assert (
        cli.invoke(app, ["run", str(spec), "-o", str(tmp_path), "--set", "training.epochs=1"]).exit_code == 0
    )
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (run_dir / "report.html").unlink()
    terminal = cli.invoke(app, ["report", str(run_dir)])
    assert terminal.exit_code == 0 and "runner report" in terminal.stdout
    as_json = cli.invoke(app, ["report", str(run_dir), "--format", "json"])
    assert json.loads(as_json.stdout)["name"] == "tiny"
    markdown = cli.invoke(app, ["report", str(run_dir), "-f", "md"])
    assert markdown.stdout.startswith("# tiny — runner report")
    html = cli.invoke(app, ["report", str(run_dir), "-f", "html"])
    assert html.exit_code == 0 and (run_dir / "report.html").exists()
    bad = cli.invoke(app, ["report", str(run_dir), "-f", "pdf"])
    assert bad.exit_code == 2 and "expected one of terminal, md, html, json" in bad.stderr


@pytest.mark.parametrize(
    ("tf_config", "expected"),
    [
        ('{"cluster": {"worker": ["127.0.0.1:1"', "TF_CONFIG: expected JSON"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 2}}',
            "task.index: expected 0..1 for the 2 worker task(s) of the cluster; got 2",
        ),
        (None, "TF_CONFIG is not set"),
    ],
)
def test_a_multi_worker_run_without_a_usable_cluster_is_exit_2_before_anything_loads(
    write_spec, tmp_path, monkeypatch, tf_config, expected
):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    spec = write_spec(TINY_SPEC)
    out = tmp_path / "out"
    result = cli.invoke(
        app, ["run", str(spec), "-o", str(out), "--set", "distribution.strategy=multi_worker"]
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not out.exists() or not list(out.iterdir())


def test_launch_refuses_what_it_cannot_launch(write_spec, tmp_path):
    sweep = write_spec(TINY_SPEC + '\n[sweep]\n"training.epochs" = [1, 2]\n', "sweep.toml")
    result = cli.invoke(app, ["launch", "--workers", "2", str(sweep), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "expected one experiment to launch; got a plan of 2" in result.output
    assert cli.invoke(app, ["launch", "--workers", "0", str(sweep)]).exit_code == 2
    single = tmp_path / "single-run"
    single.mkdir()
    (single / "spec.toml").write_text(TINY_SPEC)
    result = cli.invoke(app, ["launch", "--workers", "2", str(single)])
    assert (
        result.exit_code == 2
        and 'expected a multi_worker run to resume on several workers; got "none"' in (result.output)
    )


def test_a_sweep_of_multi_worker_runs_is_refused(write_spec, tmp_path):
    spec = write_spec(
        TINY_SPEC + '\n[distribution]\nstrategy = "multi_worker"\n[sweep]\n"training.epochs" = [1, 2]\n'
    )
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", str(spec), "-o", str(out)])
    assert result.exit_code == 2 and 'got "multi_worker"' in result.output and str(spec) in result.output
    assert not out.exists()
