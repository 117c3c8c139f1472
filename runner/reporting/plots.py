"""Plots as self-contained SVG text (matplotlib, Agg): no external URL, fit to inline in HTML.

matplotlib is imported inside the functions: reports need it, `runner validate` does not.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from runner.reporting.report import Epoch

# A label longer than this is cut (…) in a plot: runs that differ in many fields have long labels,
# which would squeeze the axes to nothing; the tables beside each plot carry them whole.
LABEL_CHARS = 40

# Colours that stay apart for colour-blind readers (Okabe-Ito).
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


@contextmanager
def _figure(title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    # Names are text, not TeX: a run or class called "a$b$" would otherwise be parsed as mathtext
    # (and send matplotlib looking for STIX fonts, a warning per label on the terminal).
    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure(figsize=(6.4, 3.6), layout="constrained")
        ax = fig.add_subplot()
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, alpha=0.3)
        yield ax
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")


def to_svg(ax: Any) -> str:
    """The axes' figure as a standalone SVG document (no DOCTYPE, no metadata, no date: reproducible)."""
    buffer = io.StringIO()
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)  # a glyph no installed font has: drawn as a box, not a terminal warning
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
            ax.figure.savefig(
                buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None}
            )
    finally:
        fonts.setLevel(level)
    svg = re.sub(r"<!DOCTYPE[^>]*>|<metadata>.*?</metadata>", "", buffer.getvalue(), flags=re.S)
    return svg.strip()


def inline_svg(svg: str) -> str:
    """An SVG for inlining in HTML5, which needs neither the XML prolog nor namespace declarations
    (and so holds no URL at all)."""
    svg = re.sub(r"<\?xml[^>]*\?>", "", svg)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg.replace("xlink:href", "href").strip()


def shown_label(label: str) -> str:
    """`label` as a plot shows it: at most LABEL_CHARS characters."""
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _epochs(records: Sequence[Epoch], key: str) -> tuple[list[int], list[float]]:
    points = [(r.epoch, getattr(r, key)) for r in records if getattr(r, key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def metric_curves(runs: dict[str, list[Epoch]], metric: str, title: str) -> str:
    """Training (solid) and validation (dashed) `metric` per epoch, one colour per run."""
    from matplotlib.ticker import MaxNLocator

    with _figure(title, "epoch", metric) as ax:
        for i, (colour, (name, records)) in enumerate(zip(COLOURS * 4, runs.items(), strict=False)):
            label = f"{shown_label(name)} " if len(runs) > 1 else ""
            # An SVG id per curve and bar: a reader (or a test) finds each run's line in the file.
            ax.plot(
                *_epochs(records, metric), marker="o", color=colour, label=f"{label}train", gid=f"train-{i}"
            )
            ax.plot(
                *_epochs(records, f"val_{metric}"),
                marker="o",
                ls="--",
                color=colour,
                label=f"{label}validation",
                gid=f"validation-{i}",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return to_svg(ax)


def learning_rate_curve(records: Sequence[Epoch]) -> str:
    """The rate the optimizer used at each epoch's last step (what metrics.jsonl records)."""
    from matplotlib.ticker import MaxNLocator

    with _figure("Learning rate (each epoch's last step)", "epoch", "learning rate") as ax:
        ax.plot(*_epochs(records, "learning_rate"), marker="o", color=COLOURS[0], gid="learning-rate")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return to_svg(ax)


def loss_scale_plot(history: Sequence[tuple[int, float]], steps: int) -> str:
    """The loss scale over steps (log scale), from its change points; skipped steps marked."""
    with _figure("Loss scale", "step", "loss scale (log)") as ax:
        xs = [p[0] for p in history] + [max(steps, history[-1][0])]
        ys = [p[1] for p in history] + [history[-1][1]]
        ax.step(xs, ys, where="post", color=COLOURS[0], label="loss scale")
        skipped = [
            (s, v) for (s, v), (_, before) in zip(history[1:], history[:-1], strict=True) if v < before
        ]
        if skipped:
            ax.plot(
                *zip(*skipped, strict=True), "x", color=COLOURS[1], label=f"skipped step ({len(skipped)})"
            )
        ax.set_yscale("log", base=2)
    return to_svg(ax)


def throughput_bars(values: dict[str, float | None], title: str, xlabel: str, per_run: bool = False) -> str:
    """images/s as bars, one per epoch (one colour) or one per run (each its own)."""
    with _figure(title, xlabel, "images / s") as ax:
        labels = list(values)
        heights = [v or 0.0 for v in values.values()]
        colours = (COLOURS * 4)[: len(labels)] if per_run else COLOURS[0]
        bars = ax.bar(range(len(labels)), heights, color=colours)
        for i, bar in enumerate(bars):
            bar.set_gid(f"bar-{i}")
        shown = [shown_label(label) for label in labels]
        ax.set_xticks(range(len(labels)), shown, rotation=20 if len(labels) > 3 else 0, ha="right")
        ax.bar_label(bars, fmt="%.0f", fontsize="small")
    return to_svg(ax)


def pareto_plot(points: dict[str, tuple[float, float, bool]], xlabel: str, ylabel: str) -> str:
    """Each run at (x, y), the Pareto front's runs filled and joined by a step line (e.g. images/s
    against test accuracy: which settings are worth it)."""
    with _figure("Pareto front", xlabel, ylabel) as ax:
        front = sorted((x, y) for x, y, on in points.values() if on)
        others = [(x, y) for x, y, on in points.values() if not on]
        if others:
            xs, ys = [x for x, _ in others], [y for _, y in others]
            ax.scatter(xs, ys, color="none", edgecolors=COLOURS[0], label="dominated")
        if front:
            xs, ys = [x for x, _ in front], [y for _, y in front]
            ax.scatter(xs, ys, color=COLOURS[1], label="Pareto front", zorder=3)
            ax.plot(xs, ys, color=COLOURS[1], alpha=0.6, drawstyle="steps-post")
        for label, (x, y, _) in points.items():
            ax.annotate(
                shown_label(label), (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points"
            )
    return to_svg(ax)
