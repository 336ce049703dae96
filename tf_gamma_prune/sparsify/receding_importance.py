"""Receding neuron importances (Suteu & Guo): the regulariser and the training recipe.

Each channel's importance is the scale ``s = sigmoid(w)`` of a
:class:`~tf_gamma_prune.BoundedBatchNormalization`. The regulariser on ``w`` is::

    R(w) = λ · Σ_channels s·(1 − ln s),   s = sigmoid(w + b)

Its derivative in ``s`` is ``−ln s``: large for small importances (2.3 at
s = 0.1), almost nothing near 1 (0.1 at s = 0.9). So unimportant channels
*recede* towards 0 while the data loss keeps the useful ones near 1 — the
importances become bimodal and one global threshold separates them cleanly.
``b`` (``shift``) moves the point where the push fades: with ``b = 3`` it pushes
hard only below ``sigmoid(w) ≈ 0.3``. ``ln s`` is computed as ``log_sigmoid``,
so the value and its gradient stay finite for any ``w``.

**The recipe** (the seed notes' reading of the authors' code; the paper text was
not available — treat the numbers as a starting point):

1. Swap the BatchNormalization layers: ``to_bounded_batchnorm(model,
   regularizer=RecedingImportanceRegularizer(1e-3, shift=3.0))`` (VGG-16 on
   CIFAR-10; ResNet-56: ``1e-4, shift=0``), or build the model with
   ``BoundedBatchNormalization(scale_logit_regularizer=...)``.
2. Train with the BN parameters at **10× the learning rate and without weight
   decay**. Keras optimizers have one learning rate for all variables; wrap an
   SGD optimizer in :class:`BatchNormLRMultiplier` (multiplying the BN
   parameters' gradients by 10 is exactly a 10× learning rate for SGD, with or
   without momentum, and it takes them out of the inner optimizer's weight
   decay). For Adam-like optimizers (invariant to gradient scale) at least call
   ``optimizer.exclude_from_weight_decay(var_names=["scale_logit"])``.
3. Prune with one global quantile of ``sigmoid(w)``, keeping at least 3
   channels per layer:
   :func:`~tf_gamma_prune.receding_importance_selection` (or
   ``selection_for_macs(model, receding_importance_selection, target)``), then
   ``prune_model`` and fine-tune; ``to_standard_batchnorm`` gives the standard
   layers back for export.

Example:

>>> import keras, numpy as np
>>> reg = RecedingImportanceRegularizer(0.01, shift=0.0)
>>> w = np.array([-2.0, 0.0, 2.0], np.float32)
>>> s = 1 / (1 + np.exp(-w))
>>> bool(np.isclose(float(reg(keras.ops.convert_to_tensor(w))),
...                 0.01 * np.sum(s * (1 - np.log(s))), rtol=1e-6))
True
"""

from __future__ import annotations

import math
from typing import Any

import keras

from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.bounded_layer import BoundedBatchNormalization
from tf_gamma_prune.sparsify.distillation import model_being_trained
from tf_gamma_prune.sparsify.wrapper import (
    WrapsInnerOptimizer,
    calling_model,
    check_inner_optimizer,
)

ops = keras.ops


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class RecedingImportanceRegularizer(keras.regularizers.Regularizer):
    """``strength · Σ s·(1 − ln s)`` with ``s = sigmoid(w + shift)``, on a scale logit ``w``.

    Args:
        strength: λ ≥ 0 (the seed notes: 1e-3 for VGG-16, 1e-4 for ResNet-56 on
            CIFAR-10).
        shift: b, added to ``w`` inside the sigmoid (3 for VGG-16, 0 for
            ResNet-56). The pruning importance stays ``sigmoid(w)``.

    Raises:
        ArgumentError: negative or non-finite ``strength``, non-finite ``shift``.
    """

    def __init__(self, strength: float = 1e-3, shift: float = 0.0):
        self.strength = _finite("strength", strength, nonnegative=True)
        self.shift = _finite("shift", shift)

    def __call__(self, x):
        z = ops.cast(x, "float32") + self.shift
        log_s = ops.log_sigmoid(z)
        return self.strength * ops.sum(ops.exp(log_s) * (1.0 - log_s))

    def get_config(self):
        return {"strength": self.strength, "shift": self.shift}


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class BatchNormLRMultiplier(WrapsInnerOptimizer, keras.optimizers.Optimizer):
    """Wrap an SGD optimizer: BN parameters get ``multiplier ×`` the learning rate
    and no weight decay (the receding-importance recipe's 10×).

    The BN parameters are the ``scale_logit`` and ``beta`` of every
    :class:`~tf_gamma_prune.BoundedBatchNormalization` and the γ and β of every
    standard BatchNormalization of the model being trained (found when Keras
    builds the optimizer in ``fit``/``load_model``, or via ``attach(model)``).
    Their gradients are multiplied by ``multiplier`` before the inner SGD's
    update — for SGD, with or without (Nesterov) momentum, exactly the update
    of a ``multiplier ×`` learning rate — and they are excluded from the inner
    optimizer's weight decay.

    Args:
        optimizer: a ``keras.optimizers.SGD`` without gradient clipping
            (clipping would see the multiplied gradients).
        multiplier: the BN learning-rate factor (> 0).
        name: optimizer name.

    Raises:
        TypeError: ``optimizer`` is not a Keras 3 optimizer.
        ArgumentError: not SGD (Adam-like optimizers ignore a gradient scale:
            exclude the BN variables from their weight decay instead), gradient
            clipping set, a non-positive ``multiplier``.
        RuntimeError: built outside ``fit`` without ``attach``.

    Example:

    >>> import keras, numpy as np
    >>> from tf_gamma_prune import BoundedBatchNormalization
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
    ...                           BoundedBatchNormalization(name="bbn")])
    >>> model.compile(BatchNormLRMultiplier(keras.optimizers.SGD(0.01), 10.0), loss="mse")
    >>> _ = model.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    >>> [v.name for v in model.optimizer.scaled_variables]
    ['scale_logit']
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, multiplier: float = 10.0, *,
                 name: str | None = None, **kwargs: Any):
        if kwargs:
            raise ArgumentError(
                f"BatchNormLRMultiplier does not take {sorted(kwargs)}; set them on the inner SGD.")
        check_inner_optimizer("BatchNormLRMultiplier", optimizer)
        if not isinstance(optimizer, keras.optimizers.SGD):
            raise ArgumentError(
                f"BatchNormLRMultiplier needs an SGD optimizer (a scaled gradient is a scaled "
                f"learning rate only for SGD); got {type(optimizer).__name__}. With Adam-like "
                "optimizers call optimizer.exclude_from_weight_decay(var_names=['scale_logit']).")
        clipping = [k for k in ("clipnorm", "clipvalue", "global_clipnorm")
                    if getattr(optimizer, k, None) is not None]
        if clipping:
            raise ArgumentError(
                f"The inner SGD clips gradients ({', '.join(clipping)}), which would see the "
                "multiplied BN gradients; use an SGD without clipping.")
        multiplier = _finite("multiplier", multiplier)
        if multiplier <= 0:
            raise ArgumentError(f"multiplier must be > 0, got {multiplier}.")
        super().__init__(learning_rate=0.0, name=name or "batchnorm_lr_multiplier")
        self.inner_optimizer = optimizer
        self.multiplier = multiplier
        self._init_gamma_variables(None)  # an untracked holder for the model and the BN variables

    @property
    def scaled_variables(self) -> list:
        """The BN variables whose learning rate is multiplied (after build)."""
        return list(self._state.targets)

    def build(self, var_list):
        var_list = list(var_list)
        model = self._state.model or calling_model(var_list)
        if model is None:
            raise RuntimeError(
                "BatchNormLRMultiplier could not tell which variables are BatchNormalization "
                "parameters: it was built outside model.fit/compile. Call "
                "`optimizer.attach(model)` first.")
        model = model_being_trained(model)
        wanted = set()
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, BoundedBatchNormalization):
                wanted.update(id(v) for v in (layer.scale_logit, layer.beta) if v is not None)
            elif isinstance(layer, keras.layers.BatchNormalization):
                wanted.update(id(v) for v in (layer.gamma, layer.beta) if v is not None)
        scaled = [v for v in var_list if id(v) in wanted]
        self._state.targets = scaled
        self._state.gamma_ids = {id(v) for v in scaled}
        inner = self.inner_optimizer
        if scaled:
            inner.exclude_from_weight_decay(var_list=scaled)
        self._build_inner(var_list)
        super().build(var_list)

    def _apply_wrapped(self, grads, trainable_variables):
        ids = self._state.gamma_ids
        grads = [g * ops.cast(self.multiplier, g.dtype) if g is not None and id(v) in ids else g
                 for g, v in zip(grads, trainable_variables)]
        self.inner_optimizer.apply(grads, trainable_variables)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "multiplier": self.multiplier,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


def _finite(what: str, value: Any, nonnegative: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(value) or (nonnegative and value < 0):
        raise ArgumentError(
            f"{what} must be finite{' and >= 0' if nonnegative else ''}, got {value}.")
    return value

