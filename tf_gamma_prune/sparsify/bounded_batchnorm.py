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

The layer itself is in :mod:`tf_gamma_prune.bounded_layer` (below the stages,
shared with the pruning side); this module has the conversions. Two conversions
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

from tf_gamma_prune.bounded_layer import BoundedBatchNormalization
from tf_gamma_prune.errors import ArgumentError, UnsupportedLayerError, UnsupportedModelError

ops = keras.ops
L = keras.layers

_INITS = ("random", "gamma")


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
