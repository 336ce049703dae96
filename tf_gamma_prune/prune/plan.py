"""Which channel groups to remove: constants, explicit selections, rounding.

A *selection* says, per layer, which output channels to keep::

    {"block1_bn": [0, 2, 3],                 # indices to keep
     "backbone/conv5_bn": keep_mask}         # or a boolean keep mask

Layer names are qualified names (``"backbone/conv5_bn"``) or bare names when
unique. Channels tied together (see :mod:`tf_gamma_prune.analysis.channel_graph`) are removed
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

Carriers (``fold="carrier"``): where removed constant channels feed a
zero-padded conv reader, whose plain bias fold would be wrong at the borders,
one of those constants is *not* removed. It stays a true constant channel
(its BatchNormalization has γ = 0), zero padding treats it exactly like the
removed ones, and the rebuild routes every removed constant's contribution
through its input weights (:func:`carrier_position` picks it; see
:mod:`tf_gamma_prune.prune.prune_model`).

Example:

>>> import keras
>>> from tf_gamma_prune.analysis.channel_graph import channel_graph
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

import keras
import numpy as np

from tf_gamma_prune.analysis.batchnorm import resolve_layer_name
from tf_gamma_prune.analysis.channel_graph import ChannelGraph
from tf_gamma_prune.analysis.conv_response import conv_groups, has_padding_effect
from tf_gamma_prune.analysis.layer_graph import LayerCall
from tf_gamma_prune.errors import ArgumentError, SelectionError


@dataclasses.dataclass
class RemovalPlan:
    """The channel groups to remove.

    Attributes:
        removed: ``(num_groups,)`` bool.
        constant: groups removed because they are constant (exact removal).
        selected: groups removed because the selection asked for it.
        notes: decisions worth reporting (channels kept back, ...).
        carriers: ``fold="carrier"`` only: for each conv reader that carries
            its removed constants, the position (in its input's channels) of
            the constant channel that carries them.
        carrier: ``(num_groups,)`` bool, constant groups kept only to carry
            the removed ones (they would be removed otherwise).
    """

    removed: np.ndarray
    constant: np.ndarray
    selected: np.ndarray
    notes: list[str]
    carriers: dict[LayerCall, int] = dataclasses.field(default_factory=dict)
    carrier: np.ndarray | None = None


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
    calibrated: bool = False,
    carrier_tile: int = 1,
) -> RemovalPlan:
    """Decide which channel groups to remove.

    With a graph built with ``fold="carrier"`` it also picks the carrier
    channels (see the module doc and :func:`carrier_position`): a constant
    channel kept anyway (e.g. back by ``round_to``) is used first, otherwise
    the removed constant with the largest magnitude is kept — only with
    ``round_to == 1``, and with ``carrier_tile > 1`` only where it starts no
    new tile. Readers where no channel can carry the removed constants
    (separable convs, shared layers, constants that are different maps over
    space, only calibration means removed, no room) keep the exact fold's
    BorderCorrection; the notes say which and why.

    A grouped convolution keeps ``groups`` dividing its input width: where its
    groups would lose different numbers of input channels, channels (the
    largest |γ| first) are kept back until every group loses as many.

    Args:
        graph: the model's :class:`~tf_gamma_prune.analysis.channel_graph.ChannelGraph`.
        selection: optional per-layer keep masks / indices (see module doc);
            ``None`` for no selection. An empty mapping is refused.
        remove_constant: also remove every constant channel that can be
            removed exactly (BatchNormalization γ == 0 and what follows).
        round_to: keep the width of every conv/dense output at a multiple of
            this (or its full width), putting back the removed channels with the
            largest |γ| first.
        calibrated: removed non-constant channels will be replaced by their
            calibration means (``prune_model(calibration_data=...)``); carriers
            then carry those means too.
        carrier_tile: ``fold="carrier"``: a carrier channel that would not be
            kept otherwise is only kept where it does not start a new tile of
            this many output channels in any layer (see
            :func:`carrier_position`); 1 = always.

    Raises:
        SelectionError: see :func:`selected_groups`; also when the selection
            asks to remove pinned channels (model inputs/outputs, channels read
            by Softmax/LayerNormalization/... ), naming them and why, and for an
            empty selection (``{}``: most likely a criterion that selected
            nothing; pass ``None`` to remove only constant channels).
    """
    if round_to < 1:
        raise ArgumentError(f"round_to must be >= 1, got {round_to}.")
    if int(carrier_tile) != carrier_tile or carrier_tile < 1:
        raise ArgumentError(f"carrier_tile must be an integer >= 1, got {carrier_tile!r}.")
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
    carriers: dict[LayerCall, int] = {}
    carrier = np.zeros(graph.num_groups, bool)
    if graph.fold in ("carrier", "auto"):
        before = removed
        removed, carriers = _choose_carriers(graph, removed, calibrated, notes,
                                             round_to=round_to, tile=int(carrier_tile),
                                             optional=constant & ~selected)
        carrier = before & ~removed
        if round_to > 1 and carrier.any():
            removed = _round_widths(graph, removed, round_to, notes)
    # Keeping channels back never invalidates a carrier: its readers only lose
    # removed channels to carry.
    live = _keep_live_inputs(graph, removed, notes)
    if graph.fold in ("carrier", "auto") and not np.array_equal(live, removed):
        # a kept-back input may need (and be) a carrier
        before = live
        live, carriers = _choose_carriers(graph, live, calibrated, notes, carriers,
                                          round_to=round_to, tile=int(carrier_tile),
                                          optional=constant & ~selected)
        carrier |= before & ~live
    removed = live
    if _grouped_readers(graph):
        for _ in range(graph.num_groups + 1):  # both steps only put channels back
            balanced = _balance_grouped_inputs(graph, removed, notes)
            if round_to > 1:
                balanced = _round_widths(graph, balanced, round_to, notes)
            if np.array_equal(balanced, removed):
                break
            removed = balanced
    return RemovalPlan(removed=removed, constant=constant & removed,
                       selected=selected & removed & ~constant, notes=notes,
                       carriers=carriers, carrier=carrier & ~removed)


# --- carriers ---------------------------------------------------------------------
CARRIER_MAX_RATIO = 1e6
"""A constant channel already kept serves as carrier only if the removed
constants are at most this many times larger (the carrier's input weights
grow by that ratio)."""

_FALLBACK = "fold='carrier': "
_KEPT = "fold='auto': "
_SEPARABLE = tuple(getattr(keras.layers, n) for n in ("SeparableConv1D", "SeparableConv2D"))


def removed_values(graph: ChannelGraph, tensor: Any, removed: np.ndarray,
                   calibrated: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the removed channels of ``tensor`` contribute to a reader.

    Returns ``(values, constant, mean)``: the constant values as a
    ``(positions, C)`` array (one row when uniform over space), and two
    ``(C,)`` masks: removed constant channels that are nonzero somewhere, and
    removed non-constant channels replaced by a calibration mean.
    """
    groups = graph.channels[tensor]
    rem = removed[groups]
    const = graph.constants.get(tensor)
    width = len(groups)
    if const is None:
        values = np.zeros((1, width))
        mask = np.zeros(width, bool)
    else:
        values = const.value.reshape(-1, width)
        mask = const.mask
    nonzero = np.any(values != 0, axis=0)
    mean = rem & ~mask if calibrated else np.zeros(width, bool)
    return values, rem & mask & nonzero, mean


def _shape_of(column: np.ndarray) -> np.ndarray:
    """A column scaled so its entry of largest magnitude is 1."""
    return column / column[np.argmax(np.abs(column))]


def same_shape(a: np.ndarray, b: np.ndarray, tol: float = 1e-9) -> bool:
    """Whether two constant maps (flattened) are proportional: ``a = r·b``."""
    return bool(np.all(np.abs(_shape_of(a) - _shape_of(b)) <= tol))


def carrier_position(graph: ChannelGraph, call: LayerCall, removed: np.ndarray,
                     calibrated: bool = False, round_to: int = 1,
                     tile: int = 1) -> int | str | None:
    """The input channel of conv reader ``call`` that should carry its removed
    constants (``fold="carrier"``).

    A constant channel that is kept anyway (by ``round_to``, pins, ...) is
    preferred; otherwise the removed constant with the largest magnitude —
    but only with ``round_to == 1``: with ``round_to=n`` keeping it would add
    a whole block of ``n`` channels (rounding leaves widths at multiples of
    ``n``), which costs more than the border map's ADD. With ``tile > 1``
    a removed constant is kept as carrier only where no layer's output then
    needs one more tile of ``tile`` channels (XNNPACK's float kernels compute
    output channels in tiles: 8 on ARM NEON, 16 with AVX-512, so 16 -> 17
    channels costs as much as 32, while 19 -> 20 is free).

    Returns the position (in ``call``'s input channels), ``None`` when the
    reader needs no carrier (its plain fold is exact, or it reads nothing
    removed / only removed channels / writes nothing), or a string saying why
    no channel can carry them (the reader keeps a BorderCorrection).
    """
    layer = call.layer
    t = call.inputs[0]
    groups = graph.channels[t]
    rem = removed[groups]
    if not rem.any() or rem.all() or np.all(removed[graph.channels[call.outputs[0]]]):
        return None
    values, const_in, mean_in = removed_values(graph, t, removed, calibrated)
    if not const_in.any() and not mean_in.any():
        return None
    columns = values[:, const_in]
    uniform = bool(np.all(columns == columns[:1]))
    if uniform and not has_padding_effect(layer):
        return None  # the plain bias fold is exact here
    if conv_groups(layer) > 1:
        return ("grouped convolution: a carrier's weights reach only its own group's "
                "outputs")
    if isinstance(layer, _SEPARABLE):
        return ("separable convolution: its depthwise step filters each input "
                "channel differently")
    if len(graph.layer_graph.calls_of(layer)) > 1:
        return "shared layer: its uses would need one carrier each"
    if not const_in.any():
        return ("only calibration-mean channels are removed here; a carrier must be "
                "a constant channel")
    if mean_in.any() and not uniform:
        return "calibration means are uniform but the removed constants vary over space"
    ref = columns[:, 0]
    if not all(same_shape(columns[:, j], ref) for j in range(1, columns.shape[1])):
        return ("the removed constants vary over space in different ways (e.g. "
                "after a depthwise convolution), so no one channel can carry them")
    largest = float(np.abs(columns).max())
    const = graph.constants.get(t)
    if const is not None:
        nonzero = np.any(values != 0, axis=0)
        kept = np.flatnonzero(~rem & const.mask & nonzero)
        kept = sorted(kept, key=lambda p: -float(np.abs(values[:, p]).max()))
        for p in kept:
            column = values[:, p]
            if (float(np.abs(column).max()) * CARRIER_MAX_RATIO >= largest
                    and same_shape(column, ref)):
                return int(p)
    if round_to > 1:
        return (f"no constant channel is kept within round_to={round_to}: a carrier "
                f"would add a block of {round_to} channels")
    candidates = np.flatnonzero(const_in)
    order = np.argsort(-np.abs(columns).max(axis=0), kind="stable")
    crowded = ""
    for p in candidates[order]:
        crowded = _new_tile(graph, int(groups[p]), removed, tile)
        if not crowded:
            return int(p)
    return (f"carrier_tile={tile}: a carrier would start a new tile of {tile} output "
            f"channels in '{crowded}'")


def _mixing_members(graph: ChannelGraph) -> dict[int, list[tuple[str, np.ndarray, int]]]:
    """For each group, ``(layer, its output's groups, positions of the group)``
    of every conv/dense output it is in (cached on the graph)."""
    cached = getattr(graph, "_mixing_members", None)
    if cached is not None:
        return cached
    members: dict[int, list[tuple[str, np.ndarray, int]]] = {}
    for call in graph.layer_graph.calls:
        if not graph.kinds[call].folds_constants:
            continue
        groups = graph.channels[call.outputs[0]]
        ids, counts = np.unique(groups, return_counts=True)
        for g, n in zip(ids.tolist(), counts.tolist()):
            members.setdefault(g, []).append((call.name, groups, n))
    graph._mixing_members = members  # type: ignore[attr-defined]
    return members


def _new_tile(graph: ChannelGraph, group: int, removed: np.ndarray, tile: int) -> str:
    """The first conv/dense layer whose output would need one more tile of
    ``tile`` channels if ``group`` were kept ("" when none would)."""
    if tile <= 1:
        return ""
    for name, groups, added in _mixing_members(graph).get(group, []):
        kept = int(np.count_nonzero(~removed[groups]))
        if math.ceil((kept + added) / tile) > math.ceil(kept / tile):
            return name
    return ""


def _choose_carriers(graph: ChannelGraph, removed: np.ndarray, calibrated: bool,
                     notes: list[str], carriers: dict[LayerCall, int] | None = None,
                     round_to: int = 1, tile: int = 1, optional: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, dict[LayerCall, int]]:
    """Keep one carrier channel for each conv reader that needs one.

    With ``fold="auto"``, a reader that no channel can carry for gets back the
    removed constants it reads that are ``optional`` (removed only for being
    constant, not selected) instead of a border map.

    Keeping a channel only shrinks what other readers must carry, so a choice
    stays valid; readers are revisited until nothing changes (a reader whose
    whole input was removed may get a kept channel from another's carrier).
    """
    removed = removed.copy()
    carriers = dict(carriers or {})
    reasons: dict[LayerCall, str] = {}
    sites = graph.fold_sites()
    for _ in range(len(sites) + 1):
        changed = False
        for call, t in sites:
            if call in carriers:
                continue
            outcome = carrier_position(graph, call, removed, calibrated, round_to, tile)
            if isinstance(outcome, str) and graph.fold == "auto" and optional is not None:
                kept = _keep_constants_read_by(graph, call, removed, calibrated, optional)
                if kept:
                    notes.append(f"{_KEPT}'{call.name}' keeps {kept} constant channel(s) "
                                 f"instead of a BorderCorrection ({outcome})")
                    changed = True
                    continue
            if isinstance(outcome, str):
                reasons[call] = outcome
                continue
            reasons.pop(call, None)
            if outcome is None:
                continue
            carriers[call] = outcome
            group = graph.channels[t][outcome]
            if removed[group]:
                removed[group] = False
                changed = True
        if not changed:
            break
    notes[:] = [n for n in notes if not n.startswith(_FALLBACK)]
    for call, why in reasons.items():
        notes.append(f"{_FALLBACK}'{call.name}' keeps a BorderCorrection ({why})")
    return removed, carriers


def _keep_constants_read_by(graph: ChannelGraph, call: LayerCall, removed: np.ndarray,
                            calibrated: bool, optional: np.ndarray) -> int:
    """``fold="auto"``: put back the removed nonzero constants that ``call`` reads
    and that are ``optional`` (instead of a border map); returns how many
    channel positions came back."""
    t = call.inputs[0]
    _, const_in, _ = removed_values(graph, t, removed, calibrated)
    back = const_in & optional[graph.channels[t]]
    removed[np.unique(graph.channels[t][back])] = False
    return int(np.count_nonzero(back))


def _carrier_usefulness(graph: ChannelGraph) -> np.ndarray:
    """``(num_groups,)``: the largest |constant| of each group at a zero-padded
    conv reader (0 where it could carry nothing there)."""
    useful = np.zeros(graph.num_groups)
    for call, t in graph.fold_sites():
        const = graph.constants.get(t)
        if const is None or not (has_padding_effect(call.layer) or not const.uniform):
            continue
        width = len(graph.channels[t])
        magnitude = np.abs(const.value.reshape(-1, width)).max(axis=0)
        np.maximum.at(useful, graph.channels[t], np.where(const.mask, magnitude, 0.0))
    return useful


def rounded_removal(graph: ChannelGraph, removed: np.ndarray, round_to: int,
                    scores: np.ndarray | None = None) -> np.ndarray:
    """``removed`` with channels put back until every conv/dense output width is a
    multiple of ``round_to`` (or its full width), the largest |γ| first: what
    ``prune_model(..., round_to=round_to)`` keeps. A copy; ``round_to=1`` changes nothing.

    ``scores`` (one per channel group, larger comes back first) replaces |γ| as the
    order, e.g. a criterion's order of removal
    (:func:`~tf_gamma_prune.prune.tiled_selection.removal_order`).

    Example:

    >>> import keras, numpy as np
    >>> from tf_gamma_prune.analysis.channel_graph import channel_graph
    >>> x = keras.Input((4, 4, 1))
    >>> h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(8, 1, name="c")(x))
    >>> graph = channel_graph(keras.Model(x, keras.layers.Dense(2)(h)))
    >>> removed = np.zeros(graph.num_groups, bool)
    >>> removed[graph.layer_channels("c")[:3]] = True       # 5 of 8 kept
    >>> int(np.count_nonzero(rounded_removal(graph, removed, 4)[graph.layer_channels("c")]))
    0
    """
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ArgumentError(f"round_to must be an integer >= 1, got {round_to!r}.")
    if scores is not None and np.shape(scores) != (graph.num_groups,):
        raise ArgumentError(f"scores must have one value per channel group ({graph.num_groups}), "
                            f"got shape {np.shape(scores)}.")
    if round_to == 1:
        return removed.copy()
    return _round_widths(graph, removed, int(round_to), [], scores)


def _round_widths(graph: ChannelGraph, removed: np.ndarray, n: int,
                  notes: list[str], scores: np.ndarray | None = None) -> np.ndarray:
    removed = removed.copy()
    scores = graph.gamma_scores() if scores is None else np.asarray(scores, float)
    useful = (_carrier_usefulness(graph) if graph.fold in ("carrier", "auto")
              else np.zeros(graph.num_groups))
    outputs = [c.outputs[0] for c in graph.layer_graph.calls if graph.kinds[c].folds_constants]
    for _ in range(50):
        changed = False
        for t in outputs:
            groups = graph.channels[t]
            kept = int(np.count_nonzero(~removed[groups]))
            if kept == 0 or kept == len(groups) or kept % n == 0:
                continue
            extra = min(math.ceil(kept / n) * n, len(groups)) - kept
            candidates = [int(g) for g in dict.fromkeys(groups[removed[groups]].tolist())]
            # largest |γ| first; among equal γ (constants: 0) the best would-be
            # carriers (fold="carrier"), then the lowest index (stable sort)
            candidates.sort(key=lambda g: (-scores[g], -useful[g]))
            removed[candidates[:extra]] = False
            changed = True
        if not changed:
            break
    else:
        notes.append(f"round_to={n}: widths did not settle (tied groups disagree)")
    return removed


def _grouped_readers(graph: ChannelGraph) -> list[LayerCall]:
    """The grouped convolutions (``groups > 1``) of the graph."""
    return [call for call in graph.layer_graph.calls
            if graph.kinds[call].folds_constants and conv_groups(call.layer) > 1]


def _balance_grouped_inputs(graph: ChannelGraph, removed: np.ndarray,
                            notes: list[str]) -> np.ndarray:
    """Put input channels of grouped convolutions back until every group of
    each loses as many (so ``groups`` still divides its input width); the
    largest |γ| come back first."""
    removed = removed.copy()
    scores = graph.gamma_scores()
    balanced_back: dict[str, int] = {}
    for _ in range(graph.num_groups + 1):
        changed = False
        for call in _grouped_readers(graph):
            ids = graph.channels[call.inputs[0]]
            groups = conv_groups(call.layer)
            per_group = ids.reshape(groups, -1)
            counts = removed[per_group].sum(axis=1)
            target = int(counts.min())
            if int(counts.max()) == target:
                continue
            for g in np.flatnonzero(counts > target):
                gone = [int(i) for i in dict.fromkeys(per_group[g][removed[per_group[g]]].tolist())]
                gone.sort(key=lambda i: -scores[i])
                back = gone[: int(counts[g]) - target]
                removed[back] = False
                balanced_back[call.name] = balanced_back.get(call.name, 0) + len(back)
            changed = True
        if not changed:
            break
    for name, count in balanced_back.items():
        notes.append(f"'{name}': kept {count} input channel(s) so that every group of the "
                     "grouped convolution loses as many")
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
        for call in graph.layer_graph.calls:
            if not graph.kinds[call].folds_constants:
                continue
            ins = graph.channels[call.inputs[0]]
            outs = graph.channels[call.outputs[0]]
            if not np.all(removed[ins]) or np.all(removed[outs]):
                continue
            shape = graph.layer_graph.shape(call.outputs[0])[1:]
            dynamic = any(d is None for d in shape)
            if not dynamic and not (graph.fold == "auto" and _constant_map_outweighs(call, shape)):
                continue
            best = int(ins[np.argmax(scores[ins])])
            removed[best] = False
            why = ("its output shape is dynamic, so it cannot become a constant" if dynamic else
                   "fold='auto': its constant output map would be larger than the layer")
            notes.append(f"'{call.name}': kept one input channel (its whole input is constant "
                         f"but {why})")
            changed = True
    return removed


def _constant_map_outweighs(call: LayerCall, shape: tuple) -> bool:
    """Whether a ConstantFeature for ``call``'s output would hold more numbers
    than the layer's own weights."""
    return math.prod(int(d) for d in shape) > call.layer.count_params()
