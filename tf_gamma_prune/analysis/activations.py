"""Activation functions as the channel analysis sees them: their name, whether they mix channels.

One place for what used to be written three times (graph, surgery, penalties).

>>> import keras
>>> activation_name(keras.activations.relu), activation_name(None)
('relu', 'linear')
>>> activation_mixes_channels(keras.activations.softmax)
True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

CHANNEL_ACTIVATIONS = frozenset({"softmax", "log_softmax", "glu"})
"""Activations that normalise or gate across the channel axis."""


def activation_name(fn: Any) -> str:
    """The lower-case name of an activation function (``None`` → ``"linear"``).

    Functions give their ``__name__``; other callables (a layer used as an
    activation) their class name.
    """
    if fn is None:
        return "linear"
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return str(name).lower()


def layer_activation_name(layer: Any) -> str:
    """The name of ``layer.activation`` (``"linear"`` for layers without one)."""
    return activation_name(getattr(layer, "activation", None))


def activation_mixes_channels(fn: Any) -> bool:
    """Whether an activation function normalises across channels (softmax)."""
    return activation_name(fn) in CHANNEL_ACTIVATIONS


def apply_activation(layer: Any, value: np.ndarray) -> np.ndarray:
    """``layer.activation(value)`` in float64 (the identity for linear layers)."""
    fn = getattr(layer, "activation", None)
    if fn is None or activation_name(fn) == "linear":
        return value
    out = fn(keras.ops.convert_to_tensor(np.asarray(value).astype("float32")))
    return np.asarray(keras.ops.convert_to_numpy(out), np.float64)
