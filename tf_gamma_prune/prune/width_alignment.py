"""Widths at multiples of a tile, within a budget: which channels to remove so every width aligns.

Phone and desktop kernels compute output channels in tiles (XNNPACK: 16 float32
channels on this project's AVX-512 CPU, 8 on ARM NEON), so a conv with 17
outputs takes as long as one with 32 (``benchmarks/results/latency_table.json``:
fashion_vgg's conv2, 4–16 outputs 0.069 ms, 20–32 outputs 0.137 ms).
``prune_model(model, round_to=n)`` rounds every width *up* to a multiple of ``n``
(it keeps zero-γ channels back, exactly), which costs MACs above the budget.
:func:`aligned_removal` instead moves the widths to multiples of ``n`` *within*
the budget, greedily:

* **down**: while the rounded cost is above the budget, one layer drops to the
  multiple of ``n`` below its rounded width, removing its lowest-scored kept
  channels (the smallest ``|γ|/λ``: the ones ISTA was shrinking; not an exact
  removal, fine-tuning recovers them). The layer chosen loses the least score
  per unit of cost saved. A layer keeps at least ``n`` channels, and channels
  scored ``inf`` (pinned, unpenalised, spared by ``min_channels``) stay.
* **up**: while the cost is below the budget band, the layer whose next block
  brings the cost highest without passing the band gets it back (enough removed
  channels revived to open it; ``prune_model(round_to=n)`` keeps the rest of
  the block).

:class:`~tf_gamma_prune.CostTarget` ``(round_to=n)`` calls it once, when its
schedule reaches the budget, and holds the aligned widths for the rest of the
fit.

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune.analysis.channel_graph import channel_graph
>>> from tf_gamma_prune.analysis.flops import planned_macs
>>> x = keras.Input((8, 8, 1))
>>> h = keras.layers.Conv2D(12, 3, padding="same", name="a")(x)
>>> h = keras.layers.BatchNormalization(name="bn_a")(h)
>>> h = keras.layers.Conv2D(12, 3, padding="same", name="b")(h)
>>> h = keras.layers.BatchNormalization(name="bn_b")(h)
>>> graph = channel_graph(keras.Model(x, keras.layers.Dense(2)(h)))
>>> scores = np.full(graph.num_groups, np.inf)
>>> for name in ("a", "b"):
...     scores[graph.layer_channels(name)] = np.arange(1.0, 13.0)   # 1 … 12 per layer
>>> removed = np.zeros(graph.num_groups, bool)
>>> removed[graph.layer_channels("a")[:3]] = True                  # 9 of a's 12 left
>>> budget = planned_macs(graph, removed)
>>> out = aligned_removal(graph, removed, scores, 4, budget, planned_macs)
>>> [int(np.count_nonzero(~out[graph.layer_channels(n)])) for n in ("a", "b")]
[8, 12]
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph
from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.prune.plan import rounded_removal

Cost = Callable[[ChannelGraph, np.ndarray], int]


def aligned_removal(graph: ChannelGraph, removed: np.ndarray, scores: np.ndarray, round_to: int,
                    budget: float, cost: Cost, *, tolerance: float = 0.05,
                    revive_order: np.ndarray | None = None) -> np.ndarray:
    """The removed channel groups after moving every width to a multiple of ``round_to``
    within ``budget`` (see the module doc); ``removed`` itself is not changed.

    Args:
        graph: the model's channel graph.
        removed: ``(num_groups,)`` bool, the groups removed now (e.g. the zero-γ ones).
        scores: ``(num_groups,)`` importance per group (e.g. ``|γ|/λ``); ``inf``
            for groups that must stay.
        round_to: the tile, an integer >= 2.
        budget: the cost to meet, in the units of ``cost``.
        cost: ``cost(graph, removed) -> int`` of the model with ``removed`` gone
            (e.g. :func:`~tf_gamma_prune.analysis.flops.planned_macs`); it is
            called with the widths rounded up (:func:`~tf_gamma_prune.prune.plan.rounded_removal`).
        tolerance: the up phase stops within ``budget · (1 ± tolerance / 2)``.
        revive_order: per group, which removed group comes back first in a layer
            (largest first; default: the lowest index).

    Returns:
        The new ``removed`` (widths of ``rounded_removal(graph, result, round_to)``
        are multiples of ``round_to`` or full). Its rounded cost is at most
        ``budget · (1 + tolerance / 2)`` unless no layer can lose another block.

    Raises:
        ArgumentError: ``round_to`` < 2, or arrays of the wrong length.
    """
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 2:
        raise ArgumentError(f"round_to must be an integer >= 2, got {round_to!r}.")
    for name, array in (("removed", removed), ("scores", scores)):
        if np.shape(array) != (graph.num_groups,):
            raise ArgumentError(f"{name} must have one entry per channel group "
                                f"({graph.num_groups}), got shape {np.shape(array)}.")
    n = int(round_to)
    order = np.zeros(graph.num_groups) if revive_order is None else np.asarray(revive_order, float)
    layers = _layer_groups(graph)
    removed = np.asarray(removed, bool).copy()

    def total(candidate: np.ndarray) -> int:
        return int(cost(graph, rounded_removal(graph, candidate, n)))

    now = total(removed)
    while now > budget * (1 + tolerance / 2):
        moves = [m for m in (_down_move(groups, removed, scores, n) for groups in layers)
                 if m is not None]
        best = None
        for drop in moves:
            trial = removed.copy()
            trial[drop] = True
            saved = now - total(trial)
            if saved > 0:
                ratio = float(np.sum(scores[drop])) / saved
                if best is None or ratio < best[0]:
                    best = (ratio, trial, now - saved)
        if best is None:
            break  # no layer can lose another block
        _, removed, now = best
    while now < budget * (1 - tolerance / 2):
        best = None
        for groups in layers:
            back = _up_move(groups, removed, graph.pinned, order, n)
            if back is None:
                continue
            trial = removed.copy()
            trial[back] = False
            new = total(trial)
            if now < new <= budget * (1 + tolerance / 2) and (best is None or new > best[1]):
                best = (trial, new)
        if best is None:
            break
        removed, now = best
    return removed


def _layer_groups(graph: ChannelGraph) -> list[np.ndarray]:
    """The channel groups of every conv/dense output (each group once, in order)."""
    out = []
    for call in graph.layer_graph.calls:
        if graph.kinds[call].folds_constants:
            groups = graph.channels[call.outputs[0]]
            out.append(np.array(list(dict.fromkeys(int(g) for g in groups)), int))
    return out


def _down_move(groups: np.ndarray, removed: np.ndarray, scores: np.ndarray,
               n: int) -> np.ndarray | None:
    """The lowest-scored kept groups to remove so this layer drops a block; None if it can't."""
    kept = groups[~removed[groups]]
    rounded = min(-(-len(kept) // n) * n, len(groups))
    width = (rounded - 1) // n * n
    if width < n or width >= len(kept):
        return None
    finite = kept[np.isfinite(scores[kept])]
    need = len(kept) - width
    if len(finite) < need:
        return None
    return finite[np.argsort(scores[finite], kind="stable")[:need]]


def _up_move(groups: np.ndarray, removed: np.ndarray, pinned: np.ndarray, order: np.ndarray,
             n: int) -> np.ndarray | None:
    """The removed groups of this layer to bring back so it opens its next block
    (the rest of the block is kept by the rounding); None if it can't."""
    kept = int(np.count_nonzero(~removed[groups]))
    rounded = min(-(-kept // n) * n, len(groups))
    back = groups[removed[groups] & ~pinned[groups]]
    need = rounded - kept + 1
    if rounded >= len(groups) or back.size < need:
        return None
    return back[np.argsort(-order[back], kind="stable")[:need]]
