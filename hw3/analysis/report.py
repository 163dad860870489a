"""summary.csv and REPORT.md: a study's aggregates and the statements they support."""

from __future__ import annotations

import math
from pathlib import Path

from hw3.analysis.study import (
    CONFIDENCE,
    INCIDENTAL,
    Study,
    common_passes,
    describe,
    differing,
    learning_rate,
    per_run,
    run_means,
    seeds,
    series,
    welch,
)

# Metrics in the order the final-pass table lists them; others follow alphabetically.
LEADING = ("train/loss", "test/loss", "train/acc", "test/acc", "smoothness/L", "smoothness/lr_max")
TIMES = {
    "time/train_pass_s": "training pass",
    "time/smoothness_s": "L̂ measurement",
    "time/eval_s": "evaluation",
}
LEVEL = f"{CONFIDENCE:.0%}"


def num(x: float) -> str:
    """A number as the report shows it: 4 significant digits, '–' when undefined."""
    return "–" if x is None or math.isnan(x) else f"{x:.4g}"


def plural(n: int, noun: str) -> str:
    """'1 run', '3 runs', '2 passes'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def spread(mean: float, std: float, n: int) -> str:
    """'mean ± std (n)', or 'mean (n=1)' where there is no spread."""
    n = int(n)
    return f"{num(mean)} (n=1)" if n < 2 else f"{num(mean)} ± {num(std)} ({n})"


def write_summary(study: Study, path: Path) -> Path:
    """The aggregates, one row per model, pass and metric (NaN std and ci95 written empty)."""
    study.summary.to_csv(path, index=False)
    return path


def final_pass(study: Study, group: str) -> int:
    """The last pass a group's runs logged."""
    return int(study.summary.loc[study.summary["model"] == group, "pass"].max())


def metric_order(metrics: set[str]) -> list[str]:
    """The metrics present, in the order of LEADING, then the rest alphabetically."""
    return [m for m in LEADING if m in metrics] + sorted(metrics - set(LEADING))


def final_table(study: Study) -> list[str]:
    """Markdown table: metric × group, 'mean ± std (n)' at each group's final pass."""
    header = [f"{g} (pass {final_pass(study, g)})" for g in study.groups]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for metric in metric_order(set(study.summary["metric"])):
        cells = []
        for g in study.groups:
            s = series(study.summary, g, metric)
            row = s[s["pass"] == final_pass(study, g)]
            cells.append("–" if row.empty else spread(*row[["mean", "std", "n"]].iloc[0]))
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    return lines


def time_table(study: Study) -> list[str]:
    """Markdown table: per group, seconds per pass of each timed phase, mean ± std over runs."""
    present = [m for m in TIMES if m in set(study.tidy["metric"])]
    if not present:
        return ["No timings were logged."]
    per_phase = {
        m: describe(run_means(study.tidy, m), ["model"]).set_index("model") for m in present
    }
    lines = [
        "| model | " + " | ".join(f"{TIMES[m]} (s)" for m in present) + " |",
        "|---" * (len(present) + 1) + "|",
    ]
    for g in study.groups:
        cells = [spread(*per_phase[m].loc[g, ["mean", "std", "n"]]) for m in present]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines


def smoothness_findings(study: Study) -> list[str]:
    """Per pair of groups: at how many passes the second's mean L̂ is below the first's."""
    out = []
    for a, b, both in common_passes(study.summary, study.groups, "smoothness/L"):
        below = int((both[b] < both[a]).sum())
        last = both.iloc[-1]
        out.append(
            f"**L̂, {b} vs {a}:** the mean L̂ of {b} is below that of {a} at {below} of "
            f"{len(both)} passes; at pass {int(last['pass'])} it is {num(last[b])} vs "
            f"{num(last[a])} (ratio {num(last[b] / last[a])})."
        )
    return out


def step_findings(study: Study) -> list[str]:
    """Per group: the range of 1/L̂ over all runs and passes, against the learning rate."""
    out = []
    for g in study.groups:
        rows = study.tidy[
            (study.tidy["model"] == g) & (study.tidy["metric"] == "smoothness/lr_max")
        ]
        if rows.empty:
            continue
        lr = learning_rate(study, g)
        above = int((rows["value"] > lr).sum())
        out.append(
            f"**1/L̂ vs η, {g}:** 1/L̂ ranges from {num(rows['value'].min())} to "
            f"{num(rows['value'].max())} over {plural(rows['run'].nunique(), 'run')} × "
            f"{plural(rows['pass'].nunique(), 'pass')}; the learning rate η = {num(lr)} is below "
            f"1/L̂ (the largest step gradient descent tolerates on an L̂-smooth loss) at {above} "
            f"of {len(rows)} (run, pass) points."
        )
    return out


def accuracy_findings(study: Study, metric: str = "test/acc") -> list[str]:
    """Per pair of groups: the final-pass accuracy gap with a Welch t interval."""
    out = []
    for a, b, both in common_passes(study.summary, study.groups, metric):
        at = int(both["pass"].max())
        va, vb = per_run(study.tidy, a, metric, at), per_run(study.tidy, b, metric, at)
        diff = welch(va, vb)
        estimate = sum(va) / len(va) - sum(vb) / len(vb)
        gap = f"**`{metric}` at pass {at}, {a} − {b}:** {estimate:+.4g}"
        if diff is None:
            out.append(f"{gap} (no interval: a group has a single seed).")
            continue
        verdict = "excludes" if diff.low > 0 or diff.high < 0 else "includes"
        out.append(
            f"{gap}, {LEVEL} Welch t interval [{num(diff.low)}, {num(diff.high)}] "
            f"(unequal variances, df = {num(diff.dof)}; n = {len(va)} and {len(vb)}); "
            f"it {verdict} 0."
        )
    return out


def config_lines(study: Study) -> list[str]:
    """What the groups share and what sets them apart, as markdown list items."""
    split = [k for k in differing(study.runs) if k != "model.name"]
    first = study.runs[0].params
    shared = sorted(set(first) - INCIDENTAL - set(split) - {"model.name"})
    lines = [f"- Shared by all runs: {', '.join(f'`{k}={first[k]}`' for k in shared) or 'none'}."]
    if split:
        lines.append(
            "- Differ between runs (mixed configurations are separate groups, never averaged "
            f"together): {', '.join(f'`{k}`' for k in split)}."
        )
    return lines


def left_out_lines(study: Study) -> list[str]:
    """Markdown table of the runs left out of the aggregates, or a line saying there are none."""
    if not study.left_out:
        return ["None: every selected run finished and is used."]
    lines = ["| run | name | model | seed | why | error |", "|---|---|---|---|---|---|"]
    for run, why in study.left_out:
        error = run.error.replace("|", "\\|")
        lines.append(
            f"| `{run.run_id}` | {run.name} | {run.model} | {run.seed} | {why} | {error} |"
        )
    return lines


def figure_lines(figures: list[Path]) -> list[str]:
    """Markdown embedding each PNG, with a link to its PDF."""
    lines = []
    for png in (p for p in figures if p.suffix == ".png"):
        lines += [f"![{png.stem}]({png.name})", f"[{png.stem}.pdf]({png.stem}.pdf)", ""]
    return lines


def write_report(study: Study, figures: list[Path], path: Path) -> Path:
    """REPORT.md: the groups, findings, figures, final-pass metrics, timings and left-out runs."""
    group_lines = [
        f"- **{g}**: n = {plural(len(s), 'seed')} ({', '.join(map(str, s))})"
        for g in study.groups
        for s in [seeds(study, g)]
    ]
    single = [g for g in study.groups if len(seeds(study, g)) == 1]
    notes = [
        f"- Bands and `ci95` are the half-width of the {LEVEL} Student t interval of the mean "
        "over seeds; ± is the sample standard deviation (ddof = 1)."
    ]
    if single:
        notes.append(
            f"- {', '.join(f'**{g}**' for g in single)}: a single seed, so no error bars; "
            "std and ci95 are undefined (empty in summary.csv)."
        )
    findings = smoothness_findings(study) + step_findings(study) + accuracy_findings(study)
    text = [
        f"# Analysis of experiment `{study.experiment}`",
        "",
        f"Runs: `{study.selection}` in experiment {study.experiment_id}; {len(study.runs)} used, "
        f"{len(study.left_out)} left out. Every number below is computed from the tracking store.",
        "",
        "## Groups",
        "",
        *group_lines,
        *config_lines(study),
        *notes,
        "",
        "## Findings",
        "",
        *(f"- {f}" for f in findings or ["No pair of groups to compare."]),
        "",
        "## Figures",
        "",
        *figure_lines(figures),
        "## Final-pass metrics (mean ± std (n))",
        "",
        *final_table(study),
        "",
        "## Seconds per pass (mean over each run's passes; mean ± std (n) over runs)",
        "",
        *time_table(study),
        "",
        "## Left out",
        "",
        *left_out_lines(study),
        "",
    ]
    path.write_text("\n".join(text))
    return path
