"""runner/studies.py: a [sweep] with `trials = N` run by Optuna. The fast tests use Optuna itself (no
TensorFlow): the search space's mapping, seeded and reproducible points, what samplers learn from a
failed trial, and claiming trials from a shared study in several processes. The slow ones run
studies on shapes: TPE with median pruning killed (SIGKILL) and resumed, two `runner sweep-worker`
processes on one journal study, a diverging trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runner import runs, studies, tuning
from runner.cli import app
from runner.spec import SpecError, load_plan, load_study, trial_spec
from tests.conftest import TINY_SPEC
from tests.test_resume import ROOT, runner, wait_for

optuna = pytest.importorskip("optuna", reason="the optuna extra: pip install -e '.[optuna]'")
from optuna.trial import TrialState  # noqa: E402

cli = CliRunner()

STUDY = """
[runtime]
tensorboard = false
[export]
formats = []
[sweep]
"""


def write_study(
    tmp_path: Path, sweep: str, *, epochs: int = 3, policy: str = "float32", extra: str = ""
) -> Path:
    """conftest's tiny spec (an MLP on 256 shapes, a quarter held out for validation) as study "st"."""
    base = (
        TINY_SPEC.replace('name = "tiny"', 'name = "st"')
        .replace('policy = "mixed_float16"', f'policy = "{policy}"')
        .replace("epochs = 2", f"epochs = {epochs}")
        .replace("test_size = 64", "test_size = 64\nvalidation_fraction = 0.25")
    )
    path = tmp_path / "study.toml"
    path.write_text(
        base.replace("[training]", "[training]\nsteps_per_execution = 2") + extra + STUDY + sweep + "\n"
    )
    return path


# ---------------------------------------------------------------- the [sweep] of a study


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ('method = "tpe"\n"seed" = [1, 2]', "sweep.trials: expected a positive integer"),
        ('trials = 0\n"seed" = [1, 2]', "sweep.trials: expected a positive integer"),
        ('trials = 2\nsamples = 2\n"seed" = [1, 2]', "a study's size is sweep.trials; expected no samples"),
        ('seed = 3\n"training.learning_rate" = [0.1, 0.01]', "sweep.seed: expected only in a study"),
        ('trials = 3\n"seed" = [1, 2]', "a grid study runs each point once; expected at most 2"),
        ('trials = 2\nstorage = ""\n"seed" = [1, 2]', 'sweep.storage: expected "sqlite"'),
        (
            'trials = 2\nmethod = "random"\n"seed" = [1, 2]\n[sweep.pruning]\nkind = "asha"',
            'sweep.pruning.kind: expected "median" or "hyperband" or "none"; got "asha"',
        ),
        (
            'trials = 2\nmethod = "random"\n"seed" = [1, 2]\n[sweep.pruning]\npatience = 2',
            "sweep.pruning.patience: expected one of kind, startup_trials, warmup_epochs",
        ),
        (
            'trials = 2\nmethod = "random"\nobjective = "images_per_second"\n"seed" = [1, 2]\n'
            '[sweep.pruning]\nkind = "median"',
            "pruning watches the objective each epoch",
        ),
        ('method = "bayes"\n"seed" = [1]', 'expected "grid" or "random" or "tpe" or "cmaes"; got "bayes"'),
        (
            'method = "cmaes"\ntrials = 4\nobjective = ["test_accuracy", "images_per_second"]\n'
            '"training.learning_rate" = { log_uniform = [1e-3, 1e-1] }',
            "CMA-ES optimizes one objective",
        ),
        (
            'method = "tpe"\ntrials = 4\nobjective = ["test_accuracy", "images_per_second"]\n'
            '"training.learning_rate" = { log_uniform = [1e-3, 1e-1] }\n[sweep.pruning]\nkind = "median"',
            "Optuna prunes on one objective",
        ),
        (
            'method = "tpe"\ntrials = 4\nobjective = ["test_accuracy", "test_accuracy"]\n"seed" = [1, 2]',
            "or a list of distinct ones (a Pareto front)",
        ),
        (
            'method = "tpe"\ntrials = 4\nobjective = ["test_accuracy", "step_time_ms"]\nmode = "max"\n'
            '"seed" = [1, 2]',
            'sweep.mode: expected "max" or "min" for each objective (2)',
        ),
    ],
    ids=[
        "tpe-without-trials",
        "zero-trials",
        "samples-in-a-study",
        "sampler-seed-in-a-plan",
        "grid-study-larger-than-its-grid",
        "empty-storage",
        "unknown-pruner",
        "unknown-pruning-option",
        "pruning-a-speed-objective",
        "unknown-method",
        "cmaes-with-two-objectives",
        "pruning-two-objectives",
        "the-same-objective-twice",
        "one-mode-for-two-objectives",
    ],
)
def test_a_malformed_study_is_one_message_naming_the_option(tmp_path, sweep, expected):
    result = cli.invoke(app, ["validate", str(write_study(tmp_path, sweep))])
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


def test_a_value_of_the_search_space_that_makes_no_valid_spec_is_named_before_anything_runs(tmp_path):
    path = write_study(
        tmp_path,
        'method = "tpe"\ntrials = 4\n"precision.policy" = ["float32", "float8"]\n'
        '"training.learning_rate" = { log_uniform = [1e-3, 50.0] }',
    )
    result = cli.invoke(app, ["run", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert 'precision.policy: expected one of float32, mixed_float16, mixed_bfloat16, auto; got "float8"' in (
        result.output
    )
    assert "training.learning_rate: expected a value <= 10.0; got 50.0" in result.output
    assert not (tmp_path / "out").exists()


def test_validate_prints_the_search_space_and_the_study_without_tensorflow(tmp_path):
    path = write_study(
        tmp_path,
        'method = "tpe"\ntrials = 12\nseed = 5\n"training.learning_rate" = { log_uniform = [1e-3, 0.3] }\n'
        '"precision.policy" = ["float32", "mixed_bfloat16"]\n[sweep.pruning]\nkind = "median"',
    )
    code = (
        "import sys; from runner.cli import app; sys.argv = ['runner', 'validate', sys.argv[1]]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'tensorflow' not in sys.modules and 'optuna' not in sys.modules, 'imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "a study: 12 trials, method tpe, seed 5" in out
    assert 'training.learning_rate: {"log_uniform": [0.001, 0.3]}' in out
    assert "median pruning (after 4 trials, from epoch 2)" in out


def test_a_study_is_no_plan_and_each_trial_is_an_experiment_of_its_own(tmp_path):
    path = write_study(tmp_path, 'trials = 2\nmethod = "random"\n"model.hidden_units" = [[8], [16, 8]]')
    with pytest.raises(SpecError, match="a study of 2 trials"):
        load_plan(path)
    study = load_study(path)
    assert study is not None and study.seed == 7  # the spec's seed, as [sweep] names none
    spec = trial_spec(study, {"model.hidden_units": [16, 8]}, 3)
    assert spec.name == "st-t003-_16_8_" and spec.model.hidden_units == [16, 8]
    assert trial_spec(study, {"model.hidden_units": [16, 8]}, 4).name != spec.name
    assert load_study(write_study(tmp_path, '"seed" = [1, 2]')) is None  # a plan fixed in advance


# ---------------------------------------------------------------- Optuna: the search space, seeds


def test_the_distributions_map_onto_optunas_and_choices_that_are_lists_come_back_as_lists():
    axes = {
        "training.learning_rate": {"log_uniform": [1e-4, 1e-1]},
        "training.momentum": {"uniform": [0.5, 0.99]},
        "data.batch_size": {"int_uniform": [16, 128]},
        "model.hidden_units": [[16], [32, 16]],
        "precision.policy": {"choice": ["float32", "mixed_bfloat16"]},
    }
    made = studies.distributions(axes)
    assert made["training.learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert made["training.momentum"] == optuna.distributions.FloatDistribution(0.5, 0.99)
    assert made["data.batch_size"] == optuna.distributions.IntDistribution(16, 128)
    assert made["model.hidden_units"].choices == ("[16]", "[32, 16]")
    study = optuna.create_study(sampler=studies.make_sampler("random", 1, 8, None))
    for _ in range(8):
        params = studies.decoded(study.ask(fixed_distributions=made).params, axes)
        assert params["model.hidden_units"] in ([16], [32, 16])
        assert 1e-4 <= params["training.learning_rate"] <= 1e-1 and type(params["data.batch_size"]) is int
        assert list(params) == list(axes)


def objective(params: dict) -> float:
    """A deterministic stand-in for training: best at x = 0.3, y = "b"."""
    return -((params["x"] - 0.3) ** 2) - (0.0 if params["y"] == "b" else 0.2)


SPACE = {"x": {"uniform": [0.0, 1.0]}, "y": ["a", "b", "c"]}


def drive_in_memory(method: str, seed: int, trials: int) -> list[dict]:
    study = optuna.create_study(
        direction="maximize", sampler=studies.make_sampler(method, seed, trials, None)
    )
    found = []
    for _ in range(trials):
        trial = study.ask(fixed_distributions=studies.distributions(SPACE))
        params = studies.decoded(trial.params, SPACE)
        study.tell(trial, objective(params))
        found.append(params)
    return found


@pytest.mark.parametrize("method", ["tpe", "random", "cmaes"])
def test_the_same_seed_gives_the_same_trials_and_another_seed_others(method):
    first = drive_in_memory(method, 3, 12)
    assert first == drive_in_memory(method, 3, 12)
    assert first != drive_in_memory(method, 4, 12)
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 12


def test_each_trial_draws_from_its_own_seed_so_drivers_that_start_together_draw_different_points():
    """Two drivers each open the study (its own sampler object) and ask at once: trial 0 and trial 1
    get different points, and trial 0 the same as a lone driver's trial 0."""
    storage = optuna.storages.InMemoryStorage()
    made = studies.distributions(SPACE)
    one = optuna.create_study(
        study_name="s", storage=storage, sampler=studies.make_sampler("tpe", 9, 12, None)
    )
    two = optuna.load_study(study_name="s", storage=storage, sampler=studies.make_sampler("tpe", 9, 12, None))
    a, b = one.ask(fixed_distributions=made), two.ask(fixed_distributions=made)
    assert (a.number, b.number) == (0, 1) and a.params != b.params
    lone = optuna.create_study(sampler=studies.make_sampler("tpe", 9, 12, None))
    assert lone.ask(fixed_distributions=made).params == a.params


def failing_study(learn: bool, seed: int) -> int:
    """x in [0, 1] is better the higher it is, but every x > 0.6 fails (a learning rate that diverges):
    how many of the trials after the random start land in the failing region."""
    study = optuna.create_study(direction="maximize", sampler=studies.make_sampler("tpe", seed, 30, None))
    made, failing = {"x": optuna.distributions.FloatDistribution(0, 1)}, 0
    for number in range(30):
        trial = study.ask(fixed_distributions=made)
        if trial.params["x"] > 0.6:
            trial.set_user_attr("learn", learn)  # what studies.tell marks a precision failure with
            study.tell(trial, state=TrialState.FAIL)
            failing += number >= studies.startup_trials(30)
        else:
            study.tell(trial, trial.params["x"])
    return failing


def test_the_sampler_learns_from_failed_trials_and_proposes_the_failing_region_less():
    """Optuna's TPE skips failed trials, so it keeps proposing the region that fails; runner shows
    them to it as the worst trials (LearningView)."""
    learned = sum(failing_study(True, seed) for seed in range(3))
    ignored = sum(failing_study(False, seed) for seed in range(3))
    assert learned < 0.75 * ignored, (learned, ignored)


def test_the_learning_view_shows_a_precision_failure_as_the_worst_trial_and_hides_a_bad_input():
    study = optuna.create_study(direction="maximize")
    made = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for value, learn in ((0.5, None), (None, True), (None, False)):
        trial = study.ask(fixed_distributions=made)
        if value is None:
            trial.set_user_attr("learn", learn)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    seen = studies.LearningView(study).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert [(t.number, t.state) for t in seen] == [(0, TrialState.COMPLETE), (1, TrialState.PRUNED)]
    assert seen[1].intermediate_values == {}  # ranked below every trial that reported
    assert study.trials[1].state == TrialState.FAIL  # the study itself is untouched


def test_a_multi_objective_study_has_a_direction_per_objective_and_the_comparison_their_front(tmp_path):
    path = write_study(
        tmp_path,
        'method = "tpe"\ntrials = 4\nobjective = ["test_accuracy", "step_time_ms"]\n'
        '"training.learning_rate" = { log_uniform = [1e-3, 1e-1] }',
    )
    definition = load_study(path)
    assert definition is not None and definition.options.front == (
        ("test_accuracy", "max"),
        ("step_time_ms", "min"),
    )
    study = studies.open_study(studies.create(definition, tmp_path / "out"))
    assert [d.name for d in study.optuna_study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.objectives == [("test_accuracy", "max"), ("step_time_ms", "min")]


def test_a_plan_made_in_advance_takes_several_objectives_too_and_sweep_json_keeps_them(tmp_path):
    from runner import sweeps

    path = write_study(tmp_path, 'objective = ["test_accuracy", "images_per_second"]\n"seed" = [1, 2]')
    variants = load_plan(path)
    assert variants[0].objective == ("test_accuracy", "max")
    assert variants[0].front == (("test_accuracy", "max"), ("images_per_second", "max"))
    sweeps.write_plan(tmp_path, variants)
    assert sweeps.read_plan(tmp_path)[1].front == variants[0].front


# ---------------------------------------------------------------- claiming trials in several processes


CLAIMER = """
import sys
from pathlib import Path
from runner import runs, studies, tuning
study = studies.open_study(Path(sys.argv[1]))
print("ready", flush=True)
while sys.stdin.readline():  # the test's "go", given to every process at once: they race for a trial
    claimed = studies.claim(study)
    if claimed is None:
        print("done", flush=True)
        break
    study.optuna_study.tell(claimed.number, float(claimed.number))
    print(claimed.number, flush=True)
"""


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_drivers_claiming_at_once_make_exactly_the_studys_trials_and_none_twice(tmp_path, storage):
    """Three processes claim trials from one study in rounds, all at once in each: the lock in the
    sweep directory keeps the study at its 22 trials (the last round: three processes for one
    trial; without the lock, measured, 24), each claimed by one process."""
    path = write_study(
        tmp_path,
        f'method = "random"\ntrials = 22\nstorage = "{storage}"\n'
        '"training.learning_rate" = { log_uniform = [1e-3, 1e-1] }',
    )
    definition = load_study(path)
    assert definition is not None
    sweep_dir = studies.create(definition, tmp_path / "out")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(sweep_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    assert [p.stdout.readline().strip() for p in procs if p.stdout] == ["ready"] * 3
    claimed: dict[int, list[int]] = {p.pid: [] for p in procs}
    running = list(procs)
    while running:
        for proc in running:  # the round's start, given to all before any answer is read
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in list(running):
            assert proc.stdout is not None
            answer = proc.stdout.readline().strip()
            if answer == "done":
                running.remove(proc)
            else:
                claimed[proc.pid].append(int(answer))
    assert all(p.wait(timeout=60) == 0 for p in procs)
    numbers = sorted(n for found in claimed.values() for n in found)
    assert numbers == list(range(22))
    assert all(claimed.values())  # every process claimed in the rounds
    trials = studies.open_study(sweep_dir).optuna_study.trials
    assert len(trials) == 22 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.number: t.user_attrs["worker"]["pid"] for t in trials} == {
        n: pid for pid, found in claimed.items() for n in found
    }


def test_a_study_without_the_optuna_extra_is_one_message_naming_the_install(tmp_path, monkeypatch):
    path = write_study(tmp_path, 'trials = 2\nmethod = "random"\n"seed" = [1, 2]')
    real = tuning.importlib.util.find_spec
    monkeypatch.setattr(
        tuning.importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    result = cli.invoke(app, ["run", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "pip install -e '.[optuna]'" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_a_sweep_directory_that_is_no_study_is_refused_by_the_worker(tmp_path):
    result = cli.invoke(app, ["sweep-worker", str(tmp_path)])
    assert result.exit_code == 2 and "no study.json; expected a study's sweep directory" in result.output
    (tmp_path / "study.json").write_text('{"trials": "many"}')
    result = cli.invoke(app, ["sweep-worker", str(tmp_path)])
    assert (
        result.exit_code == 2 and "study.json (a study)" in result.output and "Traceback" not in result.output
    )


# ---------------------------------------------------------------- studies on shapes (slow)


def trial_rows(sweep_dir: Path) -> list[dict]:
    """Each trial as the study holds it: number, state, params, its run directory's report."""
    trials = studies.open_study(sweep_dir).optuna_study.trials
    rows = []
    for t in trials:
        report = json.loads((sweep_dir / t.user_attrs["run_dir"] / "report.json").read_text())
        rows.append({"number": t.number, "state": t.user_attrs["status"], "trial": t, "report": report})
    return rows


def replayed_params(sweep_dir: Path) -> list[dict]:
    """Each trial's point asked again of a fresh study holding the trials before it as they ended:
    what the sampler gives from the seed and the history, whatever the training's timing."""
    file = studies.read_file(sweep_dir)
    made = studies.distributions(file.axes)
    trials = studies.open_study(sweep_dir).optuna_study.trials
    points = []
    for n in range(len(trials)):
        sampler = studies.make_sampler(file.method, file.seed, file.trials, None)
        replay = optuna.create_study(direction="maximize", sampler=sampler)
        for before in trials[:n]:
            replay.add_trial(
                optuna.trial.create_trial(
                    params=before.params,
                    distributions=before.distributions,
                    value=before.value,
                    state=before.state,
                    intermediate_values=before.intermediate_values,
                    user_attrs=before.user_attrs,
                )
            )
        points.append(replay.ask(fixed_distributions=made).params)
    return points


@pytest.mark.slow
def test_a_tpe_study_with_median_pruning_survives_a_sigkill_and_resumes_to_its_twelve_trials(tmp_path):
    """The issue's acceptance: 12 TPE trials over learning rate and policy, median pruning, on shapes.
    The sweep process is killed (SIGKILL) while trial 1 trains: its trial process checkpoints and
    stops (its driver is gone), and `runner resume SWEEP_DIR` resumes it from its checkpoint and runs
    the rest. 12 trials, none repeated, some pruned, the best marked, the points those of the seed."""
    path = write_study(
        tmp_path,
        'method = "tpe"\ntrials = 12\nseed = 11\nobjective = "val_accuracy"\n'
        '"training.learning_rate" = { log_uniform = [1e-4, 0.5] }\n'
        '"precision.policy" = ["float32", "mixed_bfloat16"]\n[sweep.pruning]\nkind = "median"\n'
        "startup_trials = 2\nwarmup_epochs = 0",
        epochs=6,
    )
    out = tmp_path / "out"
    sweep = runner("run", path, "--output", out, wait=False)
    trial_one = None
    try:  # trial 1 (a startup trial: never pruned) has trained an epoch: freeze it, kill the driver
        wait_for(lambda: any((p / "metrics.jsonl").exists() for p in out.glob("*/st-t001-*")), timeout=300)
        (trial_one,) = out.glob("*/st-t001-*")
        pid = int((trial_one / runs.LOCK_NAME).read_text())
        os.kill(pid, signal.SIGSTOP)  # so that it cannot finish before it sees its driver gone
    finally:
        sweep.send_signal(signal.SIGKILL)
        sweep.wait(timeout=60)
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: (trial_one / "report.json").exists(), timeout=120)  # it stops, checkpointing
    stopped = json.loads((trial_one / "report.json").read_text())
    assert stopped["status"] == "interrupted" and "the end of the study's driver" in stopped["error"]
    (sweep_dir,) = [p for p in out.iterdir() if studies.is_study_dir(p)]
    result = runner("resume", sweep_dir)
    assert result.returncode == 0, result.stderr
    rows = trial_rows(sweep_dir)
    assert [r["number"] for r in rows] == list(range(12))
    assert len({r["report"]["run_dir"] for r in rows}) == 12 == len(list(sweep_dir.glob("st-t*")))
    assert all(r["report"]["trial"]["number"] == r["number"] for r in rows)
    resumed = rows[1]["report"]
    assert resumed["status"] == "completed" and resumed["resumes"][0]["from"]  # from its checkpoint
    assert list(resumed["trial"]["reported"]) == [str(e) for e in range(1, 7)]
    states = [r["state"] for r in rows]
    assert "pruned" in states and "completed" in states, states
    for r in rows:
        if r["state"] == "pruned":
            assert r["trial"].state == TrialState.PRUNED and r["report"]["trial"]["pruned_at_epoch"] < 6
            assert r["report"]["checkpoint"]  # stopped through runner's stop path: checkpoint written
    assert [r["trial"].params for r in rows] == replayed_params(sweep_dir)
    comparison = json.loads((sweep_dir / "comparison.json").read_text())
    best_trial = studies.open_study(sweep_dir).optuna_study.best_trial
    assert comparison["objective"]["best"]["label"].startswith(f"#{best_trial.number} ")
    assert [row["trial"] for row in comparison["rows"] if row["rank"] == 1][0] == best_trial.number
    for document in ("comparison.md", "comparison.html"):
        assert f"#{best_trial.number} " in (sweep_dir / document).read_text()
    assert "12 trials:" in result.stdout and "pruned" in result.stdout


@pytest.mark.slow
def test_two_sweep_workers_share_a_journal_study_and_a_diverging_trial_fails_with_its_reason(tmp_path):
    """`runner sweep-create`, then two `runner sweep-worker` processes at once on a journal file: 8
    trials between them, none twice. Half the points start at a loss scale of 1e20 under
    mixed_float16 (every step overflows): those trials fail, with the reason, and the study goes on.
    Two objectives (accuracy and speed): the comparison's Pareto front is Optuna's best trials."""
    path = write_study(
        tmp_path,
        'method = "random"\ntrials = 8\nseed = 2\nstorage = "journal"\n'
        'objective = ["test_accuracy", "images_per_second"]\n'
        '"training.learning_rate" = { log_uniform = [1e-3, 0.1] }\n'
        '"precision.initial_scale" = [1024.0, 1e20]',
        epochs=1,
        policy="mixed_float16",
        extra="[checks]\nmax_consecutive_skipped_steps = 4\n",
    )
    created = runner("sweep-create", path, "--output", tmp_path / "out")
    assert created.returncode == 0, created.stderr
    sweep_dir = Path(created.stdout.strip())
    assert (sweep_dir / "study.journal").is_file() and not (sweep_dir / "study.db").exists()
    workers = [runner("sweep-worker", sweep_dir, wait=False) for _ in range(2)]
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], [w.stderr.read() for w in workers if w.stderr]
    rows = trial_rows(sweep_dir)
    assert [r["number"] for r in rows] == list(range(8))
    assert len({r["report"]["run_dir"] for r in rows}) == 8 == len(list(sweep_dir.glob("st-t*")))
    assert len({r["trial"].user_attrs["worker"]["pid"] for r in rows}) == 2
    for r in rows:
        diverging = r["trial"].params["precision.initial_scale"] == 1e20
        assert r["state"] == ("failed" if diverging else "completed"), r["trial"].user_attrs
        if diverging:
            assert r["trial"].state == TrialState.FAIL and r["trial"].user_attrs["learn"] is True
            assert (
                "diverged" in r["trial"].user_attrs["reason"]
                and "loss scale" in r["trial"].user_attrs["reason"]
            )
    assert {r["state"] for r in rows} == {"failed", "completed"}
    comparison = json.loads((sweep_dir / "comparison.json").read_text())
    assert sorted(row["trial"] for row in comparison["rows"]) == list(range(8))
    # Two objectives: each completed trial told both, the comparison marks their Pareto front
    assert comparison["front"] == [["test_accuracy", "max"], ["images_per_second", "max"]]
    completed = [r for r in rows if r["state"] == "completed"]
    assert all(len(r["trial"].values) == 2 for r in completed)
    on_front = {row["trial"] for row in comparison["rows"] if row["pareto"]}
    best = studies.open_study(sweep_dir).optuna_study.best_trials  # Optuna's own front
    assert on_front == {t.number for t in best}
    assert "Pareto front" in (sweep_dir / "comparison.html").read_text()


def test_env_of_a_trial_process_that_is_not_json_is_bad_input(monkeypatch):
    from runner.spec import BadInput
    from runner.training import trial

    monkeypatch.setenv(trial.VARIABLE, "{not json")
    with pytest.raises(BadInput, match="RUNNER_TRIAL: expected the JSON a study's driver sets"):
        trial.from_environment()
    monkeypatch.delenv(trial.VARIABLE)
    assert trial.from_environment() is None
