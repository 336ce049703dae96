"""BoundedBatchNormalization: a BatchNormalization whose scale is ``sigmoid(w)``, in (0, 1).

The layer of *receding neuron importances* (Suteu & Guo): each channel's scale
is its importance ``s = sigmoid(w)``, bounded in (0, 1), so that a regulariser
on ``w`` (:class:`~tf_gamma_prune.RecedingImportanceRegularizer`) can push
unimportant channels towards 0 while the bound stops important ones from
growing to compensate. In inference mode the layer computes::

    y = sigmoid(w) · (x − moving_mean) / sqrt(moving_variance + ε) + shift

with ``shift = 0`` unless ``center=True`` (the paper's layer has no shift β;
``center=True`` adds a learned one). ``w`` starts from N(0, 1). In training mode
the batch statistics are used and the moving statistics updated exactly like
Keras' ``BatchNormalization`` (``momentum``, ``epsilon``, masks,
``synchronized`` on TensorFlow).

The rest of the package speaks standard BatchNormalization. Two conversions
swap the layers of a whole model:

* :func:`to_bounded_batchnorm` — every ``BatchNormalization`` becomes a
  ``BoundedBatchNormalization`` (same name, axis, momentum, ε and moving
  statistics; ``w`` fresh from N(0, 1), or ``init="gamma"``: ``w = logit(γ)``);
* :func:`to_standard_batchnorm` — back: ``γ = sigmoid(w)``, ``β = shift`` (or 0).
  Exact in inference mode (``γ`` is the value the bounded layer multiplies by),
  so folding, ``prune_model``'s constant removal and TFLite export then work
  unchanged.

``prune_model`` and the criteria also accept the bounded layer itself: it is
registered as a per-channel (``"pointwise"``) layer kind, so a selection keyed
by its name removes channels from it like from any elementwise layer (its
per-channel weights are sliced); ``sigmoid(w)`` never reaches 0, so it never
makes a channel constant by itself. GammaISTA, NetworkSlimming and
``gamma_threshold_selection`` do not see it (they act on standard γ).

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune import to_bounded_batchnorm, to_standard_batchnorm
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> bounded = to_bounded_batchnorm(fashion_vgg(widths=(4, 4, 8, 8, 8, 8)))
>>> type(bounded.get_layer("bn1")).__name__
'BoundedBatchNormalization'
>>> bool(np.all((bounded.get_layer("bn1").importance() > 0)
...              & (bounded.get_layer("bn1").importance() < 1)))
True
>>> standard = to_standard_batchnorm(bounded)
>>> x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
>>> bool(np.array_equal(bounded(x, training=False), standard(x, training=False)))
True
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np

from tf_gamma_prune.analysis.kinds import register_layer_kind
from tf_gamma_prune.analysis.kinds.pointwise import PointwiseKind
from tf_gamma_prune.errors import ArgumentError, UnsupportedLayerError, UnsupportedModelError

ops = keras.ops
L = keras.layers

_HALF = ("float16", "bfloat16")
_INITS = ("random", "gamma")


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


# ------------------------------------------------------------------ conversions
def to_bounded_batchnorm(
    model: keras.Model,
    *,
    regularizer: Any = None,
    center: bool = False,
    init: str = "random",
    seed: int | None = None,
) -> keras.Model:
    """A copy of ``model`` with every ``BatchNormalization`` replaced by a bounded one.

    Each replacement keeps the name, axis, momentum, ε, ``synchronized``,
    dtype policy, ``trainable`` flag and moving statistics of the layer it
    replaces; every other layer is a copy with the same weights. The input model
    is not changed; the copy is not compiled.

    Args:
        model: a functional or Sequential Keras model (nested ones are converted
            too, recursively).
        regularizer: ``scale_logit_regularizer`` of every new layer, e.g.
            ``RecedingImportanceRegularizer(1e-3, shift=3.0)``.
        center: give the new layers a learned shift (initialised from β with
            ``init="gamma"``, else 0). The paper's layer has none.
        init: ``"random"`` (default): ``w ~ N(0, 1)``, the paper's start for
            training from scratch. ``"gamma"``: ``w = logit(γ)`` with γ clipped
            to [1e-6, 1 − 1e-6] — the same function in inference mode when every
            γ is in (0, 1) and β = 0 (or ``center=True``), otherwise an
            approximation.
        seed: seed of the N(0, 1) draw (``init="random"``); ``None`` uses Keras'
            global seed generator.

    Returns:
        The converted model.

    Raises:
        ArgumentError: unknown ``init``.
        UnsupportedLayerError: a BatchNormalization with ``renorm=True`` or
            without a γ (``scale=False``) — nothing to bound.
        UnsupportedModelError: a subclassed model (no graph to clone).
    """
    if init not in _INITS:
        raise ArgumentError(f"init must be one of {_INITS}, got {init!r}.")
    rng = np.random.default_rng(seed) if seed is not None else None

    def swap(layer):
        if not isinstance(layer, L.BatchNormalization):
            return None
        if getattr(layer, "renorm", False):
            raise UnsupportedLayerError(
                f"BatchNormalization '{layer.name}' uses renorm=True, which "
                "BoundedBatchNormalization does not implement.")
        if not layer.scale:
            raise UnsupportedLayerError(
                f"BatchNormalization '{layer.name}' has no γ (scale=False): there is no "
                "scale to bound. Build it with scale=True or leave it out of the conversion.")
        new = BoundedBatchNormalization(
            axis=layer.axis, momentum=layer.momentum, epsilon=layer.epsilon, center=center,
            scale_logit_regularizer=regularizer, synchronized=getattr(layer, "synchronized", False),
            name=layer.name, dtype=layer.dtype_policy, trainable=layer.trainable,
        )

        def assign(old, new):
            new.moving_mean.assign(ops.convert_to_numpy(old.moving_mean))
            new.moving_variance.assign(ops.convert_to_numpy(old.moving_variance))
            if init == "gamma":
                gamma = np.asarray(ops.convert_to_numpy(old.gamma), np.float64)
                gamma = np.clip(gamma, 1e-6, 1.0 - 1e-6)
                new.scale_logit.assign((np.log(gamma) - np.log1p(-gamma)).astype(np.float32))
                if center and old.center:
                    new.beta.assign(ops.convert_to_numpy(old.beta))
            elif rng is not None:
                draw = rng.standard_normal(new.scale_logit.shape)
                new.scale_logit.assign(draw.astype(np.float32))

        return new, assign

    return _convert(model, swap)


def to_standard_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with every ``BoundedBatchNormalization`` replaced by a
    ``BatchNormalization`` computing the same function in inference mode.

    ``γ = sigmoid(w)`` (the very values the bounded layer multiplies by),
    ``β`` = the learned shift or 0, moving statistics, name, axis, momentum, ε,
    ``synchronized``, dtype policy and ``trainable`` flag kept. Do this before
    GammaISTA training, ``gamma_threshold_selection`` or anything else that reads
    BatchNormalization γ; ``prune_model`` and the TFLite export accept either.
    The regulariser of ``w`` is not carried over (γ has none). Not compiled.

    Raises:
        UnsupportedModelError: a subclassed model (no graph to clone).
    """
    def swap(layer):
        if not isinstance(layer, BoundedBatchNormalization):
            return None
        new = L.BatchNormalization(
            axis=layer.axis, momentum=layer.momentum, epsilon=layer.epsilon, center=True,
            scale=True, synchronized=layer.synchronized, name=layer.name,
            dtype=layer.dtype_policy, trainable=layer.trainable,
        )

        def assign(old, new):
            new.gamma.assign(old.importance())
            beta = (ops.convert_to_numpy(old.beta) if old.center
                    else np.zeros(old.scale_logit.shape, np.float32))
            new.beta.assign(beta)
            new.moving_mean.assign(ops.convert_to_numpy(old.moving_mean))
            new.moving_variance.assign(ops.convert_to_numpy(old.moving_variance))

        return new, assign

    return _convert(model, swap)


def _convert(model: keras.Model, swap: Callable[[Any], Any]) -> keras.Model:
    """Clone ``model`` (recursively), letting ``swap`` replace layers; copy weights."""
    if not isinstance(model, keras.Model) or not (
            isinstance(model, keras.Sequential) or _is_functional(model)):
        raise UnsupportedModelError(
            f"Only functional and Sequential models can be converted; got "
            f"{type(model).__name__}. Build the model with the functional API.")
    pairs: list[tuple[Any, Any, Any]] = []

    def clone(layer):
        swapped = swap(layer)
        if swapped is not None:
            new, assign = swapped
        else:
            new, assign = layer.__class__.from_config(layer.get_config()), _copy_weights
        pairs.append((layer, new, assign))
        return new

    converted = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for old, new, assign in pairs:
        if not new.built:  # a layer the clone never called (should not happen)
            continue
        assign(old, new)
    return converted


def _copy_weights(old: Any, new: Any) -> None:
    values = old.get_weights()
    if values:
        new.set_weights(values)


def _is_functional(model: keras.Model) -> bool:
    return hasattr(model, "_nodes_by_depth") and hasattr(model, "_operations")
