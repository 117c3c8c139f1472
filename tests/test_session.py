"""End to end: tiny real runs through the session, checked against the report.json contract."""

from __future__ import annotations

import json
import math

import pytest

from runner import compat, models, runs
from runner.preflight import speed
from runner.session import run_experiment
from runner.spec import load_spec
from tests.conftest import ROOT, TINY_SPEC

REPORT_KEYS = {
    "name",
    "status",
    "spec",
    "spec_hash",
    "environment",
    "precision",
    "audit",
    "checks",
    "metrics",
    "performance",
}
RUN_FILES = {"spec.toml", "environment.json", "metrics.jsonl", "report.json"}


def _run(write_spec, tmp_path, overrides=()):
    spec = load_spec(write_spec(TINY_SPEC), overrides)
    return run_experiment(spec, tmp_path / "reports")


@pytest.mark.slow
def test_tiny_mixed_float16_run_honours_the_report_contract(write_spec, tmp_path):
    outcome = _run(write_spec, tmp_path)
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    files = {p.name for p in outcome.run_dir.iterdir()}
    assert files >= RUN_FILES
    report = json.loads((outcome.run_dir / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert set(report["environment"]) >= {"python", "tensorflow", "keras", "device"}
    p = report["precision"]
    assert (p["policy"], p["compute_dtype"], p["variable_dtype"]) == (
        "mixed_float16",
        "float16",
        "float32",
    )
    scale = p["loss_scale"]
    assert set(scale) >= {"initial", "final", "min", "overflow_steps"}
    assert math.isfinite(scale["final"]) and scale["final"] > 0 and scale["min"] <= scale["initial"]
    assert report["audit"]["output_dtype"] == "float32"
    assert report["audit"]["optimizer"].startswith("LossScaleOptimizer")  # V3 in Keras 2
    for layer in report["audit"]["layers"]:
        assert set(layer) >= {"name", "class", "compute_dtype", "variable_dtype", "output_dtype"}
    assert report["checks"] and all(c["passed"] for c in report["checks"])
    epochs = report["metrics"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert set(e) >= {
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "seconds",
            "images_per_second",
        }
    assert 0 <= report["metrics"]["test_accuracy"] <= 1 and report["metrics"]["test_loss"] > 0
    perf = report["performance"]
    assert perf["images_per_second"] > 0 and perf["step_time_ms"] > 0 and perf["peak_host_memory_mb"] > 0
    assert "peak_device_memory_mb" in perf
    # Where the memory went, in the order the phases ran; the peak is the largest of them.
    phases = [row["phase"] for row in perf["memory_phases"]]
    assert phases == ["start", "data", "tensorflow", "speed", "model", "preflight", "first epoch"] + [
        "later epochs",
        "evaluation",
        "export",
        "report",
    ]
    assert perf["peak_host_memory_mb"] >= max(row["peak_mb"] for row in perf["memory_phases"]) - 0.1
    # "auto" XLA as the timings decide (speed.json, the report), and the probe compiled as the run trained.
    measured = json.loads((outcome.run_dir / "speed.json").read_text())
    assert report["speed"] == measured
    timings = [speed.Timing.from_dict(t) for t in measured["timings"]]
    assert perf["xla"] == {k: measured["xla"][k] for k in ("used", "why")}
    timed = {(t.policy, t.xla) for t in timings}
    assert timed >= {("float32", False), ("mixed_float16", False)}  # the reference, the policy
    if ("mixed_float16", True) in timed:  # a run long enough for XLA to pay back: the faster trains
        used, why = speed.xla_choice(timings, "mixed_float16", [False, True], None)
    else:  # 16 steps of a 16-unit MLP: too short to time XLA
        used, why = False, speed.too_short_for_xla(timings, ["mixed_float16"], 16)
    assert perf["xla"] == {"used": used, "why": why}
    assert report["audit"]["numerics"]["probe_compiled"] == ("xla" if used else "eager")
    assert runs.read_jsonl(outcome.run_dir / "metrics.jsonl") == epochs
    assert load_spec(outcome.run_dir / "spec.toml") == load_spec(write_spec(TINY_SPEC))
    assert compat.global_policy_name() == "float32"


@pytest.mark.slow
def test_a_model_xla_cannot_compile_trains_without_it_when_auto_chose_xla(write_spec, tmp_path, monkeypatch):
    """ "auto" never costs a run: XLA refused by the model (a host function) means training without it."""
    monkeypatch.setattr(speed, "xla_choice", lambda *_: (True, "auto: XLA (chosen for this test)"))
    text = TINY_SPEC.replace(
        'kind = "mlp"\nhidden_units = [16]', 'kind = "factory"\nfactory = "tests.factories:host_function"'
    )
    outcome = run_experiment(load_spec(write_spec(text), ["training.epochs=1"]), tmp_path / "reports")
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    xla = outcome.report["performance"]["xla"]
    assert xla["used"] is False and "cannot compile this model" in xla["why"]
    assert outcome.report["audit"]["numerics"]["probe_compiled"] == "eager"


@pytest.mark.slow
def test_float32_run_has_no_loss_scaling(write_spec, tmp_path):
    outcome = _run(write_spec, tmp_path, ["precision.policy=float32", "training.epochs=1"])
    report = outcome.report
    assert outcome.exit_code == 0
    assert report["audit"]["optimizer"] == "Adam" and not report["audit"]["loss_scale_optimizer"]
    dtypes = {x["compute_dtype"] for x in report["audit"]["layers"] if x["class"] != "InputLayer"}
    assert dtypes == {"float32"} and report["precision"]["variable_dtype"] == "float32"
    assert report["precision"]["loss_scale"]["final"] is None


@pytest.mark.slow
def test_forced_overflow_is_counted_and_halves_the_scale(write_spec, tmp_path):
    outcome = _run(write_spec, tmp_path, ["precision.initial_scale=1e38", "training.epochs=1"])
    scale = outcome.report["precision"]["loss_scale"]
    assert scale["overflow_steps"] > 0
    assert scale["final"] < 1e38 and scale["min"] == scale["final"]
    assert scale["history"][0] == [0, 1e38]


def _mlp_with(dtype_of: dict[str, str]):
    """An MLP builder whose layers named in `dtype_of` are built with an explicit dtype."""
    keras = compat.keras()

    def build(spec, input_shape, num_classes, output_dtype):
        images = keras.Input(input_shape, dtype="uint8")
        x = keras.layers.Rescaling(1 / 255, dtype=dtype_of.get("scale"), name="scale")(images)
        x = keras.layers.Flatten(dtype=dtype_of.get("flatten"), name="flatten")(x)
        x = keras.layers.Dense(8, dtype=dtype_of.get("hidden"), name="hidden")(x)
        x = keras.layers.Dense(num_classes, dtype=dtype_of.get("logits"), name="logits")(x)
        out = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
        return keras.Model(images, out)

    return build


@pytest.mark.slow
def test_a_float32_layer_in_the_middle_is_a_warning_naming_it(write_spec, tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODEL_BUILDERS, "mlp", _mlp_with({"hidden": "float32"}))
    outcome = _run(write_spec, tmp_path, ["training.epochs=1"])
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    (finding,) = [c for c in outcome.report["checks"] if not c["passed"] and c["severity"] == "warning"]
    assert finding["name"] == "compute_dtype" and "hidden (Dense) computes in float32" in finding["detail"]
    listed = _run(write_spec, tmp_path, ["training.epochs=1", 'checks.float32_layers=["hidden"]'])
    assert all(c["passed"] for c in listed.report["checks"] if c["severity"] != "hint")


def test_a_model_built_outside_the_policy_stops_before_training(write_spec, tmp_path, monkeypatch):
    """The tutorial's bug: every layer in float32 under mixed_float16. runner refuses to train."""
    everything_float32 = {"scale": "float32", "flatten": "float32", "hidden": "float32", "logits": "float32"}
    monkeypatch.setitem(models.MODEL_BUILDERS, "mlp", _mlp_with(everything_float32))
    outcome = _run(write_spec, tmp_path)
    assert (outcome.status, outcome.exit_code) == ("failed", 1)
    failed = [c for c in outcome.report["checks"] if not c["passed"] and c["severity"] == "error"]
    assert [c["name"] for c in failed] == ["compute_dtype"]
    assert "hidden (Dense) computes in float32" in failed[0]["detail"]
    assert "not mixed_float16" in failed[0]["detail"]
    assert outcome.report["metrics"]["epochs"] == []
    assert compat.global_policy_name() == "float32"


def test_float16_variables_stop_the_run(write_spec, tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODEL_BUILDERS, "mlp", _mlp_with({"hidden": "float16"}))
    outcome = _run(write_spec, tmp_path)
    assert outcome.exit_code == 1
    (failed,) = [c for c in outcome.report["checks"] if not c["passed"] and c["severity"] == "error"]
    assert failed["name"] == "variable_dtype" and "hidden/kernel is float16" in failed["detail"]


def test_a_crash_mid_run_still_writes_a_report(write_spec, tmp_path, monkeypatch):
    from runner.training import loop

    def boom(*args, **kwargs):
        raise MemoryError("simulated out of memory")

    monkeypatch.setattr(loop, "train_segment", boom)
    outcome = _run(write_spec, tmp_path)
    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    report = json.loads((outcome.run_dir / "report.json").read_text())
    assert "MemoryError: simulated out of memory" in report["error"]
    assert "Traceback" in (outcome.run_dir / "error.txt").read_text()
    assert compat.global_policy_name() == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16"])
def test_bfloat16_run(write_spec, tmp_path, policy):
    outcome = _run(write_spec, tmp_path, [f"precision.policy={policy}", "training.epochs=1"])
    assert outcome.exit_code == 0
    assert outcome.report["precision"]["compute_dtype"] == "bfloat16"
    assert not outcome.report["audit"]["loss_scale_optimizer"]


@pytest.mark.slow
def test_initial_scale_2_pow_40_completes_with_overflow_reported(tmp_path):
    from tests.conftest import ROOT

    spec = load_spec(ROOT / "specs/bugs/overflow.toml", ["data.train_size=1600", "training.epochs=1"])
    outcome = run_experiment(spec, tmp_path / "reports")
    assert (outcome.status, outcome.exit_code) == ("completed", 0)
    scale = outcome.report["precision"]["loss_scale"]
    assert scale["overflow_steps"] > 0 and scale["final"] < 2.0**40
    assert any(
        c["name"] == "first_step_overflow" and c["severity"] == "warning" for c in outcome.report["checks"]
    )


def _nan_gradients_after(calls: int):
    """A factory whose gradients turn NaN (the forward pass stays finite) after `calls` training steps."""
    keras = compat.keras()
    tf = compat.tensorflow()

    class PoisonGradients(keras.layers.Layer):
        def build(self, input_shape):
            self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

        def call(self, x, training=False):
            if training:
                self.calls.assign_add(1.0)
            poisoned = self.calls > calls

            @tf.custom_gradient
            def identity(v):
                return tf.identity(
                    v
                ), lambda dy: dy * tf.cast(tf.where(poisoned, float("nan"), 1.0), dy.dtype)

            return identity(x)

    def build(spec, input_shape, num_classes, output_dtype):
        images = keras.Input(input_shape, dtype="uint8")
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(images))
        x = PoisonGradients(name="poison")(keras.layers.Dense(8, name="hidden")(x))
        x = keras.layers.Dense(num_classes, name="logits")(x)
        return keras.Model(images, keras.layers.Activation("softmax", dtype="float32")(x))

    return build


@pytest.mark.slow
def test_a_collapsed_loss_scale_ends_the_run_diverged(write_spec, tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODEL_BUILDERS, "mlp", _nan_gradients_after(3))
    outcome = _run(write_spec, tmp_path, ["data.train_size=2000", "training.epochs=3"])
    assert (outcome.status, outcome.exit_code) == ("diverged", 3)
    assert "collapsed" in outcome.report["error"] and "non-finite even unscaled" in outcome.report["error"]
    scale = outcome.report["precision"]["loss_scale"]
    # Halved at every step (Keras 2 stops at 1).
    assert scale["final"] <= max(scale["initial"] / 2**15, 1) and scale["overflow_steps"] >= 15
    assert outcome.report["metrics"]["test_accuracy"] is None
    assert compat.global_policy_name() == "float32"


@pytest.mark.slow
def test_a_failed_declared_check_completes_with_exit_1(write_spec, tmp_path):
    outcome = _run(write_spec, tmp_path, ["training.epochs=1", "checks.min_test_accuracy=0.999"])
    assert (outcome.status, outcome.exit_code) == ("completed", 1)
    (failed,) = [c for c in outcome.report["checks"] if not c["passed"] and c["severity"] == "error"]
    assert failed["name"] == "min_test_accuracy" and "expected test accuracy >= 0.999" in failed["detail"]


@pytest.mark.slow
def test_checkpoints_every_n_steps_at_exactly_those_steps_whatever_the_steps_per_execution(
    write_spec, tmp_path
):
    """25 steps, 3 per execution: executions end at each multiple of 10 too (3, 6, 9, 10, 13, ...), so
    the checkpoints are at 10, 20 and the epoch's end (25), not at the first execution past each."""
    overrides = [
        "data.train_size=800",
        "data.validation_fraction=0.0",
        "training.epochs=1",
        "training.steps_per_execution=3",
        "runtime.checkpoint_every_steps=10",
    ]
    outcome = _run(write_spec, tmp_path, overrides)
    assert outcome.status == "completed"
    kept = sorted(p.stem for p in (outcome.run_dir / "checkpoints").glob("step-*.npz"))
    assert kept == ["step-00000020", "step-00000025"]  # the newest two of 10, 20, 25


@pytest.mark.slow
def test_the_quickstart_runs_through_the_library_with_plain_events(tmp_path):
    """No terminal: the library entry point takes a spec, an output folder and an event sink (here a
    list), as a worker process, a notebook or a cluster job would call it."""
    from runner import events

    overrides = [
        "data.train_size=1280",
        "data.test_size=256",
        "training.epochs=2",
        "checks.min_test_accuracy=0.0",
    ]
    spec = load_spec(ROOT / "specs" / "quickstart.toml", overrides)
    seen: list = []
    outcome = run_experiment(spec, tmp_path / "reports", seen.append)
    assert isinstance(seen[0], events.RunStarted) and seen[0].run_dir == outcome.run_dir
    assert seen[-1] == events.RunFinished(outcome.run_dir, "completed", 0) and outcome.exit_code == 0
    assert [e.epoch for e in seen if isinstance(e, events.EpochStarted)] == [1, 2]
    ended = [e for e in seen if isinstance(e, events.EpochEnded)]
    assert [e.epoch for e in ended] == [1, 2]
    assert [e.record for e in ended] == runs.read_jsonl(outcome.run_dir / "metrics.jsonl")
    assert all(0 < e.record["loss_scale"] < float("inf") for e in ended)  # mixed_float16: its loss scale
    progress = [e for e in seen if isinstance(e, events.StepsDone)]
    assert progress and all(0 < e.completed <= e.steps and "loss" in e.metrics for e in progress)


@pytest.mark.slow
def test_every_skipped_step_is_placed_whatever_the_steps_per_execution(write_spec, tmp_path):
    """An initial loss scale far too high: the first steps overflow, one after another, each halving
    the scale. Recorded after every step inside the execution, the history is the same at 1 and at
    4 steps per call (observed once per call, 4 per call would place only every fourth halving)."""
    histories = []
    for steps in (1, 4):
        overrides = [
            "precision.initial_scale=1e12",
            "training.epochs=1",
            "data.validation_fraction=0.0",
            f"training.steps_per_execution={steps}",
        ]
        scale = _run(write_spec, tmp_path / str(steps), overrides).report["precision"]["loss_scale"]
        histories.append((scale["history"], scale["overflow_steps"]))
    (history, skipped), other = histories
    assert skipped >= 8 and other == (history, skipped)
    assert [step for step, _ in history[1 : skipped + 1]] == list(range(1, skipped + 1))  # one per step


@pytest.mark.slow
def test_the_report_says_what_augmentation_ran(write_spec, tmp_path):
    overrides = [
        "training.epochs=1",
        "data.augmentation.horizontal_flip=true",
        "data.augmentation.pad_crop=4",
    ]
    outcome = _run(write_spec, tmp_path, overrides)
    assert outcome.status == "completed"
    assert outcome.report["data"]["augmentation"] == ["horizontal flip", "pad 4 and random crop"]
    assert all(
        layer["class"] not in {"RandomFlip", "RandomCrop"} for layer in outcome.report["audit"]["layers"]
    )
    plain = _run(write_spec, tmp_path / "plain", ["training.epochs=1"])
    assert plain.report["data"]["augmentation"] == []
