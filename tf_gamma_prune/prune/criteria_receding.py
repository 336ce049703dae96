"""Receding neuron importances (Suteu & Guo): one global quantile of ``sigmoid(w)``.

After training with :class:`~tf_gamma_prune.RecedingImportanceRegularizer` on
:class:`~tf_gamma_prune.BoundedBatchNormalization` layers, a channel's
importance is its bounded scale ``sigmoid(w)``. The seed notes' reading of the
authors' code: pool every channel of every bounded layer, cut the smallest
importances up to one global quantile, keep at least 3 channels per layer, then
fine-tune. :func:`receding_importance_selection` does that, in the criteria
shape ``(model, prune_fraction, ...) -> {layer: kept indices}``, so it works
with ``selection_for_macs`` and ``prune_model``.

It reads the importances wherever the model has them: ``sigmoid(w)`` of the
bounded layers, and ``|γ|`` of standard BatchNormalization layers — after
``to_standard_batchnorm`` those γ *are* ``sigmoid(w)``, so the selection is the
same before and after the conversion (layer names are kept).

Example:

>>> import numpy as np
>>> from tf_gamma_prune import prune_model, to_bounded_batchnorm
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = to_bounded_batchnorm(fashion_vgg(widths=(8, 8, 16, 16, 32, 32)), seed=0)
>>> selection = receding_importance_selection(model, 0.5)  # the quantile keeps 56 of 112
>>> sum(len(keep) for keep in selection.values())           # + 3 put back: min_channels=3
59
>>> min(len(keep) for keep in selection.values()) >= 3
True
>>> small = prune_model(model, selection, probe=False)
>>> small.get_layer("conv1").filters == len(selection["bn1"])
True
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.errors import CriterionError, NoBatchNormError
from tf_gamma_prune.prune.criteria import (
    Selection,
    _candidates,
    _checked_fraction,
    _named_layers,
    _pin_reason,
    _removal_count,
    _selection,
)
from tf_gamma_prune.prune.criteria_redundancy import (
    _checked_min_channels,
    _checked_round_to,
    _finish_widths,
)
from tf_gamma_prune.bounded_layer import BoundedBatchNormalization

L = keras.layers


def receding_importances(model: keras.Model) -> dict[str, np.ndarray]:
    """``{layer name: importances}``: ``sigmoid(w)`` of every BoundedBatchNormalization
    and ``|γ|`` of every standard BatchNormalization with a γ (qualified names, as
    in the channel graph; float64).

    >>> from tf_gamma_prune import to_bounded_batchnorm
    >>> from tf_gamma_prune.reference_models import fashion_vgg
    >>> scores = receding_importances(to_bounded_batchnorm(fashion_vgg(widths=(4,) * 6)))
    >>> sorted(scores), scores["bn1"].shape
    (['bn1', 'bn2', 'bn3', 'bn4', 'bn5', 'bn6'], (4,))
    """
    from tf_gamma_prune.analysis.layer_graph import layer_graph

    out: dict[str, np.ndarray] = {}
    for call in layer_graph(model).calls:
        if call.name in out:
            continue
        value = _importance(call.layer)
        if value is not None:
            out[call.name] = value
    return out


def receding_importance_selection(
    model: keras.Model,
    prune_fraction: float,
    *,
    min_channels: int = 3,
    round_to: int = 1,
    layers: Sequence[str] | None = None,
    unknown_layers: str = "error",
) -> Selection:
    """Cut the channels with the smallest importance, one threshold over all layers.

    Pools the channels of every listed layer (default: every
    BoundedBatchNormalization and every BatchNormalization with a γ whose
    channels may be removed), scored by ``sigmoid(w)`` (bounded layers) or
    ``|γ|`` (standard ones), and removes the ``floor(prune_fraction · n)``
    smallest. A channel tied across layers (residual streams) counts once, with
    its largest importance. Then every pooled layer gets back its best channels
    until it keeps ``min_channels`` (all it has if fewer) and a multiple of
    ``round_to``, so slightly fewer than ``floor(prune_fraction · n)`` can go.

    Args:
        model: a functional/Sequential model with bounded or standard BN layers.
        prune_fraction: in ``[0, 1)``, the fraction of the pooled channels to cut.
        min_channels: the least any pooled layer keeps (the recipe's 3; ≥ 1).
        round_to: keep widths at multiples of this (or the full width).
        layers: names of the BN layers (bounded or standard) to pool instead.
        unknown_layers: ``"error"`` or ``"opaque"``, as for every criterion.

    Returns:
        ``{bn_layer_name: kept channel indices}`` for every pooled layer.

    Raises:
        NoBatchNormError: the model has neither bounded nor standard BN scales.
        CriterionError: fraction outside ``[0, 1)``, bad ``min_channels`` /
            ``round_to``, unknown layer names or layers without an importance,
            every channel pinned.
    """
    fraction = _checked_fraction(prune_fraction)
    min_channels = _checked_min_channels(min_channels)
    round_to = _checked_round_to(round_to)
    graph = channel_graph(model, unknown_layers=unknown_layers)
    names = _importance_layers(model, graph, layers)
    scores = np.zeros(graph.num_groups)
    members = {}
    for name in names:
        groups = graph.layer_channels(name)
        layer = next(c.layer for c in graph.layer_graph.calls if c.name == name)
        np.maximum.at(scores, groups, _importance(layer))
        members[name] = groups
    candidates = _candidates(graph, members, names)
    order = candidates[np.argsort(scores[candidates], kind="stable")]
    removed = np.zeros(graph.num_groups, bool)
    removed[order[: _removal_count(fraction, len(candidates))]] = True
    _finish_widths(members, removed, scores, min_channels, round_to)
    return _selection(members, removed)


def _importance(layer: Any) -> np.ndarray | None:
    if isinstance(layer, BoundedBatchNormalization) and layer.built:
        return layer.importance().astype(np.float64)
    if isinstance(layer, L.BatchNormalization) and layer.scale and layer.gamma is not None:
        return np.abs(np.asarray(keras.ops.convert_to_numpy(layer.gamma), np.float64))
    return None


def _importance_layers(model: keras.Model, graph: ChannelGraph,
                       layers: Sequence[str] | None) -> list[str]:
    scored = []
    for call in graph.layer_graph.calls:
        if call.name not in scored and _importance(call.layer) is not None:
            scored.append(call.name)
    if not scored:
        raise NoBatchNormError(
            f"Model '{model.name}' has no BoundedBatchNormalization or BatchNormalization scale, "
            "so there is no importance to threshold. Convert it with to_bounded_batchnorm and "
            "train it with RecedingImportanceRegularizer first.")
    if layers is None:
        names = [n for n in scored if not np.all(graph.pinned[graph.layer_channels(n)])]
        if not names:
            raise CriterionError(
                f"Every BN channel of '{model.name}' is pinned "
                f"({_pin_reason(graph, graph.layer_channels(scored[0]))}); nothing to cut.")
        return names

    def check(name: str) -> None:
        if name not in scored:
            raise CriterionError(
                f"'{name}' is not a BoundedBatchNormalization or a BatchNormalization with a γ; "
                f"receding_importance_selection pools those only: {', '.join(scored)}.")

    return _named_layers(graph, layers, check)
