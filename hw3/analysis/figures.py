"""Comparison figures: every group's mean per pass with its 95% interval, as PNG and PDF.

Figures are `matplotlib.figure.Figure`s rendered by Agg, without pyplot's global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

from hw3.analysis.study import Study, describe, learning_rate, run_means, seeds, series

FORMATS = ("png", "pdf")
DPI = 150  # of the PNGs
PANEL_SIZE = (5.0, 3.6)  # inches per panel
DODGE = 0.08  # horizontal offset between groups, in passes, so error bars do not overlap
TIME_METRIC = "time/train_pass_s"


@dataclass(frozen=True)
class Panel:
    """One axes: a metric against the pass number."""

    metric: str
    title: str
    ylabel: str
    percent: bool = False  # a fraction shown in %


@dataclass(frozen=True)
class Layout:
    """One figure: its panels, drawn if the store holds the metric it `needs`."""

    name: str
    title: str
    needs: str
    panels: tuple[Panel, ...]


TRAIN_LOSS = Panel("train/loss", "Training loss", "cross-entropy (nats)")
TEST_LOSS = Panel("test/loss", "Test loss", "cross-entropy (nats)")
TRAIN_ACC = Panel("train/acc", "Training accuracy", "accuracy (%)", percent=True)
TEST_ACC = Panel("test/acc", "Test accuracy", "accuracy (%)", percent=True)
SMOOTHNESS = Panel("smoothness/L", "Effective smoothness L̂", "L̂ = ‖∇f(w+u) − ∇f(w)‖ / ‖u‖")
STEP_BOUND = Panel("smoothness/lr_max", "Step-size bound 1/L̂ vs learning rate η", "step size")
LAYOUTS = (
    Layout(
        "smoothness",
        "loss smoothness",
        "smoothness/L",
        (TRAIN_LOSS, TEST_ACC, SMOOTHNESS, STEP_BOUND),
    ),
    Layout("curves", "learning curves", "train/loss", (TRAIN_LOSS, TEST_LOSS, TRAIN_ACC, TEST_ACC)),
)


def colors(study: Study) -> dict[str, str]:
    """One colour per group, the same in every figure."""
    return {g: f"C{i % 10}" for i, g in enumerate(study.groups)}


def legend_label(study: Study, group: str) -> str:
    """A group's name with its number of seeds."""
    n = len(seeds(study, group))
    return f"{group} (n={n} seeds)" if n > 1 else f"{group} (n=1 seed, no error bars)"


def save(fig: Figure, out: Path, name: str) -> list[Path]:
    """Write `fig` as out/name.png and out/name.pdf."""
    paths = [out / f"{name}.{ext}" for ext in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


def _ylim(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) or 0.05 * abs(hi) or 0.1
    return lo - pad, hi + pad


def _draw_learning_rates(ax, study: Study) -> list[float]:
    """η as a horizontal line: one black line if shared, else one per group in its colour."""
    lrs = {g: lr for g in study.groups if not math.isnan(lr := learning_rate(study, g))}
    if len(set(lrs.values())) == 1:
        lines = [(f"learning rate η = {lr:g}", lr, "black") for lr in set(lrs.values())]
    else:
        lines = [(f"η of {g} = {lr:g}", lr, colors(study)[g]) for g, lr in lrs.items()]
    for label, lr, color in lines:
        ax.axhline(lr, color=color, linestyle="--", linewidth=1, label=label)
    if lines:
        ax.legend(loc="best", fontsize="small")
    return list(lrs.values())


def _draw_panel(ax, study: Study, panel: Panel) -> None:
    color = colors(study)
    for i, group in enumerate(study.groups):
        s = series(study.summary, group, panel.metric)
        if s.empty:
            continue
        offset = (i - (len(study.groups) - 1) / 2) * DODGE
        ax.errorbar(
            s["pass"] + offset,
            s["mean"],
            yerr=s["ci95"].fillna(0),
            marker="o",
            ms=3,
            capsize=3,
            color=color[group],
        )
        runs = study.tidy[(study.tidy["model"] == group) & (study.tidy["metric"] == panel.metric)]
        ax.plot(runs["pass"] + offset, runs["value"], ".", ms=4, alpha=0.35, color=color[group])
    # The axes span the runs' values: with few seeds a t interval can be far wider (clipped).
    span = study.tidy.loc[study.tidy["metric"] == panel.metric, "value"].tolist()
    if panel is STEP_BOUND:
        span += _draw_learning_rates(ax, study)
    ax.set_ylim(*_ylim(span))
    ax.set_title(panel.title)
    ax.set_xlabel("pass over the training set (epoch)")
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if panel.percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)


def _figure_legend(fig: Figure, study: Study) -> None:
    color = colors(study)
    handles = [Line2D([], [], marker="o", ms=3, color=color[g]) for g in study.groups]
    fig.legend(
        handles,
        [legend_label(study, g) for g in study.groups],
        loc="outside lower center",
        ncol=min(len(study.groups), 3),
    )


def draw_layout(study: Study, layout: Layout, out: Path) -> list[Path]:
    """One figure of `layout`'s panels whose metric the store holds; [] if it lacks `needs`."""
    present = set(study.tidy["metric"])
    if layout.needs not in present:
        return []
    panels = [p for p in layout.panels if p.metric in present]
    rows, cols = (2, 2) if len(panels) == 4 else (1, len(panels))
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, study, panel)
    fig.suptitle(
        f"{study.experiment}: {layout.title}\nlines: mean over seeds; error bars: 95% t-interval "
        "of the mean (clipped to the runs' range); faint dots: runs"
    )
    _figure_legend(fig, study)
    return save(fig, out, layout.name)


def draw_time(study: Study, out: Path) -> list[Path]:
    """Bars of each group's mean seconds per training pass, ±1 sample std over seeds."""
    per_run = run_means(study.tidy, TIME_METRIC)
    if per_run.empty:
        return []
    stats = describe(per_run, ["model"]).set_index("model")
    groups = [g for g in study.groups if g in stats.index]
    color = colors(study)
    x = np.arange(len(groups))
    fig = Figure(figsize=(max(4.0, 2.2 * len(groups) + 1.5), 4.2), layout="constrained")
    ax = fig.subplots()
    ax.bar(
        x,
        stats.loc[groups, "mean"],
        yerr=stats.loc[groups, "std"].fillna(0),
        capsize=6,
        color=[color[g] for g in groups],
        alpha=0.75,
    )
    for i, g in enumerate(groups):
        values = per_run.loc[per_run["model"] == g, "value"]
        ax.plot(np.full(len(values), i), values, "k.", ms=5)
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
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        f"{study.experiment}: time per training pass\n"
        "bars: mean over seeds; error bars: ±1 sample std; dots: runs",
        fontsize="medium",
    )
    return save(fig, out, "time")


def draw_all(study: Study, out: Path) -> list[Path]:
    """Every figure the study's metrics allow, written into `out`."""
    paths = [p for layout in LAYOUTS for p in draw_layout(study, layout, out)]
    return paths + draw_time(study, out)
