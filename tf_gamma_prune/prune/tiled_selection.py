"""Any criterion to a MAC budget with every width a multiple of a tile.

Phone and desktop kernels compute output channels in tiles (XNNPACK: 16
float32 channels on this project's AVX-512 CPU, 8 on ARM NEON), so a conv with
37 outputs takes as long as one with 48. ``selection_for_macs(...,
round_to=n)`` rounds a criterion's *uniform* cut up to tiles, which moves the
MACs in large steps and often cannot hit a budget within ±5 %.
:func:`tiled_selection_for_macs` instead lets each layer's width move by
whole tiles, within the budget:

1. the criterion's own order of removal: it is asked at ``steps`` prune
   fractions, and each channel scores the smallest fraction that removes it
   (channels it never removes, pinned ones included, stay);
2. the untiled cut at the budget (:func:`selection_for_macs`; the closest
   one when the criterion's own steps miss it);
3. :func:`~tf_gamma_prune.prune.width_alignment.aligned_removal` moves the
   widths to multiples of ``round_to`` within the budget, one block at a time
   (a block goes where it costs the least of that order per MAC saved), in a
   band of half the tolerance and in one of the whole: the closer wins;
4. each width is rounded up to its tile with the criterion's next channels.

The result is a plain selection: ``prune_model(model, selection)`` builds the
tiled model, with no ``round_to`` needed.

Example:

>>> from tf_gamma_prune import count_macs, l1_norm_selection, prune_model
>>> from tf_gamma_prune.prune.criteria import layer_widths
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(16, 16, 32, 32, 64, 64))
>>> target = count_macs(model) // 3
>>> selection, macs = tiled_selection_for_macs(model, l1_norm_selection, target, 8)
>>> small = prune_model(model, selection, probe=False)
>>> all(w % 8 == 0 for w in layer_widths(small).values())
True
>>> abs(count_macs(small) - target) <= 0.05 * target and macs == count_macs(small)
True
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.errors import CriterionError, TargetUnreachableError
from tf_gamma_prune.prune.criteria import Selection, _has_parameter, selection_for_macs
from tf_gamma_prune.prune.plan import plan_removal, rounded_removal
from tf_gamma_prune.prune.width_alignment import _layer_groups, aligned_removal


def tiled_selection_for_macs(
    model: keras.Model,
    criterion: Callable[..., Mapping[str, Any]],
    target_macs: int,
    round_to: int,
    *,
    tolerance: float = 0.05,
    steps: int | None = None,
    unknown_layers: str = "error",
    **criterion_kwargs: Any,
) -> tuple[Selection, int]:
    """A selection at ``target_macs`` (± ``tolerance``) whose widths are multiples of ``round_to``.

    Args:
        model: the model to prune.
        criterion: a selection criterion ``criterion(model, prune_fraction, **kw)``
            (e.g. :func:`~tf_gamma_prune.l1_norm_selection`); it is called
            ``steps`` times plus a bisection, so a data-driven criterion costs
            that many scorings unless it caches them.
        target_macs: the wanted MACs per example (``count_macs`` units).
        round_to: the tile, an integer >= 2 (16 for XNNPACK float32 on x86
            AVX-512, 8 on ARM).
        tolerance: accepted relative deviation from ``target_macs``.
        steps: how many prune fractions give the criterion's order of removal
            (default: the widest layer's width, at least 64, so a per-layer
            criterion orders every channel).
        unknown_layers: ``"error"`` or ``"opaque"`` (see
            :func:`~tf_gamma_prune.gamma_threshold_selection`).
        **criterion_kwargs: passed to ``criterion``.

    Returns:
        ``(selection, macs)``: ``{layer: kept channel indices}`` for every layer
        the criterion selects in, each width a multiple of ``round_to`` (or the
        layer's full width), and the MACs of ``prune_model(model, selection)``.

    Raises:
        CriterionError: ``round_to`` not an integer >= 2, ``steps`` < 2, or the
            criterion's own errors.
        TargetUnreachableError: the criterion cannot reach the budget, or no
            tiled widths lie within the tolerance (the message gives the closest).
    """
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 2:
        raise CriterionError(f"round_to must be an integer >= 2 (the tile), got {round_to!r}; "
                             "for untiled widths use selection_for_macs.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 2):
        raise CriterionError(f"steps must be an integer >= 2, got {steps!r}.")
    n = int(round_to)
    graph = channel_graph(model, unknown_layers=unknown_layers)
    try:
        start, _ = selection_for_macs(model, criterion, target_macs, tolerance=tolerance,
                                      unknown_layers=unknown_layers, **criterion_kwargs)
    except TargetUnreachableError as err:  # the tiles may still get there: start closest
        start = None
        fraction = err.closest_fraction
    if _has_parameter(criterion, "unknown_layers"):
        criterion_kwargs = dict(criterion_kwargs, unknown_layers=unknown_layers)
    if start is None:
        start = dict(criterion(model, fraction, **criterion_kwargs))
    order = removal_order(graph, lambda f: criterion(model, f, **criterion_kwargs),
                          steps or max([64, *(len(g) for g in _layer_groups(graph))]))
    first = plan_removal(graph, start).removed
    candidates = []
    # aligned_removal keeps within budget · (1 ± band / 2): the tight band first, then
    # the whole tolerance (a coarse tile may only fit above or below the tight one)
    for band in (tolerance, 2 * tolerance):
        removed = aligned_removal(graph, first, order, n, int(target_macs), planned_macs,
                                  tolerance=band, revive_order=order)
        # each width up to its tile, the channels the criterion removes last back first
        removed = rounded_removal(graph, removed, n, scores=order)
        selection = {name: np.flatnonzero(~removed[graph.layer_channels(name)])
                     for name in start}
        macs = int(planned_macs(graph, plan_removal(graph, selection).removed))
        candidates.append((abs(macs - target_macs), macs, selection))
    _, macs, selection = min(candidates, key=lambda c: c[0])
    if abs(macs - target_macs) > tolerance * target_macs:
        raise TargetUnreachableError(
            f"No widths in tiles of {n} bring '{model.name}' to {int(target_macs):,} MACs "
            f"within ±{tolerance:.0%} by {getattr(criterion, '__name__', 'the criterion')}: "
            f"the closest found is {macs:,} MACs. Pick a target near that, raise the "
            "tolerance, or use a smaller tile.",
            target_macs=int(target_macs), closest_macs=macs, closest_fraction=float("nan"))
    return selection, macs


def removal_order(graph: ChannelGraph, select: Callable[[float], Mapping[str, Any]],
                  steps: int) -> np.ndarray:
    """Per channel group, the smallest prune fraction ``k / steps`` at which ``select``
    removes it (``inf``: never, which includes every pinned group): the criterion's
    order of removal, comparable across layers.

    Example:

    >>> import keras, numpy as np
    >>> from tf_gamma_prune import l1_norm_selection
    >>> x = keras.Input((4, 4, 1))
    >>> h = keras.layers.Conv2D(4, 1, use_bias=False, name="c")(x)
    >>> model = keras.Model(x, keras.layers.Dense(2)(h))
    >>> _ = model.get_layer("c").kernel.assign([[[[3.0, 1.0, 4.0, 2.0]]]])
    >>> graph = channel_graph(model)
    >>> removal_order(graph, lambda f: l1_norm_selection(model, f), 4)[graph.layer_channels("c")]
    array([0.75, 0.25,  inf, 0.5 ])
    """
    order = np.full(graph.num_groups, np.inf)
    for k in range(steps - 1, 0, -1):  # down, so each group keeps its smallest fraction
        order[plan_removal(graph, select(k / steps)).removed] = k / steps
    order[graph.pinned] = np.inf
    return order
