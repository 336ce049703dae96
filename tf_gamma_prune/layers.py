"""Custom Keras layers used by pruned models (all serializable).

:class:`BorderCorrection` adds a fixed map to its input. ``prune_model`` inserts
it after a convolution whose folded constant input is not uniform over space —
with zero padding the border positions of a ``'same'`` convolution see fewer
constant taps than the interior ones, so a plain bias fold is off at the
borders. The layer holds the exact per-position difference, is a plain ``Add``
of a constant in TFLite, and is never trained.

Example:

>>> import numpy as np
>>> layer = BorderCorrection(np.ones((2, 2, 3), "float32"))
>>> out = layer(np.zeros((1, 2, 2, 3), "float32"))
>>> float(np.asarray(out).sum())
12.0
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.errors import ArgumentError


def _initializer(value: np.ndarray | None) -> Any:
    """``"zeros"`` (values come from saved weights) or the given array."""
    if value is None:
        return "zeros"

    def initializer(shape: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(value, dtype=keras.backend.standardize_dtype(dtype)).reshape(shape)

    return initializer


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class BorderCorrection(keras.layers.Layer):
    """Adds a fixed (non-trainable) map to its input: ``y = x + correction``.

    Args:
        correction: the map to add, shape ``(H, W, C)`` for a 2-D feature map
            (any shape that broadcasts against the input without its batch axis).
            Can be omitted when ``shape`` is given (the values then come from a
            saved model's weights).
        shape: the map's shape, used when ``correction`` is omitted.
    """

    def __init__(
        self,
        correction: Any = None,
        shape: tuple[int, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if correction is None and shape is None:
            raise ArgumentError("BorderCorrection needs `correction` or `shape`.")
        self._initial = None if correction is None else np.asarray(correction)
        self.map_shape = tuple(int(d) for d in (
            shape if shape is not None else self._initial.shape
        ))
        self.correction = self.add_weight(
            name="correction",
            shape=self.map_shape,
            initializer=_initializer(self._initial),
            trainable=False,
        )
        self._initial = None
        self.built = True

    def call(self, inputs: Any) -> Any:
        return keras.ops.add(inputs, keras.ops.cast(self.correction, inputs.dtype))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config["shape"] = list(self.map_shape)
        return config


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class ConstantFeature(keras.layers.Layer):
    """Outputs a fixed feature map for every example: ``y[i] = value``.

    ``prune_model`` puts it where a whole conv/dense layer became constant (all
    of its input channels were constant and removed) but its output is still
    needed, e.g. a residual branch whose every channel is constant. It reads a
    model input only for the batch size.

    Args:
        value: the map, shape ``(H, W, C)`` (the output shape without batch).
        shape: the map's shape, used when ``value`` is omitted (loading).

    Example:

    >>> import numpy as np
    >>> layer = ConstantFeature(np.full((2, 2, 1), 3.0, "float32"))
    >>> np.asarray(layer(np.zeros((4, 5), "float32"))).shape
    (4, 2, 2, 1)
    """

    def __init__(
        self,
        value: Any = None,
        shape: tuple[int, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if value is None and shape is None:
            raise ArgumentError("ConstantFeature needs `value` or `shape`.")
        initial = None if value is None else np.asarray(value)
        self.map_shape = tuple(int(d) for d in (
            shape if shape is not None else initial.shape
        ))
        self.value = self.add_weight(
            name="value", shape=self.map_shape, initializer=_initializer(initial),
            trainable=False,
        )
        self.built = True

    def call(self, inputs: Any) -> Any:
        batch = keras.ops.shape(inputs)[0]
        value = keras.ops.cast(self.value, self.compute_dtype)
        return keras.ops.broadcast_to(
            keras.ops.expand_dims(value, 0), (batch,) + self.map_shape
        )

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0],) + self.map_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config["shape"] = list(self.map_shape)
        return config
