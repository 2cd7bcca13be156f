"""Statistics over seeds: mean with a 95% bootstrap confidence interval, IQM, probability of improvement.

The bootstrap is :func:`scipy.stats.bootstrap` (percentile intervals, a fixed generator, so the same runs give the
same interval). IQM and the probability of improvement follow rliable (Agarwal et al. 2021, "Deep Reinforcement
Learning at the Edge of the Statistical Precipice"): IQM is the 25% trimmed mean (``scipy.stats.trim_mean``), and
the probability of improvement of X over Y is ``P(X > Y) + 0.5 P(X = Y)`` over all pairs of one run of each, with a
bootstrap that resamples the runs of X and of Y independently (rliable's stratified bootstrap for one task).
rliable itself is not a dependency: its 1.2 release pins ``arch<8``, and arch 7 fails to import next to pandas 3.

All functions take plain sequences of floats (one value per seed), ignore NaNs, and return NaN where the data are too
few: an interval needs 2 values, IQM 5.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 0            # the bootstrap's generator: the same runs give the same interval
IQM_MIN_SEEDS = 5   # IQM is reported from 5 seeds on (below, it trims nothing or one value and says little)


def _clean(values: Sequence[float]) -> np.ndarray:
    a = np.asarray([float(v) for v in values], dtype=float)
    return a[~np.isnan(a)]


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``: ``floor(n / 4)`` values
    cut at each end). NaN below :data:`IQM_MIN_SEEDS` values."""
    from scipy.stats import trim_mean

    a = _clean(values)
    return float(trim_mean(a, 0.25)) if len(a) >= IQM_MIN_SEEDS else math.nan


def _bootstrap(samples: Sequence[np.ndarray], statistic: Callable, confidence: float,
               n_resamples: int, seed: int) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if any(len(s) < 2 for s in samples):
        return math.nan, math.nan
    if all(np.all(s == s[0]) for s in samples):  # every resample gives the same value
        v = float(statistic(*[s[None, :] for s in samples], axis=-1)[0])
        return v, v
    res = bootstrap(tuple(samples), statistic, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", vectorized=True, paired=False, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _iqm_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.stats import trim_mean

    return trim_mean(x, 0.25, axis=axis)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
            seed: int = SEED) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile-bootstrap ``confidence`` interval (NaN
    bounds with fewer than 2 values)."""
    a = _clean(values)
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    low, high = _bootstrap([a], _mean_stat, confidence, n_resamples, seed)
    return float(a.mean()), low, high


def iqm_ci(values: Sequence[float], confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
           seed: int = SEED) -> tuple[float, float, float]:
    """``(IQM, low, high)``: :func:`iqm` and its bootstrap interval; all NaN below :data:`IQM_MIN_SEEDS` values."""
    a = _clean(values)
    if len(a) < IQM_MIN_SEEDS:
        return math.nan, math.nan, math.nan
    low, high = _bootstrap([a], _iqm_stat, confidence, n_resamples, seed)
    return iqm(a), low, high


def _poi_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def probability_of_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """``P(X > Y) + 0.5 P(X = Y)``: the share of pairs (one value of ``x``, one of ``y``) where ``x``'s is larger,
    ties counted half (rliable's definition; equal to the Mann-Whitney U statistic of ``x`` over ``len(x) *
    len(y)``). NaN when either is empty."""
    a, b = _clean(x), _clean(y)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    return float(_poi_stat(a[None, :], b[None, :])[0])


def probability_of_improvement_ci(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE,
                                  n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """``(P, low, high)``: :func:`probability_of_improvement` and its bootstrap interval, the runs of ``x`` and of
    ``y`` resampled independently (NaN bounds when either has fewer than 2 values)."""
    a, b = _clean(x), _clean(y)
    p = probability_of_improvement(a, b)
    if math.isnan(p):
        return p, math.nan, math.nan
    low, high = _bootstrap([a, b], _poi_stat, confidence, n_resamples, seed)
    return p, low, high


def summarize(values: Sequence[float], confidence: float = CONFIDENCE,
              n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict[str, float]:
    """Everything the tables show of one metric over the seeds of a group: ``n``, ``mean``, ``ci_low``,
    ``ci_high``, ``std`` (sample std), ``iqm``, ``iqm_low``, ``iqm_high`` (NaN where there are too few values)."""
    a = _clean(values)
    mean, low, high = mean_ci(a, confidence, n_resamples, seed)
    i, ilow, ihigh = iqm_ci(a, confidence, n_resamples, seed)
    std = float(np.std(a, ddof=1)) if len(a) > 1 else math.nan
    return {"n": len(a), "mean": mean, "ci_low": low, "ci_high": high, "std": std, "iqm": i, "iqm_low": ilow,
            "iqm_high": ihigh}


def interval_text(mean: float, low: Optional[float], high: Optional[float], digits: int = 3) -> str:
    """``2.686 [2.511, 2.802]`` (the interval left out when unknown); empty for NaN."""
    if mean is None or math.isnan(mean):
        return ""
    text = f"{mean:.{digits}f}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text
