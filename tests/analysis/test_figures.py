"""The figures as drawn: their panels, one line per model, the error bars, the η lines."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from logged_runs import EXPERIMENT, LR, PASSES, history, log_grid, log_run, settings
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from hw3.analysis.figures import all_figures
from hw3.analysis.findings import compute
from hw3.analysis.report import write_report
from hw3.analysis.study import Study, load_study
from hw3.tracking.store import connect_existing

MODELS = ("plain", "bn", "stride")
SEEDS = (0, 1, 2)
# λ_max per pass (plus the seed), against 2/η = 50: plain always above, bn at pass 3 only.
SHARPNESS = {"plain": [60.0, 60.0, 60.0], "bn": [30.0, 30.0, 55.0]}


def study_of(uri: str) -> Study:
    """The study of EXPERIMENT with min–max error bars."""
    bar = settings("range").errorbar
    store = connect_existing(uri)
    return load_study(store, EXPERIMENT, sweep_id=None, filter_string=None, errorbar=bar)


def per_pass(model: str, metric: str) -> list[list[float]]:
    """The seeds' values of `metric` at each pass, from the closed form the runs were logged by."""
    runs = [history(model, seed)[metric] for seed in SEEDS]
    return [[run[p] for run in runs] for p in range(PASSES)]


def bar_containers(fig: Figure, panel: int) -> list[ErrorbarContainer]:
    """The error-bar lines drawn in one panel, in drawing order."""
    return [c for c in fig.axes[panel].containers if isinstance(c, ErrorbarContainer)]


def ends(container: ErrorbarContainer) -> np.ndarray:
    """(low, high) of each of a line's error bars, one row each."""
    (bars,) = container.lines[2]
    return np.array([(seg[0][1], seg[1][1]) for seg in bars.get_segments()])


def gids(fig: Figure, panel: int, gid: str) -> list:
    """The lines of a panel drawn with `gid`."""
    return [line for line in fig.axes[panel].lines if line.get_gid() == gid]


def test_the_smoothness_figure_has_its_panels_a_line_per_model_bars_and_eta(store):
    uri, client, exp = store
    log_grid(client, exp, MODELS)
    figures = all_figures(compute(study_of(uri)))
    assert set(figures) == {"smoothness", "curves", "time", "paired"}  # no landscape metrics
    fig = figures["smoothness"]
    assert [ax.get_title() for ax in fig.axes] == [
        "Training loss",
        "Test accuracy",
        "Effective smoothness L̂",
        "Step-size bound 1/(mean L̂) vs learning rate η",
    ]
    assert "error bars: min–max over seeds" in fig.get_suptitle().replace("\n", " ")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"{m} (n=3 seeds)" for m in MODELS]
    for panel, metric in enumerate(["train/loss", "test/acc", "smoothness/L"]):
        lines = bar_containers(fig, panel)
        assert [c.get_label() for c in lines] == list(MODELS)
        for line, model in zip(lines, MODELS, strict=True):
            values = per_pass(model, metric)
            assert line.lines[0].get_ydata() == pytest.approx([statistics.mean(v) for v in values])
            assert ends(line) == pytest.approx(np.array([(min(v), max(v)) for v in values]))
        runs = gids(fig, panel, "runs")
        assert len(runs) == 3 and all(len(r.get_xdata()) == len(SEEDS) * PASSES for r in runs)
        assert not gids(fig, panel, "guide")
    # 1/L̂: 1/(mean L̂) with the bar's reciprocal ends, so it agrees with the L̂ panel.
    for line, model in zip(bar_containers(fig, 3), MODELS, strict=True):
        values = per_pass(model, "smoothness/L")
        assert line.lines[0].get_ydata() == pytest.approx([1 / statistics.mean(v) for v in values])
        assert ends(line) == pytest.approx(np.array([(1 / max(v), 1 / min(v)) for v in values]))
    first = per_pass("plain", "smoothness/L")[0]  # 10, 11, 12: 1/11 vs a mean of 1/L̂ of 0.0914
    plain = bar_containers(fig, 3)[0].lines[0].get_ydata()[0]
    assert plain != pytest.approx(statistics.mean(1 / v for v in first), rel=1e-3)
    (eta,) = gids(fig, 3, "guide")
    assert list(eta.get_ydata()) == [LR, LR] and eta.get_label() == f"η = {LR:g}"


def test_the_time_figure_names_its_bars(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"))
    fig = all_figures(compute(study_of(uri)))["time"]
    (ax,) = fig.axes
    assert "error bars: min–max over seeds" in ax.get_title().replace("\n", " ")
    assert [p.get_height() for p in ax.patches] == pytest.approx([2.0, 2.0])  # 1 + seed
    (line,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert ends(line) == pytest.approx(np.array([(1.0, 3.0), (1.0, 3.0)]))


def landscape(model: str, seed: int) -> dict[str, list[float]]:
    """A run's history with the landscape metrics of the contract."""
    out = history(model, seed)
    out["smoothness/beta"] = out["smoothness/L"]
    out["smoothness/grad_pred"] = [LR * v for v in out["smoothness/L"]]
    out["smoothness/loss_range"] = [0.01 * v for v in out["smoothness/L"]]
    out["smoothness/sharpness"] = [v + seed for v in SHARPNESS[model]]
    out["smoothness/L_std"] = [0.1 * v for v in out["smoothness/L"]]
    return out


def test_the_landscape_figure_and_report_paragraph(tmp_path, store):
    uri, client, exp = store
    for model in ("plain", "bn"):
        for seed in SEEDS:
            log_run(client, exp, model, seed, values=landscape(model, seed))
    study = study_of(uri)
    fig = all_figures(compute(study))["landscape"]
    assert [ax.get_title() for ax in fig.axes] == [
        "β-smoothness",
        "Gradient predictiveness",
        "Loss range along u",
        "Sharpness λ_max vs edge of stability 2/η",
        "L̂ spread over probe directions",
    ]
    assert "error bars: min–max over seeds" in fig.get_suptitle().replace("\n", " ")
    for panel in range(5):
        assert [c.get_label() for c in bar_containers(fig, panel)] == ["plain", "bn"]
    sharp = bar_containers(fig, 3)
    for line, model in zip(sharp, ("plain", "bn"), strict=True):
        values = [[v + s for s in SEEDS] for v in SHARPNESS[model]]
        assert ends(line) == pytest.approx(np.array([(min(v), max(v)) for v in values]))
    (edge,) = gids(fig, 3, "guide")
    assert list(edge.get_ydata()) == [2 / LR, 2 / LR] and edge.get_label().startswith("2/η = 50")
    assert all(not gids(fig, p, "guide") for p in (0, 1, 2, 4))
    report = write_report(compute(study), [], tmp_path / "REPORT.md").read_text()
    # L̂: plain (10 + seed) is above bn (12, 8, 8 + seed) at passes 2 and 3 for every seed.
    assert (
        "Per seed (seeds 0–2), L̂ of plain is above that of bn at 6 of 9 (seed, pass) "
        "points, and at 2 of 3 passes for every seed: the ordering does not hold at every pass "
        "across seeds (not at seed 0 pass 1, seed 1 pass 1, seed 2 pass 1)."
    ) in report
    section = report.split("## Loss landscape")[1].split("## Figures")[0]
    assert (
        "**sharpness λ_max, plain vs bn:** Per seed (seeds 0–2), sharpness λ_max of plain is "
        "above that of bn at 9 of 9 (seed, pass) points, and at 3 of 3 passes for every seed: "
        "the ordering holds at every pass across seeds."
    ) in section
    assert "**λ_max vs 2/η, plain:** λ_max is above the edge of stability 2/η = 50 at 9 of 9" in (
        section
    )
    assert "**λ_max vs 2/η, bn:** λ_max is above the edge of stability 2/η = 50 at 3 of 9" in (
        section
    )


def test_seeds_with_equal_values_draw_an_empty_bar(store):
    # Three dead runs at chance accuracy: their mean, 3 × 0.1 / 3, rounds to just above 0.1.
    uri, client, exp = store
    for seed in SEEDS:
        values = history("plain", seed) | {"test/acc": [0.1] * PASSES}
        log_run(client, exp, "plain", seed, values=values)
    fig = all_figures(compute(study_of(uri)))["smoothness"]
    (line,) = bar_containers(fig, 1)
    assert ends(line) == pytest.approx(np.full((PASSES, 2), 0.1))
