"""Statistics of paired seeds: the tests and intervals that Table 1's claims stand on.

A seed fixes the labelled subset, which moves every method's mIoU together, so methods
are compared seed by seed. For ``n`` paired seeds with differences ``d_i``:

- ``t_test_p``: the one-sided paired t-test's p for "mean difference > 0".
- ``sign_flip_p``: the exact permutation (sign-flip) p: under "no difference" each
  ``d_i`` is as likely to be ``-d_i``, so p is the share of the ``2^n`` sign patterns
  whose mean is at least the observed one. It needs no normality, but cannot go below
  ``2^-n`` (1/32 at five seeds, 1/1024 at ten).
- ``bootstrap_interval``: the percentile bootstrap over seeds, computed exactly rather
  than by random resampling: every resample of ``n`` seeds with replacement is a
  multiset, one of ``C(2n - 1, n)`` (92,378 at ten seeds), weighted by its multinomial
  probability ``n! / (k_1! ... k_n!) / n^n``. The interval's ends are the smallest
  statistics whose cumulative probability reaches ``(1 - level) / 2`` and
  ``(1 + level) / 2``.
- ``fieller_interval``: a t-based interval for a ratio of paired means, the share of the
  gap ``mean(gain) / mean(gap)``: every ``theta`` that a two-sided paired t-test of
  ``gain - theta * gap`` does not reject. The percentile bootstrap is narrow over few
  seeds (its resamples repeat seeds); this one is exact under normality.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95


def t_test_p(differences: Sequence[float]) -> float:
  """One-sided paired t-test p for "mean > 0" (NaN below two values; 0 or 1 when every
  difference is the same non-zero value, NaN when they are all 0)."""
  d = np.asarray(differences, float)
  if len(d) < 2:
    return float("nan")
  if np.ptp(d) == 0:
    return float("nan") if d[0] == 0 else (0.0 if d[0] > 0 else 1.0)
  return float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)


def sign_flip_p(differences: Sequence[float]) -> float:
  """Exact one-sided sign-flip p for "mean > 0": the share of the ``2^n`` sign
  patterns ``s`` with ``mean(s * d) >= mean(d)`` (NaN without values)."""
  d = np.asarray(differences, float)
  if len(d) == 0:
    return float("nan")
  signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))  # [2^n, n]
  flipped = signs @ d
  # A tolerance so that patterns equal to the observed sum in exact arithmetic count.
  return float(np.mean(flipped >= d.sum() - 1e-9 * max(1.0, np.abs(d).sum())))


@functools.lru_cache(maxsize=8)
def resample_counts(n: int) -> tuple[np.ndarray, np.ndarray]:
  """Every resample of ``n`` seeds with replacement, as counts, with its probability.

  Returns:
    ``(counts [M, n] int, probabilities [M] float)`` with ``M = C(2n - 1, n)``; row
    ``m`` says how often each seed is drawn and the probabilities sum to 1.
  """
  rows = []
  # Compositions of n into n non-negative parts, by stars and bars.
  for bars in itertools.combinations(range(2 * n - 1), n - 1):
    edges = (-1, *bars, 2 * n - 1)
    rows.append([edges[i + 1] - edges[i] - 1 for i in range(n)])
  counts = np.array(rows, dtype=np.int64)
  log_factorials = np.array([math.lgamma(k + 1) for k in range(n + 1)])
  log_p = math.lgamma(n + 1) - log_factorials[counts].sum(axis=1) - n * math.log(n)
  return counts, np.exp(log_p)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
  """The smallest value whose cumulative weight (values ascending) reaches ``q`` of
  the total."""
  order = np.argsort(values, kind="stable")
  cumulative = np.cumsum(weights[order]) / weights.sum()
  index = int(np.searchsorted(cumulative, q - 1e-12))
  return float(values[order][min(index, len(values) - 1)])


def bootstrap_interval(columns: Sequence[Sequence[float]],
                       statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
                       level: float = LEVEL) -> tuple[float, float]:
  """Exact percentile bootstrap interval over seeds.

  Args:
    columns: equal-length per-seed values, e.g. ``[differences]`` or
      ``[method, baseline, full]``.
    statistic: ``(counts [M, n], values [k, n]) -> [M]``, the statistic of each
      resample given how often it draws each seed (``weighted_mean`` and ``gap_share``
      are the two used here). Resamples whose statistic is NaN are left out.
    level: the interval's coverage.

  Returns:
    ``(low, high)``; NaN for fewer than two seeds.
  """
  values = np.asarray(columns, float)
  n = values.shape[1]
  if n < 2:
    return float("nan"), float("nan")
  counts, probabilities = resample_counts(n)
  per_resample = statistic(counts, values)
  keep = ~np.isnan(per_resample)
  tail = (1 - level) / 2
  return (weighted_quantile(per_resample[keep], probabilities[keep], tail),
          weighted_quantile(per_resample[keep], probabilities[keep], 1 - tail))


def weighted_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
  """The mean of ``values[0]`` in each resample: ``[M]``."""
  return counts @ values[0] / counts.sum(axis=1)


def gap_share(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
  """``mean(method - baseline) / mean(full - baseline)`` in each resample, from
  ``values = [method, baseline, full]``; NaN where the resample's gap is not positive."""
  method, baseline, full = values
  gain, gap = counts @ (method - baseline), counts @ (full - baseline)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(gap > 0, gain / np.where(gap > 0, gap, 1.0), np.nan)


def fieller_interval(gain: Sequence[float], gap: Sequence[float],
                     level: float = LEVEL) -> tuple[float, float]:
  """Fieller's interval for ``mean(gain) / mean(gap)`` over paired seeds.

  ``theta`` is inside when ``|mean(gain - theta * gap)| <= t * sd(gain - theta *
  gap) / sqrt(n)``, ``t`` the two-sided ``level`` quantile with ``n - 1`` degrees of
  freedom: a quadratic ``a theta^2 - 2 b theta + c <= 0`` in ``theta``.

  Args:
    gain: ``[n]`` per-seed ``method - baseline``.
    gap: ``[n]`` per-seed ``full - baseline``.
    level: the interval's coverage.

  Returns:
    ``(low, high)``; ``(-inf, inf)`` when the mean gap is itself not significantly
    non-zero (``a <= 0``: the set of such ``theta`` is unbounded); NaN below two seeds.
  """
  g, a_ = np.asarray(gain, float), np.asarray(gap, float)
  n = len(g)
  if n < 2:
    return float("nan"), float("nan")
  q = stats.t.ppf((1 + level) / 2, n - 1) ** 2 / n
  covariance = np.cov(np.stack([g, a_]), ddof=1)  # [[s_gg, s_ga], [s_ga, s_aa]]
  a = a_.mean() ** 2 - q * covariance[1, 1]
  b = g.mean() * a_.mean() - q * covariance[0, 1]
  c = g.mean() ** 2 - q * covariance[0, 0]
  if a <= 0:
    return float("-inf"), float("inf")
  root = math.sqrt(max(b * b - a * c, 0.0))  # >= 0 when a > 0: the ratio itself is inside
  return (b - root) / a, (b + root) / a


def compare(ours: dict[int, float], other: dict[int, float]) -> dict:
  """``ours - other`` over the seeds both have (``{seed: value}``): ``{n, seeds, mean,
  std, t_p, sign_flip_p, t_p_below, sign_flip_p_below, low, high}`` with the bootstrap
  interval of the mean difference (std NaN below two seeds). ``t_p`` and
  ``sign_flip_p`` test "mean difference > 0", the ``_below`` ones "mean difference <
  0" (the same tests on the negated differences)."""
  seeds = sorted(set(ours) & set(other))
  d = np.array([ours[s] - other[s] for s in seeds])
  if not seeds:
    nan = float("nan")
    return {"n": 0, "seeds": [], "mean": nan, "std": nan, "t_p": nan, "sign_flip_p": nan,
            "t_p_below": nan, "sign_flip_p_below": nan, "low": nan, "high": nan}
  low, high = bootstrap_interval([d], weighted_mean)
  return {"n": len(seeds), "seeds": seeds, "mean": float(d.mean()),
          "std": float(d.std(ddof=1)) if len(d) > 1 else float("nan"),
          "t_p": t_test_p(d), "sign_flip_p": sign_flip_p(d),
          "t_p_below": t_test_p(-d), "sign_flip_p_below": sign_flip_p(-d),
          "low": low, "high": high}


def share_of_gap(ours: dict[int, float], baseline: dict[int, float],
                 full: dict[int, float]) -> dict:
  """The share of the baseline-to-full gap that ``ours`` closes over the seeds all
  three have: ``{n, share, low, high, t_low, t_high}``, ``low, high`` its bootstrap
  interval and ``t_low, t_high`` its Fieller interval (NaN when the mean gap is not
  positive)."""
  seeds = sorted(set(ours) & set(baseline) & set(full))
  columns = np.array([[ours[s] for s in seeds], [baseline[s] for s in seeds],
                      [full[s] for s in seeds]], float)
  if not seeds:
    nan = float("nan")
    return {"n": 0, "share": nan, "low": nan, "high": nan, "t_low": nan, "t_high": nan}
  share = gap_share(np.ones((1, len(seeds)), np.int64), columns)[0]
  low, high = bootstrap_interval(columns, gap_share)
  method_row, baseline_row, full_row = columns
  t_low, t_high = fieller_interval(method_row - baseline_row, full_row - baseline_row)
  return {"n": len(seeds), "share": float(share), "low": low, "high": high,
          "t_low": t_low, "t_high": t_high}


def fewest_seeds(alpha: float = 0.05) -> int:
  """The fewest paired seeds at which an exact one-sided sign-flip test can reach p <
  ``alpha`` (every difference of one sign: p = 2^-n): 5 at 0.05."""
  return math.floor(math.log2(1.0 / alpha)) + 1


def verdict(low: float, high: float, threshold: float,
            p_values: Sequence[float] | None = None, alpha: float = 0.05,
            n: int | None = None, p_values_below: Sequence[float] | None = None) -> str:
  """Whether "the value is above ``threshold``" is ``established``, ``refuted`` or
  ``open``. With p-values the rule is symmetric: established when every one of
  ``p_values`` (one-sided tests of the claim) is below ``alpha``, refuted when every
  one of ``p_values_below`` (the same tests of the opposite claim) is. Without them,
  on the interval ``[low, high]``: established when it lies at or above the threshold,
  refuted when it lies below. Open otherwise. With ``n`` paired seeds fewer than
  ``fewest_seeds(alpha)`` it is always open (no exact test could decide, and a
  bootstrap over so few seeds has too few distinct resamples to mean anything), and
  says so."""
  if n is not None and n < fewest_seeds(alpha):
    return f"open (fewer than {fewest_seeds(alpha)} seeds)"
  if p_values is not None:
    above = all_below(p_values, alpha)
    below = (all_below(p_values_below, alpha) if p_values_below is not None
             else high < threshold)
  else:
    above, below = low >= threshold, high < threshold
  if above:
    return "established"
  if below:
    return "refuted"
  return "open"


def all_below(p_values: Sequence[float], alpha: float) -> bool:
  """Every one of ``p_values`` (at least one) is below ``alpha`` (NaN is not)."""
  return len(p_values) > 0 and all(p < alpha for p in p_values)
