"""summary.csv and REPORT.md: a study's aggregates and the statements they support."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hw3.analysis.intervals import ErrorBar, reciprocal, welch
from hw3.analysis.paired import NARROWING, SEEDS_CAP, SUMMARIES, Paired, study_comparisons
from hw3.analysis.stability import UNIFORM_LOSS, Stability
from hw3.analysis.study import (
    INCIDENTAL,
    Study,
    common_passes,
    comparable_pairs,
    describe,
    differing,
    learning_rate,
    per_run,
    run_means,
    runs_of,
    seeds,
    seedwise_order,
    series,
)

# Metrics in the order the final-pass table lists them; others follow alphabetically.
LEADING = ("train/loss", "test/loss", "train/acc", "test/acc", "smoothness/L")
# Not in the table: the mean of 1/L̂ over seeds can contradict mean L̂; 1/(mean L̂) is listed.
UNTABLED = ("smoothness/lr_max",)
MAX_TABLE_ROWS = 30  # a longer table of runs is summed up, each run being in RUNS_CSV
RUNS_CSV = "runs.csv"  # every selected run, used or left out, beside REPORT.md
RUN_COLUMNS = [
    "run", "name", "group", "seed", "status", "used", "why", "diverged_pass", "engine_version",
    "error",
]  # fmt: skip
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")  # an MLflow run id, elided where reasons are counted
TIMES = {
    "time/train_pass_s": "training pass",
    "time/smoothness_s": "L̂ measurement",
    "time/eval_s": "evaluation",
}
LANDSCAPE = {
    "smoothness/beta": "β-smoothness",
    "smoothness/grad_pred": "gradient predictiveness",
    "smoothness/loss_range": "loss range",
    "smoothness/sharpness": "sharpness λ_max",
}


def num(x: float | None) -> str:
    """A number as the report shows it: 4 significant digits, '–' when undefined."""
    return "–" if x is None or math.isnan(x) else f"{x:.4g}"


def plural(n: int, noun: str) -> str:
    """'1 run', '3 runs', '2 passes'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def cell(mean: float, low: float, high: float, n: int) -> str:
    """'mean [low, high] (n)', or 'mean (n=1)' where there is no error bar."""
    n = int(n)
    return f"{num(mean)} (n=1)" if n < 2 else f"{num(mean)} [{num(low)}, {num(high)}] ({n})"


def listing(values: Sequence[int]) -> str:
    """'0, 1, 1000–1666': the values in order, three or more consecutive ones as first–last."""
    ordered = sorted(values)
    parts, start = [], 0
    for i, value in enumerate(ordered):
        if i + 1 < len(ordered) and ordered[i + 1] == value + 1:
            continue  # the stretch from `start` goes on
        stretch = ordered[start : i + 1]
        parts += [f"{stretch[0]}–{value}"] if len(stretch) >= 3 else map(str, stretch)
        start = i + 1
    return ", ".join(parts)


def write_summary(study: Study, path: Path) -> Path:
    """The aggregates, one row per group, pass and metric (undefined values written empty)."""
    study.summary.to_csv(path, index=False)
    return path


def write_runs(study: Study, path: Path) -> Path:
    """Every selected run, used or left out (with why), one row each: RUNS_CSV."""
    used = [(r, study.labels[r.run_id], "") for r in study.runs]
    rows = [
        {
            "run": r.run_id,
            "name": r.name,
            "group": group,
            "seed": r.seed,
            "status": r.status,
            "used": not why,
            "why": why,
            "diverged_pass": r.diverged_pass,
            "engine_version": r.engine_version,
            "error": r.error,
        }
        for r, group, why in [*used, *((r, r.model, why) for r, why in study.left_out)]
    ]
    pd.DataFrame(rows, columns=RUN_COLUMNS).astype({"diverged_pass": "Int64"}).to_csv(
        path, index=False
    )
    return path


def final_pass(study: Study, group: str) -> int | None:
    """The last pass a group's runs logged (None: they logged none, e.g. all diverged at once)."""
    passes = study.summary.loc[study.summary["model"] == group, "pass"]
    return None if passes.empty else int(passes.max())


def metric_order(metrics: set[str]) -> list[str]:
    """The metrics present, in the order of LEADING, then the rest alphabetically."""
    return [m for m in LEADING if m in metrics] + sorted(metrics - set(LEADING))


def final_cell(study: Study, group: str, metric: str, *, invert: bool) -> str:
    """A group's `metric` at its final pass (its reciprocal if `invert`), as `cell` writes it."""
    s = series(study.summary, group, metric)
    row = s[s["pass"] == final_pass(study, group)]
    if row.empty:
        return "–"
    mean, low, high, n = row[["mean", "low", "high", "n"]].iloc[0]
    if invert:
        ends = reciprocal(*(np.asarray(v, dtype=float) for v in (mean, low, high)))
        mean, low, high = (float(v) for v in ends)
    return cell(mean, low, high, n)


def final_table(study: Study) -> list[str]:
    """Markdown table: metric × group at each group's final pass, with the error bar."""
    header = [
        f"{g} (pass {p})" if (p := final_pass(study, g)) is not None else f"{g} (no pass logged)"
        for g in study.groups
    ]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    metrics = set(study.summary["metric"]) - set(UNTABLED)
    rows = [(f"`{m}`", m, False) for m in metric_order(metrics)]
    if "smoothness/L" in metrics:
        at = rows.index(("`smoothness/L`", "smoothness/L", False)) + 1
        rows.insert(at, ("1/(mean L̂)", "smoothness/L", True))
    for name, metric, invert in rows:
        cells = [final_cell(study, g, metric, invert=invert) for g in study.groups]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def time_table(study: Study) -> list[str]:
    """Markdown table: per group, seconds per pass of each timed phase, over runs."""
    present = [m for m in TIMES if m in set(study.tidy["metric"])]
    if not present:
        return ["No timings were logged."]
    per_phase = {
        m: describe(run_means(study.tidy, m), ["model"], study.errorbar).set_index("model")
        for m in present
    }
    lines = [
        "| model | " + " | ".join(f"{TIMES[m]} (s)" for m in present) + " |",
        "|---" * (len(present) + 1) + "|",
    ]
    for g in study.groups:
        cells = [
            cell(*per_phase[m].loc[g, ["mean", "low", "high", "n"]])
            if g in per_phase[m].index
            else "–"
            for m in present
        ]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines


def order_sentence(study: Study, a: str, b: str, metric: str, name: str) -> str | None:
    """Seed by seed, pass by pass: whether one group's `metric` stays above the other's."""
    order = seedwise_order(study.tidy, a, b, metric)
    if order is None:
        return None
    verdict = "holds" if order.holds == order.pairs else "does not hold"
    text = (
        f"Per seed (seeds {listing(list(order.seeds))}), {name} of {order.above} is above that "
        f"of {order.below} at {order.holds} of {order.pairs} (seed, pass) points, and at "
        f"{order.passes_every_seed} of {plural(order.passes, 'pass')} for every seed: the "
        f"ordering {verdict} at every pass across seeds"
    )
    if order.exceptions:
        shown = ", ".join(f"seed {s} pass {p}" for s, p in order.exceptions[:6])
        more = len(order.exceptions) - 6
        text += f" (not at {shown}{f' and {more} more' if more > 0 else ''})"
    return text + "."


def smoothness_findings(study: Study) -> list[str]:
    """Per comparable pair: at how many passes the second's mean L̂ is below the first's, and
    whether the ordering holds seed by seed."""
    out = []
    for a, b, both in common_passes(study.summary, comparable_pairs(study), "smoothness/L"):
        below = int((both[b] < both[a]).sum())
        last = both.iloc[-1]
        text = (
            f"**L̂, {b} vs {a}:** the mean L̂ of {b} is below that of {a} at {below} of "
            f"{len(both)} passes; at pass {int(last['pass'])} it is {num(last[b])} vs "
            f"{num(last[a])} (ratio {num(last[b] / last[a])})."
        )
        seedwise = order_sentence(study, a, b, "smoothness/L", "L̂")
        out.append(f"{text} {seedwise}" if seedwise else text)
    return out


def step_findings(study: Study) -> list[str]:
    """Per group: 1/(mean L̂) against the learning rate, per pass and per run."""
    out = []
    for g in study.groups:
        s = series(study.summary, g, "smoothness/L")
        if s.empty:
            continue
        lr = learning_rate(study, g)
        bound = 1 / s["mean"]
        rows = study.tidy[(study.tidy["model"] == g) & (study.tidy["metric"] == "smoothness/L")]
        points = 1 / rows["value"]
        out.append(
            f"**1/L̂ vs η, {g}:** 1/(mean L̂ over seeds) is above the learning rate η = {num(lr)} "
            f"(a step η ≤ 1/L̂ decreases an L̂-smooth loss: the descent lemma) at "
            f"{int((bound > lr).sum())} of {plural(len(s), 'pass')}, from {num(bound.min())} to "
            f"{num(bound.max())}; per run, 1/L̂ ranges from {num(points.min())} to "
            f"{num(points.max())} over {plural(rows['run'].nunique(), 'run')} × "
            f"{plural(rows['pass'].nunique(), 'pass')} and is above η at "
            f"{int((points > lr).sum())} of {len(rows)} (run, pass) points."
        )
    return out


def accuracy_findings(study: Study, metric: str = "test/acc") -> list[str]:
    """Per comparable pair: the final-pass accuracy gap with a Welch t interval."""
    out = []
    level = f"{study.errorbar.confidence:.0%}"
    for a, b, both in common_passes(study.summary, comparable_pairs(study), metric):
        at = int(both["pass"].max())
        va, vb = per_run(study.tidy, a, metric, at), per_run(study.tidy, b, metric, at)
        diff = welch(va, vb, study.errorbar.confidence)
        estimate = sum(va) / len(va) - sum(vb) / len(vb)
        gap = f"**`{metric}` at pass {at}, {a} − {b}:** {estimate:+.4g}"
        if diff is None:
            out.append(f"{gap} (no interval: a group has a single seed).")
            continue
        verdict = "excludes" if diff.low > 0 or diff.high < 0 else "includes"
        out.append(
            f"{gap}, {level} Welch t interval [{num(diff.low)}, {num(diff.high)}] "
            f"(unequal variances, df = {num(diff.dof)}; n = {len(va)} and {len(vb)}); "
            f"it {verdict} 0."
        )
    return out


def seeds_needed_text(p: Paired, bar: ErrorBar) -> str:
    """How many seeds the error bar would need to exclude 0 at this effect and spread."""

    def excludes(needed: int | None) -> str:
        return f"not with up to {SEEDS_CAP:,} seeds" if needed is None else f"from {needed} seeds"

    if bar.kind in NARROWING:
        return f"at this effect and spread it would exclude 0 {excludes(p.needed)}"
    return (
        f"a {bar.label} does not narrow with more seeds; a 95% Student-t interval would exclude 0 "
        f"{excludes(p.needed_t)}"
    )


def whole_run_sentence(p: Paired, bar: ErrorBar) -> str:
    """One comparison of whole runs, paired by seed, in one sentence."""
    n = len(p.seeds)
    if n < 2:
        interval = "no interval from a single seed"
    else:
        verdict = "excludes" if p.separated else "includes"
        interval = (
            f"{bar.label} of the paired difference [{num(p.low)}, {num(p.high)}], which "
            f"{verdict} 0; {seeds_needed_text(p, bar)}"
        )
    return (
        f"**Whole-run L̂ ({SUMMARIES[p.summary]}), {p.b} vs {p.a}, paired by seed (seeds "
        f"{listing(list(p.seeds))}):** {p.b} − {p.a} = {num(p.difference)} (ratio "
        f"{num(p.ratio)}; {p.b} lower at {p.lower} of {plural(n, 'seed')}), {interval}."
    )


def whole_run_lines(study: Study) -> list[str]:
    """REPORT.md's section of whole-run comparisons, one sentence each (none without L̂)."""
    found = study_comparisons(study)
    if not found:
        return []
    return [
        "## Whole runs, paired by seed",
        "",
        "Each run summed up in one number (L̂'s mean over its passes, or its final-pass value); "
        "two models compared seed by seed, since a seed fixes the data order both saw.",
        "",
        *(f"- {whole_run_sentence(p, study.errorbar)}" for p in found),
        "",
    ]


def landscape_lines(study: Study) -> list[str]:
    """Seed-by-seed orderings of the landscape metrics, and sharpness against 2/η."""
    present = [m for m in LANDSCAPE if m in set(study.tidy["metric"])]
    if not present:
        return []
    out = []
    for metric in present:
        for a, b in comparable_pairs(study):
            if (text := order_sentence(study, a, b, metric, LANDSCAPE[metric])) is not None:
                out.append(f"- **{LANDSCAPE[metric]}, {a} vs {b}:** {text}")
    if "smoothness/sharpness" in present:
        for g in study.groups:
            rows = study.tidy[
                (study.tidy["model"] == g) & (study.tidy["metric"] == "smoothness/sharpness")
            ]
            if rows.empty:
                continue
            edge = 2 / learning_rate(study, g)
            out.append(
                f"- **λ_max vs 2/η, {g}:** λ_max is above the edge of stability 2/η = "
                f"{num(edge)} at {int((rows['value'] > edge).sum())} of {len(rows)} (run, pass) "
                f"points (range {num(rows['value'].min())} to {num(rows['value'].max())})."
            )
    return ["## Loss landscape", "", *out, ""]


def stability_lines(study: Study, stability: Stability | None) -> list[str]:
    """The stability section: per model, runs, divergence and the largest stable rate, set
    against 1/L̂ (and 2/λ_max) measured at the reference rate; the verdict."""
    if stability is None:
        return []
    ref = stability.reference
    text = [
        "## Stability across learning rates",
        "",
        "A learning rate is *stable* for a model when no seed diverged at it and every seed's "
        f"final training loss (f(w) over the training set after the last pass) is below "
        f"ln 10 = {UNIFORM_LOSS:.4f}, the loss of a uniform guess over the 10 classes: the loss "
        "went down. Diverged runs are results: they are counted here and marked in the figure.",
        "",
        f"| model | η tried | runs | diverged | largest stable η | 1/L̂ at η = {ref.lr:g} | "
        f"2/λ_max at η = {ref.lr:g} |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in stability.lines:
        rates = stability.rates(line)
        model = stability.model(line)
        inv, edge = (
            ref.table.loc[model, ["inv_L", "two_over_sharpness"]]
            if model in ref.table.index
            else (math.nan, math.nan)
        )
        diverged = ", ".join(
            f"{r.diverged} at η = {r.lr:g}" for r in rates.itertuples() if r.diverged
        )
        best = stability.largest_stable[line]
        text.append(
            f"| {line} | {', '.join(f'{lr:g}' for lr in rates['lr'])} | {rates['runs'].sum()} | "
            f"{rates['diverged'].sum()}{f' ({diverged})' if diverged else ''} | "
            f"{'none' if math.isnan(best) else f'{best:g}'} | {num(inv)} | {num(edge)} |"
        )
    text += ["", *reference_lines(stability, study.engine_version), "", verdict(stability), ""]
    return text


def reference_lines(stability: Stability, engine_version: str) -> list[str]:
    """Where the 1/L̂ column comes from (and whether its engine is the study's), or why it is
    empty."""
    ref = stability.reference
    searched = ", ".join(f"`{e}`" for e in ref.searched)
    if ref.engine_version is None:
        missing = [e for e in ref.searched if e not in ref.found]
        absent = f" ({', '.join(f'`{e}`' for e in missing)} not in this store)" if missing else ""
        return [
            f"No reference L̂: none of the experiments {searched}{absent} holds a FINISHED, "
            f"undiverged training run at η = {ref.lr:g} (set `stability.reference_experiments`)."
        ]
    counts = ", ".join(f"{m}: n = {int(n)}" for m, n in ref.table["n"].items())
    return [
        f"1/L̂ is 1/(mean over runs of L̂ at each run's final pass), and 2/λ_max likewise with "
        f"the sharpness, from the FINISHED, undiverged training runs at η = {ref.lr:g} of "
        f"{searched} (engine version {ref.engine_version}, one run per configuration; {counts})."
        + (
            ""
            if ref.engine_version == engine_version
            else f" Note: the runs above are of engine version {engine_version}."
        )
    ]


def verdict(stability: Stability) -> str:
    """Whether the model smoother by L̂ is also the one that tolerates the largest steps."""
    inv = stability.reference.table["inv_L"].dropna()
    model = {line: stability.model(line) for line in stability.lines}
    lines = [line for line in stability.lines if model[line] in inv.index]
    if len(lines) < 2:
        return (
            "**Smoother by L̂ = tolerates larger steps?** Not stated: fewer than two models have "
            "both a stable-rate result and a reference L̂."
        )
    smoothest = max(lines, key=lambda line: inv[model[line]])
    best = {line: stability.largest_stable[line] for line in lines}
    reach = {line: -math.inf if math.isnan(v) else v for line, v in best.items()}
    top = max(reach.values())
    winners = [line for line in lines if reach[line] == top]
    shown = "; ".join(
        f"{line}: 1/L̂ {num(inv[model[line]])}, largest stable η "
        f"{'none' if math.isnan(best[line]) else f'{best[line]:g}'}"
        for line in lines
    )
    head = f"**Smoother by L̂ = tolerates larger steps?** The model smoothest by L̂ is {smoothest}"
    if winners == [smoothest]:
        answer = "yes: it also has the largest stable learning rate"
    elif smoothest in winners:
        answer = f"tied: {', '.join(winners)} share the largest stable learning rate of the grid"
    else:
        answer = f"no: {', '.join(winners)} tolerate(s) larger steps"
    return f"{head}; {answer} ({shown})."


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


def notes(study: Study) -> list[str]:
    """How to read the numbers: error bars, engine version, 1/L̂, single seeds."""
    older = sum(why.startswith("engine version") for _, why in study.left_out)
    lines = [
        f"- Error bars (figures), `[low, high]` (tables) and summary.csv's `low`/`high`: "
        f"{study.errorbar.label} (`errorbar=`); the mean and n are over seeds, `std` is the "
        "sample standard deviation (ddof = 1).",
        f"- Engine version: `{study.engine_version}`, that of the most recently started selected "
        f"run; runs of other versions are never averaged with it "
        f"({plural(older, 'run')} left out for that).",
    ]
    if "smoothness/L" in set(study.tidy["metric"]):
        lines.append(
            "- 1/L̂ is shown as 1/(mean L̂), its error bar the reciprocals of L̂'s, so that it "
            "agrees with the L̂ panel (the mean of 1/L̂ would not)."
        )
    single = [g for g in study.groups if len(seeds(study, g)) == 1]
    if single:
        lines.append(
            f"- {', '.join(f'**{g}**' for g in single)}: a single seed, so no error bars; "
            "std, low and high are undefined (empty in summary.csv)."
        )
    return lines


def diverged_lines(study: Study) -> list[str]:
    """Markdown table of the runs that diverged (they are used: a divergence is a result); past
    MAX_TABLE_ROWS, their count per group and a link to RUNS_CSV."""
    diverged = [r for r in study.runs if r.diverged]
    if not diverged:
        return ["None."]
    lines = [
        "Counted as results: their passes before the divergence are in the per-pass "
        "aggregates, whose n is smaller from that pass on.",
        "",
    ]
    if len(diverged) > MAX_TABLE_ROWS:
        per_group = Counter(study.labels[r.run_id] for r in diverged)
        return [
            *lines,
            f"{plural(len(diverged), 'run')} diverged (each with its pass in [{RUNS_CSV}]"
            f"({RUNS_CSV}), column `diverged_pass`):",
            "",
            "| group | diverged runs |",
            "|---|---|",
            *(f"| {g} | {per_group[g]} |" for g in study.groups if g in per_group),
        ]
    lines += [
        "| run | name | group | seed | diverged at pass | status |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r.run_id}` | {r.name} | {study.labels[r.run_id]} | {r.seed} | {r.diverged_pass} "
        f"| {r.status} |"
        for r in diverged
    ]
    return lines


def left_out_lines(study: Study) -> list[str]:
    """Markdown table of the runs left out of the aggregates, or a line saying there are none;
    past MAX_TABLE_ROWS, their count per reason and a link to RUNS_CSV."""
    if not study.left_out:
        return ["None: every selected run is used."]
    if len(study.left_out) > MAX_TABLE_ROWS:
        reasons = Counter(RUN_ID.sub("…", why) for _, why in study.left_out)
        return [
            f"{plural(len(study.left_out), 'run')} left out (each with why in [{RUNS_CSV}]"
            f"({RUNS_CSV}), column `why`):",
            "",
            "| why | runs |",
            "|---|---|",
            *(f"| {why} | {n} |" for why, n in reasons.most_common()),
        ]
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


def write_report(
    study: Study, stability: Stability | None, figures: list[Path], path: Path
) -> Path:
    """REPORT.md: the groups, findings, figures, final-pass metrics, timings, divergences and
    left-out runs."""
    group_lines = [
        f"- **{g}**: n = {plural(len(s), 'seed')} ({listing(s)})"
        + (f", {d} diverged" if (d := sum(r.diverged for r in runs_of(study, g))) else "")
        for g in study.groups
        for s in [seeds(study, g)]
    ]
    findings = smoothness_findings(study) + step_findings(study) + accuracy_findings(study)
    text = [
        f"# Analysis of experiment `{study.experiment}`",
        "",
        f"Runs: `{study.selection}` in experiment {study.experiment_id}; {len(study.runs)} used, "
        f"{len(study.left_out)} left out (each run in [{RUNS_CSV}]({RUNS_CSV})). Every number "
        "below is computed from the tracking store.",
        "",
        "## Groups",
        "",
        *group_lines,
        *config_lines(study),
        *notes(study),
        "",
        "## Findings",
        "",
        *(f"- {f}" for f in findings or ["No pair of groups to compare."]),
        "",
        *whole_run_lines(study),
        *landscape_lines(study),
        *stability_lines(study, stability),
        "## Figures",
        "",
        *figure_lines(figures),
        f"## Final-pass metrics: mean [{study.errorbar.label}] (n)",
        "",
        *final_table(study),
        "",
        f"## Seconds per pass: each run's mean over its passes; mean [{study.errorbar.label}] "
        "(n) over runs",
        "",
        *time_table(study),
        "",
        "## Diverged",
        "",
        *diverged_lines(study),
        "",
        "## Left out",
        "",
        *left_out_lines(study),
        "",
    ]
    path.write_text("\n".join(text))
    return path
