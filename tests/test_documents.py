"""A real two-run sweep, then everything written about it: reports, comparison, plots, TensorBoard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runner.reporting.compare import compare
from runner.reporting.documents import comparison_plots, comparison_sections, to_markdown
from runner.spec import load_plan
from runner.sweeps import run_plan
from tests.conftest import TINY_SPEC
from tests.test_compare import fake_epochs, fake_report

SWEEP = TINY_SPEC + '\n[sweep]\n"precision.policy" = ["float32", "mixed_float16"]\n'
URL = re.compile(r"https?://")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    spec_path = folder / "sweep.toml"
    spec_path.write_text(SWEEP)
    return run_plan(load_plan(spec_path), folder / "reports")


@pytest.mark.slow
def test_a_sweep_leaves_one_directory_with_a_run_per_variant_and_a_comparison(sweep):
    assert sweep.exit_code == 0 and sweep.group_dir.name.startswith("tiny-")
    runs = sorted(p for p in sweep.group_dir.iterdir() if (p / "report.json").exists())
    assert [p.name.split("-2")[0] for p in runs] == ["tiny-float32", "tiny-mixed_float16"]
    for name in ("comparison.json", "comparison.md", "comparison.html"):
        assert (sweep.group_dir / name).is_file()
    comparison = json.loads((sweep.group_dir / "comparison.json").read_text())
    policies = [r["settings"]["precision.policy"] for r in comparison["rows"]]
    assert policies == ["float32", "mixed_float16"]
    for row in comparison["rows"]:
        assert {"images_per_second", "speed_ratio", "test_accuracy", "accuracy_delta"} <= set(row)
    assert comparison["rows"][0]["speed_ratio"] == 1.0 and comparison["rows"][0]["accuracy_delta"] == 0.0
    specs = [o.report["spec"] for o in sweep.outcomes]
    assert specs[0]["seed"] == specs[1]["seed"] and specs[0]["data"] == specs[1]["data"]


def _figures(html: str) -> list[str]:
    return re.findall(r'<figure id="plot-([\w-]+)"><svg', html)


@pytest.mark.slow
def test_run_reports_are_self_contained_with_one_svg_per_plot(sweep):
    for outcome in sweep.outcomes:
        html = (outcome.run_dir / "report.html").read_text()
        assert not URL.search(html), URL.search(html)
        assert "<script" not in html and "<link" not in html and "<img" not in html
        expected = ["loss", "accuracy", "throughput"]
        if outcome.report["precision"]["policy"] == "mixed_float16":
            expected.append("loss_scale")
        assert _figures(html) == expected
        markdown = (outcome.run_dir / "report.md").read_text()
        for name in expected:
            assert f"(plots/{name}.svg)" in markdown
            assert (outcome.run_dir / "plots" / f"{name}.svg").read_text().startswith("<?xml")
        for section in ("Checks", "Metrics per epoch", "Audit: every layer", "Environment", "Spec"):
            assert f"## {section}" in markdown and f"<h2>{section}</h2>" in html


def test_the_loss_scale_plot_marks_skipped_steps():
    from runner.reporting.plots import loss_scale_plot

    svg = loss_scale_plot([[0, 32768.0], [3, 16384.0], [9, 32768.0]], steps=12)
    assert "skipped step (1)" in svg


@pytest.mark.slow
def test_comparison_html_overlays_all_runs_and_has_a_throughput_bar_chart(sweep):
    html = (sweep.group_dir / "comparison.html").read_text()
    assert not URL.search(html)
    assert _figures(html) == ["loss", "accuracy", "throughput"]
    for label in ("float32", "mixed_float16"):  # the sweep's axis: what differs between the runs
        assert html.count(f"<!-- {label} train -->") == 2  # in the loss and the accuracy overlay


def _ids(svg: str, prefix: str) -> list[str]:
    return re.findall(rf'<g id="({prefix}-\d+)"', svg)


def test_runs_sharing_a_name_each_get_a_bar_and_a_curve_under_their_label():
    # The README's flow: the quickstart spec run three times with --set precision.policy=...
    policies = {"float32": 2000.0, "mixed_float16": 500.0, "mixed_bfloat16": 3000.0}
    reports = [
        fake_report("quickstart", p, ips, 0.9, run_dir=f"r/q-{p}", epochs=fake_epochs(1.0 + i, ips))
        for i, (p, ips) in enumerate(policies.items())
    ]
    comparison = compare(reports)
    found = comparison_plots(comparison, reports)
    assert _ids(found["throughput"], "bar") == ["bar-0", "bar-1", "bar-2"]
    for policy, ips in policies.items():
        assert f"<!-- {policy} -->" in found["throughput"]  # the bar's tick label
        assert f"<!-- {ips:.0f} -->" in found["throughput"]  # the height written on it
    for metric in ("loss", "accuracy"):
        assert _ids(found[metric], "train") == ["train-0", "train-1", "train-2"]
        for policy in policies:
            assert f"<!-- {policy} train -->" in found[metric] and "quickstart" not in found[metric]
    markdown = to_markdown(comparison_sections(comparison, reports))
    for policy in policies:
        assert f"| {policy} | {policy} | completed |" in markdown  # label, then precision.policy


def _scalars(folder: Path) -> dict[str, list[float]]:
    """The scalars as TensorBoard's own reader (EventAccumulator) finds them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(folder))
    board.Reload()
    return {tag: [e.value for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_scalars(sweep):
    mixed = sweep.outcomes[1]
    board = mixed.run_dir / "tensorboard"
    train, validation = _scalars(board / "train"), _scalars(board / "validation")
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(train)
    assert {"epoch_loss", "epoch_accuracy"} <= set(validation)
    assert len(train["epoch_loss"]) == 2
    scale = _scalars(board / "precision")["loss_scale"]
    assert len(scale) == mixed.report["precision"]["loss_scale"]["steps"]
    assert scale[-1] == mixed.report["precision"]["loss_scale"]["final"]
    float32 = sweep.outcomes[0]  # no loss scale: no precision/ folder left empty
    assert float32.report["spec"]["precision"]["policy"] == "float32"
    assert (float32.run_dir / "tensorboard" / "train").is_dir()
    assert not (float32.run_dir / "tensorboard" / "precision").exists()


def test_long_labels_are_cut_so_the_plots_keep_their_axes():
    """Runs that differ in many fields have labels of a hundred characters and more: whole, they
    squeeze the axes to nothing (matplotlib's constrained-layout warning); cut, the plots keep them."""
    import warnings

    from runner.reporting import plots
    from runner.reporting.report import Epoch

    names = [f"run {i}: " + ", ".join(f"field_{k}=value_{k}" for k in range(8)) for i in range(2)]
    epochs = [Epoch(epoch=e, loss=1.0 / e, accuracy=0.5, val_loss=1.0, val_accuracy=0.5) for e in (1, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.throughput_bars(dict.fromkeys(names, 100.0), "Throughput", "run", per_run=True)
        plots.metric_curves(dict.fromkeys(names, epochs), "loss", "Loss per epoch")
    assert plots.shown_label(names[0]).endswith("…") and len(plots.shown_label(names[0])) == plots.LABEL_CHARS
    assert plots.shown_label("mixed_float16") == "mixed_float16"
