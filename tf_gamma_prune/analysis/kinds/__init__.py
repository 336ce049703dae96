"""Layer kinds: each kind of layer's channel rules in one module.

========== ==================================================== ==================
kind       layers                                               module
========== ==================================================== ==================
mixing     Conv*, SeparableConv*, Conv*Transpose, Dense         :mod:`.mixing`
depthwise  DepthwiseConv1D/2D                                   :mod:`.depthwise`
batchnorm  BatchNormalization                                   :mod:`.pointwise`
pointwise  activations, Dropout, Rescaling, Normalization ...   :mod:`.pointwise`
spatial    pooling, padding, cropping, resizing, augmentation   :mod:`.spatial`
merge      Add, Multiply, Average, Maximum, ...                 :mod:`.merge`
concat     Concatenate (channel axis)                           :mod:`.concat`
reshape    Flatten, Reshape, Permute                            :mod:`.reshape`
getitem    x[..., a:b], x[:, 1:-1] slicing (GetItem nodes)      :mod:`.getitem`
split      keras.ops.split(x, 2, axis=-1) (Split nodes)         :mod:`.split`
opaque     Softmax, LayerNormalization, GroupNormalization ...  :mod:`.opaque`
constant   ConstantFeature                                      :mod:`.constant`
========== ==================================================== ==================

``keras.ops`` nodes in functional models (``keras.ops.pad``, ``mean``,
``concatenate``, ``reshape``, ``clip`` ...) get one of these kinds too, by the
op and its arguments (the table in :mod:`.registry`); arguments a kind's rule
does not cover make the node opaque, and an op without a rule is kept whole
(:class:`~.opaque.KeptWholeKind`), as are Keras' recurrent, attention and
wrapper layers (``registry.KEPT_WHOLE_LAYERS``). With ``unknown="opaque"``
(``prune_model(..., unknown_layers="opaque")``) a layer class the registry does
not know is kept whole (:class:`~.opaque.KeptWholeKind`) instead of raising.

To support a new layer: register its class as a named kind, or subclass
:class:`LayerKind` (its three jobs are described in :mod:`.base`) and register
an instance: ``register_layer_kind(MyLayer, MyKind())``.

>>> import keras
>>> kind_of_layer(keras.layers.Conv2D(4, 3))
<MixingKind 'mixing'>
"""

from tf_gamma_prune.analysis.kinds.base import ChannelwiseKind, LayerKind
from tf_gamma_prune.analysis.kinds.registry import (
    BATCHNORM,
    BATCHNORM_KIND,
    CONCAT,
    CONCAT_KIND,
    CONSTANT,
    CONSTANT_KIND,
    DEPTHWISE,
    DEPTHWISE_KIND,
    GETITEM,
    GETITEM_KIND,
    KEPT_WHOLE_KIND,
    MERGE,
    MERGE_KIND,
    MIXING,
    MIXING_KIND,
    OPAQUE,
    OPAQUE_KIND,
    POINTWISE,
    POINTWISE_KIND,
    RESHAPE,
    RESHAPE_KIND,
    SPATIAL,
    SPATIAL_KIND,
    SPLIT,
    SPLIT_KIND,
    UNKNOWN_LAYERS,
    kind_of_layer,
    layer_kind,
    register_layer_kind,
)

__all__ = [
    "BATCHNORM", "BATCHNORM_KIND", "CONCAT", "CONCAT_KIND", "CONSTANT", "CONSTANT_KIND",
    "ChannelwiseKind", "DEPTHWISE", "DEPTHWISE_KIND", "GETITEM", "GETITEM_KIND",
    "KEPT_WHOLE_KIND", "LayerKind", "MERGE", "MERGE_KIND", "MIXING", "MIXING_KIND", "OPAQUE",
    "OPAQUE_KIND", "POINTWISE", "POINTWISE_KIND", "RESHAPE", "RESHAPE_KIND", "SPATIAL",
    "SPATIAL_KIND", "SPLIT", "SPLIT_KIND", "UNKNOWN_LAYERS", "kind_of_layer", "layer_kind",
    "register_layer_kind",
]
