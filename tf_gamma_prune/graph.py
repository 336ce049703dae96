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
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.layer_graph import (
    LayerCall,
    LayerGraph,
    TensorId,
    UnsupportedModelError,
    layer_graph,
)

# --- layer kinds -------------------------------------------------------------
MIXING = "mixing"  # conv / dense: new output channels, absorbs constant inputs
DEPTHWISE = "depthwise"  # output channel k*m+j reads input channel k only
POINTWISE = "pointwise"  # elementwise per channel (BN, activations, dropout...)
SPATIAL = "spatial"  # per channel over space (pooling, padding, cropping...)
MERGE = "merge"  # elementwise merge of tensors (Add, Multiply, ...)
CONCAT = "concat"
RESHAPE = "reshape"  # Flatten / Reshape / Permute
OPAQUE = "opaque"  # mixes channels but cannot absorb constants: pins them
CONSTANT = "constant"  # ConstantFeature: new channels, all constant

FOLD_MODES = ("exact", "bias", "carrier")
"""``prune_model``'s fold modes. The graph treats ``"carrier"`` like ``"exact"``
(constants become per-position maps where zero padding makes them vary)."""


class UnsupportedLayerError(UnsupportedModelError):
    """A layer (or its configuration) the channel graph does not understand."""


class SharedLayerError(UnsupportedModelError):
    """A layer used several times whose uses would need different rebuilds."""


class DynamicShapeError(ValueError):
    """Exact constant folding needs a static spatial shape that the model lacks."""


# --- registry ----------------------------------------------------------------
L = keras.layers

_LAYER_KINDS: dict[type, str] = {}


def register_layer_kind(layer_class: type, kind: str) -> None:
    """Declare how a custom layer class treats channels.

    ``kind`` is one of ``"pointwise"`` (elementwise per channel and stateless
    per channel, e.g. a custom activation), ``"spatial"`` (per channel over
    space, no weights) or ``"opaque"`` (mixes channels: its input and output
    channels are never removed).

    Example:

    >>> class Swish2(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x * keras.ops.sigmoid(2 * x)
    >>> register_layer_kind(Swish2, "pointwise")
    """
    if kind not in (POINTWISE, SPATIAL, OPAQUE):
        raise ValueError(
            f"kind must be 'pointwise', 'spatial' or 'opaque', got {kind!r}."
        )
    _LAYER_KINDS[layer_class] = kind


def _builtin_kinds() -> dict[type, str]:
    kinds: dict[type, str] = {}

    def put(kind: str, *names: str) -> None:
        for name in names:
            cls = getattr(L, name, None)
            if cls is not None:
                kinds[cls] = kind

    put(MIXING, "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D",
        "SeparableConv2D", "Dense", "Conv1DTranspose", "Conv2DTranspose",
        "Conv3DTranspose")
    put(DEPTHWISE, "DepthwiseConv1D", "DepthwiseConv2D")
    put(POINTWISE, "BatchNormalization", "Activation", "ReLU", "LeakyReLU",
        "PReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
        "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
        "ActivityRegularization", "Identity", "Rescaling", "Normalization")
    put(SPATIAL, "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
        "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
        "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D",
        "GlobalAveragePooling3D", "ZeroPadding1D", "ZeroPadding2D",
        "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
        "UpSampling1D", "UpSampling2D", "UpSampling3D")
    put(MERGE, "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
    put(CONCAT, "Concatenate")
    put(RESHAPE, "Flatten", "Reshape", "Permute")
    put(OPAQUE, "Softmax", "LayerNormalization", "GroupNormalization",
        "UnitNormalization")
    from tf_gamma_prune.layers import BorderCorrection, ConstantFeature

    kinds[BorderCorrection] = POINTWISE
    kinds[ConstantFeature] = CONSTANT
    try:  # keras.applications.InceptionResNetV2: inputs[0] + inputs[1] * scale
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

        kinds[CustomScaleLayer] = MERGE
    except ImportError:  # pragma: no cover - other Keras versions
        pass
    return kinds


_BUILTIN_KINDS = _builtin_kinds()

# keras.ops operations that appear as nodes in functional models.
_OP_BINARY = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum",
              "Minimum"}
_OP_UNARY = {"Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "Swish",
             "HardSilu", "HardSwish", "Gelu", "Tanh", "Elu", "Selu", "LeakyRelu",
             "Softplus", "Softsign", "Exp", "Negative", "Abs", "Square", "Sqrt",
             "Mish", "Celu"}
_CHANNEL_ACTIVATIONS = {"softmax", "log_softmax", "glu"}


def _activation_name(fn: Any) -> str:
    if fn is None:
        return "linear"
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name).lower()


def activation_mixes_channels(fn: Any) -> bool:
    """Whether an activation function normalises across channels (softmax)."""
    return _activation_name(fn) in _CHANNEL_ACTIVATIONS


def layer_kind(call: LayerCall) -> str:
    """The channel behaviour of one call.

    Raises:
        UnsupportedLayerError: Lambda layers, unknown layer types, channels_first
            layouts, grouped layers the graph cannot slice.
    """
    layer = call.layer
    cls = type(layer)
    if isinstance(layer, L.Lambda):
        raise UnsupportedLayerError(
            f"Layer '{call.name}' is a Lambda layer: its Python function cannot be "
            "analysed, so its channels cannot be traced. Replace it with built-in "
            "layers or a custom layer class (declare it with "
            "tf_gamma_prune.register_layer_kind(cls, 'pointwise'|'spatial'|'opaque'))."
        )
    kind = _LAYER_KINDS.get(cls) or _BUILTIN_KINDS.get(cls)
    if kind is None and cls.__module__.startswith("keras.src.ops"):
        kind = _op_kind(call)
    if kind is None:
        raise UnsupportedLayerError(
            f"Layer '{call.name}' has type {cls.__module__}.{cls.__name__}, which "
            "the channel graph does not know. Use built-in Keras layers, or declare "
            "the class with tf_gamma_prune.register_layer_kind(cls, kind) if it is "
            "elementwise ('pointwise'), per-channel spatial ('spatial') or should "
            "keep all its channels ('opaque')."
        )
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        raise UnsupportedLayerError(
            f"Layer '{call.name}' ({cls.__name__}) uses data_format='channels_first'; "
            "only channels_last models are supported. Rebuild the model with "
            "channels_last (the Keras default)."
        )
    if kind == POINTWISE and isinstance(layer, L.Activation):
        if activation_mixes_channels(layer.activation):
            return OPAQUE
    if kind == POINTWISE and isinstance(layer, L.BatchNormalization):
        rank = len(call.node.input_tensors[0].shape)
        if layer.axis not in (-1, rank - 1):
            raise UnsupportedLayerError(
                f"BatchNormalization '{call.name}' normalises axis {layer.axis}, not "
                "the last (channel) axis; only channels_last models are supported."
            )
    if kind == POINTWISE and isinstance(layer, L.Normalization):
        if tuple(layer.axis) not in ((-1,), (len(call.node.input_tensors[0].shape) - 1,)):
            return OPAQUE
    if kind == CONCAT:
        rank = len(call.node.outputs[0].shape)
        if layer.axis not in (-1, rank - 1):
            return MERGE  # concatenation over space: channels tie elementwise
    return kind


def _op_kind(call: LayerCall) -> str | None:
    name = type(call.layer).__name__
    tensors = call.node.arguments.keras_tensors
    if name in _OP_BINARY:
        if len(tensors) == 2:
            return MERGE
        if len(tensors) == 1 and _scalar_operands(call):
            return POINTWISE
        return OPAQUE
    if name in _OP_UNARY and len(tensors) == 1:
        return POINTWISE
    return None


def _scalar_operands(call: LayerCall) -> bool:
    args = list(call.node.arguments.args) + list(call.node.arguments.kwargs.values())
    for arg in args:
        if isinstance(arg, keras.KerasTensor):
            continue
        if np.size(arg) != 1:
            return False
    return True


# --- constants ---------------------------------------------------------------
@dataclasses.dataclass
class Constants:
    """The constant channels of one tensor.

    Attributes:
        mask: ``(C,)`` bool, channel ``k`` is the same for every example.
        value: float64 array broadcastable to the tensor shape with batch size 1
            (``(1, 1, 1, C)`` when uniform over space, ``(1, H, W, C)`` as a map).
            Entries of non-constant channels are 0.
    """

    mask: np.ndarray
    value: np.ndarray

    @property
    def uniform(self) -> bool:
        return all(d == 1 for d in self.value.shape[1:-1])


def _no_constants(width: int, rank: int) -> Constants:
    return Constants(np.zeros(width, bool), np.zeros((1,) * (rank - 1) + (width,)))


# --- the channel graph ---------------------------------------------------------
@dataclasses.dataclass(eq=False)
class ChannelGraph:
    """Channel groups and constants of a model. Build it with :func:`channel_graph`.

    Attributes:
        graph: the flattened :class:`LayerGraph`.
        kinds: channel behaviour of each call (``"mixing"``, ``"pointwise"``...).
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

    graph: LayerGraph
    kinds: dict[LayerCall, str]
    channels: dict[TensorId, np.ndarray]
    num_groups: int
    pinned: np.ndarray
    pin_reasons: dict[int, str]
    constants: dict[TensorId, Constants]
    fold: str
    notes: list[str]

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
        return [(c, c.inputs[0]) for c in self.graph.calls
                if self.kinds[c] == MIXING]

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
        outs = [t for c in self.graph.calls if c.name == name for t in c.outputs]
        if not outs:
            raise KeyError(name)
        return outs

    def layer_channels(self, name: str) -> np.ndarray:
        """Groups of the channels of the (first) output of layer ``name``."""
        return self.channels[self.layer_outputs(name)[0]]

    def channel_layer_names(self) -> list[str]:
        """Qualified names of the calls whose output has a channel axis."""
        names = []
        for call in self.graph.calls:
            if call.outputs and call.outputs[0] in self.channels:
                if call.name not in names:
                    names.append(call.name)
        return names

    def gamma_scores(self) -> np.ndarray:
        """``(num_groups,)``: the largest |γ| of a BatchNormalization in each group."""
        scores = np.zeros(self.num_groups)
        for call in self.graph.calls:
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
        for call in self.graph.calls:
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


def channel_graph(model: keras.Model, fold: str = "exact") -> ChannelGraph:
    """Analyse ``model``: channel groups, pinned groups and constant channels.

    Args:
        model: a functional or Sequential Keras model (nested models allowed).
        fold: ``"exact"`` keeps constants as per-position maps where zero
            padding makes them vary over space (needs static spatial shapes);
            ``"carrier"`` does the same (it differs from ``"exact"`` only in
            how :mod:`~tf_gamma_prune.surgery` folds them); ``"bias"`` treats
            every constant as uniform over space (the paper's plain bias fold;
            approximate at borders).

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
        raise ValueError(f"fold must be one of {FOLD_MODES}, got {fold!r}.")
    graph = layer_graph(model)
    builder = _ChannelBuilder(graph, fold)
    return builder.build()


class _ChannelBuilder:
    def __init__(self, graph: LayerGraph, fold: str) -> None:
        self.graph = graph
        self.fold = fold
        self.next_id = 0
        self.raw: dict[TensorId, np.ndarray] = {}
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.pins: list[tuple[np.ndarray, str]] = []
        self.kinds: dict[LayerCall, str] = {}
        self.constants: dict[TensorId, Constants] = {}
        self.notes: list[str] = []
        self.rearranged: set[LayerCall] = set()

    # ids ------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n)
        self.next_id += n
        return ids

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        self.edges.append((np.asarray(a), np.asarray(b)))

    def pin(self, ids: np.ndarray, reason: str) -> None:
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

    def build(self) -> ChannelGraph:
        graph = self.graph
        for t in graph.inputs:
            self.raw[t] = self.fresh(self.width(t))
            self.pin(self.raw[t], "model input")
        for call in graph.calls:
            kind = layer_kind(call)
            self.kinds[call] = kind
            self.channel_ids(call, kind)
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
            graph=graph, kinds=self.kinds, channels=channels, num_groups=n,
            pinned=pinned, pin_reasons=reasons, constants=self.constants,
            fold=self.fold, notes=self.notes,
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

    def channel_ids(self, call: LayerCall, kind: str) -> None:
        out = call.outputs
        ins = call.inputs
        if kind in (MIXING, DEPTHWISE, POINTWISE, SPATIAL, RESHAPE) and (
            len(ins) != 1 or len(out) != 1
        ):
            raise UnsupportedLayerError(
                f"Layer '{call.name}' ({type(call.layer).__name__}) is called on "
                f"{len(ins)} tensor(s) with {len(out)} output(s); the channel graph "
                "only supports one input and one output for this layer type."
            )
        if kind == MIXING:
            ids = self.fresh(self.width(out[0]))
            self.raw[out[0]] = ids
            layer = call.layer
            if getattr(layer, "groups", 1) != 1:
                self.pin(self.raw[ins[0]], f"grouped convolution '{call.name}'")
                self.pin(ids, f"grouped convolution '{call.name}'")
            if activation_mixes_channels(getattr(layer, "activation", None)):
                self.pin(ids, f"softmax activation of '{call.name}'")
        elif kind == DEPTHWISE:
            dm = call.layer.depth_multiplier
            self.raw[out[0]] = np.repeat(self.raw[ins[0]], dm)
        elif kind in (POINTWISE, SPATIAL):
            src = self.raw[ins[0]]
            w = self.width(out[0])
            if len(src) != w:
                self.raw[out[0]] = self.fresh(w)
                self.pin(src, f"'{call.name}' changes the channel count")
                self.pin(self.raw[out[0]], f"'{call.name}' changes the channel count")
            else:
                self.raw[out[0]] = src
        elif kind == MERGE:
            self.merge_ids(call)
        elif kind == CONCAT:
            self.raw[out[0]] = np.concatenate([self.raw[t] for t in ins])
        elif kind == RESHAPE:
            self.reshape_ids(call)
        elif kind == CONSTANT:
            self.raw[out[0]] = self.fresh(self.width(out[0]))
        elif kind == OPAQUE:
            for t in ins:
                self.pin(self.raw[t], f"read by {type(call.layer).__name__} '{call.name}'")
            for t in out:
                self.raw[t] = self.fresh(self.width(t))
                self.pin(self.raw[t], f"written by {type(call.layer).__name__} '{call.name}'")

    def merge_ids(self, call: LayerCall) -> None:
        w = self.width(call.outputs[0])
        same = [t for t in call.inputs if len(self.raw[t]) == w]
        for t in call.inputs:
            if len(self.raw[t]) != w:
                self.pin(self.raw[t], f"broadcast over channels in '{call.name}'")
        if not same:
            ids = self.fresh(w)
            self.pin(ids, f"broadcast over channels in '{call.name}'")
        else:
            ids = self.raw[same[0]]
            for t in same[1:]:
                self.tie(ids, self.raw[t])
        self.raw[call.outputs[0]] = ids

    def reshape_ids(self, call: LayerCall) -> None:
        src_t, out_t = call.inputs[0], call.outputs[0]
        src = self.raw[src_t]
        c_in, c_out = len(src), self.width(out_t)
        in_shape = self.graph.shape(src_t)
        layer = call.layer
        decidable = True
        if isinstance(layer, L.Permute):
            decidable = layer.dims[-1] == len(in_shape) - 1
        elif len(in_shape) < 2:
            decidable = False
        elif c_out % c_in != 0:
            decidable = False
        if not decidable:
            self.rearranged.add(call)
            ids = self.fresh(c_out)
            self.pin(src, f"channels rearranged by '{call.name}'")
            self.pin(ids, f"channels rearranged by '{call.name}'")
            self.raw[out_t] = ids
            return
        # Row-major reshapes keep flat order: output position p holds input
        # channel p % C whenever C divides the new last dimension.
        self.raw[out_t] = np.tile(src, c_out // c_in)

    # constants ----------------------------------------------------------------
    def propagate_constants(self, call: LayerCall, kind: str) -> None:
        if kind == OPAQUE or call in self.rearranged:
            return
        if kind == CONSTANT:
            value = _numpy_weight(call.layer.value)[None]
            self.constants[call.outputs[0]] = Constants(np.ones(value.shape[-1], bool), value)
            return
        if kind in (POINTWISE, SPATIAL) and len(self.raw[call.inputs[0]]) != len(
            self.raw[call.outputs[0]]
        ):
            return
        if kind == MIXING:
            src = self.constants.get(call.inputs[0])
            if src is not None and src.mask.all():
                self.mixing_constants(call, src)
            return
        ins = [self.constants.get(t) for t in call.inputs]
        if kind not in (MERGE, CONCAT) and ins[0] is None and not isinstance(
            call.layer, L.BatchNormalization
        ):
            return
        if kind == MERGE:
            if all(c is None for c in ins):
                return
            out = self.merge_constants(call, ins)
        elif kind == CONCAT:
            if all(c is None for c in ins):
                return
            out = self.concat_constants(call, ins)
        elif kind == POINTWISE:
            out = self.pointwise_constants(call, ins[0])
        elif kind == DEPTHWISE:
            out = self.depthwise_constants(call, ins[0])
        elif kind == SPATIAL:
            out = self.spatial_constants(call, ins[0])
        elif kind == RESHAPE:
            out = self.reshape_constants(call, ins[0])
        else:  # pragma: no cover
            return
        if out is not None and out.mask.any():
            out.value = np.where(out.mask, out.value, 0.0)
            self.constants[call.outputs[0]] = out

    def is_multiply(self, call: LayerCall) -> bool:
        return type(call.layer).__name__ == "Multiply"

    def rank(self, t: TensorId) -> int:
        return len(self.graph.shape(t))

    def full_shape(self, t: TensorId, why: str) -> tuple[int, ...]:
        shape = self.graph.shape(t)
        if any(d is None for d in shape[1:]):
            raise DynamicShapeError(
                f"{why}: tensor of shape {shape} has no static spatial size, so the "
                "exact per-position fold cannot be computed. Build the model with a "
                "static input shape (e.g. keras.Input((224, 224, 3))) or pass "
                "fold='bias' to accept the paper's approximate bias fold."
            )
        return (1,) + tuple(int(d) for d in shape[1:])

    def as_map(self, c: Constants, t: TensorId, why: str) -> np.ndarray:
        return np.broadcast_to(c.value, self.full_shape(t, why)).copy()

    def pointwise_constants(self, call: LayerCall, src: Constants | None) -> Constants | None:
        layer = call.layer
        out_t = call.outputs[0]
        if isinstance(layer, L.BatchNormalization):
            return self.batchnorm_constants(call, src)
        value = _run_layer(call, [src.value])
        mask = src.mask.copy()
        return Constants(mask, _as_rank(value, self.rank(out_t)))

    def batchnorm_constants(self, call: LayerCall, src: Constants | None) -> Constants | None:
        layer = call.layer
        w = self.width(call.outputs[0])
        rank = self.rank(call.outputs[0])
        zero_gamma = np.zeros(w, bool)
        if layer.scale:
            zero_gamma = keras.ops.convert_to_numpy(layer.gamma) == 0
        if src is None:
            if not zero_gamma.any():
                return None
            src = _no_constants(w, rank)
        mask = src.mask | zero_gamma
        x = np.where(src.mask, src.value, 0.0)
        return Constants(mask, _as_rank(batchnorm_inference(layer, x), rank))

    def depthwise_constants(self, call: LayerCall, src: Constants) -> Constants:
        layer = call.layer
        dm = layer.depth_multiplier
        value = self.linear_response(call, src, include_bias=True)
        value = _apply_activation(layer, value)
        return Constants(np.repeat(src.mask, dm), value)

    def mixing_constants(self, call: LayerCall, src: Constants) -> None:
        if getattr(call.layer, "groups", 1) != 1:
            return
        value = self.linear_response(call, src, include_bias=True)
        value = _apply_activation(call.layer, value)
        w = self.width(call.outputs[0])
        self.constants[call.outputs[0]] = Constants(np.ones(w, bool), value)

    def linear_response(self, call: LayerCall, src: Constants, include_bias: bool) -> np.ndarray:
        """The layer's pre-activation output for the constant input ``src``."""
        spatial = None
        if src.uniform and _has_padding_effect(call.layer) and np.any(src.value != 0):
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

    def spatial_constants(self, call: LayerCall, src: Constants) -> Constants:
        layer = call.layer
        rank_out = self.rank(call.outputs[0])
        if not src.uniform:
            value = _run_layer(call, [src.value])
            return Constants(src.mask.copy(), _as_rank(value, rank_out))
        if _is_zero_padding(layer):
            if not np.any(src.value != 0):
                return Constants(src.mask.copy(), src.value.copy())
            if self.fold == "bias":
                self.notes.append(
                    f"'{call.name}': zero padding of a constant ignored (bias fold)"
                )
                return Constants(src.mask.copy(), src.value.copy())
        elif _keeps_uniform(layer):
            # Pooling, cropping and upsampling map a uniform map to itself (Keras'
            # 'same' average pooling excludes the padding, max pooling pads -inf).
            return Constants(src.mask.copy(), _as_rank(src.value, rank_out))
        x = self.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        return Constants(src.mask.copy(), _as_rank(_run_layer(call, [x]), rank_out))

    def merge_constants(self, call: LayerCall, ins: list[Constants | None]) -> Constants | None:
        out_t = call.outputs[0]
        w = self.width(out_t)
        rank = self.rank(out_t)
        filled = [c if c is not None else _no_constants(len(self.raw[t]), self.rank(t))
                  for c, t in zip(ins, call.inputs)]
        masks = [np.broadcast_to(c.mask, (w,)) for c in filled]
        mask = np.logical_and.reduce(masks)
        if self.is_multiply(call):
            # a channel that is constant 0 in one factor is 0 in the product
            for c in filled:
                v = c.value
                all_zero = np.all(v == 0, axis=tuple(range(v.ndim - 1)))
                mask = mask | np.broadcast_to(c.mask & all_zero, (w,))
        if not mask.any():
            return None
        values = [_as_rank(c.value, rank) for c in filled]
        value = _run_layer(call, values)
        return Constants(mask, _as_rank(value, rank))

    def concat_constants(self, call: LayerCall, ins: list[Constants | None]) -> Constants:
        rank = self.rank(call.outputs[0])
        filled = [c if c is not None else _no_constants(len(self.raw[t]), self.rank(t))
                  for c, t in zip(ins, call.inputs)]
        values = [_as_rank(c.value, rank) for c in filled]
        spatial = np.broadcast_shapes(*[v.shape[:-1] for v in values])
        values = [np.broadcast_to(v, spatial + v.shape[-1:]) for v in values]
        return Constants(np.concatenate([c.mask for c in filled]),
                         np.concatenate(values, axis=-1))

    def reshape_constants(self, call: LayerCall, src: Constants) -> Constants:
        out_t = call.outputs[0]
        out_ids = self.raw[out_t]
        in_ids = self.raw[call.inputs[0]]
        c_in, c_out = len(in_ids), len(out_ids)
        layer = call.layer
        if isinstance(layer, L.Permute):
            perm = (0,) + tuple(layer.dims)
            return Constants(src.mask.copy(), np.transpose(src.value, perm))
        mask = np.tile(src.mask, c_out // c_in)
        if src.uniform and c_out == c_in:
            return Constants(mask, src.value.reshape((1,) * (self.rank(out_t) - 1) + (c_out,)))
        x = self.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        return Constants(mask, x.reshape(self.full_shape(out_t, f"Layer '{call.name}'")))


def batchnorm_inference(layer: Any, x: np.ndarray) -> np.ndarray:
    """A BatchNormalization (last axis) in inference mode, in float64 numpy.

    With γ = 0 the output is exactly β, whatever ``x`` is (finite).
    """
    w = layer.moving_mean.shape[0]
    mean = _numpy_weight(layer.moving_mean)
    var = _numpy_weight(layer.moving_variance)
    gamma = _numpy_weight(layer.gamma) if layer.scale else np.ones(w)
    beta = _numpy_weight(layer.beta) if layer.center else np.zeros(w)
    scale = gamma / np.sqrt(var + layer.epsilon)
    return (np.asarray(x, np.float64) - mean) * scale + beta


def _is_zero_padding(layer: Any) -> bool:
    return isinstance(layer, (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D))


def _keeps_uniform(layer: Any) -> bool:
    uniform_types = tuple(
        getattr(L, n) for n in (
            "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
            "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
            "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
            "GlobalAveragePooling2D", "GlobalAveragePooling3D", "Cropping1D",
            "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
            "UpSampling3D",
        )
    )
    return isinstance(layer, uniform_types)


def _as_rank(value: np.ndarray, rank: int) -> np.ndarray:
    """Reshape a uniform value to ``rank`` dims (pooling drops spatial axes)."""
    value = np.asarray(value, np.float64)
    if value.ndim == rank:
        return value
    if all(d == 1 for d in value.shape[1:-1]):
        return value.reshape((1,) * (rank - 1) + value.shape[-1:])
    raise ValueError(f"cannot bring a constant of shape {value.shape} to rank {rank}")


def _run_layer(call: LayerCall, values: list[np.ndarray]) -> np.ndarray:
    """Run the call's layer eagerly (inference mode) on constant arrays.

    ``values`` are the arrays for ``call.inputs``, in order.
    """
    layer = call.layer
    tensors = {
        t: keras.ops.convert_to_tensor(np.asarray(v, "float32"))
        for t, v in zip(call.inputs, values)
    }
    args, kwargs = call.call_arguments(tensors)
    if isinstance(layer, keras.layers.Layer) and "training" in _call_params(layer):
        kwargs["training"] = False
    out = layer(*args, **kwargs)
    return np.asarray(keras.ops.convert_to_numpy(out), np.float64)


def _call_params(layer: Any) -> tuple[str, ...]:
    import inspect

    cache = _CALL_PARAMS
    key = type(layer)
    if key not in cache:
        try:
            cache[key] = tuple(inspect.signature(layer.call).parameters)
        except (TypeError, ValueError):
            cache[key] = ()
    return cache[key]


_CALL_PARAMS: dict[type, tuple[str, ...]] = {}


def _apply_activation(layer: Any, value: np.ndarray) -> np.ndarray:
    fn = getattr(layer, "activation", None)
    if fn is None or _activation_name(fn) == "linear":
        return value
    out = fn(keras.ops.convert_to_tensor(value.astype("float32")))
    return np.asarray(keras.ops.convert_to_numpy(out), np.float64)


# --- linear responses (shared with surgery) ---------------------------------------
def _kernel_size(layer: Any) -> tuple[int, ...]:
    return tuple(getattr(layer, "kernel_size", ()) or ())


def is_transposed_conv(layer: Any) -> bool:
    return isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose))


def _has_padding_effect(layer: Any) -> bool:
    """Whether the layer can make a uniform input non-uniform (zero padding; for
    transposed convs also the borders and the stride pattern of the taps)."""
    if is_transposed_conv(layer):
        return any(k > 1 for k in _kernel_size(layer)) or any(s > 1 for s in layer.strides)
    padding = getattr(layer, "padding", "valid")
    if padding == "valid" or isinstance(layer, L.Dense):
        return False
    dilation = getattr(layer, "dilation_rate", (1,) * len(_kernel_size(layer)))
    if isinstance(dilation, int):
        dilation = (dilation,) * len(_kernel_size(layer))
    return any((k - 1) * d > 0 for k, d in zip(_kernel_size(layer), dilation))


def _numpy_weight(variable: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def linear_response(layer: Any, value: np.ndarray,
                    spatial_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The bias-free, pre-activation output of a conv / depthwise / separable /
    dense ``layer`` for a constant input ``value`` (float64).

    ``value`` is either uniform over space (shape ``(1, 1, ..., C)``) or a full
    map (``(1, H, W, C)``). A uniform value without ``spatial_shape`` gives the
    interior response (uniform too); with ``spatial_shape`` (the input's
    static spatial size) the exact per-position response, zero padding
    included. Maps are run through the layer's own strides/padding/dilation.

    Example:

    >>> import keras, numpy as np
    >>> conv = keras.layers.Conv2D(1, 3, padding="same", use_bias=False)
    >>> conv.build((None, 4, 4, 1))
    >>> _ = conv.kernel.assign(np.ones((3, 3, 1, 1)))
    >>> linear_response(conv, np.ones((1, 1, 1, 1)))[0, 0, 0].tolist()
    [9.0]
    >>> linear_response(conv, np.ones((1, 1, 1, 1)), (4, 4))[0, :2, :2, 0].tolist()
    [[4.0, 6.0], [6.0, 9.0]]
    """
    value = np.asarray(value, np.float64)
    uniform = all(d == 1 for d in value.shape[1:-1])
    if isinstance(layer, L.Dense):
        return np.tensordot(value, _numpy_weight(layer.kernel), axes=[[-1], [0]])
    if uniform and (spatial_shape is None or not _has_padding_effect(layer)):
        return _interior_response(layer, value)
    if uniform and is_transposed_conv(layer):
        return _conv_map(layer, np.broadcast_to(value, (1,) + tuple(spatial_shape)
                                                + value.shape[-1:]))
    if uniform:
        return _uniform_response_map(layer, value.reshape(-1), tuple(spatial_shape))
    if is_transposed_conv(layer):
        return _conv_map(layer, value)
    if all(k == 1 for k in _kernel_size(layer)):
        strided = value[(slice(None),) + tuple(slice(None, None, s) for s in layer.strides)]
        return _interior_response(layer, strided)
    return _conv_map(layer, value)


def _effective_kernels(layer: Any, channel_value: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Kernel taps already multiplied by the constant input: ``(*k, C_out)``.

    For a separable conv, the depthwise part and the pointwise matrix.
    Only the input channels with a nonzero value are read.
    """
    nz = np.flatnonzero(channel_value)
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        k = _numpy_weight(layer.kernel)
        return (k * channel_value[:, None]).reshape(k.shape[:-2] + (-1,)), None
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        dw = _numpy_weight(layer.depthwise_kernel)
        pw = _numpy_weight(layer.pointwise_kernel)
        taps = (dw * channel_value[:, None]).reshape(dw.shape[:-2] + (-1,))
        return taps, pw.reshape(pw.shape[-2:])
    k = keras.ops.convert_to_numpy(layer.kernel)[..., nz, :].astype(np.float64)
    return np.tensordot(k, channel_value[nz], axes=[[-2], [0]]), None


def _interior_response(layer: Any, value: np.ndarray) -> np.ndarray:
    """Response where every kernel tap reads ``value`` (uniform, or a map read
    by a 1x1 kernel)."""
    lead = value.shape[:-1]
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        k = _numpy_weight(layer.kernel)
        summed = k.sum(axis=tuple(range(k.ndim - 2)))  # (C, dm)
        return (value[..., :, None] * summed).reshape(lead + (-1,))
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        dw = _numpy_weight(layer.depthwise_kernel)
        pw = _numpy_weight(layer.pointwise_kernel)
        summed = dw.sum(axis=tuple(range(dw.ndim - 2)))
        mid = (value[..., :, None] * summed).reshape(lead + (-1,))
        return np.tensordot(mid, pw.reshape(pw.shape[-2:]), axes=[[-1], [0]])
    nz = np.flatnonzero(np.any(value.reshape(-1, value.shape[-1]) != 0, axis=0))
    if is_transposed_conv(layer):
        # (*k, C_out, C_in): an interior output position receives, on average,
        # 1 / prod(strides) of the taps (exact for stride 1)
        k = _numpy_weight(layer.kernel)[..., nz]
        summed = k.sum(axis=tuple(range(k.ndim - 2))) / float(np.prod(layer.strides))
        return np.tensordot(value[..., nz], summed, axes=[[-1], [1]])
    k = keras.ops.convert_to_numpy(layer.kernel)[..., nz, :].astype(np.float64)
    summed = k.sum(axis=tuple(range(k.ndim - 2)))  # (nz, C_out)
    return np.tensordot(value[..., nz], summed, axes=[[-1], [0]])


def _tap_masks(layer: Any, spatial_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Per spatial axis, ``(out, k)``: whether tap ``a`` of output ``i`` reads
    inside the input (TensorFlow's 'same' / Keras' 'causal' padding)."""
    masks = []
    dilation = layer.dilation_rate
    for axis, (size, k, s) in enumerate(zip(spatial_shape, _kernel_size(layer), layer.strides)):
        d = dilation[axis] if isinstance(dilation, (tuple, list)) else dilation
        extent = (k - 1) * d + 1
        if layer.padding == "valid":
            out, before = (size - extent) // s + 1, 0
        elif layer.padding == "causal":
            out, before = -(-size // s), (k - 1) * d
        else:  # same
            out = -(-size // s)
            before = max((out - 1) * s + extent - size, 0) // 2
        pos = np.arange(out)[:, None] * s - before + np.arange(k)[None, :] * d
        masks.append(((pos >= 0) & (pos < size)).astype(np.float64))
    return masks


def _uniform_response_map(layer: Any, channel_value: np.ndarray,
                          spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Exact per-position response to a uniform input, without a convolution:
    the valid taps of an output position are a product of per-axis intervals."""
    taps, pointwise = _effective_kernels(layer, channel_value)
    out = taps
    masks = _tap_masks(layer, spatial_shape)
    # contract one spatial axis at a time: (k1, ..., kn, O) -> (o1, ..., on, O)
    for axis, mask in enumerate(masks):
        out = np.tensordot(mask, out, axes=[[1], [axis]])  # new axis first
        out = np.moveaxis(out, 0, axis)
    if pointwise is not None:
        out = out @ pointwise
    return out[None]


def _conv_map(layer: Any, value: np.ndarray) -> np.ndarray:
    """Run the layer's convolution (no bias) on a map, in float64."""
    ops = keras.ops
    kernel = depthwise = pointwise = None
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        depthwise = _numpy_weight(layer.kernel)
    elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        depthwise = _numpy_weight(layer.depthwise_kernel)
        pointwise = _numpy_weight(layer.pointwise_kernel)
    else:
        kernel = _numpy_weight(layer.kernel)
    x = ops.convert_to_tensor(value, "float64")
    padding = layer.padding
    if padding == "causal":
        k = _kernel_size(layer)[0]
        d = layer.dilation_rate[0] if isinstance(layer.dilation_rate, tuple) else layer.dilation_rate
        x = ops.pad(x, [[0, 0], [(k - 1) * d, 0], [0, 0]])
        padding = "valid"
    common = dict(strides=layer.strides, padding=padding,
                  data_format="channels_last", dilation_rate=layer.dilation_rate)
    if is_transposed_conv(layer):
        out = ops.conv_transpose(x, ops.convert_to_tensor(kernel, "float64"),
                                 output_padding=layer.output_padding, **common)
    elif kernel is not None:
        out = ops.conv(x, ops.convert_to_tensor(kernel, "float64"), **common)
    elif pointwise is None:
        out = ops.depthwise_conv(x, ops.convert_to_tensor(depthwise, "float64"), **common)
    else:
        out = ops.separable_conv(x, ops.convert_to_tensor(depthwise, "float64"),
                                 ops.convert_to_tensor(pointwise, "float64"), **common)
    return np.asarray(ops.convert_to_numpy(out), np.float64)


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
