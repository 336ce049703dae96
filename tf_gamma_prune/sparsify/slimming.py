"""NetworkSlimming: the L1-subgradient baseline of Liu et al. 2017 on BatchNormalization γ.

*Learning Efficient Convolutional Networks through Network Slimming* trains with
``loss + l1 · Σ|γ|`` over every BatchNormalization γ, by adding the subgradient
``l1 · sign(γ)`` to each γ gradient before the optimizer's update; afterwards the
channels whose |γ| falls below a *global* percentile are cut
(:func:`~tf_gamma_prune.prune.criteria.gamma_threshold_selection`) and the network is
fine-tuned.

:class:`NetworkSlimming` wraps any Keras 3 optimizer the same way
:class:`~tf_gamma_prune.GammaISTA` does (learning rate, iterations and slots are
the inner optimizer's; γ found the same way). The difference is the point of the
comparison: **a subgradient step never makes γ exactly 0** — γ only oscillates
around 0 with an amplitude of about ``η·l1`` — so the network's function always
depends on every channel, and cutting the small ones changes it (fine-tuning
repairs that). GammaISTA's proximal step gives exact zeros, which
``prune_model`` removes without changing the function.

Example (λ = 1e-4 is the paper's value for VGG, 1e-5 for ResNet/DenseNet):

>>> import keras, numpy as np
>>> from tf_gamma_prune import (NetworkSlimming, gamma_threshold_selection, layer_widths,
...                             prune_model)
>>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3),
...     keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(),
...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
>>> model.compile(optimizer=NetworkSlimming(keras.optimizers.SGD(0.1), l1=1e-2),
...               loss="mse")
>>> _ = model.fit(np.random.rand(16, 8, 8, 1), np.zeros((16, 2)), epochs=2, verbose=0)
>>> bool(np.all(model.get_layer("bn").gamma.numpy() != 0))   # no exact zeros
True
>>> small = prune_model(model, gamma_threshold_selection(model, 0.5), probe=False)
>>> layer_widths(small)                                 # the 4 largest |γ| stay
{'bn': 4}

Weight decay: unlike GammaISTA, NetworkSlimming leaves the inner optimizer's
weight decay on γ (Liu et al.'s code decays every parameter); call
``inner.exclude_from_weight_decay(var_names=["gamma"])`` to change that.
Distribution: under ``tf.distribute`` each replica adds ``l1·sign(γ)/replicas``,
so the all-reduced (summed) gradient carries the penalty once. With a
``loss_scale_factor`` on the inner optimizer the penalty is scaled with the
gradients, so it is unscaled with them. Mixed precision: put
``LossScaleOptimizer`` *outside* NetworkSlimming (Keras does that itself under
the ``mixed_float16`` policy).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras

from tf_gamma_prune.analysis.batchnorm import resolve_layer_name
from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.sparsify.wrapper import (
    WrapsInnerOptimizer,
    check_inner_optimizer,
    find_gamma_layers,
    validated_penalty,
)


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class NetworkSlimming(WrapsInnerOptimizer, keras.optimizers.Optimizer):
    """Wrap a Keras optimizer and add ``l1 · sign(γ)`` to every BatchNormalization γ gradient.

    Args:
        optimizer: any ``keras.optimizers.Optimizer`` (SGD with or without
            momentum, Adam, ...); it then updates γ with the penalised gradient
            and every other variable with its plain gradient.
        l1: the sparsity strength λ of Liu et al. (``loss + λ·Σ|γ|``); a float
            ≥ 0, settable later via ``.l1``.
        exclude: BatchNormalization layer names (qualified ``"backbone/bn"`` or a
            unique bare name) whose γ gets no penalty; with ``gamma_variables``,
            variable paths.
        gamma_variables: explicit γ variables (or their ``.path`` strings) to
            penalise instead of every BatchNormalization γ (custom layers, custom
            training loops).
        name: optimizer name.

    γ discovery is GammaISTA's: when Keras builds the optimizer (``fit``,
    ``load_model``) it finds the model doing the building and takes every
    BatchNormalization γ in it, nested models included. In a custom training loop
    call ``optimizer.attach(model)`` before the first ``apply_gradients``, or pass
    ``gamma_variables=``.

    γ never becomes exactly zero through this penalty (see the module docstring):
    select the channels to cut with
    :func:`~tf_gamma_prune.prune.criteria.gamma_threshold_selection` and pass the
    selection to ``prune_model``.

    Raises:
        TypeError: ``optimizer`` is not a Keras 3 optimizer; ``l1`` not a number.
        ValueError: negative or non-finite ``l1``; unknown names in ``exclude``
            (at build, listing the valid ones).
        NoBatchNormError: the model has no BatchNormalization γ (at build).
        RuntimeError: built outside ``fit`` without ``attach``/``gamma_variables``.
    """

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        l1: float = 1e-4,
        *,
        exclude: Sequence[str] | None = None,
        gamma_variables: Sequence[Any] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        if kwargs:
            raise ArgumentError(
                f"NetworkSlimming does not take {sorted(kwargs)}; set them on the "
                "inner optimizer (e.g. SGD(..., weight_decay=...))."
            )
        check_inner_optimizer("NetworkSlimming", optimizer)
        if isinstance(exclude, str):
            raise TypeError(f"exclude takes a list of layer names, got the string {exclude!r}.")
        super().__init__(learning_rate=0.0, name=name or "network_slimming")
        self.inner_optimizer = optimizer
        self.exclude = tuple(exclude or ())
        self._init_gamma_variables(gamma_variables)
        self._l1 = self._penalty_variable("l1", l1)

    # ------------------------------------------------------------------- λ
    @property
    def l1(self):
        """The current λ (a float32 variable; assign a float to change it)."""
        return self._l1

    @l1.setter
    def l1(self, value: float) -> None:
        self._l1.assign(validated_penalty("l1", value))

    @property
    def penalised_gammas(self) -> list[tuple[str, Any]]:
        """``(layer_name, γ variable)`` of every penalised γ (after build).

        (Not called ``targets`` like GammaISTA's, whose entries also carry λ and
        which ``SparsityMonitor`` reads as GammaISTA's.)
        """
        return [(t[0], t[1]) for t in self._state.targets]

    # ------------------------------------------------------------------ build
    def build(self, var_list):
        var_list = list(var_list)
        if self.gamma_variable_paths is not None:
            chosen = self._chosen_gamma_variables(var_list)
            unknown = sorted(set(self.exclude) - {v.path for v in chosen})
            if unknown:
                raise ArgumentError(
                    f"exclude names {unknown}, which are not in gamma_variables "
                    f"({sorted(v.path for v in chosen)}). With gamma_variables, "
                    "exclude variable paths."
                )
            targets = [(v.path, v) for v in chosen if v.path not in self.exclude]
        else:
            named = find_gamma_layers("NetworkSlimming", self._state.model, var_list)
            names = [n for n, _ in named]
            excluded = {resolve_layer_name(k, names) for k in self.exclude}
            targets = [(n, layer.gamma) for n, layer in named if n not in excluded]
        self._state.targets = targets
        self._state.gamma_ids = {id(v) for _, v in targets}
        self._build_inner(var_list)
        super().build(var_list)

    # ------------------------------------------------------------------ apply
    def _apply_wrapped(self, grads, trainable_variables):
        grads = self.penalised_gradients(grads, trainable_variables)
        self.inner_optimizer.apply(grads, trainable_variables)

    def penalised_gradients(self, grads: Sequence[Any], variables: Sequence[Any]) -> list:
        """``grads`` with ``l1·sign(γ)`` added to the gradient of every penalised γ.

        Scaled for the inner optimizer's ``loss_scale_factor`` and divided by the
        number of replicas in sync (see the module docstring). ``None`` gradients
        stay ``None``.
        """
        ops = keras.ops
        ids = self._state.gamma_ids
        strength = ops.convert_to_tensor(self._l1)
        scale = self.inner_optimizer.loss_scale_factor
        if scale is not None:
            strength = strength * scale
        replicas = _replicas_in_sync()
        if replicas > 1:
            strength = strength / replicas
        out = []
        for g, v in zip(grads, variables):
            if g is not None and id(v) in ids:
                g = g + ops.cast(strength, g.dtype) * ops.cast(ops.sign(v), g.dtype)
            out.append(g)
        return out

    # ---------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "l1": float(keras.ops.convert_to_numpy(self._l1)),
            "exclude": list(self.exclude),
            "gamma_variables": (
                None if self.gamma_variable_paths is None else list(self.gamma_variable_paths)
            ),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        l1 = config.pop("l1")
        return cls(inner, l1, **config)


def _replicas_in_sync() -> int:
    """Replicas whose gradients Keras will sum (1 outside ``tf.distribute``)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: Keras does not all-reduce there
        return 1
    return int(context.num_replicas_in_sync)
