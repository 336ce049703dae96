"""One-shot cuts to a budget: which channel groups to remove so that a cost lands on a target.

:class:`~tf_gamma_prune.sparsify.cost_target.CostTarget` steers ρ window by
window; the decisions it makes in one go live here, each a function of the
channel groups' scores and a cost function (``cost(removed) -> int``: the
MACs, parameters or predicted nanoseconds of the model without the groups
marked in the boolean array ``removed``):

* :func:`group_scores` — per channel group, the largest penalty-normalised
  ``|γ|/λ`` of its penalised BatchNormalization channels (``inf``: cannot go);
* :func:`closest_threshold` — the threshold on those scores whose removal
  brings the cost closest to a target (a bisection: the cost falls as the
  threshold grows);
* :func:`trim_groups` — the end-of-run trim: the groups whose removal brings a
  run that ended above its tolerance band into it, skipping a wide group that
  would jump below the band (in a tiny model one channel can be 10 % of the MACs);
* :func:`slimming_selection` and :func:`zero_dropped_gamma` — Network Slimming's
  prune step: the global ``|γ|`` threshold that meets the budget, applied as γ = 0.

Example: 8 groups scored 0..7 cost 10 each on top of 20 (100 in all); a
target of 50 is met by removing the five of smallest score (threshold 4), and a
trim into the band [45, 55] takes the same five:

>>> import numpy as np
>>> scores = np.arange(8.0)
>>> cost = lambda removed: 20 + 10 * int((~removed).sum())
>>> none = np.zeros(8, bool)
>>> closest_threshold(scores, 50, cost, none)
(4.0, 50.0)
>>> trim_groups(scores, none, cost, target=50, low=45, high=55).tolist()
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph
from tf_gamma_prune.sparsify.gamma_ista import reweighted_thresholds

Cost = Callable[[np.ndarray], int]


def group_scores(graph: Any, optimizer: Any) -> np.ndarray:
    """Per channel group, the largest ``|γ|/λ`` of its penalised BatchNormalization
    channels; ``inf`` for groups that cannot go (pinned, unpenalised, or among
    the ``min_channels`` largest of a layer).

    With ``GammaISTA(reweight_epsilon=ε)`` a channel's shrink per step is
    ``η·ρ·λ / (|γ|/m + ε)`` (``m``: its layer's mean |γ|), so the score is
    ``|γ|·(|γ|/m + ε)/λ``: the cumulative ``η·ρ`` that empties it, as ``|γ|/λ`` is
    for the paper's step (same order within a layer, not across layers)."""
    scores = np.full(graph.num_groups, -np.inf)
    spared = np.zeros(graph.num_groups, bool)
    keep = int(getattr(optimizer, "min_channels", 0))
    epsilon = getattr(optimizer, "reweight_epsilon", None)
    for name, variable, penalty in optimizer.targets:
        try:
            groups = graph.layer_channels(name)
        except KeyError:
            continue
        magnitude = np.abs(keras.ops.convert_to_numpy(variable)).astype(float)
        if epsilon is not None:  # divided by the per-channel threshold of a unit step
            unit = np.asarray(keras.ops.convert_to_numpy(
                reweighted_thresholds(magnitude, 1.0, epsilon)), float)
            magnitude = magnitude / unit
        magnitude = magnitude / penalty
        np.maximum.at(scores, groups, magnitude)
        if keep:
            spared[groups[np.argsort(-magnitude, kind="stable")[:keep]]] = True
    scores[np.isneginf(scores) | graph.pinned | spared] = np.inf
    return scores


def closest_threshold(scores: np.ndarray, target: float, cost: Cost,
                      removed: np.ndarray) -> tuple[float, float]:
    """The threshold on ``scores`` whose groups (``scores <= threshold``), removed with
    ``removed``, bring ``cost`` closest to ``target``; and that cost.

    The smallest threshold at or below the target is found by bisection over the
    distinct finite scores; one group fewer wins when it is closer. With no finite
    score the threshold is 0 and the cost is that of ``removed`` alone.

    >>> cost = lambda removed: 100 - 10 * int(removed.sum())
    >>> closest_threshold(np.array([3.0, 1.0, np.inf, 2.0]), 78, cost, np.zeros(4, bool))
    (2.0, 80.0)
    """
    candidates = np.unique(scores[np.isfinite(scores)])
    if candidates.size == 0:
        return 0.0, float(cost(removed))

    def cost_at(i: int) -> int:
        return cost(removed | (scores <= candidates[i]))

    low, high = 0, len(candidates) - 1
    while low < high:  # the smallest threshold at or below the target
        mid = (low + high) // 2
        if cost_at(mid) <= target:
            high = mid
        else:
            low = mid + 1
    best, best_cost = low, cost_at(low)
    if low > 0:  # one group fewer may be closer
        above = cost_at(low - 1)
        if abs(above - target) < abs(best_cost - target):
            best, best_cost = low - 1, above
    return float(candidates[best]), float(best_cost)


def trim_groups(scores: np.ndarray, removed: np.ndarray, cost: Cost, *, target: float,
                low: float, high: float) -> np.ndarray:
    """The groups (indices, not in ``removed``) to remove so that ``cost`` lands in
    ``[low, high]``, as close to ``target`` as a threshold on ``scores`` gets.

    The closest threshold first; if its cost stays above ``high``, the next threshold
    that reaches ``high``. If that jumps below ``low`` (one wide group of small score),
    groups are taken in ascending score instead, skipping any whose removal would land
    below ``low``, until the cost is at most ``high``; if that never happens the
    threshold's groups stand.

    >>> cost = lambda removed: 100 - int(np.dot(removed, [40, 5, 5, 5]))  # group 0: wide
    >>> trim_groups(np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4, bool), cost,
    ...             target=88, low=84, high=92).tolist()
    [1, 2]
    """
    threshold, planned = closest_threshold(scores, target, cost, removed)
    if planned > high:  # the closest stays above the band: the next step down
        above = np.unique(scores[np.isfinite(scores) & (scores > threshold)])
        threshold = next((float(c) for c in above if cost(removed | (scores <= c)) <= high),
                         threshold)
    taken = ~removed & np.isfinite(scores) & (scores <= threshold)
    if cost(removed | taken) < low:
        within = _groups_within(scores, removed, cost, low, high)
        if within is not None:
            return within
    return np.flatnonzero(taken)


def _groups_within(scores: np.ndarray, removed: np.ndarray, cost: Cost, low: float,
                   high: float) -> np.ndarray | None:
    """Groups taken in ascending score, skipping any that would take the cost below
    ``low``, until it is at most ``high``; ``None`` if that never happens."""
    chosen, taken = removed.copy(), []
    for group in np.argsort(scores, kind="stable"):
        if removed[group] or not np.isfinite(scores[group]):
            continue
        chosen[group] = True
        value = cost(chosen)
        if value < low:
            chosen[group] = False
            continue
        taken.append(int(group))
        if value <= high:
            return np.array(taken, dtype=int)
    return None


def slimming_selection(model: keras.Model, graph: ChannelGraph, layers: list[str], cost: Cost,
                       budget: float) -> tuple[dict[str, np.ndarray], int]:
    """Network Slimming's prune step: the smallest-``|γ|`` channels of ``layers``, all
    pooled (:func:`~tf_gamma_prune.gamma_threshold_selection`), removed until ``cost``
    (with the graph's constant groups also removed) is at most ``budget``: a bisection on
    the fraction removed. Returns the kept channels per layer and the planned cost."""
    from tf_gamma_prune.prune.criteria import gamma_threshold_selection

    constant = graph.removable_constant_groups()

    def at(fraction: float) -> tuple[dict, int]:
        selection = gamma_threshold_selection(model, fraction, layers=layers)
        removed = constant.copy()
        for name, kept in selection.items():
            groups = graph.layer_channels(name)
            drop = np.ones(len(groups), bool)
            drop[kept] = False
            removed[groups[drop]] = True
        return selection, cost(removed)

    lo, hi = 0.0, 1.0 - 1e-9
    best = at(lo)
    channels = len(np.unique(np.concatenate([graph.layer_channels(n) for n in layers])))
    if best[1] > budget:
        # the cost falls as the fraction grows; a step finer than one channel changes nothing
        while hi - lo > 0.5 / max(channels, 1):
            mid = (lo + hi) / 2
            found = at(mid)
            if found[1] > budget:
                lo = mid
            else:
                hi, best = mid, found
        if best[1] > budget:
            best = at(hi)
    return best


def zero_dropped_gamma(layers: dict[str, Any], selection: dict[str, np.ndarray]) -> None:
    """Set γ = 0 for every channel of ``layers[name]`` not kept in ``selection[name]``
    (so ``prune_model`` removes it, folding its β)."""
    for name, kept in selection.items():
        layer = layers[name]
        gamma = keras.ops.convert_to_numpy(layer.gamma).copy()
        drop = np.ones(len(gamma), bool)
        drop[kept] = False
        gamma[drop] = 0.0
        layer.gamma.assign(gamma)
