"""Stability across learning rates: divergence counted, the largest stable rate, set against
the 1/L̂ and 2/λ_max of reference experiments, in the report and the figure."""

from __future__ import annotations

import pytest
from logged_runs import EXPERIMENT, REFERENCE, log_run, settings
from matplotlib.container import ErrorbarContainer

from hw3.analysis.figures import all_figures
from hw3.analysis.findings import compute
from hw3.analysis.report import write_report
from hw3.analysis.stability import load_stability
from hw3.analysis.study import load_study
from hw3.tracking.store import connect_existing

RATES = ("0.01", "0.1", "1.0")
DIVERGED = {"diverged": "true"}


def final(loss: float, acc: float) -> dict[str, list[float]]:
    """A two-pass run ending at `loss` and `acc`."""
    return {"train/loss": [2.0, loss], "test/acc": [0.5, acc]}


def log_lr_grid(client, exp: str) -> dict[str, str]:
    """plain and bn × RATES × seeds 0, 1: plain stable up to 0.01 (diverges at 0.1 and 1),
    bn up to 0.1 (at 1 its loss stays above ln 10). Returns the diverged runs' ids."""
    ids = {}
    for seed in (0, 1):
        lr = {"optimizer.lr": "0.01"}
        log_run(client, exp, "plain", seed, values=final(0.5 + 0.1 * seed, 0.8), params=lr)
        log_run(client, exp, "bn", seed, values=final(0.6 + 0.1 * seed, 0.82), params=lr)
        lr = {"optimizer.lr": "0.1"}
        log_run(client, exp, "bn", seed, values=final(0.3 + 0.1 * seed, 0.86), params=lr)
        log_run(
            client,
            exp,
            "bn",
            seed,
            values=final(2.4 + 0.1 * seed, 0.1),
            params={"optimizer.lr": "1.0"},
        )
    log_run(client, exp, "plain", 0, values=final(0.4, 0.85), params={"optimizer.lr": "0.1"})
    ids["stop"] = log_run(  # on_divergence=stop at pass 2: pass 1 logged
        client,
        exp,
        "plain",
        1,
        values={"train/loss": [2.0], "test/acc": [0.4]},
        params={"optimizer.lr": "0.1"},
        tags=DIVERGED | {"diverged_pass": "2"},
    )
    for seed, status in ((0, "FAILED"), (1, "FINISHED")):  # at pass 1, fail or stop
        ids[status] = log_run(
            client,
            exp,
            "plain",
            seed,
            status=status,
            values={},
            params={"optimizer.lr": "1.0"},
            tags=DIVERGED | {"diverged_pass": "1"},
        )
    return ids


def log_reference(client, plain_l: tuple[float, float], bn_l: tuple[float, float]) -> None:
    """REFERENCE: runs at η = 0.04 whose final L̂ are `plain_l`, `bn_l` (bn's λ_max 40), and
    runs that must not count: another rate, a diverged run, an older engine version, and an
    older run of a configuration that was run again."""
    exp = client.create_experiment(REFERENCE)
    version = {"engine_version": "v1"}
    for model, values in (("plain", plain_l), ("bn", bn_l)):
        for seed, value in enumerate(values):
            metrics = {"smoothness/L": [99.0, value]}
            if model == "bn":
                metrics["smoothness/sharpness"] = [10.0, 40.0]
            log_run(client, exp, model, seed, values=metrics, tags=version, start_time=2_000)
    ignored = {"smoothness/L": [1.0]}
    log_run(client, exp, "plain", 5, values=ignored, params={"optimizer.lr": "0.1"}, tags=version)
    log_run(client, exp, "plain", 6, values=ignored, tags=version | DIVERGED)
    log_run(client, exp, "plain", 7, values=ignored, tags={"engine_version": "v0"}, start_time=1)
    log_run(client, exp, "plain", 0, values=ignored, tags=version, start_time=1_500)


def analyse(uri: str, tmp_path):
    """Study, stability, report text and figures of EXPERIMENT, min–max error bars."""
    store = connect_existing(uri)
    config = settings("range")
    study = load_study(
        store, EXPERIMENT, sweep_id=None, filter_string=None, errorbar=config.errorbar
    )
    stability = load_stability(store, study, config.reference_experiments, config.reference_lr)
    report = write_report(compute(study, stability), [], tmp_path / "REPORT.md").read_text()
    return study, stability, report, all_figures(compute(study, stability))


@pytest.mark.parametrize(
    ("plain_l", "bn_l", "verdict"),
    [
        (
            (30.0, 34.0),
            (8.0, 12.0),
            "The model smoothest by L̂ is bn; yes: it also has the largest stable learning rate "
            "(plain: 1/L̂ 0.03125, largest stable η 0.01; bn: 1/L̂ 0.1, largest stable η 0.1).",
        ),
        (
            (8.0, 12.0),
            (30.0, 34.0),
            "The model smoothest by L̂ is plain; no: bn tolerate(s) larger steps "
            "(plain: 1/L̂ 0.1, largest stable η 0.01; bn: 1/L̂ 0.03125, largest stable η 0.1).",
        ),
    ],
)
def test_the_stable_rates_are_set_against_the_reference(tmp_path, store, plain_l, bn_l, verdict):
    uri, client, exp = store
    diverged = log_lr_grid(client, exp)
    log_reference(client, plain_l, bn_l)
    study, stability, report, figures = analyse(uri, tmp_path)
    assert {r.run_id for r in study.runs} >= set(diverged.values())  # results, not dropped
    assert stability.largest_stable == {"plain": 0.01, "bn": 0.1}
    section = report.split("## Stability across learning rates")[1].split("## Figures")[0]
    assert "below ln 10 = 2.3026, the loss of a uniform guess" in section
    inv_plain, inv_bn = 1 / (sum(plain_l) / 2), 1 / (sum(bn_l) / 2)
    assert (
        f"| plain | 0.01, 0.1, 1 | 6 | 3 (1 at η = 0.1, 2 at η = 1) | 0.01 | {inv_plain:.4g} | – |"
    ) in section
    assert f"| bn | 0.01, 0.1, 1 | 6 | 0 | 0.1 | {inv_bn:.4g} | 0.05 |" in section
    assert (
        "from the FINISHED, undiverged training runs at η = 0.04 of `ref` (engine version v1, "
        "one run per configuration; bn: n = 2, plain: n = 2). Note: the runs above are of "
        "engine version unknown."
    ) in section
    assert f"**Smoother by L̂ = tolerates larger steps?** {verdict}" in section
    fig = figures["stability"]
    assert [ax.get_title() for ax in fig.axes] == ["Final training loss", "Final test accuracy"]
    assert "error bars: min–max over seeds" in fig.get_suptitle().replace("\n", " ")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:2] == ["plain (3 of 6 runs diverged)", "bn (0 of 6 runs diverged)"]
    assert "largest stable η of plain = 0.01" in legend and "ln 10: a uniform guess" in legend
    loss = fig.axes[0]
    lines = {c.get_label(): c for c in loss.containers if isinstance(c, ErrorbarContainer)}
    assert list(lines) == ["plain", "bn"]
    assert list(lines["plain"].lines[0].get_xdata()) == [0.01, 0.1]  # nothing left at η = 1
    assert list(lines["plain"].lines[0].get_ydata()) == pytest.approx([0.55, 0.4])
    assert list(lines["bn"].lines[0].get_xdata()) == [0.01, 0.1, 1.0]
    marks = [line for line in loss.lines if line.get_gid() == "diverged" and len(line.get_xdata())]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [0.1, 1.0]
    assert [t.get_text() for t in loss.texts] == ["1/2", "2/2"]
    stable = sorted(line.get_xdata()[0] for line in loss.lines if line.get_gid() == "stable")
    assert stable == [0.01, 0.1]
    references = sorted(line.get_xdata()[0] for line in loss.lines if line.get_gid() == "reference")
    assert references == pytest.approx(sorted([inv_plain, inv_bn, 2 / 40]))


def test_without_the_reference_the_report_says_so(tmp_path, store):
    uri, client, exp = store
    log_lr_grid(client, exp)
    _, stability, report, figures = analyse(uri, tmp_path)
    assert stability.reference.engine_version is None
    assert (
        "No reference L̂: none of the experiments `ref` (`ref` not in this store) holds a "
        "FINISHED, undiverged training run at η = 0.04"
    ) in report
    assert "| plain | 0.01, 0.1, 1 | 6 | 3 (1 at η = 0.1, 2 at η = 1) | 0.01 | – | – |" in report
    assert "**Smoother by L̂ = tolerates larger steps?** Not stated" in report
    loss = figures["stability"].axes[0]
    assert not [line for line in loss.lines if line.get_gid() == "reference"]
