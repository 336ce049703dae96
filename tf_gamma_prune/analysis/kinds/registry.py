"""Which kind each layer is: the built-in table, keras.ops nodes, and user registrations.

:func:`layer_kind` resolves one call: a class registered with
:func:`register_layer_kind` first, then the built-in table, then the
``keras.ops`` operations that appear as nodes in functional models
(``keras.ops.add(a, b)``, ``keras.ops.relu(x)`` ...), then the kind's own
per-call refinement (:meth:`LayerKind.refine`).

>>> import keras
>>> class Swish2(keras.layers.Layer):
...     def call(self, x):
...         return x * keras.ops.sigmoid(2 * x)
>>> register_layer_kind(Swish2, "pointwise")
>>> kind_of_layer(Swish2()).name
'pointwise'
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.kinds.concat import ConcatKind
from tf_gamma_prune.analysis.kinds.constant import ConstantKind
from tf_gamma_prune.analysis.kinds.depthwise import DepthwiseKind
from tf_gamma_prune.analysis.kinds.merge import MergeKind
from tf_gamma_prune.analysis.kinds.mixing import MixingKind
from tf_gamma_prune.analysis.kinds.opaque import OpaqueKind
from tf_gamma_prune.analysis.kinds.pointwise import BatchNormKind, PointwiseKind
from tf_gamma_prune.analysis.kinds.reshape import ReshapeKind
from tf_gamma_prune.analysis.kinds.spatial import SpatialKind
from tf_gamma_prune.analysis.layer_graph import LayerCall
from tf_gamma_prune.errors import ArgumentError, UnsupportedLayerError
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature

L = keras.layers

MIXING, DEPTHWISE, POINTWISE, BATCHNORM = "mixing", "depthwise", "pointwise", "batchnorm"
SPATIAL, MERGE, CONCAT, RESHAPE = "spatial", "merge", "concat", "reshape"
OPAQUE, CONSTANT = "opaque", "constant"

MIXING_KIND, DEPTHWISE_KIND = MixingKind(), DepthwiseKind()
POINTWISE_KIND, BATCHNORM_KIND, SPATIAL_KIND = PointwiseKind(), BatchNormKind(), SpatialKind()
MERGE_KIND, CONCAT_KIND, RESHAPE_KIND = MergeKind(), ConcatKind(), ReshapeKind()
OPAQUE_KIND, CONSTANT_KIND = OpaqueKind(), ConstantKind()

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
                   "UpSampling1D", "UpSampling2D", "UpSampling3D"),
    MERGE_KIND: ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"),
    CONCAT_KIND: ("Concatenate",),
    RESHAPE_KIND: ("Flatten", "Reshape", "Permute"),
    OPAQUE_KIND: ("Softmax", "LayerNormalization", "GroupNormalization", "UnitNormalization"),
}

# keras.ops operations that appear as nodes in functional models.
_OP_BINARY = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum"}
_OP_UNARY = {"Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "Swish", "HardSilu", "HardSwish",
             "Gelu", "Tanh", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign", "Exp",
             "Negative", "Abs", "Square", "Sqrt", "Mish", "Celu"}

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


def layer_kind(call: LayerCall) -> LayerKind:
    """The channel behaviour of one call.

    Raises:
        UnsupportedLayerError: Lambda layers, unknown layer types, channels_first
            layouts, BatchNormalization over another axis.
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
    kind = kind_of_layer(layer)
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
    return kind.refine(call)


def _op_kind(call: LayerCall) -> LayerKind | None:
    name = type(call.layer).__name__
    tensors = call.node.arguments.keras_tensors
    if name in _OP_BINARY:
        if len(tensors) == 2:
            return MERGE_KIND
        if len(tensors) == 1 and _scalar_operands(call):
            return POINTWISE_KIND
        return OPAQUE_KIND
    if name in _OP_UNARY and len(tensors) == 1:
        return POINTWISE_KIND
    return None


def _scalar_operands(call: LayerCall) -> bool:
    args = list(call.node.arguments.args) + list(call.node.arguments.kwargs.values())
    return all(isinstance(arg, keras.KerasTensor) or np.size(arg) == 1 for arg in args)
