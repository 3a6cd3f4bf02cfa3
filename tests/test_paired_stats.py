"""cowmix_jax/experiments/paired_stats.py against brute-force enumerations of small
hand-made examples."""

import itertools

import numpy as np
import pytest
from scipy import stats

from cowmix_jax.experiments import paired_stats


def brute_force_sign_flip_p(d):
  """Every one of the 2^n sign patterns, one by one."""
  observed = sum(d)
  hits = sum(1 for signs in itertools.product((1, -1), repeat=len(d))
             if sum(s * x for s, x in zip(signs, d)) >= observed - 1e-12)
  return hits / 2 ** len(d)


def brute_force_bootstrap(columns, statistic, level=0.95):
  """Every one of the n^n ordered resamples, equally likely; the interval's ends are
  the smallest values whose cumulative share reaches the tails."""
  columns = np.asarray(columns, float)
  n = columns.shape[1]
  values = []
  for picks in itertools.product(range(n), repeat=n):
    value = statistic(columns[:, list(picks)])
    if not np.isnan(value):
      values.append(value)
  values = np.sort(values)
  cumulative = np.arange(1, len(values) + 1) / len(values)
  tail = (1 - level) / 2
  return (values[np.searchsorted(cumulative, tail - 1e-12)],
          values[np.searchsorted(cumulative, 1 - tail - 1e-12)])


def test_sign_flip_p_of_a_hand_worked_example():
  # d = (3, -1, 2): sums of the 8 patterns are +-3 +-1 +-2; those >= 4 are
  # (3, -1, 2) = 4 and (3, 1, 2) = 6, so p = 2/8.
  assert paired_stats.sign_flip_p([3, -1, 2]) == pytest.approx(0.25)
  # All five positive: only the observed pattern reaches the observed sum: 1/32.
  assert paired_stats.sign_flip_p([1, 2, 3, 4, 5]) == pytest.approx(1 / 32)


@pytest.mark.parametrize("d", [[-0.98, 1.63, 5.28, 5.04, 3.28], [1.0, 1.0, -1.0, 2.0],
                               [0.5, -2.0, 1.5, 0.25, 3.0, -0.75, 1.0]])
def test_sign_flip_p_equals_the_brute_force_enumeration(d):
  assert paired_stats.sign_flip_p(d) == pytest.approx(brute_force_sign_flip_p(d))


def test_resample_counts_are_every_multiset_with_its_multinomial_probability():
  n = 4
  counts, probabilities = paired_stats.resample_counts(n)
  assert len(counts) == 35  # C(7, 4)
  assert probabilities.sum() == pytest.approx(1.0)
  # Each ordered resample of the 4^4, tallied by its counts.
  tally = {}
  for picks in itertools.product(range(n), repeat=n):
    key = tuple(np.bincount(picks, minlength=n))
    tally[key] = tally.get(key, 0) + 1 / n ** n
  assert {tuple(c): p for c, p in zip(counts, probabilities)} == pytest.approx(tally)


@pytest.mark.parametrize("d", [[-0.98, 1.63, 5.28, 5.04, 3.28], [2.0, -1.0, 0.5, 4.0]])
def test_bootstrap_interval_of_the_mean_equals_the_brute_force_enumeration(d):
  expected = brute_force_bootstrap([d], lambda c: c[0].mean())
  got = paired_stats.bootstrap_interval([d], paired_stats.weighted_mean)
  assert got == pytest.approx(expected)


def test_bootstrap_interval_of_the_gap_share_equals_the_brute_force_enumeration():
  method = [44.68, 43.38, 47.10, 48.30, 45.40]
  baseline = [45.66, 41.74, 41.82, 43.26, 42.12]
  full = [55.36, 54.28, 53.04, 55.73, 49.54]

  def share(c):
    gap = (c[2] - c[1]).sum()
    return (c[0] - c[1]).sum() / gap if gap > 0 else np.nan

  expected = brute_force_bootstrap([method, baseline, full], share)
  got = paired_stats.bootstrap_interval([method, baseline, full], paired_stats.gap_share)
  assert got == pytest.approx(expected)
  result = paired_stats.share_of_gap(dict(enumerate(method)), dict(enumerate(baseline)),
                                     dict(enumerate(full)))
  assert result["share"] == pytest.approx(np.mean(np.subtract(method, baseline))
                                          / np.mean(np.subtract(full, baseline)))
  assert result["low"] <= result["share"] <= result["high"]


def accepted_ratios(gain, gap, thetas, level=0.95):
  """The ``thetas`` that scipy's two-sided one-sample t-test of ``gain - theta * gap``
  does not reject at ``1 - level``: Fieller's set by brute force."""
  gain, gap = np.asarray(gain, float), np.asarray(gap, float)
  thetas = np.asarray(thetas, float)
  p = stats.ttest_1samp(gain[None, :] - thetas[:, None] * gap[None, :], 0.0, axis=1).pvalue
  return thetas[p >= 1 - level]


@pytest.mark.parametrize("gain,gap", [
    # Table 1's CowMix and full supervision minus the baseline, seeds 0-4 (val).
    ([-0.98, 1.64, 5.28, 5.04, 3.28], [9.70, 12.54, 11.22, 12.47, 7.42]),
    ([1.0, 2.0, 0.5, 3.0, 1.5, 2.5, 0.0], [8.0, 11.0, 9.0, 13.0, 10.0, 12.0, 7.5])])
def test_fieller_interval_equals_the_brute_force_test_inversion(gain, gap):
  low, high = paired_stats.fieller_interval(gain, gap)
  step = 1e-4
  inside = accepted_ratios(gain, gap, np.arange(-1.0, 1.5, step))
  assert low == pytest.approx(min(inside), abs=step)
  assert high == pytest.approx(max(inside), abs=step)
  assert low < np.mean(gain) / np.mean(gap) < high


def test_fieller_interval_is_unbounded_when_the_gap_itself_is_not_significant():
  gain, gap = [1.0, 2.0, 1.5], [5.0, -4.0, 1.0]  # mean gap 0.67, not significant
  assert stats.ttest_1samp(gap, 0.0).pvalue > 0.05
  assert paired_stats.fieller_interval(gain, gap) == (float("-inf"), float("inf"))
  # and every ratio the brute force tries is accepted or the set is not an interval
  inside = accepted_ratios(gain, gap, np.arange(-50.0, 50.0, 0.5))
  assert min(inside) <= -49 or max(inside) >= 49


def test_share_of_gap_carries_the_fieller_interval():
  method, baseline = [44.68, 43.38, 47.10, 48.30, 45.40], [45.66, 41.74, 41.82, 43.26, 42.12]
  full = [55.36, 54.28, 53.04, 55.73, 49.54]
  result = paired_stats.share_of_gap(dict(enumerate(method)), dict(enumerate(baseline)),
                                     dict(enumerate(full)))
  assert (result["t_low"], result["t_high"]) == pytest.approx(paired_stats.fieller_interval(
      np.subtract(method, baseline), np.subtract(full, baseline)))


def test_compare_pairs_only_the_common_seeds_and_matches_scipy():
  ours = {0: 45.0, 1: 47.0, 2: 44.0, 3: 50.0}
  other = {0: 44.0, 1: 44.5, 3: 46.0, 7: 1.0}
  result = paired_stats.compare(ours, other)
  d = [1.0, 2.5, 4.0]
  assert result["seeds"] == [0, 1, 3] and result["mean"] == pytest.approx(np.mean(d))
  assert result["std"] == pytest.approx(np.std(d, ddof=1))
  assert result["t_p"] == pytest.approx(
      stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)
  assert result["sign_flip_p"] == pytest.approx(1 / 8)
  assert (result["low"], result["high"]) == pytest.approx(
      brute_force_bootstrap([d], lambda c: c[0].mean()))


def test_verdicts():
  assert paired_stats.verdict(0.1, 2.0, 0.0, p_values=[0.01, 0.03]) == "established"
  assert paired_stats.verdict(0.1, 2.0, 0.0, p_values=[0.01, 0.06]) == "open"
  assert paired_stats.verdict(-2.0, -0.1, 0.0, p_values=[0.9, 0.9]) == "refuted"
  assert paired_stats.verdict(0.45, 0.6, 0.41) == "established"
  assert paired_stats.verdict(0.07, 0.45, 0.41) == "open"
  assert paired_stats.verdict(0.07, 0.35, 0.41) == "refuted"


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_too_few_seeds_leave_every_claim_open(alpha):
  """Below the fewest seeds at which the exact sign-flip test of a difference that
  never changes sign reaches alpha, no verdict is given, whatever the interval."""
  n = paired_stats.fewest_seeds(alpha)
  assert paired_stats.sign_flip_p([1.0] * n) < alpha <= paired_stats.sign_flip_p([1.0] * (n - 1))
  assert paired_stats.verdict(0.5, 2.0, 0.0, [0.001, 0.001], alpha, n=n) == "established"
  assert paired_stats.verdict(0.5, 2.0, 0.0, [0.001, 0.001], alpha, n=n - 1).startswith("open")
  assert paired_stats.verdict(0.1, 0.2, 0.41, alpha=alpha, n=n - 1).startswith("open")
  assert paired_stats.verdict(0.1, 0.2, 0.41, alpha=alpha, n=n) == "refuted"
