"""The files runner writes for others to read, as typed, versioned models: report.json (`RunReport`),
comparison.json (`Comparison`), sweep.json (`SweepPlan`) and export/export.json (`ExportRecord`).

Every writer builds one of these models and every reader in runner loads one (`read_report`, …), so
the shape of each file is written down once, here, with a `schema_version`; `runner schema --report`
prints its JSON Schema for your own tools. A file written by an earlier version is brought to this
one by one explicit migration (`migrate_report`), and a file from a newer runner is refused by name.

Sections whose content belongs to another room and varies with it (the audit's layers, the speed
measurements, an export's files, the spec itself, whose own schema is `runner schema`) are typed
as JSON objects here and described where they are made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runner.spec import BadInput, read_toml
from runner.training.telemetry import EpochRecord as Epoch  # one epoch's metrics: its own model

REPORT_VERSION = 2  # 1: report.json before it had a version (runner before issue 31)
COMPARISON_VERSION = 1
SWEEP_VERSION = 1
EXPORT_VERSION = 1

# pruned: a study's trial its pruner stopped at an epoch's end (checkpoint written; not resumable).
Status = Literal["completed", "failed", "diverged", "interrupted", "pruned"]
JsonObject = dict[str, Any]


class RunDirError(BadInput):
    """A run directory, or a file runner wrote, that cannot be read back: where, which field, what was
    expected."""


class Record(BaseModel):
    """A section whose fields are all named here: an unknown one is a writer's mistake."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OpenRecord(BaseModel):
    """A section whose named fields every writer gives, and which a source or a version may extend."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---------------------------------------------------------------- report.json


class Threads(Record):
    """TensorFlow's thread pools as the run had them, and why (a parallel sweep's share, or the defaults)."""

    intra_op: int | None = None
    inter_op: int | None = None
    why: str = ""


class Environment(Record):
    """The versions and the device a run had (environment.json holds the rest)."""

    python: str | None = None
    tensorflow: str | None = None
    keras: str | None = None
    device: str | None = None
    threads: Threads | None = None


class SkippedFiles(Record):
    """Files `data.skip_bad_files` left out: how many, and the first of them by name."""

    count: int
    first: list[str]


class DataSummary(OpenRecord):
    """The data a run read: every source gives the first six fields; a folder adds its class names,
    counts, fingerprint and skipped files, a TFDS dataset where it came from (`tfds`)."""

    source: str
    input_shape: list[int]
    num_classes: int
    train: int
    validation: int
    test: int
    notes: list[str] = Field(default_factory=list, description="what loading changed, in words")
    augmentation: list[str] = Field(default_factory=list, description="the augmentation, in words")
    class_names: list[str] | None = None
    counts: dict[str, dict[str, int]] | None = None
    fingerprint: dict[str, str] | None = None
    skipped_files: SkippedFiles | None = None
    tfds: JsonObject | None = None


class LossScaleSummary(Record):
    """The loss scale over training: its change points (step, scale) and the skipped steps."""

    initial: float | None = None
    final: float | None = None
    min: float | None = None
    overflow_steps: int = 0
    steps: int | None = None
    history: list[tuple[int, float]] = Field(default_factory=list)
    history_thinned: bool = False
    skipped_per_interval: list[float] | None = Field(
        default=None, description="the fraction of steps skipped in each growth interval"
    )

    def described(self, of_steps: bool = False) -> str | None:
        """'32768 → 4096 (min 4096, 3 skipped steps)' (`of_steps`: '… of 60)'); None without a scale."""
        if self.initial is None:
            return None
        shown = {k: "—" if v is None else f"{v:g}" for k, v in (("final", self.final), ("min", self.min))}
        skipped = f"{self.overflow_steps} skipped step{'' if self.overflow_steps == 1 else 's'}"
        total = f" of {'?' if self.steps is None else self.steps}" if of_steps else ""
        return f"{self.initial:g} → {shown['final']} (min {shown['min']}, {skipped}{total})"


class DeclaredLayer(Record):
    """A layer that [precision.layers] gave its own policy, and the dtype it computed in."""

    path: str
    pattern: str
    policy: str
    compute_dtype: str


class PrecisionSummary(Record):
    """The dtypes as the built model has them (not as the spec asked) and the loss scale."""

    policy: str
    compute_dtype: str | None = None
    variable_dtype: str | None = None
    loss_scale: LossScaleSummary | None = None
    layers_per_dtype: dict[str, int] = Field(
        default_factory=dict, description="the layers that compute (not containers), per compute dtype"
    )
    declared_layers: list[DeclaredLayer] = Field(default_factory=list)


class CheckResult(Record):
    """One check's finding: a failed `error` fails the run, a `warning` or `hint` does not."""

    name: str
    passed: bool
    detail: str
    severity: Literal["error", "warning", "hint"] = "error"


class Metrics(Record):
    epochs: list[Epoch] = Field(default_factory=list)
    test_loss: float | None = None
    test_accuracy: float | None = None


class XlaUse(Record):
    """Whether the training step was compiled by XLA, and why (measured, or set by the spec)."""

    used: bool
    why: str


class MemoryPhase(Record):
    """Resident host memory (MB) at a phase's start, its peak and end, and its rise above the start."""

    phase: str
    start_mb: float
    peak_mb: float
    end_mb: float
    rise_mb: float


class Performance(Record):
    """Throughput, step time, memory and the execution plan of the run's timed epochs."""

    images_per_second: float | None = None
    step_time_ms: float | None = None
    peak_device_memory_mb: float | None = None
    steps_per_execution: int | None = None
    steps_per_execution_why: str | None = None
    peak_host_memory_mb: float | None = None
    memory_phases: list[MemoryPhase] = Field(default_factory=list)
    memory_phases_exact: bool | None = None
    xla: XlaUse | None = None


class Distribution(Record):
    """How the run was spread: the tf.distribute strategy, its workers and replicas, the batch split."""

    strategy: str
    workers: int
    replicas: int
    global_batch: int
    per_replica_batch: int
    devices: list[str] = Field(default_factory=list)


class Divergence(Record):
    """Where a diverged run went wrong, what it had reached, and the checkpoint kept from before."""

    step: int
    diagnosis: str | None = None
    last_good_epoch: Epoch | None = None
    checkpoint: str | None = None


class Resume(Record):
    """One resume of the run: when, from which checkpoint, and the checkpoints skipped as unreadable."""

    at: str
    from_checkpoint: str | None = Field(default=None, alias="from")
    skipped: list[str] = Field(default_factory=list)


class EarlyStopping(OpenRecord):
    """[training.early_stopping] as given (its fields), and where it stopped the run."""

    monitor: str
    mode: str
    stopped_at_epoch: int | None = None
    best_epoch: int | None = None
    best_value: float | None = None
    values: list[float | None] = Field(default_factory=list)
    restored_epoch: int | None = None


class TrialRecord(Record):
    """A study's trial (runner/studies.py): which, what its pruner watched each epoch, and where it
    stopped it (a pruned run)."""

    study: str
    number: int
    metric: str | None = Field(default=None, description="the per-epoch value reported to the pruner")
    pruner: str = "none"
    reported: dict[str, float] = Field(default_factory=dict, description="epoch → the value reported")
    pruned_at_epoch: int | None = None


class RunReport(Record):
    """report.json: what one run did, whatever its end (`status`)."""

    schema_version: Literal[2] = 2
    name: str
    status: Status
    error: str | None = None
    started_at: str | None = None
    run_dir: str | None = None
    spec: JsonObject = Field(description="the resolved spec (its schema: `runner schema`)")
    spec_hash: str
    environment: Environment = Field(default_factory=Environment)
    data: DataSummary | None = None
    precision: PrecisionSummary
    audit: JsonObject | None = Field(default=None, description="every layer's dtypes, and the probes")
    checks: list[CheckResult] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=Metrics)
    performance: Performance = Field(default_factory=Performance)
    speed: JsonObject | None = Field(default=None, description="the candidates timed here (speed.json)")
    distribution: Distribution | None = None
    learning_rate: JsonObject | None = None
    early_stopping: EarlyStopping | None = None
    fine_tuning: JsonObject | None = None
    divergence: Divergence | None = None
    resumes: list[Resume] = Field(default_factory=list)
    checkpoint: str | None = None
    weights_sha256: str | None = Field(default=None, description="of the weights the test metrics are of")
    export: JsonObject | None = Field(default=None, description="as export/export.json (ExportRecord)")
    tracking: JsonObject | None = Field(default=None, description="where MLflow logged the run")
    trial: TrialRecord | None = Field(default=None, description="a study's trial: its number, its pruning")

    def to_json(self) -> JsonObject:
        """What report.json holds: JSON types only, the aliases as written."""
        return self.model_dump(mode="json", by_alias=True)


def migrate_report(raw: JsonObject, where: str) -> JsonObject:
    """A report.json of any earlier version, as this version writes it. The one place that knows
    what changed between versions:
    - 1 → 2: `schema_version` added; `precision.advice` (a statement from CPU flags, from before runner
      measured speed) becomes `speed.statement`, marked as not measured; missing sections are filled
      with their defaults by the model."""
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise RunDirError(
            f"{where}: schema_version: expected an integer 1..{REPORT_VERSION}; got {version!r}"
        )
    if version > REPORT_VERSION:
        raise RunDirError(
            f"{where}: schema_version {version} was written by a newer runner; this one reads up to "
            f"{REPORT_VERSION}: upgrade runner to read it"
        )
    if version == 1:
        raw = dict(raw)
        precision = dict(raw.get("precision") or {})
        advice = precision.pop("advice", None) or {}
        raw["precision"] = precision
        if raw.get("speed") is None and advice.get("faster") is False:
            raw["speed"] = {"statement": advice.get("detail"), "slow": True, "measured": False}
        raw["schema_version"] = 2
    return raw


def field_error(exc: ValidationError, where: str) -> RunDirError:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(the whole file)"
    got = first.get("input")
    shown = json.dumps(got)[:80] if not isinstance(got, dict) else "an object"
    return RunDirError(f"{where}: {field}: {first['msg'].lower()}; got {shown}")


def parse_report(raw: Any, where: str) -> RunReport:
    """A report.json's content (any version) as this version's model; one RunDirError otherwise."""
    if not isinstance(raw, dict):
        raise RunDirError(f"{where}: expected a JSON object (a runner report); got {type(raw).__name__}")
    try:
        return RunReport.model_validate(migrate_report(raw, where))
    except ValidationError as exc:
        raise field_error(exc, where) from None


def load_report(run_dir: Path) -> RunReport:
    """A run directory's report.json, of any version, as this version's model; one RunDirError
    naming the directory or the field otherwise."""
    path = run_dir / "report.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (run_dir / "spec.toml").is_file():  # a run that was killed (or is still training)
            raise RunDirError(
                f"{run_dir}: no report.json yet: the run was killed before it could write one, or is "
                f"still training; continue it with: runner resume {run_dir}"
            ) from None
        raise RunDirError(f"{run_dir}: not a run directory (no report.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from None
    missing = {"name", "status", "spec", "precision"} - set(raw) if isinstance(raw, dict) else set()
    if missing:
        raise RunDirError(f"{path}: expected a runner report; missing {', '.join(sorted(missing))}")
    return parse_report(raw, str(path))


def resume_command(run_dir: Path) -> str:
    """The command that continues an interrupted run: `runner resume`, or for a multi_worker run
    (which resumes on all its workers at once) `runner launch --workers N` on this machine. From the
    report when the run wrote one, else from its spec (a run killed before its first report)."""
    try:
        distribution = load_report(run_dir).distribution
    except BadInput:
        distribution = None
    if distribution is None or distribution.strategy != "multi_worker":
        try:
            strategy = (read_toml(run_dir / "spec.toml").get("distribution") or {}).get("strategy")
        except (BadInput, AttributeError):
            strategy = None
        if strategy != "multi_worker":
            return f"runner resume {run_dir}"
    count = distribution.workers if distribution is not None and distribution.workers > 0 else "N"
    return f"runner launch --workers {count} {run_dir}"


# ---------------------------------------------------------------- comparison.json


class Baseline(Record):
    """The run the ratios and deltas are against: the first completed float32 run, else the first."""

    name: str
    label: str
    index: int
    note: str | None = None


class Best(Record):
    """The best-ranked run by the objective, and its value."""

    label: str
    name: str
    value: float


class Objective(Record):
    """What a comparison ranks by: a row's figure (`metric`) and whether higher or lower is better."""

    metric: str
    mode: Literal["max", "min"]
    best: Best | None = None


class ComparisonRow(Record):
    """One run of a comparison: its label, its figures, and against the baseline its speed ratio and
    accuracy delta; `settings` holds the values of the spec fields that differ between the runs."""

    label: str
    name: str
    run_dir: str | None = None
    settings: JsonObject = Field(default_factory=dict)
    policy: str
    status: Status
    images_per_second: float | None = None
    speed_ratio: float | None = None
    step_time_ms: float | None = None
    peak_host_memory_mb: float | None = None
    peak_device_memory_mb: float | None = None
    error: str | None = Field(default=None, description="why a failed, diverged or interrupted run ended")
    test_accuracy: float | None = None
    test_loss: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    accuracy_delta: float | None = None
    loss_scale_final: float | None = None
    loss_scale_min: float | None = None
    skipped_steps: int = 0
    checks_passed: int
    checks_total: int
    failed_checks: list[str] = Field(default_factory=list)
    rank: int | None = Field(default=None, description="by the objective: 1 = best, ties share a rank")
    trial: int | None = Field(default=None, description="a study's trial number")
    pareto: bool | None = Field(default=None, description="on the Pareto front of the objectives (several)")

    def figure(self, metric: str) -> float | None:
        """The row's value of an objective's metric (a figure of the row); None when it has none."""
        value = getattr(self, metric, None)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class PointSummary(Record):
    """A point of a sweep with `seeds` (its settings but the seed): test accuracy over its seeds."""

    settings: JsonObject
    policy: str
    runs: int
    seeds: int = Field(description="the runs that completed with a test accuracy")
    mean_test_accuracy: float | None = None
    ci_low: float | None = Field(default=None, description="95 % t interval of the mean (2+ seeds)")
    ci_high: float | None = None


class ParityVerdict(Record):
    """[checks] max_accuracy_drop_vs: a point's policy against the baseline policy's point with the
    same other settings, paired by seed (runner/reporting/parity.py)."""

    point: JsonObject
    policy: str
    baseline: str
    drop: float
    pairs: int
    delta_mean: float | None = None
    ci_low: float | None = Field(default=None, description="95 % t interval of the paired difference")
    ci_high: float | None = None
    verdict: Literal["pass", "fail", "none"]
    statement: str


class Comparison(Record):
    """comparison.json: runs side by side against a baseline, ranked when there is an objective."""

    schema_version: Literal[1] = 1
    baseline: Baseline
    differing_fields: list[str]
    objective: Objective | None = None
    rows: list[ComparisonRow]
    points: list[PointSummary] = Field(default_factory=list, description="with seeds: each point's mean")
    front: list[tuple[str, Literal["max", "min"]]] = Field(
        default_factory=list, description="several objectives: rows with pareto = true are their front"
    )
    parity: list[ParityVerdict] = Field(default_factory=list, description="max_accuracy_drop_vs verdicts")

    def to_json(self) -> JsonObject:
        return self.model_dump(mode="json", by_alias=True)


def load_comparison(folder: Path) -> Comparison:
    """A folder's comparison.json as the model; one RunDirError naming the file or the field."""
    path = folder / "comparison.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from None
    if isinstance(raw, dict) and "schema_version" not in raw:  # written before it had a version
        raw = {**raw, "schema_version": COMPARISON_VERSION}
    try:
        return Comparison.model_validate(raw)
    except ValidationError as exc:
        raise field_error(exc, str(path)) from None


# ---------------------------------------------------------------- sweep.json


class PlannedVariant(Record):
    """One experiment of a sweep: its resolved spec, the settings that made it, where it came from."""

    name: str
    settings: JsonObject
    group: str
    source: str
    spec_hash: str
    spec: JsonObject


class SweepPlan(Record):
    """sweep.json: every variant's resolved spec, in order, so `runner resume SWEEP_DIR` needs no file."""

    schema_version: Literal[1] = 1
    variants: list[PlannedVariant]
    objective: tuple[str, str] | None = Field(default=None, description='(metric, "max" or "min")')
    front: list[tuple[str, Literal["max", "min"]]] = Field(
        default_factory=list, description="several objectives: the comparison marks their Pareto front"
    )
    created_at: str

    def to_json(self) -> JsonObject:
        return self.model_dump(mode="json", by_alias=True)


def migrate_plan(raw: Any) -> Any:
    """A sweep.json of any earlier version as this one: before versions it had no `schema_version`."""
    if isinstance(raw, dict) and "schema_version" not in raw:
        raw = {**raw, "schema_version": SWEEP_VERSION}
    return raw


# ---------------------------------------------------------------- study.json


class StudyFile(Record):
    """study.json: a study's definition (runner/studies.py), so `runner sweep-worker` and `runner
    resume` need no spec file: the base spec, the search space, and how Optuna runs it."""

    schema_version: Literal[1] = 1
    study_name: str = Field(description="the study's name in its storage (the sweep directory's name)")
    source: str
    group: str
    base: JsonObject = Field(description="the spec without [sweep], patches and --set applied")
    axes: JsonObject = Field(description="field path → list of values or { distribution = [low, high] }")
    method: Literal["grid", "random", "tpe", "cmaes"]
    trials: int = Field(ge=1)
    seed: int = Field(ge=0)
    objective: tuple[str, Literal["max", "min"]]
    front: list[tuple[str, Literal["max", "min"]]] = Field(
        default_factory=list, description="several objectives (a multi-objective study): all of them"
    )
    pruning: JsonObject = Field(default_factory=dict)
    storage: str | None = Field(default=None, description='as [sweep] storage gave it; None: "sqlite"')
    created_at: str

    def to_json(self) -> JsonObject:
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------- export/export.json


class ExportRecord(OpenRecord):
    """export/export.json (and report.json's `export`): what was exported, from which checkpoint, and
    each file's run by its own runtime in a fresh process (`files`: one row per artifact, with its
    round trip on the fixed batch and its figures on the evaluation split)."""

    schema_version: Literal[1] = 1
    formats: list[str]
    quantize: list[str] = Field(default_factory=list)
    float32_copy: bool = False
    checkpoint: str | None = None
    policy: str | None = Field(
        default=None, description="the run's policy (conversions use its float32 copy)"
    )
    files: list[JsonObject] = Field(default_factory=list)
    skipped: str | None = None
    error: str | None = Field(default=None, description="why the export failed (the run still completed)")
    batch: JsonObject | None = Field(default=None, description="the fixed batch every file was run on")
    evaluation: JsonObject | None = Field(
        default=None,
        description="the split every file was measured on: split, images, the run's model's accuracy, "
        "the latency batch and the CPU",
    )
    reload_seconds: float | None = None
    seconds: float | None = None

    def to_json(self) -> JsonObject:
        return self.model_dump(mode="json", by_alias=True)


EXPORT_COLUMNS = [
    "file",
    "runtime",
    "precision",
    "size",
    "accuracy",
    "Δ vs run",
    "agreement",
    "max Δp",
    "ms/image",
    "round trip",
]


def export_caption(record: JsonObject) -> str | None:
    """What the figures were measured on: the split, the run's model's accuracy there, the CPU."""
    evaluation = record.get("evaluation")
    if not evaluation:
        return None
    return (
        f"Measured on {evaluation['images']:,} {evaluation['split']} images, each file by its own runtime "
        f"in a fresh process; the run's model: accuracy {evaluation['accuracy']:.4f}. Latency: median of "
        f"repeated batches of {evaluation['latency_batch']} on {evaluation.get('cpu') or 'this CPU'}. "
        f"Conversions start from the float32 copy (run policy {record.get('policy')})."
        + (f" Runtimes: {', '.join(runtimes)}." if (runtimes := _runtimes(record)) else "")
    )


RUNTIME_NAMES = {"keras": "Keras", "saved_model": "TensorFlow", "litert": "LiteRT", "onnx": "ONNX Runtime"}
# The EXPORT_COLUMNS an 80-column terminal shows (the file's suffix names its runtime), and their headers.
TERMINAL_COLUMNS = {0: "file", 2: "precision", 3: "MB", 4: "accuracy", 5: "Δ", 6: "agree", 8: "ms/img"}


def _runtimes(record: JsonObject) -> list[str]:
    return list(dict.fromkeys(x["runtime"] for x in record.get("files", []) if x.get("runtime")))


def _or_dash(value: Any, form: str) -> str:
    return "—" if value is None else format(value, form)


def export_rows(record: JsonObject) -> list[list[str]]:
    """One row per artifact (EXPORT_COLUMNS), for the terminal, Markdown and HTML alike: its runtime,
    precision, size, accuracy and drop against the run's model, top-1 agreement, the largest
    probability difference, latency per image, and its round trip (or why it was not made)."""
    rows = []
    for line in record.get("files", []):
        size = line.get("bytes")
        if line.get("skipped"):
            trip = f"skipped: {line['skipped']}"
        elif not line.get("passed"):
            trip = f"✗ {line.get('problem', '')}"
        elif line.get("tolerance") is None and line.get("max_abs_diff") is not None:
            trip = "✓ runs (quantized)"
        else:
            trip = f"✓ {_or_dash(line.get('max_abs_diff'), '.2g')}"
        if str(line.get("delegate", "")).startswith("none"):
            trip += " · built-in kernels: XNNPACK refused it"
        runtime = RUNTIME_NAMES.get(line.get("format", ""), "—")
        precision = line.get("precision", "—")
        if precision == "policy":
            precision = record.get("policy") or precision
        rows.append(
            [
                line["path"],
                runtime,
                precision,
                "—" if size is None else f"{size / 2**20:.2f} MB",
                _or_dash(line.get("accuracy"), ".4f"),
                "—" if line.get("accuracy_drop") is None else f"{0.0 - line['accuracy_drop']:+.4f}",
                _or_dash(line.get("agreement"), ".4f"),
                _or_dash(line.get("max_probability_diff"), ".2g"),
                _or_dash(line.get("latency_ms_per_image"), ".3f"),
                trip,
            ]
        )
    return rows


SCHEMAS: dict[str, type[BaseModel]] = {
    "report": RunReport,
    "comparison": Comparison,
    "sweep": SweepPlan,
    "study": StudyFile,
    "export": ExportRecord,
}


def json_schema(kind: str) -> JsonObject:
    """The JSON Schema of one of the files (SCHEMAS' keys), as runner writes it."""
    return SCHEMAS[kind].model_json_schema(by_alias=True, mode="serialization")
