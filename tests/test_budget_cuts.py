"""budget_cuts: the one-shot cuts against brute force over every threshold / subset."""

from __future__ import annotations

import numpy as np
import pytest

from tf_gamma_prune.sparsify.budget_cuts import closest_threshold, trim_groups


def _additive(weights: np.ndarray, base: int = 0):
    """A cost of kept groups: ``base`` plus the weights of those not removed."""
    return lambda removed: int(base + weights[~removed].sum())


@pytest.mark.parametrize("seed", range(20))
def test_closest_threshold_is_the_best_threshold_by_enumeration(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    scores = rng.choice([0.1, 0.2, 0.3, 0.5, 0.8, np.inf], size=n)
    weights = rng.integers(1, 30, size=n)
    removed = rng.random(n) < 0.2
    cost = _additive(weights, base=10)
    target = float(rng.integers(10, 10 + weights.sum()))
    threshold, planned = closest_threshold(scores, target, cost, removed)
    assert planned == cost(removed | (scores <= threshold))
    finite = np.unique(scores[np.isfinite(scores)])
    if finite.size == 0:
        assert (threshold, planned) == (0.0, float(cost(removed)))
        return
    best = min(abs(cost(removed | (scores <= c)) - target) for c in finite)
    assert abs(planned - target) == best


@pytest.mark.parametrize("seed", range(30))
def test_trim_lands_in_the_band_whenever_the_threshold_or_the_skip_can(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 8))
    scores = rng.permutation(np.linspace(0.1, 1.0, n))
    weights = rng.integers(1, 40, size=n)
    removed = np.zeros(n, bool)
    cost = _additive(weights)
    total = int(weights.sum())
    target = total * float(rng.uniform(0.3, 0.8))
    low, high = target * 0.95, target * 1.05
    groups = trim_groups(scores, removed, cost, target=target, low=low, high=high)
    chosen = removed.copy()
    chosen[groups] = True
    after = cost(chosen)
    # independent: if any threshold cut lands in the band, the closest one does
    if any(low <= cost(scores <= c) <= high for c in np.unique(scores)):
        assert low <= after <= high
    else:  # a band no threshold reaches: the skip rule, or the threshold that reaches high
        assert after <= high or after == min(cost(scores <= c) for c in np.unique(scores))
    assert len(set(groups.tolist())) == len(groups)  # no group twice


def test_trim_skips_a_wide_group_of_small_score():
    # group 0 is 40 % of the cost and the smallest score: a threshold takes it and lands at 60
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    cost = _additive(np.array([40, 20, 20, 20]))
    groups = trim_groups(scores, np.zeros(4, bool), cost, target=80, low=76, high=84)
    assert groups.tolist() == [1]
    # with no band the threshold's cut stands: group 0 (cost 60, closest to 75)
    assert trim_groups(scores, np.zeros(4, bool), cost, target=75, low=0, high=100).tolist() == [0]


def test_trim_never_takes_an_unremovable_or_already_removed_group():
    scores = np.array([0.1, np.inf, 0.2, 0.3])
    removed = np.array([True, False, False, False])
    cost = _additive(np.array([10, 50, 10, 10]))
    for target in range(50, 81, 5):
        groups = trim_groups(scores, removed, cost, target=target, low=target - 6, high=target + 6)
        assert not set(groups.tolist()) & {0, 1}
