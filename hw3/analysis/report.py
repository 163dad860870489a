"""summary.csv and REPORT.md: a study's aggregates and the statements they support."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hw3.analysis.findings import (
    TIMES,
    AccuracyGap,
    Findings,
    PassByPass,
    StepBound,
    Verdict,
)
from hw3.analysis.intervals import ErrorBar, reciprocal
from hw3.analysis.paired import NARROWING, SEEDS_CAP, SUMMARIES, Paired
from hw3.analysis.stability import UNIFORM_LOSS, Stability
from hw3.analysis.study import (
    INCIDENTAL,
    Ordering,
    Study,
    differing,
    runs_of,
    runs_table,
    seeds,
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
PHASES = dict(zip(TIMES, ("training pass", "L̂ measurement", "evaluation"), strict=True))
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
    runs_table(study)[RUN_COLUMNS].to_csv(path, index=False)
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


def time_table(f: Findings) -> list[str]:
    """Markdown table: per group, seconds per pass of each timed phase, over runs."""
    if f.times.empty:
        return ["No timings were logged."]
    present = list(dict.fromkeys(f.times["phase"]))
    stats = f.times.set_index(["phase", "model"])
    lines = [
        "| model | " + " | ".join(f"{PHASES[m]} (s)" for m in present) + " |",
        "|---" * (len(present) + 1) + "|",
    ]
    for g in f.study.groups:
        cells = [
            cell(*stats.loc[(m, g), ["mean", "low", "high", "n"]]) if (m, g) in stats.index else "–"
            for m in present
        ]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines


def order_sentence(order: Ordering, name: str) -> str:
    """Seed by seed, pass by pass: whether one group's metric stays above the other's."""
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


def smoothness_sentence(c: PassByPass) -> str:
    """At how many passes b's mean L̂ is below a's, and whether it holds seed by seed."""
    text = (
        f"**L̂, {c.b} vs {c.a}:** the mean L̂ of {c.b} is below that of {c.a} at {c.below} of "
        f"{len(c.passes)} passes; at pass {c.passes[-1]} it is {num(c.mean_b[-1])} vs "
        f"{num(c.mean_a[-1])} (ratio {num(c.last_ratio)})."
    )
    return f"{text} {order_sentence(c.seedwise, 'L̂')}" if c.seedwise else text


def step_sentence(s: StepBound) -> str:
    """A group's 1/(mean L̂) against the learning rate, per pass and per run."""
    return (
        f"**1/L̂ vs η, {s.group}:** 1/(mean L̂ over seeds) is above the learning rate η = "
        f"{num(s.lr)} (a step η ≤ 1/L̂ decreases an L̂-smooth loss: the descent lemma) at "
        f"{s.passes_above} of {plural(s.passes, 'pass')}, from {num(s.bound_min)} to "
        f"{num(s.bound_max)}; per run, 1/L̂ ranges from {num(s.point_min)} to "
        f"{num(s.point_max)} over {plural(s.runs, 'run')} × {plural(s.run_passes, 'pass')} and "
        f"is above η at {s.points_above} of {s.points} (run, pass) points."
    )


def accuracy_sentence(g: AccuracyGap, confidence: float) -> str:
    """The final-pass accuracy gap with its Welch t interval."""
    gap = f"**`{g.metric}` at pass {g.at_pass}, {g.a} − {g.b}:** {g.estimate:+.4g}"
    if g.interval is None:
        return f"{gap} (no interval: a group has a single seed)."
    return (
        f"{gap}, {confidence:.0%} Welch t interval [{num(g.interval.low)}, "
        f"{num(g.interval.high)}] (unequal variances, df = {num(g.interval.dof)}; n = {g.n_a} "
        f"and {g.n_b}); it {'excludes' if g.excludes_zero else 'includes'} 0."
    )


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


def whole_run_lines(f: Findings) -> list[str]:
    """REPORT.md's section of whole-run comparisons, one sentence each (none without L̂)."""
    if not f.whole_runs:
        return []
    return [
        "## Whole runs, paired by seed",
        "",
        "Each run summed up in one number (L̂'s mean over its passes, or its final-pass value); "
        "two models compared seed by seed, since a seed fixes the data order both saw.",
        "",
        *(f"- {whole_run_sentence(p, f.study.errorbar)}" for p in f.whole_runs),
        "",
    ]


def landscape_lines(f: Findings) -> list[str]:
    """Seed-by-seed orderings of the landscape metrics, and sharpness against 2/η."""
    if not f.landscape and not f.edges:
        return []
    out = [
        f"- **{LANDSCAPE[o.metric]}, {o.pair[0]} vs {o.pair[1]}:** "
        + order_sentence(o, LANDSCAPE[o.metric])
        for o in f.landscape
    ]
    out += [
        f"- **λ_max vs 2/η, {e.group}:** λ_max is above the edge of stability 2/η = "
        f"{num(e.edge)} at {e.above} of {e.points} (run, pass) points (range {num(e.low)} to "
        f"{num(e.high)})."
        for e in f.edges
    ]
    return ["## Loss landscape", "", *out, ""]


def rate(lr: float) -> str:
    """A learning rate as the report writes it, 'none' for NaN."""
    return "none" if math.isnan(lr) else f"{lr:g}"


def stability_lines(f: Findings) -> list[str]:
    """The stability section: per model, runs, divergence and the largest stable rate, set
    against 1/L̂ (and 2/λ_max) measured at the reference rate; the verdict."""
    stability = f.stability
    if stability is None or f.verdict is None:
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
        text.append(
            f"| {line} | {', '.join(f'{lr:g}' for lr in rates['lr'])} | {rates['runs'].sum()} | "
            f"{rates['diverged'].sum()}{f' ({diverged})' if diverged else ''} | "
            f"{rate(stability.largest_stable[line])} | {num(inv)} | {num(edge)} |"
        )
    reference = reference_lines(stability, f.study.engine_version)
    return [*text, "", *reference, "", verdict_sentence(f.verdict), ""]


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


def verdict_sentence(v: Verdict) -> str:
    """Whether the model smoother by L̂ is also the one that tolerates the largest steps."""
    head = "**Smoother by L̂ = tolerates larger steps?**"
    if not v.stated:
        return (
            f"{head} Not stated: fewer than two models have both a stable-rate result and a "
            "reference L̂."
        )
    answer = {
        "yes": "yes: it also has the largest stable learning rate",
        "tied": f"tied: {', '.join(v.winners)} share the largest stable learning rate of the grid",
        "no": f"no: {', '.join(v.winners)} tolerate(s) larger steps",
    }[v.answer]
    shown = "; ".join(
        f"{line}: 1/L̂ {num(inv)}, largest stable η {rate(v.largest_stable[line])}"
        for line, inv in v.inv_l.items()
    )
    return f"{head} The model smoothest by L̂ is {v.smoothest}; {answer} ({shown})."


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
    if "smoothness/L" in study.metrics:
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


def figure_lines(figures: Sequence[Path]) -> list[str]:
    """Markdown embedding each PNG, with a link to its PDF where one was written."""
    pdfs = {p.stem for p in figures if p.suffix == ".pdf"}
    lines = []
    for png in (p for p in figures if p.suffix == ".png"):
        lines += [f"![{png.stem}]({png.name})"]
        lines += [f"[{png.stem}.pdf]({png.stem}.pdf)"] if png.stem in pdfs else []
        lines += [""]
    return lines


def write_report(f: Findings, figures: Sequence[Path], path: Path) -> Path:
    """REPORT.md: the groups, findings, figures, final-pass metrics, timings, divergences and
    left-out runs."""
    study = f.study
    group_lines = [
        f"- **{g}**: n = {plural(len(s), 'seed')} ({listing(s)})"
        + (f", {d} diverged" if (d := sum(r.diverged for r in runs_of(study, g))) else "")
        for g in study.groups
        for s in [seeds(study, g)]
    ]
    findings = [
        *map(smoothness_sentence, f.smoothness),
        *map(step_sentence, f.step_bounds),
        *(accuracy_sentence(g, study.errorbar.confidence) for g in f.accuracy),
    ]
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
        *(f"- {line}" for line in findings or ["No pair of groups to compare."]),
        "",
        *whole_run_lines(f),
        *landscape_lines(f),
        *stability_lines(f),
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
        *time_table(f),
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
