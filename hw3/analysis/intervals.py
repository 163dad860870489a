"""Error bars for a handful of seeds: what each kind draws, and its bounds from the values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special  # its quantiles; scipy.stats costs a second more to import

# errorbar= → what the bars show (a level and the resampling settings are filled in).
KINDS = {
    "range": "min–max over seeds",
    "sd": "mean ± 1 sample standard deviation",
    "se": "mean ± 1 standard error",
    "t": "{level} Student-t interval of the mean",
    "bootstrap": "{level} percentile-bootstrap interval of the mean "
    "({resamples} resamples, seed {seed})",
}


@dataclass(frozen=True)
class ErrorBar:
    """Which error bar to draw and the settings of the kinds that need them."""

    kind: str  # a key of KINDS
    confidence: float  # level of the t and bootstrap intervals (and of Welch's)
    resamples: int  # of the bootstrap
    seed: int  # of the bootstrap's resampling

    @property
    def label(self) -> str:
        """What the bars show, in words, e.g. '95% Student-t interval of the mean'."""
        level = f"{self.confidence:.0%}"
        return KINDS[self.kind].format(level=level, resamples=self.resamples, seed=self.seed)


def t_quantile(confidence: float, dof: float | np.ndarray) -> float | np.ndarray:
    """The two-sided Student-t quantile of `confidence` at `dof` degrees of freedom."""
    return special.stdtrit(dof, (1 + confidence) / 2)


def normal_quantile(confidence: float) -> float:
    """The two-sided standard normal quantile of `confidence` (1.96 at 0.95)."""
    return float(special.ndtri((1 + confidence) / 2))


def t_multiplier(confidence: float, n: int) -> float:
    """Student-t quantile that a standard error is multiplied by (NaN for n < 2)."""
    return float(t_quantile(confidence, n - 1)) if n > 1 else math.nan


def bootstrap(values: np.ndarray, confidence: float, resamples: int, seed: int) -> np.ndarray:
    """Percentile interval of the mean over `resamples` resamples drawn with `seed`."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values))).mean(axis=1)
    tail = 50 * (1 - confidence)
    return np.percentile(means, [tail, 100 - tail])


def bounds(values: Sequence[float], bar: ErrorBar) -> tuple[float, float]:
    """(low, high) of the error bar over `values`; NaN for fewer than two values."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < 2:
        return math.nan, math.nan
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    half = {
        "sd": sd,
        "se": sd / math.sqrt(n),
        "t": t_multiplier(bar.confidence, n) * sd / math.sqrt(n),
    }
    if bar.kind in half:
        return mean - half[bar.kind], mean + half[bar.kind]
    if bar.kind == "range":
        return float(v.min()), float(v.max())
    low, high = bootstrap(v, bar.confidence, bar.resamples, bar.seed)
    return float(low), float(high)


def reciprocal(
    mean: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1/mean with the bar [1/high, 1/low]: a bar that reaches 0 has no upper end (inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = np.where(low > 0, 1 / low, np.inf)
        return 1 / mean, 1 / high, np.where(np.isnan(low), np.nan, upper)


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with a Welch t interval."""

    estimate: float
    low: float
    high: float
    dof: float


def welch(a: Sequence[float], b: Sequence[float], confidence: float) -> Difference | None:
    """Welch's t interval (unequal variances) for mean(a) − mean(b); None if either n < 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ea, eb = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)  # squared standard errors
    estimate = float(va.mean() - vb.mean())
    if ea + eb == 0:  # no spread in either group: the difference is exact
        return Difference(estimate, estimate, estimate, math.nan)
    with np.errstate(invalid="ignore", divide="ignore"):  # one group without spread
        dof = (ea + eb) ** 2 / (ea**2 / (len(va) - 1) + eb**2 / (len(vb) - 1))  # Satterthwaite
        half = float(t_quantile(confidence, dof) * math.sqrt(ea + eb))
    return Difference(estimate, estimate - half, estimate + half, float(dof))
