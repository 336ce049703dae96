"""Per-channel layers over space (pooling, padding, cropping, upsampling, resizing, augmentation).

Channel ``k`` stays channel ``k``. A spatially uniform constant stays uniform
through pooling, cropping and upsampling; zero padding turns it into a map
(exactly, with static spatial shapes) unless ``fold="bias"``.

The same kind serves the ``keras.ops`` nodes the registry declares spatial
(only for the arguments stated there, :mod:`.registry`):

* ``keras.ops.pad`` of spatial axes: with ``mode="constant"`` and value 0 it is
  treated exactly like ``ZeroPadding``; another constant value makes a map
  (computed by running the op, exact); ``"reflect"`` / ``"symmetric"`` keep a
  uniform constant uniform;
* ``keras.ops.mean`` / ``max`` / ``min`` over spatial axes keep a uniform
  constant uniform (like global pooling), with or without ``keepdims``;
* ``keras.ops.image.resize`` (channels_last) and the ``Resizing`` layer: with
  ``"nearest"`` or ``"bilinear"`` interpolation and no ``pad_to_aspect_ratio``
  a uniform constant stays uniform (the weights of every output pixel sum to
  1); otherwise the constant map is computed by running the op (exact, static
  spatial sizes needed). ``CenterCrop`` crops (or, for a smaller input, resizes
  bilinearly): a uniform constant stays uniform.

Keras' image augmentation layers inside a model (``RandomFlip``,
``RandomRotation``, ``RandomZoom``, ``RandomContrast`` ... :data:`AUGMENTATION_LAYERS`,
the ``data_augmentation = keras.Sequential([...])`` of the Keras tutorials) are
the identity at inference and keep channels apart in training: they are
spatial, and a constant goes through them unchanged (the inference function,
which is what ``prune_model`` keeps). During training a constant channel would
have been shifted or moved like the others; the folded bias is not (a
training-time difference only, like Dropout's). Augmentations that mix colour
channels (``RandomHue``, ``RandomGrayscale`` ... :data:`COLOR_MIXING_AUGMENTATION_LAYERS`)
are opaque: their channels are kept (they read the image, whose channels are
never removed anyway).

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.MaxPooling2D()).name
'spatial'
>>> kind_of_layer(keras.layers.RandomFlip()).name, kind_of_layer(keras.layers.RandomGrayscale()).name
('spatial', 'opaque')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_gamma_prune.analysis.constants import (
    Constants,
    as_rank,
    is_zero_padding,
    keeps_uniform,
)
from tf_gamma_prune.analysis.kinds.base import ChannelwiseKind, run_exact
from tf_gamma_prune.analysis.layer_graph import LayerCall


AUGMENTATION_LAYERS = (
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomCrop",
    "RandomShear", "RandomPerspective", "RandomElasticTransform", "RandomErasing",
    "RandomGaussianBlur", "RandomSharpness", "RandomContrast", "RandomBrightness",
    "RandomInvert", "RandomPosterization", "Solarization",
)
"""Keras image augmentation layers that are the identity at inference and keep channels apart in
training (tests check both on every one this Keras has)."""

COLOR_MIXING_AUGMENTATION_LAYERS = (
    "RandomHue", "RandomSaturation", "RandomGrayscale", "RandomColorJitter",
    "RandomColorDegeneration", "AugMix", "RandAugment", "AutoContrast", "Equalization",
)
"""Augmentation and colour layers that mix channels (or rescale each by its own range): opaque."""


def op_name(layer: Any) -> str | None:
    """The class name of a ``keras.ops`` operation node (``None`` for a layer)."""
    cls = type(layer)
    return cls.__name__ if cls.__module__.startswith("keras.src.ops") else None


def pad_argument(call: LayerCall) -> Any:
    """The ``constant_values`` argument of a ``keras.ops.pad`` node (``None`` when unset)."""
    args, kwargs = list(call.node.arguments.args), dict(call.node.arguments.kwargs)
    if "constant_values" in kwargs:
        return kwargs["constant_values"]
    return args[1] if len(args) > 1 else None


def _zero_pads(call: LayerCall) -> bool:
    """A ZeroPadding layer or a ``keras.ops.pad`` node padding with zeros."""
    layer = call.layer
    if is_zero_padding(layer):
        return True
    if op_name(layer) != "Pad" or layer.mode != "constant":
        return False
    value = pad_argument(call)
    return value is None or not np.any(np.asarray(value) != 0)


def _keeps_uniform(call: LayerCall) -> bool:
    """The layer maps a spatially uniform input to itself (per channel)."""
    layer = call.layer
    name = op_name(layer)
    if name == "Resize" or type(layer).__name__ == "Resizing":
        return layer.interpolation in ("nearest", "bilinear") and not layer.pad_to_aspect_ratio
    if name is None:
        cls = type(layer).__name__
        return keeps_uniform(layer) or cls == "CenterCrop" or cls in AUGMENTATION_LAYERS
    if name == "Pad":
        return layer.mode in ("reflect", "symmetric")
    return name in ("Mean", "Max", "Min")


class SpatialKind(ChannelwiseKind):
    """Per channel over space, no weights."""

    name = "spatial"

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        src = ins[0]
        if src is None or self.changes_width(b, call):
            return None
        rank_out = b.rank(call.outputs[0])
        if not src.uniform:
            return Constants(src.mask.copy(), as_rank(run_exact(call, [src.value]), rank_out))
        if _zero_pads(call):
            if not np.any(src.value != 0):
                return Constants(src.mask.copy(), src.value.copy())
            if b.fold == "bias":
                b.notes.append(f"'{call.name}': zero padding of a constant ignored (bias fold)")
                return Constants(src.mask.copy(), src.value.copy())
        elif _keeps_uniform(call):
            # Keras' 'same' average pooling excludes the padding, max pooling pads -inf.
            return Constants(src.mask.copy(), as_rank(src.value, rank_out))
        x = b.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        return Constants(src.mask.copy(), as_rank(run_exact(call, [x]), rank_out))
