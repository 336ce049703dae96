"""GammaISTA: a Keras optimizer wrapper that soft-thresholds BatchNormalization γ.

After the wrapped optimizer's update, every penalised γ takes the proximal (ISTA)
step of Ye et al. 2018::

    γ ← sign(γ) · max(|γ| − η_t · ρ · λ_l, 0)

with ``η_t`` the inner optimizer's learning rate at that step, ``ρ`` the global
strength and ``λ_l`` the per-layer penalty (see :func:`gamma_penalties`). Unlike
an L1 subgradient this gives channels whose γ is **exactly** zero.

Example:

>>> import keras
>>> from tf_gamma_prune import GammaISTA
>>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
...     keras.layers.BatchNormalization(), keras.layers.ReLU(),
...     keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
>>> model.compile(optimizer=GammaISTA(keras.optimizers.SGD(0.1), rho=0.5),
...               loss="mse")
>>> _ = model.fit(keras.random.normal((16, 8, 8, 1)), keras.ops.zeros((16, 2)),
...               epochs=1, verbose=0)

γ slots. With the default ``gamma_step="inner"`` γ is updated by the inner
optimizer like any weight, then shrunk; wherever the shrink leaves γ at zero, the
inner optimizer's zero-initialised slots for that entry (SGD momentum, Adam's
moments, ...) are reset to zero (``reset_slots=True``). With SGD (with or without
momentum) a γ at zero therefore stays exactly zero as long as its data gradient
satisfies ``|g| ≤ ρ·λ_l`` — the fixed-point condition of the proximal step — and
stale momentum cannot push it out. With ``gamma_step="sgd"`` γ is left out of the
inner optimizer and takes a plain proximal-gradient step ``prox(γ − η_t·g)``:
exact ISTA whatever the inner optimizer is (recommended with Adam/RMSprop, whose
scale-free steps make the threshold a heuristic; inner gradient clipping then does
not apply to γ).

Mixed precision: Keras wraps the optimizer in ``LossScaleOptimizer`` itself when the
dtype policy is ``mixed_float16``; put ``LossScaleOptimizer`` *outside* GammaISTA
when doing it by hand, so that skipped (non-finite) steps skip the shrink too.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras

from tf_gamma_prune.analysis.batchnorm import resolve_layer_name
from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.sparsify.wrapper import (
    PenalisedGamma,
    WrapsInnerOptimizer,
    check_inner_optimizer,
    find_gamma_layers,
    validated_penalties,
    validated_penalty,
)

_GAMMA_STEPS = ("inner", "sgd")


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class GammaISTA(WrapsInnerOptimizer, keras.optimizers.Optimizer):
    """Wrap a Keras optimizer and add an ISTA step on BatchNormalization γ.

    Args:
        inner_optimizer: any ``keras.optimizers.Optimizer`` (SGD with or without
            momentum, Adam, AdamW, RMSprop, ...). Learning rate, iterations and
            slots are the inner optimizer's.
        rho: global penalty strength ρ: a float (settable later via ``.rho``), or a
            ``keras.optimizers.schedules.LearningRateSchedule`` evaluated at
            ``iterations`` (e.g. ``PiecewiseConstantDecay`` for a warm-up ρ).
        penalties: per-layer λ_l. ``None``: 1.0 for every γ. A mapping from layer
            name (qualified ``"backbone/bn"`` or a unique bare name) to λ, e.g.
            the result of :func:`gamma_penalties`; layers it does not name get
            ``default_penalty``.
        exclude: layer names whose γ is left alone (same naming as ``penalties``).
        gamma_variables: explicit γ variables (or their ``.path`` strings) for
            custom layers or custom training loops; replaces automatic discovery.
            ``penalties`` may then be keyed by variable path.
        gamma_step: ``"inner"`` or ``"sgd"``; see the module docstring.
        reset_slots: with ``gamma_step="inner"``, zero the inner optimizer's
            zero-initialised slots wherever γ ends a step at zero.
        default_penalty: λ for γ not named in ``penalties``.
        min_channels: the penalty spares the ``min_channels`` largest |γ| of each
            penalised layer, so no layer loses all its channels (a layer that
            collapses makes the model's output constant). 0: no floor.
        scale_beta: also scale each channel's β by the factor its γ shrank by
            (``β ← β·γ_new/γ_old``), so a channel keeps its ReLU threshold −β/γ and
            fades out instead of being clipped. The soft threshold alone shrinks
            *every* γ of a layer by the same amount while β stays: on the
            Fashion-MNIST reference, removing two thirds of the MACs took the
            surviving |γ| from ≈ 1.0 to ≈ 0.3 at β ≈ −0.3, so the survivors fired
            far less often than before (see docs/evidence.md). Off by default
            (the paper's step); the benchmark and the demo turn it on.
        reweight_epsilon: ``None`` (default): the paper's threshold, the same
            ``η·ρ·λ_l`` for every channel of a layer. A float ε > 0: reweighted ℓ1
            (Candès, Wakin and Boyd 2008): each channel's threshold is divided by
            ``|γ_i| / mean_l|γ| + ε`` (the layer's mean over all its channels, zeros
            included), so small γ fall faster and the large ones, the survivors,
            shrink less; the step stays the exact prox of a weighted ℓ1 whose weights
            come from the current γ. See :func:`reweighted_thresholds`.
        name: optimizer name.

    γ discovery: when Keras builds the optimizer (``fit``, ``load_model``, ...)
    GammaISTA finds the model doing the building and takes every
    ``BatchNormalization`` γ in it, nested models included. In a custom training
    loop call ``optimizer.attach(model)`` before the first ``apply_gradients``, or
    pass ``gamma_variables=`` (e.g. ``[bn.gamma for _, bn in
    batchnorm_layers(model)]``).
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        rho: float | keras.optimizers.schedules.LearningRateSchedule = 1e-4,
        penalties: Mapping[str, float] | None = None,
        exclude: Sequence[str] = (),
        gamma_variables: Sequence[Any] | None = None,
        gamma_step: str = "inner",
        reset_slots: bool = True,
        default_penalty: float = 1.0,
        min_channels: int = 0,
        scale_beta: bool = False,
        reweight_epsilon: float | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        if kwargs:
            raise ArgumentError(
                f"GammaISTA does not take {sorted(kwargs)}; set them on the inner "
                "optimizer (e.g. SGD(..., weight_decay=...))."
            )
        check_inner_optimizer("GammaISTA", inner_optimizer)
        if getattr(inner_optimizer, "gradient_accumulation_steps", None):
            raise ArgumentError(
                "Gradient accumulation on the inner optimizer is not supported: the "
                "γ shrink would run on every micro-step. Use a larger batch instead."
            )
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 0:
            raise ArgumentError(f"min_channels must be an integer >= 0, got {min_channels!r}.")
        if gamma_step not in _GAMMA_STEPS:
            raise ArgumentError(f"gamma_step must be one of {_GAMMA_STEPS}, got {gamma_step!r}.")
        super().__init__(learning_rate=0.0, name=name or "gamma_ista")
        self.inner_optimizer = inner_optimizer
        self.penalties = validated_penalties(penalties)
        self.exclude = tuple(exclude)
        self.gamma_step = gamma_step
        self.reset_slots = bool(reset_slots)
        self.default_penalty = validated_penalty("default_penalty", default_penalty)
        self.min_channels = min_channels
        self.scale_beta = bool(scale_beta)
        self.reweight_epsilon = _validated_epsilon(reweight_epsilon)
        if self.scale_beta and gamma_variables is not None:
            raise ArgumentError(
                "scale_beta=True needs each γ's BatchNormalization layer (to scale its β); "
                "it cannot be used with gamma_variables=. Drop one of the two."
            )
        self._init_gamma_variables(gamma_variables)
        if isinstance(rho, keras.optimizers.schedules.LearningRateSchedule):
            self._rho_schedule = rho
        else:
            self._rho_schedule = None
            self._rho = self._penalty_variable("rho", rho)

    # ------------------------------------------------------------------- ρ
    @property
    def rho(self):
        """Current ρ (a tensor when ρ is a schedule)."""
        if self._rho_schedule is not None:
            return self._rho_schedule(self.iterations)
        return self._rho

    @rho.setter
    def rho(self, value: float) -> None:
        if self._rho_schedule is not None:
            raise ArgumentError("ρ is a schedule here; build a new GammaISTA to change it.")
        self._rho.assign(validated_penalty("rho", value))

    @property
    def targets(self) -> list[tuple[str, Any, float]]:
        """``(layer_name, γ variable, λ)`` of every penalised γ (after build)."""
        return [(t.name, t.variable, t.penalty) for t in self._state.targets]

    # ------------------------------------------------------------------ build
    def build(self, var_list):
        var_list = list(var_list)
        targets = self._find_targets(var_list)
        target_keys = {id(t.variable) for t in targets}
        self._exclude_gammas_from_weight_decay([t.variable for t in targets])
        if self.gamma_step == "sgd":
            inner_vars = [v for v in var_list if id(v) not in target_keys]
        else:
            inner_vars = var_list
        slots = _record_slots(self.inner_optimizer, inner_vars)
        if self.reset_slots:
            for t in targets:
                t.slots = [s for s, zeros in slots.get(id(t.variable), []) if zeros]
        self._state.targets = targets
        self._state.gamma_ids = target_keys
        super().build(var_list)

    def _find_targets(self, var_list: list) -> list[PenalisedGamma]:
        if self.gamma_variable_paths is not None:
            return self._explicit_targets(var_list)
        named = find_gamma_layers("GammaISTA", self._state.model, var_list)
        names = [n for n, _ in named]
        penalties = {resolve_layer_name(k, names): v for k, v in self.penalties.items()}
        excluded = {resolve_layer_name(k, names) for k in self.exclude}
        return [
            PenalisedGamma(n, layer.gamma, penalties.get(n, self.default_penalty),
                           beta=_scaled_beta(layer) if self.scale_beta else None)
            for n, layer in named
            if n not in excluded and penalties.get(n, self.default_penalty) > 0
        ]

    def _explicit_targets(self, var_list: list) -> list[PenalisedGamma]:
        chosen = self._chosen_gamma_variables(var_list)
        known = {v.path for v in chosen}
        unknown = sorted(set(self.penalties) - known)
        if unknown:
            raise ArgumentError(
                f"penalties name {unknown}, which are not in gamma_variables "
                f"({sorted(known)}). With gamma_variables, key penalties by variable path."
            )
        return [
            PenalisedGamma(v.path, v, self.penalties.get(v.path, self.default_penalty))
            for v in chosen
            if v.path not in self.exclude
        ]

    def _exclude_gammas_from_weight_decay(self, gammas: list) -> None:
        inner = self.inner_optimizer
        keys = getattr(inner, "_exclude_from_weight_decay", None) or set()
        inner._exclude_from_weight_decay = set(keys) | {inner._var_key(v) for v in gammas}
        inner._exclude_from_weight_decay_cache = {}

    # ------------------------------------------------------------------ apply
    def _apply_wrapped(self, grads, trainable_variables):
        learning_rate = self.inner_optimizer.learning_rate  # η_t before the step
        rho = self.rho
        if self.gamma_step == "inner":
            self.inner_optimizer.apply(grads, trainable_variables)
            gamma_grads = None
        else:
            own = [(g, v) for g, v in zip(grads, trainable_variables) if id(v) in self._state.gamma_ids]
            rest = [(g, v) for g, v in zip(grads, trainable_variables) if id(v) not in self._state.gamma_ids]
            if rest:
                self.inner_optimizer.apply([g for g, _ in rest], [v for _, v in rest])
            gamma_grads = {id(v): g for g, v in own}
        self._shrink_gammas(learning_rate, rho, gamma_grads)

    def _shrink_gammas(self, learning_rate, rho, gamma_grads) -> None:
        jobs = []
        for t in self._state.targets:
            grad = None if gamma_grads is None else gamma_grads.get(id(t.variable))
            if gamma_grads is not None and grad is None:
                grad = keras.ops.zeros_like(t.variable)
            threshold = keras.ops.cast(learning_rate * rho * t.penalty, t.variable.dtype)
            jobs.append((t, threshold, grad))
        if keras.backend.backend() == "tensorflow":
            _tf_shrink(self, jobs, learning_rate)
        else:
            for t, threshold, grad in jobs:
                _shrink_variable(t.variable, threshold, grad, learning_rate, self.min_channels,
                                 self.reweight_epsilon, t.beta, *t.slots)

    # ---------------------------------------------------------- serialization
    def get_config(self):
        rho = (
            keras.saving.serialize_keras_object(self._rho_schedule)
            if self._rho_schedule is not None
            else float(keras.ops.convert_to_numpy(self._rho))
        )
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "rho": rho,
            "penalties": dict(self.penalties),
            "exclude": list(self.exclude),
            "gamma_variables": (
                None if self.gamma_variable_paths is None else list(self.gamma_variable_paths)
            ),
            "gamma_step": self.gamma_step,
            "reset_slots": self.reset_slots,
            "default_penalty": self.default_penalty,
            "min_channels": self.min_channels,
            "scale_beta": self.scale_beta,
            "reweight_epsilon": self.reweight_epsilon,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        rho = config.pop("rho")
        if isinstance(rho, dict):
            rho = keras.saving.deserialize_keras_object(rho, custom_objects=custom_objects)
        return cls(inner, rho=rho, **config)


def _record_slots(inner: keras.optimizers.Optimizer, var_list: list) -> dict[int, list]:
    """Build ``inner`` on ``var_list`` and map each variable to its slot variables.

    Returns ``{id(model_variable): [(slot, initialised_with_zeros), ...]}``.
    Slots are recorded by intercepting ``add_variable_from_reference`` during the
    build, which every Keras optimizer uses for per-variable state.
    """
    slots: dict[int, list] = {}
    original = inner.add_variable_from_reference

    def recording(reference_variable, name=None, initializer="zeros"):
        slot = original(reference_variable, name=name, initializer=initializer)
        zeros = isinstance(initializer, str) and initializer == "zeros"
        slots.setdefault(id(reference_variable), []).append((slot, zeros))
        return slot

    inner.add_variable_from_reference = recording
    try:
        with keras.name_scope(inner.name, caller=inner):
            inner.build(var_list)
    finally:
        del inner.add_variable_from_reference  # back to the class method
    return slots


def _scaled_beta(layer: Any) -> Any:
    """The β variable that ``scale_beta=True`` scales along with ``layer``'s γ."""
    if getattr(layer, "beta", None) is None:
        raise ArgumentError(
            f"scale_beta=True: BatchNormalization '{layer.name}' has no β (center=False). "
            "Use scale_beta=False, or exclude=['%s']." % layer.name
        )
    return layer.beta


def _validated_epsilon(epsilon: float | None) -> float | None:
    if epsilon is None:
        return None
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ArgumentError(
            f"reweight_epsilon must be None (the paper's threshold) or a number > 0 "
            f"(e.g. 0.1), got {epsilon!r}."
        )
    return float(epsilon)


def reweighted_thresholds(gamma: Any, threshold: Any, epsilon: float) -> Any:
    """Per-channel thresholds of ``GammaISTA(reweight_epsilon=ε)``: ``t / (|γ_i|/m + ε)``.

    ``m`` is the mean |γ| of the layer (all channels); a layer whose γ are all zero
    gets ``t / ε``. Scaling a layer's γ by ``c`` scales ``m`` by ``c`` too, so the
    weights depend on each γ relative to its layer only.

    >>> import numpy as np
    >>> np.round(np.asarray(reweighted_thresholds(np.array([2.0, 1.0, 0.0]), 0.1, 0.1)), 4)
    array([0.0476, 0.0909, 1.    ])
    """
    ops = keras.ops
    magnitude = ops.abs(ops.convert_to_tensor(gamma))
    mean = ops.mean(magnitude)
    relative = ops.where(mean > 0, magnitude / ops.where(mean > 0, mean, ops.ones_like(mean)),
                         ops.zeros_like(magnitude))
    return ops.cast(threshold, magnitude.dtype) / (relative + ops.cast(epsilon, magnitude.dtype))


def _shrink_variable(gamma, threshold, grad, learning_rate, keep, epsilon, beta, *slots) -> None:
    """γ ← soft_threshold(γ [− η·g], threshold), sparing the ``keep`` largest |γ|;
    zero the slots where γ is 0; scale ``beta`` (when given) by the same factor.
    With ``epsilon``, the threshold is reweighted per channel (:func:`reweighted_thresholds`)."""
    ops = keras.ops
    value = gamma if grad is None else gamma - ops.cast(learning_rate, gamma.dtype) * grad
    value = ops.convert_to_tensor(value)
    if epsilon is not None:
        threshold = reweighted_thresholds(value, threshold, epsilon)
    # sign(v)·max(|v| − t, 0), written so that the sign is taken *before* the
    # shrink and zeros come out as +0.0.
    shrunk = ops.where(
        ops.abs(value) > threshold, value - ops.sign(value) * threshold, ops.zeros_like(value)
    )
    size = int(value.shape[0])
    if keep >= size:
        shrunk = value
    elif keep > 0:
        magnitude = ops.abs(value)
        kth = ops.min(ops.top_k(magnitude, keep, sorted=False)[0])
        shrunk = ops.where(magnitude >= kth, value, shrunk)
    if beta is not None:
        # keep each channel's ReLU threshold -β/γ: the channel fades instead of
        # being clipped (γ that were already 0 keep their β). Computed before
        # γ is assigned: ``value`` may be the variable itself.
        nonzero = ops.not_equal(value, 0.0)
        factor = ops.where(nonzero, shrunk / ops.where(nonzero, value, ops.ones_like(value)),
                           ops.ones_like(value))
        beta.assign(ops.convert_to_tensor(beta) * ops.cast(factor, beta.dtype))
    gamma.assign(shrunk)
    if slots:
        is_zero = ops.equal(shrunk, 0.0)
        for slot in slots:
            current = ops.convert_to_tensor(slot)  # a Keras variable's value, in any backend
            slot.assign(ops.where(is_zero, ops.zeros_like(current), current))


def _tf_shrink(optimizer: GammaISTA, jobs: list, learning_rate) -> None:
    """Run the shrink through tf.distribute like the Keras TF optimizer does."""
    import tensorflow as tf

    grads_and_vars = [(g, t.variable.value) for t, _, g in jobs if g is not None]
    if grads_and_vars:
        reduced = optimizer._all_reduce_sum_gradients(grads_and_vars)
        reduced_iter = iter(g for g, _ in reduced)
        jobs = [(t, thr, next(reduced_iter) if g is not None else None) for t, thr, g in jobs]

    def cross_replica(distribution, jobs, learning_rate):
        for t, threshold, grad in jobs:
            def update(gamma, threshold, grad, learning_rate, beta, *slots):
                _shrink_variable(gamma, threshold, grad, learning_rate, optimizer.min_channels,
                                 optimizer.reweight_epsilon, beta, *slots)

            beta = None if t.beta is None else t.beta.value
            distribution.extended.update(
                t.variable.value,
                update,
                args=(threshold, grad, learning_rate, beta, *[s.value for s in t.slots]),
                group=False,
            )

    tf.__internal__.distribute.interim.maybe_merge_call(
        cross_replica, optimizer._distribution_strategy, jobs, learning_rate
    )
