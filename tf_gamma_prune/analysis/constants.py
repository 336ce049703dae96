"""Constant channels: how they are represented and computed.

A channel is *constant* when it holds the same values for every example (a
BatchNormalization channel with γ = 0 outputs β, an activation of a constant is
constant, ...). :class:`Constants` holds the constant channels of one tensor
as a mask and a value broadcastable to the tensor (batch of one): per channel
where that is exact, a full map where zero padding makes it vary over space.
Each layer kind says how constants pass through it
(:mod:`tf_gamma_prune.analysis.kinds`); this module holds what they share.

>>> import numpy as np
>>> c = Constants(np.array([True, False]), np.array([[[[0.5, 0.0]]]]))
>>> c.uniform, as_rank(c.value, 2).shape
(True, (1, 2))
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.layer_graph import LayerCall

L = keras.layers


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


def no_constants(width: int, rank: int) -> Constants:
    """A tensor of ``width`` channels none of which is constant."""
    return Constants(np.zeros(width, bool), np.zeros((1,) * (rank - 1) + (width,)))


def is_zero_padding(layer: Any) -> bool:
    """A ZeroPadding layer (it makes a uniform constant non-uniform at the borders)."""
    return isinstance(layer, (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D))


def keeps_uniform(layer: Any) -> bool:
    """Pooling, cropping and upsampling map a spatially uniform input to itself."""
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


def as_rank(value: np.ndarray, rank: int) -> np.ndarray:
    """Reshape a uniform value to ``rank`` dims (pooling drops spatial axes)."""
    value = np.asarray(value, np.float64)
    if value.ndim == rank:
        return value
    if all(d == 1 for d in value.shape[1:-1]):
        return value.reshape((1,) * (rank - 1) + value.shape[-1:])
    raise ValueError(f"cannot bring a constant of shape {value.shape} to rank {rank}")


def accepts_training(layer: Any) -> bool:
    """Whether ``layer.call`` takes a ``training`` argument (cached per class)."""
    return isinstance(layer, keras.layers.Layer) and "training" in _call_params(layer)


def run_layer(call: LayerCall, values: list[np.ndarray]) -> np.ndarray:
    """Run the call's layer eagerly (inference mode) on constant arrays.

    ``values`` are the arrays for ``call.inputs``, in order.
    """
    layer = call.layer
    tensors = {
        t: keras.ops.convert_to_tensor(np.asarray(v, "float32"))
        for t, v in zip(call.inputs, values)
    }
    args, kwargs = call.call_arguments(tensors)
    if accepts_training(layer):
        kwargs["training"] = False
    out = layer(*args, **kwargs)
    return np.asarray(keras.ops.convert_to_numpy(out), np.float64)


def _call_params(layer: Any) -> tuple[str, ...]:
    cache = _CALL_PARAMS
    key = type(layer)
    if key not in cache:
        try:
            cache[key] = tuple(inspect.signature(layer.call).parameters)
        except (TypeError, ValueError):
            cache[key] = ()
    return cache[key]


_CALL_PARAMS: dict[type, tuple[str, ...]] = {}
