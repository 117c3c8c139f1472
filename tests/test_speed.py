"""runner/preflight/speed.py: every automatic choice and speed statement comes from a measurement.

Where a test needs the measurement to say something a CPU would not (a float16 step 300x slower
than float32's, as TensorFlow's float16 convolution gradients are on an Intel Xeon with AVX-512
FP16), it replaces `speed.time_candidate` (the clock), never the choice or the statement: those
run for real on what the fake clock says. No test asserts a speed.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from runner.preflight import speed
from runner.preflight.speed import Timing

FAKE_MS = {"float32": 10.0, "mixed_bfloat16": 5.0, "mixed_float16": 3000.0}  # an AMX/FP16 Xeon's pattern


def fake_clock(monkeypatch, cache, step_ms=FAKE_MS, xla_ms=None, calls=None):
    """`speed.time_candidate` answering from a table: each policy's step (without XLA), and with
    XLA `xla_ms` (default: 2x float32's for float32 and bfloat16, 25 ms for float16, as measured
    on that Xeon). `calls` collects (policy, xla) pairs to show what was timed. Its figures are
    cached in `cache`, never where other tests' real timings are."""
    xla_ms = xla_ms or {"float32": 20.0, "mixed_bfloat16": 10.0, "mixed_float16": 25.0}
    monkeypatch.setenv(speed.CACHE_VARIABLE, str(cache))

    def timed(model, x, y, *, xla, steps, best_s=None):
        policy = model.dtype_policy.name  # the policy it was built under
        if calls is not None:
            calls.append((policy, xla))
        ms = (xla_ms if xla else step_ms)[policy]
        return ms / 1000, 1.0, steps, 3

    monkeypatch.setattr(speed, "time_candidate", timed)


def timing(policy, xla, step_ms, note=""):
    return Timing(policy, xla, step_ms, note=note)


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("setting", "runtime", "strategy", "options", "rule"),
    [
        ("auto", {}, "none", [False, True], None),
        (True, {}, "none", [True], "training.jit_compile = true"),
        (False, {}, "none", [False], "training.jit_compile = false"),
        ("auto", {"deterministic": True}, "none", [False], "by rule: runtime.deterministic"),
        ("auto", {}, "mirrored", [False], 'by rule: distribution.strategy = "mirrored"'),
    ],
    ids=["auto-measured", "true", "false", "deterministic", "mirrored"],
)
def test_xla_is_measured_unless_the_spec_or_a_rule_decides(setting, runtime, strategy, options, rule):
    from runner.spec import RuntimeSpec

    got, why = speed.xla_options(setting, RuntimeSpec(**runtime), strategy)
    assert got == options
    assert (why is None) if rule is None else (rule in why)


@pytest.mark.parametrize(
    ("with_xla", "without", "used", "said"),
    [
        (
            25.0,
            3000.0,
            True,
            "auto: XLA, measured 1.2e+02× faster here (25.0 ms per step with XLA, 3000.0 ms",
        ),
        (20.0, 10.0, False, "auto: no XLA, measured 2× slower here (20.0 ms per step with XLA, 10.0 ms"),
        (None, 10.0, False, "auto: no XLA (XLA cannot compile this model (boom))"),
    ],
    ids=["xla-faster", "xla-slower", "xla-refused"],
)
def test_auto_xla_follows_the_timings(with_xla, without, used, said):
    note = "XLA cannot compile this model (boom)" if with_xla is None else ""
    timings = [timing("mixed_float16", True, with_xla, note), timing("mixed_float16", False, without)]
    chosen, why = speed.xla_choice(timings, "mixed_float16", [False, True], None)
    assert chosen is used
    assert why.startswith(said)


def test_xla_is_not_timed_for_a_run_too_short_for_its_compile_to_pay_back():
    timings = [timing("float32", False, 10.0), timing("mixed_float16", False, 50.0)]
    assert speed.too_short_for_xla(timings, ["mixed_float16"], 1000) is None  # 50 s of steps
    short = speed.too_short_for_xla(timings, ["mixed_float16"], 100)  # 5 s
    assert short.startswith("auto: no XLA: this run's 100 steps take about 5.0 s without it")
    assert speed.too_short_for_xla(timings, ["float32", "mixed_float16"], 500) is not None  # float32: 5 s
    assert speed.too_short_for_xla([timing("mixed_float16", False, None)], ["mixed_float16"], 1) is None


def test_a_rule_or_the_spec_decides_without_looking_at_timings():
    timings = [timing("mixed_float16", True, 1.0), timing("mixed_float16", False, 1000.0)]
    rule = "auto: no XLA, by rule: runtime.deterministic (...)"
    assert speed.xla_choice(timings, "mixed_float16", [False], rule) == (False, rule)


def test_float32_is_timed_first_and_its_other_setting_last():
    assert speed.wanted(["mixed_float16"], [False, True]) == [
        ("float32", False),
        ("mixed_float16", True),
        ("mixed_float16", False),
        ("float32", True),
    ]
    assert speed.wanted(["float32"], [True]) == [("float32", True)]
    # A run's reference: float32 as TensorFlow runs it by default (not compiled), unless it is the
    # run's own policy, whose XLA setting is being chosen.
    assert speed.wanted(["mixed_bfloat16"], [False, True], reference=[False]) == [
        ("float32", False),
        ("mixed_bfloat16", True),
        ("mixed_bfloat16", False),
    ]
    assert speed.wanted(["float32"], [False, True], reference=[False]) == [
        ("float32", False),
        ("float32", True),
    ]


@pytest.mark.parametrize(
    ("chosen", "said", "slow"),
    [
        (
            ("mixed_float16", False),
            "mixed_float16 is 300× slower than float32 on this CPU (3000.0 ms without XLA vs 10.0 ms "
            "without XLA per step); mixed_bfloat16 (without XLA) is 2× faster than float32 here, "
            "the fastest measured",
            True,
        ),
        (("mixed_float16", True), "mixed_float16 is 2.5× slower than float32 on this CPU", True),
        (("mixed_bfloat16", False), "mixed_bfloat16 is 2× faster than float32 on this CPU", False),
    ],
    ids=["fp16-300x", "fp16-xla", "bf16"],
)
def test_the_statement_gives_the_figures_and_names_the_fastest_when_slow(chosen, said, slow):
    timings = [
        timing("float32", False, 10.0),
        timing("mixed_float16", False, 3000.0),
        timing("mixed_float16", True, 25.0),
        timing("mixed_bfloat16", False, 5.0),
    ]
    verdict = speed.verdict(timings, chosen)
    assert verdict.slow is slow
    statement = verdict.statement("this CPU")
    assert statement.startswith(said)
    assert ("the fastest measured" in statement) is slow


def test_a_float32_that_is_fastest_is_named_so():
    timings = [timing("float32", False, 10.0), timing("mixed_float16", False, 50.0)]
    assert (
        speed.verdict(timings, ("mixed_float16", False))
        .statement("this GPU")
        .endswith("; float32 is the fastest measured here")
    )


def test_nothing_measured_says_nothing():
    assert (
        speed.verdict([timing("mixed_float16", True, None, "not timed")], ("mixed_float16", True)).statement(
            "this CPU"
        )
        is None
    )


def test_the_budget_leaves_out_a_candidate_whose_kind_cost_more_than_is_left():
    done = [
        Timing("float32", False, 10.0, seconds=0.5),
        Timing("mixed_float16", True, 20.0, seconds=9.0),
    ]
    assert not speed.over_budget(None, 1000.0, done, True)
    assert not speed.over_budget(15.0, 5.0, done, False)  # 5 s + 0.5 s
    assert speed.over_budget(15.0, 10.0, done, True)  # 10 s + 9 s
    assert not speed.over_budget(15.0, 14.0, [], False)  # nothing of its kind yet: try it


# ---------------------------------------------------------------- the cache


def test_cache_round_trip_and_forget(tmp_path, monkeypatch):
    monkeypatch.setenv(speed.CACHE_VARIABLE, str(tmp_path / "cache"))
    key = speed.candidate_key({"model": "x"}, "mixed_float16", True, 8)
    assert speed.candidate_key({"model": "y"}, "mixed_float16", True, 8) != key
    assert speed._read_cache(key) is None
    speed._write_cache(key, Timing("mixed_float16", True, 12.5, 900.0, 8, 3, "", "now"))
    assert speed._read_cache(key) == Timing("mixed_float16", True, 12.5, 900.0, 8, 3, "", "now")
    (tmp_path / "cache" / "timings" / f"{key}.json").write_text("{not json")
    assert speed._read_cache(key) is None  # unreadable: timed again, never an error
    speed._write_cache(key, Timing("mixed_float16", True, 12.5))
    assert speed.forget() == 1 and speed._read_cache(key) is None


def test_the_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(speed.CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert speed.cache_dir() == tmp_path / "runner"
    monkeypatch.setenv(speed.CACHE_VARIABLE, str(tmp_path / "mine"))
    assert speed.cache_dir() == tmp_path / "mine"


# ---------------------------------------------------------------- measuring (TensorFlow)


def test_a_hopeless_candidate_is_stopped_after_one_step():
    """Real timing of a tiny model: the cutoff against a best far below any real step."""
    import numpy as np

    from runner.precision import policy as precision
    from runner.spec import ExperimentSpec
    from runner.training import loop

    spec = ExperimentSpec.model_validate({"name": "t", "model": {"kind": "mlp", "hidden_units": [4]}})
    x, y = np.zeros((8, 4, 4, 1), np.uint8), np.zeros(8, np.int64)
    with precision.policy_scope("float32"):
        model, _ = loop.build_for_training(spec, (4, 4, 1), 2)
        loop.ready_to_train(model, x[:1], y[:1])
    step_s, first_s, steps, executions = speed.time_candidate(model, x, y, xla=False, steps=4, best_s=1e-9)
    assert (steps, executions) == (1, 1) and step_s > 0 and first_s > 0
    step_s, _, steps, executions = speed.time_candidate(model, x, y, xla=False, steps=4)
    assert executions == speed.EXECUTIONS and 1 <= steps <= 4 and step_s > 0


def test_candidates_are_built_aside_from_the_run(write_spec):
    """Timing candidates before the run builds its model changes nothing of the run's model: the
    same layer names (a factory's automatic ones too) and the same initial weights."""
    import numpy as np

    from runner.data.sources import load_splits
    from runner.precision import policy as precision
    from runner.spec import load_spec
    from runner.training import loop
    from tests.conftest import TINY_SPEC

    text = TINY_SPEC.replace(
        'kind = "mlp"\nhidden_units = [16]', 'kind = "factory"\nfactory = "tests.factories:unnamed"'
    )
    spec = load_spec(write_spec(text))
    splits = load_splits(spec.data, spec.seed)

    def run_model():
        with precision.policy_scope(spec.precision.policy), precision.seeded(spec.seed):
            model, _ = loop.build_for_training(spec, splits.input_shape, splits.num_classes)
        return [layer.name for layer in model.layers], model.get_weights()

    from runner import compat

    compat.keras().backend.clear_session()
    names, weights = run_model()
    compat.keras().backend.clear_session()
    with precision.seeded(spec.seed):
        candidates = speed.spec_candidates(spec, splits, {"test": "aside"}, 2)
        candidates.cache = False
        speed.measure([("float32", False), ("mixed_float16", False)], candidates)
    again_names, again_weights = run_model()
    assert again_names == names
    assert all(np.array_equal(a, b) for a, b in zip(weights, again_weights, strict=True))


def test_measure_reads_what_this_machine_already_timed(tmp_path, monkeypatch):
    calls: list = []
    fake_clock(monkeypatch, tmp_path, calls=calls)
    built: list = []

    def build(policy):
        built.append(policy)
        return _tiny_model(policy)

    candidates = speed.Candidates(build, _tiny_batch(), {"model": "tiny"}, 2)
    first = speed.measure([("float32", False), ("mixed_float16", True)], candidates)
    again = speed.measure([("float32", False), ("mixed_float16", True)], candidates)
    assert calls == [("float32", False), ("mixed_float16", True)]  # once each
    assert [t.cached for t in first] == [False, False] and [t.cached for t in again] == [True, True]
    assert [t.step_ms for t in again] == [t.step_ms for t in first] == [10.0, 25.0]


def test_a_model_xla_cannot_compile_is_recorded_not_timed(monkeypatch):
    from runner import compat

    def refuses(model, x, y, *, xla, steps, best_s=None):
        if xla:
            raise compat.tensorflow().errors.InvalidArgumentError(
                None, None, "no XLA kernel for PyFunc\nmore"
            )
        return 0.01, 0.5, steps, 3

    monkeypatch.setattr(speed, "time_candidate", refuses)
    candidates = speed.Candidates(_tiny_model, _tiny_batch(), {"model": "refused"}, 2, cache=False)
    timings = speed.measure([("float32", False), ("float32", True)], candidates)
    assert (
        timings[1].step_ms is None
        and timings[1].note == "XLA cannot compile this model (no XLA kernel for PyFunc)"
    )
    assert speed.xla_choice(timings, "float32", [False, True], None)[0] is False


def test_env_measures_once_caches_and_refresh_measures_again(tmp_path, monkeypatch):
    """`runner env` with a clock that says what the Xeon said: float16 300x slower, bfloat16 2x
    faster. Its table says so, a second call reads the cache, --refresh measures again."""
    from runner.cli import app
    from tests.test_views import table_rows

    calls: list = []
    fake_clock(monkeypatch, tmp_path, calls=calls)
    cli = CliRunner()
    result = cli.invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    rows = {r[0]: r for r in table_rows(result.stdout) if r and r[0] in speed.POLICIES}
    assert rows["mixed_float16"][1:4] == ["3000.0 ms", "25.0 ms", "2.5× slower"]  # its fastest: with XLA
    assert rows["mixed_bfloat16"][3] == "2× faster"
    assert len(calls) == 6 and "measured now" in result.stdout
    cached = cli.invoke(app, ["env"])
    assert len(calls) == 6 and "cached" in cached.stdout
    assert json.loads((tmp_path / "machine.json").read_text())["timings"][0]["policy"] == "float32"
    cli.invoke(app, ["env", "--refresh"])
    assert len(calls) == 12


# ---------------------------------------------------------------- run and check follow the clock


def _check(write_spec, overrides=()):
    from runner.preflight.check import check_experiment
    from runner.spec import load_spec
    from tests.conftest import TINY_SPEC

    return check_experiment(load_spec(write_spec(TINY_SPEC), list(overrides)), timing_steps=2)


def test_check_says_what_a_300x_slower_float16_clock_says(write_spec, tmp_path, monkeypatch):
    """With XLA allowed, "auto" takes it (25 ms against 3,000) and float16 is still 2.5x float32's
    best: the statement says so and names bfloat16; with jit_compile = false, 300x."""
    fake_clock(monkeypatch, tmp_path)
    outcome = _check(write_spec)
    assert outcome.speed["xla"]["used"] is True and "measured 1.2e+02× faster" in outcome.speed["xla"]["why"]
    assert outcome.audit["numerics"]["probe_compiled"] == "xla"  # probed as the run would train
    assert outcome.speed["slow"] and outcome.speed["statement"].startswith(
        "mixed_float16 is 2.5× slower than float32 on this CPU (25.0 ms with XLA vs 10.0 ms without XLA "
        "per step); mixed_bfloat16 (without XLA) is 2× faster than float32 here, the fastest measured"
    )
    no_xla = _check(write_spec, ["training.jit_compile=false"])
    assert no_xla.speed["xla"] == {"setting": False, "used": False, "why": "training.jit_compile = false"}
    assert no_xla.speed["statement"].startswith("mixed_float16 is 300× slower than float32")
    assert no_xla.speed["statement"].endswith("(without XLA: training.jit_compile = false)")


def test_a_short_run_is_not_timed_with_xla(write_spec, tmp_path, monkeypatch):
    """16 steps at 30 ms: half a second of training, which no XLA compile can shorten."""
    calls: list = []
    fake_clock(monkeypatch, tmp_path, step_ms={**FAKE_MS, "mixed_float16": 30.0}, calls=calls)
    outcome = _check(write_spec)
    assert ("mixed_float16", True) not in calls and ("mixed_float16", False) in calls
    assert outcome.speed["xla"]["used"] is False and "could pay for itself" in outcome.speed["xla"]["why"]


def test_a_rule_decides_xla_and_the_statement_says_which(write_spec, tmp_path, monkeypatch):
    calls: list = []
    fake_clock(monkeypatch, tmp_path, calls=calls)
    outcome = _check(write_spec, ["runtime.deterministic=true"])
    assert ("mixed_float16", True) not in calls  # a rule decided: XLA not timed
    assert (
        outcome.speed["xla"]["used"] is False
        and "by rule: runtime.deterministic" in outcome.speed["xla"]["why"]
    )
    assert (
        "300× slower" in outcome.speed["statement"]
        and "(without XLA: auto: no XLA, by rule" in (outcome.speed["statement"])
    )


def test_auto_policy_follows_the_clock(write_spec, tmp_path, monkeypatch):
    """policy = "auto" picks what the clock says is fastest: bfloat16 on the Xeon's figures, float32
    where bfloat16 is slower; and the XLA choice for it follows the clock too."""
    fake_clock(monkeypatch, tmp_path)
    outcome = _check(write_spec, ["precision.policy=auto"])
    choice = outcome.speed["policy"]
    assert choice["used"] == "mixed_bfloat16" and outcome.audit["numerics"].get("skipped") is None
    assert [row["policy"] for row in choice["candidates"]] == ["mixed_bfloat16", "float32", "mixed_float16"]
    assert choice["candidates"][0]["preflight"] == "passed" and choice["candidates"][0]["xla"] is False
    assert outcome.speed["xla"]["used"] is False  # bfloat16: 5 ms without XLA, 10 with
    assert not outcome.speed["slow"]
    amd = {"float32": 10.0, "mixed_bfloat16": 12.0, "mixed_float16": 30.0}
    fake_clock(monkeypatch, tmp_path / "amd", step_ms=amd)
    assert _check(write_spec, ["precision.policy=auto"]).speed["policy"]["used"] == "float32"


def test_auto_policy_where_none_passes_runs_the_fastest_and_its_preflight_stops_it(tmp_path, monkeypatch):
    """float16 variables fail every policy's audit: the choice says none passed, the fastest by
    the clock is what the preflight then stops (exit 1, naming the variables)."""
    from runner import exits
    from runner.preflight.check import check_experiment
    from runner.spec import load_spec
    from tests.conftest import ROOT

    fake_clock(monkeypatch, tmp_path)
    small = ["precision.policy=auto", "data.batch_size=16", "data.train_size=64", "data.test_size=16"]
    outcome = check_experiment(load_spec(ROOT / "specs/bugs/float16_variables.toml", small), timing_steps=2)
    choice = outcome.speed["policy"]
    assert choice["used"] == "mixed_bfloat16" and "no policy passed its preflight" in choice["why"]
    assert all(
        row["preflight"].startswith("failed: ") and "variable_dtype" in row["preflight"]
        for row in choice["candidates"]
    )
    assert outcome.exit_code == exits.CHECK_FAILED
    assert "conv1/kernel is float16" in next(f.detail for f in outcome.findings if f.name == "variable_dtype")


def test_auto_policy_skips_a_faster_policy_whose_preflight_fails(tmp_path, monkeypatch):
    """A softmax that computes in float16 fails mixed_float16's preflight: however fast the clock
    says float16 is, the next fastest that passes runs, and the rows say why."""
    from runner.preflight.check import check_experiment
    from runner.spec import load_spec
    from tests.conftest import ROOT

    fast = {"float32": 10.0, "mixed_bfloat16": 6.0, "mixed_float16": 3.0}
    fake_clock(monkeypatch, tmp_path, step_ms=fast, xla_ms=fast)
    small = ["precision.policy=auto", "data.batch_size=16", "data.train_size=64", "data.test_size=16"]
    outcome = check_experiment(
        load_spec(ROOT / "specs/bugs/float16_softmax_cast.toml", small), timing_steps=2
    )
    rows = outcome.speed["policy"]["candidates"]
    assert [(r["policy"], r["preflight"].split(":")[0]) for r in rows] == [
        ("mixed_float16", "failed"),
        ("mixed_bfloat16", "passed"),
        ("float32", "not checked"),
    ]
    assert outcome.speed["policy"]["used"] == "mixed_bfloat16" and outcome.exit_code == 0


@pytest.mark.slow
def test_a_run_warns_with_the_clocks_figures_and_keeps_them_on_resume(write_spec, tmp_path, monkeypatch):
    """The warning is a run's, not only a check's: an event before training, in the report and in
    speed.json; a resume keeps the choices the run made (no timing again)."""
    from runner import events
    from runner.session import resume_experiment, run_experiment
    from runner.spec import load_spec
    from tests.conftest import TINY_SPEC

    calls: list = []
    fake_clock(monkeypatch, tmp_path / "cache", calls=calls)
    seen: list = []
    spec = load_spec(write_spec(TINY_SPEC), ["training.jit_compile=false", "training.epochs=1"])
    outcome = run_experiment(spec, tmp_path / "reports", seen.append)
    (warning,) = [e for e in seen if isinstance(e, events.Note) and e.level == "warning"]
    assert warning.message.startswith("mixed_float16 is 300× slower than float32 on this CPU")
    assert "mixed_bfloat16 (without XLA) is 2× faster than float32 here" in warning.message
    assert seen.index(warning) < next(i for i, e in enumerate(seen) if isinstance(e, events.EpochStarted))
    assert outcome.report["speed"]["statement"] == warning.message
    assert json.loads((outcome.run_dir / "speed.json").read_text())["statement"] == warning.message
    timed = len(calls)
    (outcome.run_dir / "report.json").unlink()  # as after a kill: resumable
    resumed = resume_experiment(outcome.run_dir)
    assert len(calls) == timed and resumed.report["speed"]["kept"].startswith("chosen when the run started")


def _tiny_batch():
    import numpy as np

    return np.zeros((4, 4, 4, 1), np.uint8), np.zeros(4, np.int64)


def _tiny_model(policy):
    from runner.precision import policy as precision
    from runner.spec import ExperimentSpec
    from runner.training import loop

    spec = ExperimentSpec.model_validate(
        {"name": "t", "model": {"kind": "mlp", "hidden_units": [4]}, "precision": {"policy": policy}}
    )
    x, y = _tiny_batch()
    with precision.policy_scope(policy):
        model, _ = loop.build_for_training(spec, (4, 4, 1), 2)
        loop.ready_to_train(model, x[:1], y[:1])
    return model
