"""The figures: every group's mean per pass with the configured error bars, the time per pass,
and final results across learning rates. Each figure names its error bars.

Figures are `matplotlib.figure.Figure`s rendered by Agg, without pyplot's global state.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import textwrap
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from hw3.analysis.findings import Findings
from hw3.analysis.intervals import reciprocal
from hw3.analysis.paired import SUMMARIES, Paired
from hw3.analysis.stability import UNIFORM_LOSS, Stability, final_aggregates
from hw3.analysis.study import Study, learning_rate, run_means, runs_of, series

FORMATS = ("png", "pdf")  # what `save` can write
DPI = 150  # of the PNGs
PANEL_SIZE = (5.0, 3.6)  # inches per panel
DODGE = 0.08  # horizontal offset between groups, in passes, so error bars do not overlap
TIME_METRIC = "time/train_pass_s"
CUT_UP, CUT_DOWN = "^", "v"  # markers where the axes cut an error bar
CUT_NOTE = "▲/▼ on an edge: the error bar goes on beyond the axes"
RUNS_NOTE = "faint dots: individual runs"
CHARS_PER_INCH = 12  # of a caption line at the "medium" font size
# Past this many points (or lines) in one artist, it is drawn as an image in a PDF: a reader
# sees a cloud, not each point, and a PDF of thousands of vector marks is slow and large.
RASTER_AT = 300
SEED_LABELS = 12  # label every seed of a paired panel up to this many, else the extremes only


@dataclass(frozen=True)
class Guide:
    """A horizontal line at a function of a group's learning rate η."""

    name: str  # how the legend writes the function of η, e.g. "2/η"
    of_lr: Callable[[float], float]


@dataclass(frozen=True)
class Panel:
    """One axes: a metric's aggregate against the pass number."""

    metric: str
    title: str
    ylabel: str
    percent: bool = False  # a fraction shown in %
    reciprocal: bool = False  # draw 1/(the aggregate), error bars the reciprocals of its ends
    guide: Guide | None = None


@dataclass(frozen=True)
class Layout:
    """One figure: its panels, drawn if the store holds any metric it `needs`."""

    name: str
    title: str
    needs: tuple[str, ...]
    panels: tuple[Panel, ...]


TRAIN_LOSS = Panel("train/loss", "Training loss", "cross-entropy (nats)")
TEST_LOSS = Panel("test/loss", "Test loss", "cross-entropy (nats)")
TRAIN_ACC = Panel("train/acc", "Training accuracy", "accuracy (%)", percent=True)
TEST_ACC = Panel("test/acc", "Test accuracy", "accuracy (%)", percent=True)
SMOOTHNESS = Panel("smoothness/L", "Effective smoothness L̂", "L̂ = ‖∇f(w+u) − ∇f(w)‖ / ‖u‖")
STEP_BOUND = Panel(
    "smoothness/L",
    "Step-size bound 1/(mean L̂) vs learning rate η",
    "1/L̂ (step size)",
    reciprocal=True,
    guide=Guide("η", lambda lr: lr),
)
BETA = Panel("smoothness/beta", "β-smoothness", "max_c ‖∇f(w+cu) − ∇f(w)‖ / ‖cu‖")
GRAD_PRED = Panel("smoothness/grad_pred", "Gradient predictiveness", "max_c ‖∇f(w+cu) − ∇f(w)‖")
LOSS_RANGE = Panel("smoothness/loss_range", "Loss range along u", "max − min of f(w+cu) (nats)")
SHARPNESS = Panel(
    "smoothness/sharpness",
    "Sharpness λ_max vs edge of stability 2/η",
    "top Hessian eigenvalue λ_max",
    guide=Guide("2/η", lambda lr: 2 / lr),
)
SPREAD = Panel("smoothness/L_std", "L̂ spread over probe directions", "sample std of L̂")
LANDSCAPE = (BETA, GRAD_PRED, LOSS_RANGE, SHARPNESS, SPREAD)
LAYOUTS = (
    Layout(
        "smoothness",
        "loss smoothness",
        ("smoothness/L",),
        (TRAIN_LOSS, TEST_ACC, SMOOTHNESS, STEP_BOUND),
    ),
    Layout(
        "curves", "learning curves", ("train/loss",), (TRAIN_LOSS, TEST_LOSS, TRAIN_ACC, TEST_ACC)
    ),
    Layout(
        "landscape",
        "loss landscape along the update direction",
        tuple(p.metric for p in LANDSCAPE),
        LANDSCAPE,
    ),
)


def palette(names: Sequence[str]) -> dict[str, tuple[float, ...] | str]:
    """One colour per name: matplotlib's 10 defaults, or tab20 for more names."""
    if len(names) <= 10:
        return {n: f"C{i}" for i, n in enumerate(names)}
    tab20 = colormaps["tab20"].colors
    return {n: tab20[i % len(tab20)] for i, n in enumerate(names)}


def legend_label(study: Study, group: str) -> str:
    """A group's name with its number of seeds and of diverged runs."""
    runs = runs_of(study, group)
    diverged = sum(r.diverged for r in runs)
    n = f"n={len(runs)} seeds" if len(runs) > 1 else "n=1 seed, no error bars"
    return f"{group} ({n}{f', {diverged} diverged' if diverged else ''})"


def caption(study: Study, title: str, notes: Sequence[str], width: float) -> str:
    """A figure's title, wrapped to `width` inches: what it shows, what the error bars, lines
    and dots are."""
    body = "; ".join([f"error bars: {study.errorbar.label}", *notes])
    return f"{study.experiment}: {title}\n" + textwrap.fill(body, int(width * CHARS_PER_INCH))


def save(fig: Figure, out: Path, name: str, formats: Sequence[str]) -> list[Path]:
    """Write `fig` as out/name.<format> for each of `formats` (png, pdf)."""
    paths = [out / f"{name}.{ext}" for ext in formats]
    for i, path in enumerate(paths):
        fig.savefig(path, dpi=DPI)
        if i == 0:  # the layout is settled: later formats need not compute it again
            fig.set_layout_engine("none")
    return paths


def limits(values: Sequence[float], log: bool) -> tuple[float, float]:
    """Axis limits spanning `values` with a margin (multiplicative on a log axis)."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    lo, hi = min(finite), max(finite)
    if log:
        pad = (hi / lo) ** 0.08 if hi > lo else 1.5
        return lo / pad, hi * pad
    pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 0.1
    return lo - pad, hi + pad


def error_bars(
    ax: Axes,
    x: np.ndarray,
    mean: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    *,
    label: str,
    color: object,
    joined: bool,
) -> bool:
    """Means (`joined` by a line) with error bars cut at the axes' y-limits (set before), a
    caret where cut; whether any bar was cut. Bars with undefined ends (n = 1) are not drawn."""
    bottom, top = ax.get_ylim()
    low = np.where(np.isnan(low), mean, low)
    high = np.where(np.isnan(high), mean, high)
    shown_low, shown_high = np.clip(low, bottom, top), np.clip(high, bottom, top)
    # A mean of equal values can round past them (3 × 0.1 / 3 > 0.1): no bar, not a negative one.
    ax.errorbar(
        x,
        mean,
        yerr=[np.maximum(mean - shown_low, 0), np.maximum(shown_high - mean, 0)],
        label=label,
        marker="o",
        ms=3,
        capsize=3,
        color=color,
        linestyle="-" if joined else "none",
    )
    cut = False
    for where, edge, marker in ((high > top, top, CUT_UP), (low < bottom, bottom, CUT_DOWN)):
        if where.any():
            ax.plot(
                x[where],
                np.full(where.sum(), edge),
                marker,
                color=color,
                clip_on=False,
                ms=7,
                gid="cut",
            )
            cut = True
    return cut


def guide_lines(ax: Axes, study: Study, guide: Guide) -> list[float]:
    """The guide at each group's η: one black line if shared, else one per group; the values."""
    lrs = {g: lr for g in study.groups if not math.isnan(lr := learning_rate(study, g))}
    color = palette(study.groups)
    if len(set(lrs.values())) == 1:
        lr = next(iter(lrs.values()))
        at = "" if guide.of_lr(lr) == lr else f" (η = {lr:g})"
        lines = [(f"{guide.name} = {guide.of_lr(lr):.4g}{at}", lr, "black")]
    else:
        lines = [
            (f"{guide.name} of {g} = {guide.of_lr(lr):.4g}", lr, color[g]) for g, lr in lrs.items()
        ]
    for label, lr, c in lines:
        ax.axhline(guide.of_lr(lr), color=c, linestyle="--", linewidth=1, label=label, gid="guide")
    if lines:
        ax.legend(loc="best", fontsize="small")
    return [guide.of_lr(lr) for _, lr, _ in lines]


def run_marks(n: int) -> dict[str, object]:
    """How `n` individual runs' dots are drawn: faint, then fainter, smaller and rasterised past
    RASTER_AT, so that the means and their bars stay in sight."""
    if n <= RASTER_AT:
        return {"ms": 5, "alpha": 0.5, "rasterized": False}
    return {"ms": 2, "alpha": max(0.05, RASTER_AT / n / 4), "rasterized": True}


def draw_panel(ax: Axes, study: Study, panel: Panel) -> bool:
    """One panel of per-pass aggregates; whether an error bar was cut by the axes."""
    color = palette(study.groups)
    runs = study.tidy[study.tidy["metric"] == panel.metric]
    values = 1 / runs["value"] if panel.reciprocal else runs["value"]
    span = values.tolist()
    if panel.guide is not None:
        span += guide_lines(ax, study, panel.guide)
    ax.set_ylim(*limits(span, log=False))
    cut = False
    for i, group in enumerate(study.groups):
        s = series(study.summary, group, panel.metric)
        if s.empty:
            continue
        offset = (i - (len(study.groups) - 1) / 2) * DODGE
        x = s["pass"].to_numpy() + offset
        mean, low, high = (s[c].to_numpy(dtype=float) for c in ("mean", "low", "high"))
        if panel.reciprocal:
            mean, low, high = reciprocal(mean, low, high)
        cut |= error_bars(ax, x, mean, low, high, label=group, color=color[group], joined=True)
        mine = runs["model"] == group
        ax.plot(
            runs.loc[mine, "pass"] + offset,
            values[mine],
            ".",
            color=color[group],
            gid="runs",
            **run_marks(int(mine.sum())),
        )
    ax.set_xlim(runs["pass"].min() - 0.5, runs["pass"].max() + 0.5)  # integer ticks, even for one
    ax.set_title(panel.title)
    ax.set_xlabel("pass over the training set (epoch)")
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if panel.percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    return cut


def figure_legend(
    fig: Figure, labels: dict[str, str], color: dict[str, object], guides: Sequence[Line2D]
) -> None:
    """Below the panels: one entry per group (or line), then the `guides` drawn; as many
    columns as the figure's width holds."""
    handles = [Line2D([], [], marker="o", ms=3, color=color[g]) for g in labels]
    texts = list(labels.values()) + [g.get_label() for g in guides]
    per_entry = max(len(t) for t in texts) + 6  # characters, with the handle
    ncol = max(1, min(len(texts), 3, int(fig.get_figwidth() * CHARS_PER_INCH) // per_entry))
    fig.legend([*handles, *guides], texts, loc="outside lower center", ncol=ncol)


def shape(n: int) -> tuple[int, int]:
    """Rows and columns for n panels: 2 × 2 for four, else rows of up to three."""
    cols = 2 if n == 4 else min(n, 3)
    return math.ceil(n / cols), cols


def grid(fig: Figure, n: int) -> list[Axes]:
    """The figure's n axes, laid out by `shape`."""
    rows, cols = shape(n)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for extra in axes[n:]:
        fig.delaxes(extra)
    return axes[:n]


def layout_figure(study: Study, layout: Layout) -> Figure | None:
    """The figure of `layout`'s panels whose metric the store holds; None if it holds none."""
    present = study.metrics
    panels = [p for p in layout.panels if p.metric in present]
    if not present & set(layout.needs):
        return None
    rows, cols = shape(len(panels))
    size = (PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 1.0)
    fig = Figure(figsize=size, layout="constrained")
    cut = False
    for ax, panel in zip(grid(fig, len(panels)), panels, strict=True):
        cut |= draw_panel(ax, study, panel)
    notes = ["lines: mean over seeds", RUNS_NOTE]
    if any(p.reciprocal for p in panels):
        notes.append("1/L̂ panel: 1/(mean L̂), its bars the reciprocals of L̂'s bar ends")
    fig.suptitle(
        caption(study, layout.title, notes + ([CUT_NOTE] if cut else []), size[0]),
        fontsize="medium",
    )
    color = palette(study.groups)
    figure_legend(fig, {g: legend_label(study, g) for g in study.groups}, color, [])
    return fig


def time_figure(f: Findings) -> Figure | None:
    """Bars of each group's mean seconds per training pass with the configured error bars."""
    study = f.study
    stats = f.times[f.times["phase"] == TIME_METRIC].set_index("model")
    if stats.empty:
        return None
    per_run = run_means(study.tidy, TIME_METRIC)
    groups = [g for g in study.groups if g in stats.index]
    color = palette(study.groups)
    x = np.arange(len(groups))
    width = max(4.0, 2.2 * len(groups) + 1.5)
    fig = Figure(figsize=(width, 4.6), layout="constrained")
    ax = fig.subplots()
    s = stats.loc[groups]
    ax.bar(x, s["mean"], color=[color[g] for g in groups], alpha=0.75)
    ax.set_ylim(0, 1.15 * max(per_run["value"].max(), s["mean"].max()))
    cut = error_bars(
        ax,
        x,
        *(s[c].to_numpy(dtype=float) for c in ("mean", "low", "high")),
        label="",
        color="black",
        joined=False,
    )
    for i, g in enumerate(groups):
        values = per_run.loc[per_run["model"] == g, "value"]
        ax.plot(np.full(len(values), i), values, "k.", gid="runs", **run_marks(len(values)))
        ax.annotate(
            f"{stats.loc[g, 'mean']:.3g} s",
            (i, 0),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
        )
    ax.set_xticks(x, [legend_label(study, g).replace(" (", "\n(") for g in groups])
    ax.set_ylabel("seconds per training pass (s)")
    ax.grid(axis="y", alpha=0.3)
    notes = ["bars: mean over seeds of each run's mean", "dots: runs"]
    title = caption(study, "time per training pass", notes + ([CUT_NOTE] if cut else []), width)
    ax.set_title(title, fontsize="medium")
    return fig


@dataclass(frozen=True)
class RatePanel:
    """One axes of the stability figure: a final value against the learning rate."""

    column: str  # of Stability.runs
    title: str
    ylabel: str
    log: bool  # a log y-axis


STABILITY_PANELS = (
    RatePanel("train_loss", "Final training loss", "cross-entropy (nats, log scale)", log=True),
    RatePanel("test_acc", "Final test accuracy", "accuracy (%)", log=False),
)
PLAIN_NUMBERS = FuncFormatter(lambda v, _: f"{v:g}")  # 0.01, not 10⁻²


def mark_diverged(ax: Axes, runs: pd.DataFrame, color: object) -> None:
    """× on the top edge at each rate where runs diverged, with 'diverged/tried' above it."""
    diverged = runs[runs["diverged_pass"].notna()].groupby("lr").size()
    if diverged.empty:
        return  # an empty unclipped line would collapse the constrained layout
    tried = runs.groupby("lr").size()
    edge = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    ax.plot(
        diverged.index,
        np.ones(len(diverged)),
        "x",
        color=color,
        ms=8,
        mew=2,
        clip_on=False,
        transform=edge,
        gid="diverged",
    )
    for lr, k in diverged.items():
        ax.annotate(
            f"{k}/{tried[lr]}",
            (lr, 1.0),
            xycoords=edge,
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
            fontsize="x-small",
            color=color,
        )


def rate_lines(ax: Axes, stability: Stability, line: str, color: object) -> list[float]:
    """Vertical lines at a line's largest stable rate and its model's reference 1/L̂ and
    2/λ_max; their rates."""
    marks = []
    if not math.isnan(best := stability.largest_stable[line]):
        marks.append((best, ":", f"largest stable η of {line} = {best:g}", "stable"))
    ref = stability.reference
    model = stability.model(line)
    if model in ref.table.index:
        for column, name, style in (
            ("inv_L", "1/L̂", "-."),
            ("two_over_sharpness", "2/λ_max", "--"),
        ):
            if math.isfinite(value := ref.table.loc[model, column]):
                label = f"{name} of {model} at η = {ref.lr:g}: {value:.3g}"
                marks.append((value, style, label, "reference"))
    for x, style, label, gid in marks:
        ax.axvline(x, color=color, linestyle=style, linewidth=1.2, label=label, gid=gid)
    return [x for x, *_ in marks]


def draw_rates(
    ax: Axes, study: Study, stability: Stability, panel: RatePanel, color: dict[str, object]
) -> bool:
    """One panel of the stability figure; whether an error bar was cut by the axes."""
    runs = stability.runs
    agg = final_aggregates(stability, study, panel.column)
    ax.set_xscale("log")
    ax.set_yscale("log" if panel.log else "linear")
    span = runs[panel.column].dropna().tolist()
    span += [UNIFORM_LOSS] if panel.log else [] if span else [0.1, 0.9]  # the guide, or a frame
    ax.set_ylim(*limits(span, log=panel.log))
    cut = False
    xs = runs["lr"].tolist()
    for line in stability.lines:
        a = agg[agg["line"] == line].sort_values("lr")
        ends = (a[c].to_numpy() for c in ("lr", "mean", "low", "high"))
        cut |= error_bars(ax, *ends, label=line, color=color[line], joined=True)
        mine = runs[runs["line"] == line]
        marks = run_marks(len(mine))
        ax.plot(mine["lr"], mine[panel.column], ".", color=color[line], gid="runs", **marks)
        mark_diverged(ax, mine, color[line])
        xs += rate_lines(ax, stability, line, color[line])
    if panel.log:
        ax.axhline(
            UNIFORM_LOSS,
            color="black",
            linestyle="--",
            linewidth=1,
            label="ln 10: a uniform guess",
            gid="uniform",
        )
        ax.yaxis.set_major_formatter(PLAIN_NUMBERS)
        ax.yaxis.set_minor_formatter(PLAIN_NUMBERS)
    else:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.xaxis.set_major_formatter(PLAIN_NUMBERS)
    ax.set_xlim(*limits(xs, log=True))
    ax.set_title(panel.title, pad=18)
    ax.set_xlabel("learning rate η (log scale)")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3, which="both")
    return cut


def stability_figure(study: Study, stability: Stability) -> Figure:
    """Final training loss and test accuracy against the learning rate, one line per model;
    diverged runs marked (×, with their count) on the panels' top edge."""
    size = (PANEL_SIZE[0] * 2, PANEL_SIZE[1] + 2.6)
    fig = Figure(figsize=size, layout="constrained")
    color = palette(stability.lines)
    axes = fig.subplots(1, 2)
    cut = False
    for ax, panel in zip(axes, STABILITY_PANELS, strict=True):
        cut |= draw_rates(ax, study, stability, panel, color)
    notes = [
        "lines: mean over the seeds that did not diverge",
        RUNS_NOTE,
        "× on the top edge: diverged runs (diverged/tried at that η)",
    ]
    title = "final results against the learning rate"
    fig.suptitle(
        caption(study, title, notes + ([CUT_NOTE] if cut else []), size[0]), fontsize="medium"
    )
    counts = {}
    for line in stability.lines:
        mine = stability.runs[stability.runs["line"] == line]
        diverged = int(mine["diverged_pass"].notna().sum())
        counts[line] = f"{line} ({diverged} of {len(mine)} runs diverged)"
    guides = [
        line for line in axes[0].lines if line.get_gid() in ("stable", "reference", "uniform")
    ]
    figure_legend(fig, counts, color, guides)
    return fig


def seed_labels(p: Paired) -> dict[int, str]:
    """The seeds a paired panel names, by position: all of few, else the two extremes of the
    difference b − a."""
    if len(p.seeds) <= SEED_LABELS:
        return {i: f"seed {seed}" for i, seed in enumerate(p.seeds)}
    high, low = int(p.differences.argmax()), int(p.differences.argmin())
    return {high: f"seed {p.seeds[high]} (max)", low: f"seed {p.seeds[low]} (min)"}


def draw_paired(ax: Axes, p: Paired, color: dict[str, object]) -> None:
    """One comparison: each seed's two runs joined by a line (its seed named where few, else the
    extremes), the means in black, the mean paired difference and its error bar in the title."""
    n = len(p.seeds)
    segments = [[(0, a), (1, b)] for a, b in zip(p.values_a, p.values_b, strict=True)]
    marks = run_marks(n)
    seeds = LineCollection(segments, colors="0.6", linewidths=marks["ms"] / 5, zorder=1)
    seeds.set(gid="seed", alpha=min(1.0, 2 * marks["alpha"]), rasterized=marks["rasterized"])
    ax.add_collection(seeds)
    for i, label in seed_labels(p).items():
        ax.annotate(
            label,
            (1, p.values_b[i]),
            xytext=(5, 0),
            textcoords="offset points",
            va="center",
            fontsize="x-small",
        )
    dots = {"s": 4 if marks["rasterized"] else 16, "zorder": 2, "rasterized": marks["rasterized"]}
    ax.scatter(np.zeros(n), p.values_a, color=color[p.a], **dots)
    ax.scatter(np.ones(n), p.values_b, color=color[p.b], **dots)
    means = [float(np.mean(p.values_a)), float(np.mean(p.values_b))]
    ax.plot([0, 1], means, color="black", lw=2, marker="_", ms=14, zorder=3, gid="mean")
    ax.set_xticks([0, 1], [p.a, p.b])
    ax.set_xlim(-0.3, 1.6)
    ax.set_ylabel(f"L̂, {SUMMARIES[p.summary]}")
    ax.grid(axis="y", alpha=0.3)
    bar = "no bar: one seed" if math.isnan(p.low) else f"[{p.low:.3g}, {p.high:.3g}]"
    ax.set_title(
        f"{p.b} vs {p.a}, {SUMMARIES[p.summary]}, n = {n}\n"
        f"{p.b} − {p.a} = {p.difference:.3g} {bar}",
        fontsize="medium",
    )


def paired_figure(f: Findings) -> Figure | None:
    """Whole-run L̂ per seed, paired across models (a row per pair, a column per summary);
    None without two models sharing a seed."""
    if not f.whole_runs:
        return None
    rows, cols = len({(p.a, p.b) for p in f.whole_runs}), len(SUMMARIES)
    size = (4.2 * cols, 3.2 * rows + 1.2)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    color = palette(f.study.groups)
    for ax, p in zip(axes.flat, f.whole_runs, strict=True):
        draw_paired(ax, p, color)
    few = max(len(p.seeds) for p in f.whole_runs) <= SEED_LABELS
    notes = [
        "grey lines: one seed's two runs (same data order)"
        + ("" if few else "; named: the seeds of the largest (max) and smallest (min) difference"),
        "black: the means over seeds",
        "in each title: the mean paired difference and its error bar",
    ]
    title = "whole-run L̂, paired by seed"
    fig.suptitle(caption(f.study, title, notes, size[0]), fontsize="medium")
    return fig


def smoothness_figure(f: Findings) -> Figure | None:
    """Training loss, test accuracy, L̂ and 1/(mean L̂) against η, per pass (None without L̂)."""
    return layout_figure(f.study, LAYOUTS[0])


def curves_figure(f: Findings) -> Figure | None:
    """Training and test loss and accuracy per pass (None without a training loss)."""
    return layout_figure(f.study, LAYOUTS[1])


def landscape_figure(f: Findings) -> Figure | None:
    """The landscape metrics per pass (None if none was logged)."""
    return layout_figure(f.study, LAYOUTS[2])


def rates_figure(f: Findings) -> Figure | None:
    """Final results against the learning rate (None unless a model's runs differ in η)."""
    return None if f.stability is None else stability_figure(f.study, f.stability)


# Each figure by its file name, in the order REPORT.md shows them.
FIGURES: dict[str, Callable[[Findings], Figure | None]] = {
    "smoothness": smoothness_figure,
    "curves": curves_figure,
    "landscape": landscape_figure,
    "time": time_figure,
    "paired": paired_figure,
    "stability": rates_figure,
}


def all_figures(f: Findings) -> dict[str, Figure]:
    """Every figure the study's metrics allow, by file name."""
    figures = {name: draw(f) for name, draw in FIGURES.items()}
    return {name: fig for name, fig in figures.items() if fig is not None}


def draw_one(f: Findings, out: Path, formats: Sequence[str], name: str) -> list[Path]:
    """Figure `name`, written into `out` in each of `formats` (nothing if the study lacks its
    metrics)."""
    fig = FIGURES[name](f)
    return [] if fig is None else save(fig, out, name, formats)


# A figure worker's findings and where to write, handed over once when it starts: by fork, so
# that a study of thousands of runs is neither pickled for each figure nor held twice.
_WORKER: dict[str, object] = {}


def _start_worker(f: Findings, out: Path, formats: Sequence[str]) -> None:
    _WORKER.update(f=f, out=out, formats=formats)


def _worker_draws(name: str) -> list[Path]:
    return draw_one(_WORKER["f"], _WORKER["out"], _WORKER["formats"], name)  # type: ignore[arg-type]


def draw_all(f: Findings, out: Path, formats: Sequence[str]) -> list[Path]:
    """Every figure the study's metrics allow, written into `out` in each of `formats`.

    Figures are independent and drawing them is most of an analysis' time, so where the
    machine has spare cores they are drawn side by side in forked processes (fork: the child
    starts with everything imported; elsewhere they are drawn one after another).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if cores < 2 or "fork" not in mp.get_all_start_methods():
        return [p for name in FIGURES for p in draw_one(f, out, formats, name)]
    with ProcessPoolExecutor(
        min(cores, len(FIGURES)),
        mp_context=mp.get_context("fork"),
        initializer=_start_worker,
        initargs=(f, out, formats),
    ) as pool:
        return [p for paths in pool.map(_worker_draws, FIGURES) for p in paths]
