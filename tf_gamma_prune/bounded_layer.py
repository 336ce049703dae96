"""The BoundedBatchNormalization layer (scale ``sigmoid(w)`` ∈ (0, 1)) and its channel rules.

The layer of *receding neuron importances* (Suteu & Guo). It lives below the
stages so that both the training side (:mod:`tf_gamma_prune.sparsify.bounded_batchnorm`:
the conversions, :mod:`~tf_gamma_prune.sparsify.receding_importance`) and the
pruning side (:mod:`tf_gamma_prune.prune.criteria_receding`) use it without
importing each other. Importing this module registers the layer with Keras
(``tf_gamma_prune>BoundedBatchNormalization``) and its channel rules with the
channel graph (a per-channel layer whose weights are sliced).

Example:

>>> import numpy as np
>>> layer = BoundedBatchNormalization()
>>> y = layer(np.ones((2, 3), "float32"), training=False)
>>> bool(np.all((layer.importance() > 0) & (layer.importance() < 1)))
True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.kinds import register_layer_kind
from tf_gamma_prune.analysis.kinds.pointwise import PointwiseKind
from tf_gamma_prune.errors import ArgumentError, UnsupportedLayerError

ops = keras.ops

_HALF = ("float16", "bfloat16")


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class BoundedBatchNormalization(keras.layers.Layer):
    """BatchNormalization with scale ``sigmoid(w)`` ∈ (0, 1) and no shift by default.

    Args:
        axis: the channel axis (the package prunes channels-last models: -1).
        momentum: moving-statistics momentum, as in ``BatchNormalization``.
        epsilon: variance epsilon, as in ``BatchNormalization``.
        center: add a learned shift ``beta`` (the paper's layer has none).
        scale_logit_initializer: initialiser of ``w``; default N(0, 1), the
            paper's.
        beta_initializer: initialiser of the shift (with ``center``).
        moving_mean_initializer, moving_variance_initializer: as in
            ``BatchNormalization``.
        scale_logit_regularizer: regulariser of ``w``, e.g.
            :class:`~tf_gamma_prune.RecedingImportanceRegularizer`.
        beta_regularizer: regulariser of the shift.
        synchronized: batch statistics over all replicas (TensorFlow backend
            only, as in ``BatchNormalization``).
        **kwargs: ``name``, ``dtype``, ``trainable`` ...

    Weights: ``scale_logit`` (``w``, trainable), ``beta`` (with ``center``),
    ``moving_mean`` and ``moving_variance`` (not trainable); all float32 also
    under a mixed-precision policy, which computes in float32 like Keras' BN.

    Raises:
        ArgumentError: ``synchronized=True`` off the TensorFlow backend, or a
            momentum outside [0, 1).
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = False,
        scale_logit_initializer: Any = None,
        beta_initializer: Any = "zeros",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        scale_logit_regularizer: Any = None,
        beta_regularizer: Any = None,
        synchronized: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if synchronized and keras.backend.backend() != "tensorflow":
            raise ArgumentError("synchronized=True is only supported on the TensorFlow backend.")
        if not 0.0 <= float(momentum) < 1.0:
            raise ArgumentError(f"momentum must be in [0, 1), got {momentum!r}.")
        self.axis = int(axis)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.synchronized = bool(synchronized)
        if scale_logit_initializer is None:
            scale_logit_initializer = keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
        self.scale_logit_initializer = keras.initializers.get(scale_logit_initializer)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.scale_logit_regularizer = keras.regularizers.get(scale_logit_regularizer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.supports_masking = True
        self.scale_logit = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None
        self._reduction_axes: list[int] = []

    def build(self, input_shape):
        shape = (input_shape[self.axis],)
        self.scale_logit = self.add_weight(
            shape=shape, name="scale_logit", initializer=self.scale_logit_initializer,
            regularizer=self.scale_logit_regularizer, trainable=True, autocast=False,
        )
        if self.center:
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer=self.beta_initializer,
                regularizer=self.beta_regularizer, trainable=True, autocast=False,
            )
        self.moving_mean = self.add_weight(
            shape=shape, name="moving_mean", initializer=self.moving_mean_initializer,
            trainable=False, autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=shape, name="moving_variance", initializer=self.moving_variance_initializer,
            trainable=False, autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes={self.axis: input_shape[self.axis]}
        )
        axes = list(range(len(input_shape)))
        del axes[self.axis]
        self._reduction_axes = axes

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs, training=None, mask=None):
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        x = ops.cast(inputs, "float32" if dtype in _HALF else dtype)
        moving_mean = ops.cast(self.moving_mean, x.dtype)
        moving_variance = ops.cast(self.moving_variance, x.dtype)
        scale = ops.sigmoid(ops.cast(self.scale_logit, x.dtype))
        offset = ops.cast(self.beta, x.dtype) if self.center else None
        if training and self.trainable:
            mean, variance = self._moments(x, mask)
            self.moving_mean.assign(
                moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            mean, variance = moving_mean, moving_variance
        out = ops.batch_normalization(
            x, mean=mean, variance=variance, axis=self.axis, offset=offset, scale=scale,
            epsilon=self.epsilon,
        )
        return ops.cast(out, self.compute_dtype)

    def _moments(self, x, mask):
        if mask is None:
            return ops.moments(x, axes=self._reduction_axes, synchronized=self.synchronized)
        weights = ops.expand_dims(ops.cast(mask, x.dtype), axis=-1)
        total = ops.sum(weights, axis=self._reduction_axes, keepdims=True)
        total = total + keras.backend.epsilon()
        mean = ops.sum(weights * x, axis=self._reduction_axes, keepdims=True) / total
        variance = ops.sum(weights * ops.square(x - mean), axis=self._reduction_axes,
                           keepdims=True) / total
        return ops.reshape(mean, (-1,)), ops.reshape(variance, (-1,))

    def importance(self) -> np.ndarray:
        """The channel importances ``sigmoid(w)`` as a float32 NumPy array.

        The same values the layer multiplies by (computed with the backend's
        sigmoid) and the γ that :func:`to_standard_batchnorm` gives.
        """
        return np.asarray(ops.convert_to_numpy(ops.sigmoid(self.scale_logit)), np.float32)

    def get_config(self):
        config = super().get_config()
        config.update({
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale_logit_initializer": keras.initializers.serialize(self.scale_logit_initializer),
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "moving_mean_initializer": keras.initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": keras.initializers.serialize(
                self.moving_variance_initializer),
            "scale_logit_regularizer": keras.regularizers.serialize(self.scale_logit_regularizer),
            "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
            "synchronized": self.synchronized,
        })
        return config


class BoundedBatchNormKind(PointwiseKind):
    """The channel rules of :class:`BoundedBatchNormalization`: per channel, with
    per-channel weights (sliced to the kept channels), constants passed through by
    running the layer; channels-last only."""

    def refine(self, call):
        rank = len(call.node.input_tensors[0].shape)
        if call.layer.axis not in (-1, rank - 1):
            raise UnsupportedLayerError(
                f"BoundedBatchNormalization '{call.name}' normalises axis {call.layer.axis}, "
                "not the last (channel) axis; only channels_last models are supported."
            )
        return self


register_layer_kind(BoundedBatchNormalization, BoundedBatchNormKind())
