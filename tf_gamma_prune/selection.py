"""Which channel groups to remove: constants, explicit selections, rounding.

A *selection* says, per layer, which output channels to keep::

    {"block1_bn": [0, 2, 3],                 # indices to keep
     "backbone/conv5_bn": keep_mask}         # or a boolean keep mask

Layer names are qualified names (``"backbone/conv5_bn"``) or bare names when
unique. Channels tied together (see :mod:`tf_gamma_prune.graph`) are removed
together: a group is removed when some selected layer drops it and no selected
layer keeps it.

Emptying a layer: a selection that removes every channel of a layer it names
raises :class:`SelectionError` (a layer without channels would cut the
network). Constant channels are different: when every channel of a layer is
constant the layer goes away, and a conv/dense layer that then reads nothing
is replaced by its constant output (``ConstantFeature``), or — when its output
has no static shape — keeps its one best input channel.

:func:`plan_removal` turns the graph, a selection and options into one boolean
per channel group. It never looks at the rebuild.

Example:

>>> import keras
>>> from tf_gamma_prune.graph import channel_graph
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(4, 3, name="conv")(x)
>>> y = keras.layers.BatchNormalization(name="bn")(y)
>>> y = keras.layers.Conv2D(2, 1, name="head")(y)
>>> graph = channel_graph(keras.Model(x, y))
>>> plan = plan_removal(graph, {"bn": [0, 1]})
>>> plan.removed[graph.layer_channels("bn")].tolist()
[False, False, True, True]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from tf_gamma_prune.batchnorm import resolve_layer_name
from tf_gamma_prune.graph import MIXING, ChannelGraph


class SelectionError(ValueError):
    """An explicit channel selection that cannot be applied as given."""


@dataclasses.dataclass
class RemovalPlan:
    """The channel groups to remove.

    Attributes:
        removed: ``(num_groups,)`` bool.
        constant: groups removed because they are constant (exact removal).
        selected: groups removed because the selection asked for it.
        notes: decisions worth reporting (channels kept back, ...).
    """

    removed: np.ndarray
    constant: np.ndarray
    selected: np.ndarray
    notes: list[str]


def keep_mask(keep: Any, width: int, name: str) -> np.ndarray:
    """A boolean keep mask of length ``width`` from a mask or index list.

    Raises:
        SelectionError: wrong length, indices out of range.
    """
    arr = np.asarray(keep)
    if arr.dtype == bool:
        if arr.shape != (width,):
            raise SelectionError(
                f"Keep mask for '{name}' has shape {arr.shape}; the layer has "
                f"{width} channels, so pass a boolean mask of shape ({width},) or "
                "a list of channel indices to keep."
            )
        return arr.copy()
    idx = arr.astype(int).reshape(-1)
    if idx.size and (idx.min() < -width or idx.max() >= width):
        raise SelectionError(
            f"Keep indices for '{name}' are out of range for {width} channels."
        )
    mask = np.zeros(width, bool)
    mask[idx] = True
    return mask


def selected_groups(graph: ChannelGraph, selection: Mapping[str, Any]) -> np.ndarray:
    """Groups an explicit selection removes (before pins are checked).

    Raises:
        SelectionError: unknown layer names (the message lists valid names),
            masks of the wrong size, or a selection removing every channel of a
            layer.
    """
    names = graph.channel_layer_names()
    drop_votes = np.zeros(graph.num_groups, bool)
    keep_votes = np.zeros(graph.num_groups, bool)
    resolved: list[tuple[str, list[int]]] = []
    for key, keep in selection.items():
        try:
            name = resolve_layer_name(key, names)
        except ValueError as err:
            raise SelectionError(str(err)) from None
        tensors = graph.layer_outputs(name)
        for t in tensors:
            groups = graph.channels[t]
            mask = keep_mask(keep, len(groups), name)
            drop_votes[groups[~mask]] = True
            keep_votes[groups[mask]] = True
        resolved.append((name, tensors))
    drop = drop_votes & ~keep_votes
    for name, tensors in resolved:
        for t in tensors:
            if np.all(drop[graph.channels[t]]):
                raise SelectionError(
                    f"The selection removes every channel of '{name}'. Keep at "
                    "least one channel of each layer (a layer without channels "
                    "would cut the network)."
                )
    return drop


def plan_removal(
    graph: ChannelGraph,
    selection: Mapping[str, Any] | None = None,
    *,
    remove_constant: bool = True,
    round_to: int = 1,
) -> RemovalPlan:
    """Decide which channel groups to remove.

    Args:
        graph: the model's :class:`~tf_gamma_prune.graph.ChannelGraph`.
        selection: optional per-layer keep masks / indices (see module doc);
            ``None`` for no selection. An empty mapping is refused.
        remove_constant: also remove every constant channel that can be
            removed exactly (BatchNormalization γ == 0 and what follows).
        round_to: keep the width of every conv/dense output at a multiple of
            this (or its full width), putting back the removed channels with the
            largest |γ| first.

    Raises:
        SelectionError: see :func:`selected_groups`; also when the selection
            asks to remove pinned channels (model inputs/outputs, channels read
            by Softmax/LayerNormalization/... ), naming them and why, and for an
            empty selection (``{}``: most likely a criterion that selected
            nothing; pass ``None`` to remove only constant channels).
    """
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}.")
    if selection is not None and len(selection) == 0:
        raise SelectionError(
            "The selection names no layer; pass selection=None to remove only "
            "constant channels."
        )
    notes: list[str] = []
    constant = graph.removable_constant_groups() if remove_constant else np.zeros(
        graph.num_groups, bool
    )
    selected = np.zeros(graph.num_groups, bool)
    if selection is not None:
        selected = selected_groups(graph, selection)
        bad = np.flatnonzero(selected & graph.pinned)
        if bad.size:
            reasons = sorted({graph.pin_reasons.get(int(g), "pinned") for g in bad})
            raise SelectionError(
                f"The selection removes {bad.size} channel(s) that cannot be removed: "
                f"{'; '.join(reasons)}. Keep those channels in the selection."
            )
    removed = constant | selected
    if round_to > 1:
        removed = _round_widths(graph, removed, round_to, notes)
    removed = _keep_live_inputs(graph, removed, notes)
    return RemovalPlan(removed=removed, constant=constant & removed,
                       selected=selected & removed & ~constant, notes=notes)


def _round_widths(graph: ChannelGraph, removed: np.ndarray, n: int,
                  notes: list[str]) -> np.ndarray:
    removed = removed.copy()
    scores = graph.gamma_scores()
    outputs = [c.outputs[0] for c in graph.graph.calls if graph.kinds[c] == MIXING]
    for _ in range(50):
        changed = False
        for t in outputs:
            groups = graph.channels[t]
            kept = int(np.count_nonzero(~removed[groups]))
            if kept == 0 or kept == len(groups) or kept % n == 0:
                continue
            extra = min(math.ceil(kept / n) * n, len(groups)) - kept
            candidates = [int(g) for g in dict.fromkeys(groups[removed[groups]].tolist())]
            candidates.sort(key=lambda g: -scores[g])  # stable: lowest index first
            removed[candidates[:extra]] = False
            changed = True
        if not changed:
            break
    else:
        notes.append(f"round_to={n}: widths did not settle (tied groups disagree)")
    return removed


def _keep_live_inputs(graph: ChannelGraph, removed: np.ndarray,
                      notes: list[str]) -> np.ndarray:
    """Keep one input channel of a conv/dense whose whole input would go while
    some of its outputs stay, when its output has no static shape (a layer with
    a static output shape is replaced by its constant output instead)."""
    removed = removed.copy()
    scores = graph.gamma_scores()
    changed = True
    while changed:
        changed = False
        for call in graph.graph.calls:
            if graph.kinds[call] != MIXING:
                continue
            ins = graph.channels[call.inputs[0]]
            outs = graph.channels[call.outputs[0]]
            if not np.all(removed[ins]) or np.all(removed[outs]):
                continue
            if all(d is not None for d in graph.graph.shape(call.outputs[0])[1:]):
                continue
            best = int(ins[np.argmax(scores[ins])])
            removed[best] = False
            notes.append(
                f"'{call.name}': kept one input channel (its whole input is constant "
                "but its output shape is dynamic, so it cannot become a constant)"
            )
            changed = True
    return removed
