"""The channel graph of a Keras model: channel axes, tied channels, constants.

Pruning removes *channels* (positions on the last axis of feature maps). Most
channels cannot be removed on their own: a residual ``Add`` ties channel ``k``
of both branches and of the sum, a depthwise convolution ties its input channel
``k`` to its output channel(s) ``k``, ``Concatenate`` maps input channels to
offsets of its output, ``Flatten`` repeats each channel once per spatial
position. :func:`channel_graph` reads all of that from a model and labels every
channel position of every tensor with a *group*: the positions that must be
removed together.

It also finds the **constant** channels: a BatchNormalization channel with
γ = 0 outputs β for every input, an activation turns it into ``act(β)``, and
the constant flows on through pooling, depthwise convolutions, merges, etc.
Constants are kept as arrays broadcastable to the tensor (batch of one): per
channel (spatially uniform) where that is exact, full maps where zero padding
makes them vary over space (only for static spatial sizes).

The graph says what *may* be removed; criteria (which channels to drop) and
surgery (the rebuild) live elsewhere.

Example:

>>> import keras, numpy as np
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(4, 3, name="conv")(x)
>>> y = keras.layers.BatchNormalization(name="bn")(y)
>>> y = keras.layers.ReLU(name="relu")(y)
>>> y = keras.layers.Conv2D(2, 1, name="head")(y)
>>> model = keras.Model(x, y)
>>> _ = model.get_layer("bn").gamma.assign([1.0, 0.0, 1.0, 1.0])
>>> graph = channel_graph(model)
>>> graph.removable_constant_groups()[graph.layer_channels("bn")].tolist()
[False, True, False, False]
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.conv_response import has_padding_effect, linear_response
from tf_gamma_prune.analysis.kinds import LayerKind, layer_kind
from tf_gamma_prune.analysis.layer_graph import LayerCall, LayerGraph, TensorId, layer_graph
from tf_gamma_prune.errors import (
    ArgumentError,
    DynamicShapeError,
    SharedLayerError,
    UnsupportedLayerError,
    UnsupportedModelError,
)

L = keras.layers

FOLD_MODES = ("auto", "exact", "bias", "carrier")
"""``prune_model``'s fold modes. The graph treats ``"carrier"`` and ``"auto"``
like ``"exact"`` (constants become per-position maps where zero padding makes
them vary); with ``"auto"`` a constant whose map would need a static spatial
size the tensor lacks is not propagated (its channels count as non-constant:
kept, exact)."""


# --- the channel graph ---------------------------------------------------------
@dataclasses.dataclass(eq=False)
class ChannelGraph:
    """Channel groups and constants of a model. Build it with :func:`channel_graph`.

    Attributes:
        layer_graph: the flattened :class:`LayerGraph` (the calls and tensors).
        kinds: the :class:`~tf_gamma_prune.analysis.kinds.LayerKind` of each
            call (``kinds[call].name``: ``"mixing"``, ``"pointwise"``...).
        channels: for each tensor, the group of each channel position (ints).
        num_groups: number of groups.
        pinned: ``(num_groups,)`` bool; pinned groups are never removed (model
            inputs/outputs, channels read by opaque layers, broadcasts).
        pin_reasons: a reason for each pinned group (first one found).
        constants: constant channels of the tensors that have any.
        fold: ``"exact"`` or ``"carrier"`` (maps where zero padding matters)
            or ``"bias"``.
        notes: approximations made while propagating constants (``"bias"``).
    """

    layer_graph: LayerGraph
    kinds: dict[LayerCall, LayerKind]
    channels: dict[TensorId, np.ndarray]
    num_groups: int
    pinned: np.ndarray
    pin_reasons: dict[int, str]
    constants: dict[TensorId, Constants]
    fold: str
    notes: list[str]

    @property
    def graph(self) -> LayerGraph:
        """Old name of :attr:`layer_graph` (until 0.3)."""
        return self.layer_graph

    def width(self, tensor: TensorId) -> int:
        """Number of channels of ``tensor``."""
        return len(self.channels[tensor])

    def constant_mask(self, tensor: TensorId) -> np.ndarray:
        c = self.constants.get(tensor)
        return np.zeros(self.width(tensor), bool) if c is None else c.mask

    def fold_sites(self) -> list[tuple[LayerCall, TensorId]]:
        """``(call, tensor)`` for each mixing call and the tensor it reads.

        Removed channels of ``tensor`` are folded into that call's bias.
        """
        return [(c, c.inputs[0]) for c in self.layer_graph.calls
                if self.kinds[c].folds_constants]

    def removable_constant_groups(self) -> np.ndarray:
        """``(num_groups,)`` bool: groups that can be removed without changing
        the model's function (constant wherever a mixing layer reads them, and
        not pinned)."""
        ok = ~self.pinned.copy()
        for _, tensor in self.fold_sites():
            mask = self.constant_mask(tensor)
            ok[self.channels[tensor][~mask]] = False
        return ok

    def layer_outputs(self, name: str) -> list[TensorId]:
        """Output tensors of every call of the layer with qualified ``name``."""
        outs = [t for c in self.layer_graph.calls if c.name == name for t in c.outputs]
        if not outs:
            raise KeyError(name)
        return outs

    def layer_channels(self, name: str) -> np.ndarray:
        """Groups of the channels of the (first) output of layer ``name``."""
        return self.channels[self.layer_outputs(name)[0]]

    def channel_layer_names(self) -> list[str]:
        """Qualified names of the calls whose output has a channel axis."""
        names = []
        for call in self.layer_graph.calls:
            if call.outputs and call.outputs[0] in self.channels:
                if call.name not in names:
                    names.append(call.name)
        return names

    def gamma_scores(self) -> np.ndarray:
        """``(num_groups,)``: the largest |γ| of a BatchNormalization in each group."""
        scores = np.zeros(self.num_groups)
        for call in self.layer_graph.calls:
            layer = call.layer
            if isinstance(layer, L.BatchNormalization) and layer.scale:
                g = np.abs(keras.ops.convert_to_numpy(layer.gamma)).astype(float)
                groups = self.channels[call.outputs[0]]
                np.maximum.at(scores, groups, g)
        return scores

    def coupled_groups(self) -> list[list[tuple[str, int]]]:
        """Each group with more than one layer output: ``[(layer, channel), ...]``.

        Lists the channels that are removed together because of residual adds,
        depthwise convolutions, shared layers etc. (positions of the same
        layer's output are listed once each).
        """
        members: dict[int, list[tuple[str, int]]] = {}
        for call in self.layer_graph.calls:
            for t in call.outputs:
                if t not in self.channels:
                    continue
                for pos, g in enumerate(self.channels[t]):
                    members.setdefault(int(g), []).append((call.name, pos))
        return [m for m in members.values()
                if len({name for name, _ in m}) > 1]


def coupled_groups(model: keras.Model) -> list[list[tuple[str, int]]]:
    """Channels of different layers that can only be removed together.

    Example:

    >>> import keras
    >>> x = keras.Input((4, 4, 2))
    >>> a = keras.layers.Conv2D(2, 1, name="a")(x)
    >>> b = keras.layers.Conv2D(2, 1, name="b")(x)
    >>> y = keras.layers.Add(name="add")([a, b])
    >>> y = keras.layers.Conv2D(1, 1, name="head")(y)
    >>> coupled_groups(keras.Model(x, y))[0]
    [('a', 0), ('b', 0), ('add', 0)]
    """
    return channel_graph(model).coupled_groups()


def channel_graph(model: keras.Model, fold: str = "exact",
                  unknown_layers: str = "error") -> ChannelGraph:
    """Analyse ``model``: channel groups, pinned groups and constant channels.

    Args:
        model: a functional or Sequential Keras model (nested models allowed).
        fold: ``"exact"`` keeps constants as per-position maps where zero
            padding makes them vary over space (needs static spatial shapes);
            ``"carrier"`` does the same (it differs from ``"exact"`` only in
            how :mod:`~tf_gamma_prune.prune.prune_model` folds them); ``"bias"`` treats
            every constant as uniform over space (the paper's plain bias fold;
            approximate at borders).
        unknown_layers: ``"error"`` (default) or ``"opaque"``: keep layer
            types the registry does not know (and Lambda layers) whole, all
            their channels pinned, each named in ``notes``.

    Raises:
        UnsupportedModelError: subclassed / unbuilt models.
        UnsupportedLayerError: Lambda layers or layer types the graph does not
            know (the message names the layer and its type).
        DynamicShapeError: ``fold="exact"`` / ``"carrier"`` and a constant
            must become a map on a tensor whose spatial shape is not static.

    Example:

    >>> import keras
    >>> x = keras.Input((4, 4, 2))
    >>> y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    >>> y = keras.layers.Conv2D(3, 1, name="pw")(y)
    >>> graph = channel_graph(keras.Model(x, y))
    >>> graph.num_groups, graph.pinned.tolist()  # input channels, pw outputs
    (5, [True, True, True, True, True])
    """
    if fold not in FOLD_MODES:
        raise ArgumentError(f"fold must be one of {FOLD_MODES}, got {fold!r}.")
    graph = layer_graph(model)
    return ChannelBuilder(graph, fold, unknown_layers).build()


class ChannelBuilder:
    """Builds a :class:`ChannelGraph`: walks the calls in order and lets each
    call's :class:`~tf_gamma_prune.analysis.kinds.LayerKind` give its outputs
    channel ids (``raw``), ties and pins, and constants.

    Channel ids are integers; ``tie`` records that two ids are one channel;
    connected components of the ties become the graph's groups.
    """

    def __init__(self, graph: LayerGraph, fold: str, unknown_layers: str = "error") -> None:
        self.graph = graph
        self.fold = fold
        self.unknown_layers = unknown_layers
        self.next_id = 0
        self.raw: dict[TensorId, np.ndarray] = {}
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.pins: list[tuple[np.ndarray, str]] = []
        self.kinds: dict[LayerCall, LayerKind] = {}
        self.constants: dict[TensorId, Constants] = {}
        self.notes: list[str] = []
        self.rearranged: set[LayerCall] = set()

    # ids ------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        """``n`` new channel ids."""
        ids = np.arange(self.next_id, self.next_id + n)
        self.next_id += n
        return ids

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Channel ids ``a[i]`` and ``b[i]`` are the same channel."""
        self.edges.append((np.asarray(a), np.asarray(b)))

    def pin(self, ids: np.ndarray, reason: str) -> None:
        """These channels are never removed (``reason`` goes to ``pin_reasons``)."""
        self.pins.append((np.asarray(ids), reason))

    def width(self, t: TensorId) -> int:
        shape = self.graph.shape(t)
        if len(shape) < 2:
            return 1
        if shape[-1] is None:
            raise UnsupportedModelError(
                f"Tensor {t} has an unknown channel count {shape}; build the model "
                "with a known number of channels."
            )
        return int(shape[-1])

    def rank(self, t: TensorId) -> int:
        return len(self.graph.shape(t))

    def build(self) -> ChannelGraph:
        graph = self.graph
        for t in graph.inputs:
            self.raw[t] = self.fresh(self.width(t))
            self.pin(self.raw[t], "model input")
        for call in graph.calls:
            kind = layer_kind(call, self.unknown_layers)
            self.kinds[call] = kind
            self.check_arity(call, kind)
            kind.connect(self, call)
            self.propagate_constants(call, kind)
        for t in graph.outputs:
            self.pin(self.raw[t], "model output")
        self.tie_shared_layers()
        labels, n = _connected_components(self.next_id, self.edges)
        channels = {t: labels[ids] for t, ids in self.raw.items()}
        pinned = np.zeros(n, bool)
        reasons: dict[int, str] = {}
        for ids, reason in self.pins:
            groups = labels[ids]
            for g in np.unique(groups[~pinned[groups]]):
                reasons[int(g)] = reason
            pinned[groups] = True
        return ChannelGraph(
            layer_graph=graph, kinds=self.kinds, channels=channels, num_groups=n,
            pinned=pinned, pin_reasons=reasons, constants=self.constants,
            fold=self.fold, notes=self.notes,
        )

    def check_arity(self, call: LayerCall, kind: LayerKind) -> None:
        if kind.single_io and (len(call.inputs) != 1 or len(call.outputs) != 1):
            raise UnsupportedLayerError(
                f"Layer '{call.name}' ({type(call.layer).__name__}) is called on "
                f"{len(call.inputs)} tensor(s) with {len(call.outputs)} output(s); the channel "
                "graph only supports one input and one output for this layer type."
            )

    def tie_shared_layers(self) -> None:
        """Calls of one weighted layer must keep the same channels."""
        first: dict[int, LayerCall] = {}
        for call in self.graph.calls:
            if not getattr(call.layer, "weights", None):
                continue
            other = first.setdefault(id(call.layer), call)
            if other is call:
                continue
            for a, b in zip(other.inputs[:1] + other.outputs, call.inputs[:1] + call.outputs):
                if len(self.raw[a]) != len(self.raw[b]):
                    raise SharedLayerError(
                        f"Layer '{call.name}' is shared by calls with different "
                        "channel counts; give each use its own layer."
                    )
                self.tie(self.raw[a], self.raw[b])

    # constants ----------------------------------------------------------------
    def propagate_constants(self, call: LayerCall, kind: LayerKind) -> None:
        ins = [self.constants.get(t) for t in call.inputs]
        try:
            out = kind.propagate(self, call, ins)
        except DynamicShapeError:
            if self.fold != "auto":
                raise
            self.notes.append(f"'{call.name}': constants not followed past it (dynamic "
                              "spatial size); those channels are kept")
            return
        outs = out if isinstance(out, list) else [out]  # a list: one per output
        for t, c in zip(call.outputs, outs):
            if c is not None and c.mask.any():
                c.value = np.where(c.mask, c.value, 0.0)
                self.constants[t] = c

    def full_shape(self, t: TensorId, why: str) -> tuple[int, ...]:
        """``(1, *spatial, C)`` of a tensor with a static shape (else DynamicShapeError)."""
        return (1,) + static_shape(self.graph, t, why)

    def as_map(self, c: Constants, t: TensorId, why: str) -> np.ndarray:
        """The constants of tensor ``t`` as a full per-position map."""
        return np.broadcast_to(c.value, self.full_shape(t, why)).copy()

    def constant_response(self, call: LayerCall, src: Constants, include_bias: bool) -> np.ndarray:
        """A conv/dense/depthwise layer's pre-activation output for the constant input ``src``
        (per position where zero padding matters, unless ``fold="bias"``)."""
        spatial = None
        if src.uniform and has_padding_effect(call.layer) and np.any(src.value != 0):
            if self.fold == "bias":
                self.notes.append(
                    f"'{call.name}': zero padding ignored for a constant input (bias fold)"
                )
            else:
                spatial = self.full_shape(call.inputs[0], f"Zero padding in '{call.name}'")[1:-1]
        out = linear_response(call.layer, src.value, spatial)
        if include_bias and getattr(call.layer, "use_bias", False):
            out = out + keras.ops.convert_to_numpy(call.layer.bias).astype(np.float64)
        return out


def static_shape(graph: LayerGraph, t: TensorId, why: str) -> tuple[int, ...]:
    """The shape of tensor ``t`` without the batch axis, all static.

    Raises:
        DynamicShapeError: a spatial size is not static (``why`` says where).
    """
    shape = graph.shape(t)
    if any(d is None for d in shape[1:]):
        raise DynamicShapeError(
            f"{why}: tensor of shape {shape} has no static spatial size, so the exact "
            "per-position fold cannot be computed. Use the default fold='auto' (it keeps "
            "such constants), build the model with a static input shape (e.g. "
            "keras.Input((224, 224, 3))), or pass fold='bias' for the paper's approximate fold."
        )
    return tuple(int(d) for d in shape[1:])


def _connected_components(n: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, int]:
    """Label ``n`` nodes by connected component (vectorised min-label spreading)."""
    labels = np.arange(n)
    if edges:
        a = np.concatenate([e[0] for e in edges])
        b = np.concatenate([e[1] for e in edges])
        while True:
            m = np.minimum(labels[a], labels[b])
            new = labels.copy()
            np.minimum.at(new, a, m)
            np.minimum.at(new, b, m)
            while True:  # pointer jumping
                jumped = new[new]
                if np.array_equal(jumped, new):
                    break
                new = jumped
            if np.array_equal(new, labels):
                break
            labels = new
    uniq, compact = np.unique(labels, return_inverse=True)
    return compact.reshape(-1), len(uniq)
