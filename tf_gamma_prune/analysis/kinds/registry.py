"""Which kind each layer is: the built-in table, keras.ops nodes, and user registrations.

:func:`layer_kind` resolves one call: a class registered with
:func:`register_layer_kind` first, then the built-in table, then the
``keras.ops`` operations that appear as nodes in functional models, then the
kind's own per-call refinement (:meth:`LayerKind.refine`).

``keras.ops`` nodes (:func:`_op_kind`). Each rule holds only for the
arguments stated; other arguments make the node ``opaque`` (every channel it
reads or writes is kept, so it is rebuilt unchanged and stays exact):

* ``add``, ``subtract``, ``multiply``, ``divide``, ``maximum``, ``minimum``,
  ``power``: ``merge`` with two tensors (channel ``k`` of both is one channel);
  ``pointwise`` with one tensor and scalar operands (``maximum(x, 0.5)``);
* unary elementwise ops (``relu``, ``sigmoid``, ``abs``, ``exp``, ``cast`` ...):
  ``pointwise``;
* ``clip``: ``pointwise`` with scalar bounds (per-channel arrays: opaque);
* ``pad``: ``spatial`` when neither the batch nor the channel axis is padded
  and the mode is ``"constant"`` (a scalar; 0 is treated exactly like
  ``ZeroPadding``, i.e. exact border maps, another value gives maps too),
  ``"reflect"`` or ``"symmetric"``;
* ``mean``, ``max``, ``min``, ``sum``: ``spatial`` when they reduce spatial axes
  only (not the batch or channel axis, not ``axis=None``), with or without
  ``keepdims`` (a sum's constant is computed by running it);
* ``concatenate``: ``concat`` over the last axis, ``merge`` over another
  non-batch axis (like the ``Concatenate`` layer), opaque over the batch axis;
* ``reshape``, ``transpose``, ``expand_dims``, ``squeeze``: ``reshape``, which
  follows the channels only where the batch axis provably stays first and the
  channel axis last and intact (:mod:`.reshape`) and pins them otherwise;
* ``x[key]`` slicing (``GetItem``): ``getitem`` for a static step-1 slice of the
  channel axis and/or static slices (or integers) of spatial axes, the batch
  axis whole (:mod:`.getitem`); opaque for any other key;
* ``split`` (several outputs): ``split`` along the channel axis or a spatial
  axis with a static int or static sorted split points (:mod:`.split`); opaque
  along the batch axis or with other arguments.

Keras' recurrent, attention, embedding and wrapper layers (:data:`KEPT_WHOLE_LAYERS`) are
always kept whole (see below), so the convolutional part around them prunes.

Any other ``keras.ops`` node (``stack``, ``einsum``, ``matmul``, ``sort``,
``softmax`` ...) is kept whole (:class:`~.opaque.KeptWholeKind`, named in the
report's notes): an op has no state, so re-running it on inputs whose channels
are all kept is exact.

Unknown layer classes raise :class:`UnsupportedLayerError`
unless ``unknown="opaque"`` (``prune_model(..., unknown_layers="opaque")``):
they are then kept whole (:class:`~.opaque.KeptWholeKind`: all their channels
kept, their weights copied unchanged) and named in the report's notes.

>>> import keras
>>> class Swish2(keras.layers.Layer):
...     def call(self, x):
...         return x * keras.ops.sigmoid(2 * x)
>>> register_layer_kind(Swish2, "pointwise")
>>> kind_of_layer(Swish2()).name
'pointwise'
>>> kind_of_layer(keras.layers.LSTM(4)) is KEPT_WHOLE_KIND  # always kept whole
True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.kinds.concat import ConcatKind
from tf_gamma_prune.analysis.kinds.constant import ConstantKind
from tf_gamma_prune.analysis.kinds.depthwise import DepthwiseKind
from tf_gamma_prune.analysis.kinds.getitem import GetItemKind
from tf_gamma_prune.analysis.kinds.merge import MergeKind
from tf_gamma_prune.analysis.kinds.mixing import MixingKind
from tf_gamma_prune.analysis.kinds.opaque import KeptWholeKind, OpaqueKind
from tf_gamma_prune.analysis.kinds.pointwise import BatchNormKind, PointwiseKind
from tf_gamma_prune.analysis.kinds.reshape import ReshapeKind
from tf_gamma_prune.analysis.kinds.spatial import (
    AUGMENTATION_LAYERS,
    COLOR_MIXING_AUGMENTATION_LAYERS,
    SpatialKind,
    pad_argument,
)
from tf_gamma_prune.analysis.kinds.split import SplitKind
from tf_gamma_prune.analysis.layer_graph import LayerCall
from tf_gamma_prune.errors import ArgumentError, UnsupportedLayerError
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature

L = keras.layers

MIXING, DEPTHWISE, POINTWISE, BATCHNORM = "mixing", "depthwise", "pointwise", "batchnorm"
SPATIAL, MERGE, CONCAT, RESHAPE = "spatial", "merge", "concat", "reshape"
GETITEM, SPLIT = "getitem", "split"
OPAQUE, CONSTANT = "opaque", "constant"

MIXING_KIND, DEPTHWISE_KIND = MixingKind(), DepthwiseKind()
POINTWISE_KIND, BATCHNORM_KIND, SPATIAL_KIND = PointwiseKind(), BatchNormKind(), SpatialKind()
MERGE_KIND, CONCAT_KIND, RESHAPE_KIND = MergeKind(), ConcatKind(), ReshapeKind()
OPAQUE_KIND, CONSTANT_KIND = OpaqueKind(), ConstantKind()
KEPT_WHOLE_KIND = KeptWholeKind()
GETITEM_KIND, SPLIT_KIND = GetItemKind(), SplitKind()

KEPT_WHOLE_LAYERS = ("Embedding", "SimpleRNN", "LSTM", "GRU", "RNN", "Bidirectional",
                     "TimeDistributed", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
                     "MultiHeadAttention", "GroupQueryAttention", "Attention", "AdditiveAttention",
                     "EinsumDense")
"""Keras layers with weights that mix channels in ways the channel graph does not follow
(recurrences, attention, wrappers, einsum): always kept whole, like an unknown layer under
``unknown_layers="opaque"`` (every channel they read or write kept, weights copied unchanged,
named in the report's notes), so CNN-RNN, CNN-attention and text-CNN models prune around them."""

UNKNOWN_LAYERS = ("error", "opaque")
"""What :func:`layer_kind` does with a layer class it does not know: raise, or keep it whole."""

REGISTRABLE = {POINTWISE: POINTWISE_KIND, SPATIAL: SPATIAL_KIND, OPAQUE: OPAQUE_KIND}
"""The named kinds a user may register a layer class as."""

_BUILTIN_LAYERS = {
    MIXING_KIND: ("Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D", "Dense",
                  "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
    DEPTHWISE_KIND: ("DepthwiseConv1D", "DepthwiseConv2D"),
    BATCHNORM_KIND: ("BatchNormalization",),
    POINTWISE_KIND: ("Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Dropout",
                     "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                     "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
                     "Rescaling", "Normalization"),
    SPATIAL_KIND: ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
                   "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D",
                   "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAveragePooling1D",
                   "GlobalAveragePooling2D", "GlobalAveragePooling3D", "ZeroPadding1D",
                   "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
                   "UpSampling1D", "UpSampling2D", "UpSampling3D", "Resizing", "CenterCrop",
                   *AUGMENTATION_LAYERS),
    MERGE_KIND: ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"),
    CONCAT_KIND: ("Concatenate",),
    RESHAPE_KIND: ("Flatten", "Reshape", "Permute"),
    OPAQUE_KIND: ("Softmax", "LayerNormalization", "GroupNormalization", "UnitNormalization",
                  *COLOR_MIXING_AUGMENTATION_LAYERS),
    KEPT_WHOLE_KIND: KEPT_WHOLE_LAYERS,
}

# keras.ops operations that appear as nodes in functional models (see the module docstring).
_OP_BINARY = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum",
              "Power"}
_OP_UNARY = {"Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "Swish", "HardSilu", "HardSwish",
             "Gelu", "Tanh", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign", "Exp",
             "Negative", "Abs", "Absolute", "Square", "Sqrt", "Mish", "Celu", "LogSigmoid",
             "Log", "Log1p", "Expm1", "Reciprocal", "Rsqrt", "Erf", "Floor", "Ceil", "Round",
             "Sign", "Cast"}
_OP_REDUCE = {"Mean", "Max", "Min", "Sum"}
_OP_RESHAPE = {"Reshape", "Transpose", "ExpandDims", "Squeeze"}
_PAD_MODES = ("constant", "reflect", "symmetric")

_REGISTERED: dict[type, LayerKind] = {}


def _builtin_kinds() -> dict[type, LayerKind]:
    kinds: dict[type, LayerKind] = {}
    for kind, names in _BUILTIN_LAYERS.items():
        for name in names:
            cls = getattr(L, name, None)
            if cls is not None:
                kinds[cls] = kind
    kinds[BorderCorrection] = POINTWISE_KIND
    kinds[ConstantFeature] = CONSTANT_KIND
    try:  # keras.applications.InceptionResNetV2: inputs[0] + inputs[1] * scale
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

        kinds[CustomScaleLayer] = MERGE_KIND
    except ImportError:  # pragma: no cover - other Keras versions
        pass
    return kinds


_BUILTIN = _builtin_kinds()


def register_layer_kind(layer_class: type, kind: str | LayerKind) -> None:
    """Declare how a custom layer class treats channels.

    ``kind`` is one of ``"pointwise"`` (elementwise per channel and stateless
    per channel, e.g. a custom activation), ``"spatial"`` (per channel over
    space, no weights) or ``"opaque"`` (mixes channels: its input and output
    channels are never removed) — or an instance of your own
    :class:`~tf_gamma_prune.analysis.kinds.LayerKind` subclass, which carries
    all the layer's rules (channels, constants, rebuild).

    Example:

    >>> class Swish2(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x * keras.ops.sigmoid(2 * x)
    >>> register_layer_kind(Swish2, "pointwise")
    """
    if isinstance(kind, LayerKind):
        _REGISTERED[layer_class] = kind
        return
    if kind not in REGISTRABLE:
        raise ArgumentError(
            f"kind must be 'pointwise', 'spatial', 'opaque' or a LayerKind instance, got {kind!r}."
        )
    _REGISTERED[layer_class] = REGISTRABLE[kind]


def kind_of_layer(layer: Any) -> LayerKind | None:
    """The registered or built-in kind of a layer's class (``None``: unknown)."""
    cls = type(layer)
    return _REGISTERED.get(cls) or _BUILTIN.get(cls)


def layer_kind(call: LayerCall, unknown: str = "error") -> LayerKind:
    """The channel behaviour of one call.

    Args:
        call: the call.
        unknown: what to do with a layer class the registry does not know, and
            with a Lambda layer (a ``keras.ops`` operation without a rule is
            always kept whole): ``"error"``
            (default) raises; ``"opaque"`` keeps it whole
            (:data:`KEPT_WHOLE_KIND`: every channel it reads or writes is
            kept, its weights are copied unchanged, the report's notes name it).

    Raises:
        UnsupportedLayerError: Lambda layers and unknown layer classes (with
            ``unknown="error"``), channels_first layouts, BatchNormalization
            over another axis.
        ArgumentError: ``unknown`` is not ``"error"`` or ``"opaque"``.
    """
    if unknown not in UNKNOWN_LAYERS:
        raise ArgumentError(f"unknown_layers must be one of {UNKNOWN_LAYERS}, got {unknown!r}.")
    layer = call.layer
    cls = type(layer)
    if isinstance(layer, L.Lambda):
        if unknown == "opaque":
            return KEPT_WHOLE_KIND
        raise UnsupportedLayerError(
            f"Layer '{call.name}' is a Lambda layer: its Python function cannot be "
            "analysed, so its channels cannot be traced. Replace it with built-in "
            "layers or a custom layer class (declare it with "
            "tf_gamma_prune.register_layer_kind(cls, 'pointwise'|'spatial'|'opaque')), "
            "or pass unknown_layers=\"opaque\" to prune_model to keep it whole (all its "
            "channels kept, the rest of the model pruned)."
        )
    kind = kind_of_layer(layer)
    if kind is None and cls.__module__.startswith("keras.src.ops"):
        # a stateless op without a rule: re-run whole on channels kept whole, always exact
        kind = _op_kind(call) or KEPT_WHOLE_KIND
    if kind is None:
        if unknown == "opaque":
            return KEPT_WHOLE_KIND
        raise UnsupportedLayerError(
            f"Layer '{call.name}' has type {cls.__module__}.{cls.__name__}, which "
            "the channel graph does not know. Use built-in Keras layers, or declare "
            "the class with tf_gamma_prune.register_layer_kind(cls, kind) if it is "
            "elementwise ('pointwise'), per-channel spatial ('spatial') or should "
            "keep all its channels ('opaque'); or pass unknown_layers=\"opaque\" to "
            "prune_model to keep every unknown layer whole (all its channels and "
            "weights kept, named in the report's notes) and prune the rest."
        )
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        raise UnsupportedLayerError(
            f"Layer '{call.name}' ({cls.__name__}) uses data_format='channels_first'; "
            "only channels_last models are supported. Rebuild the model with "
            "channels_last (the Keras default)."
        )
    return kind.refine(call)


def _op_kind(call: LayerCall) -> LayerKind | None:
    """The kind of a ``keras.ops`` node (the table in the module docstring);
    ``None`` for an operation this module does not know."""
    op = call.layer
    name = type(op).__name__
    tensors = call.node.arguments.keras_tensors
    if name in _OP_BINARY:
        if len(tensors) == 2:
            return MERGE_KIND
        if len(tensors) == 1 and _scalar_operands(call):
            return POINTWISE_KIND
        return OPAQUE_KIND
    if name not in _OP_UNARY | _OP_REDUCE | _OP_RESHAPE | {"Clip", "Pad", "Concatenate",
                                                           "GetItem", "Split", "Resize"}:
        return None
    if name == "Concatenate":
        return CONCAT_KIND  # ConcatKind.refine reads op.axis like the layer's
    if name == "GetItem":
        return GETITEM_KIND  # GetItemKind.refine makes keys it cannot follow opaque
    if name == "Split":
        return SPLIT_KIND  # SplitKind.refine makes splits it cannot follow opaque
    if len(tensors) != 1 or len(call.outputs) != 1:
        return OPAQUE_KIND
    if name in _OP_UNARY:
        return POINTWISE_KIND
    if name == "Clip":
        scalar = all(np.size(v) == 1 for v in (op.x_min, op.x_max))
        return POINTWISE_KIND if scalar else OPAQUE_KIND
    rank = len(call.node.input_tensors[0].shape)
    if name == "Pad":
        return SPATIAL_KIND if _pads_space_only(call, rank) else OPAQUE_KIND
    if name == "Resize":  # per channel over space (channels_first is refused by layer_kind)
        return SPATIAL_KIND
    if name in _OP_REDUCE:
        axes = _axes(op.axis, rank)
        spatial = axes is not None and all(0 < a < rank - 1 for a in axes)
        if name != "Mean" and getattr(op, "initial", None) is not None:
            spatial = False
        return SPATIAL_KIND if spatial else OPAQUE_KIND
    return RESHAPE_KIND  # ReshapeKind pins what it cannot follow


def _axes(axis: Any, rank: int) -> tuple[int, ...] | None:
    """``axis`` (an int, a sequence or ``None``) as non-negative axes; ``None`` for all."""
    if axis is None:
        return None
    values = [axis] if np.ndim(axis) == 0 else list(axis)
    return tuple(int(a) % rank for a in values)


def _pads_space_only(call: LayerCall, rank: int) -> bool:
    """A ``keras.ops.pad`` that pads spatial axes only, in a mode that acts per channel."""
    op = call.layer
    if op.mode not in _PAD_MODES:
        return False
    try:
        widths = np.asarray(op.pad_width, dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        return False
    if len(widths) == 1:
        widths = np.repeat(widths, rank, axis=0)
    if len(widths) != rank:
        return False
    values = pad_argument(call)
    if op.mode != "constant" and values is not None:
        return False
    if values is not None and np.size(values) != 1:
        return False  # per-position constants: not a spatial rule
    return not widths[0].any() and not widths[-1].any()


def _scalar_operands(call: LayerCall) -> bool:
    args = list(call.node.arguments.args) + list(call.node.arguments.kwargs.values())
    return all(isinstance(arg, keras.KerasTensor) or np.size(arg) == 1 for arg in args)
