"""What every γ-penalising optimizer wrapper shares: :class:`WrapsInnerOptimizer`.

A wrapper (``GammaISTA``, ``NetworkSlimming``) holds an inner Keras optimizer,
delegates learning rate, iterations and variables to it (as Keras'
``LossScaleOptimizer`` does), and finds the BatchNormalization γ it penalises:
from the model that is compiling it (located on the call stack when Keras builds
the optimizer), from ``optimizer.attach(model)``, or from explicit
``gamma_variables``. Penalty strengths live in non-trainable variables so they
are saved, restored and can change during training.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Mapping, Sequence

import keras

from tf_gamma_prune.analysis.batchnorm import (
    NoBatchNormError,
    batchnorm_layers,
    check_finite_gammas,
)
from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.sparsify.distillation import model_being_trained


@dataclasses.dataclass(eq=False)
class PenalisedGamma:
    """One penalised γ variable and what the shrink needs to know about it."""

    name: str
    variable: Any
    penalty: float
    slots: list = dataclasses.field(default_factory=list)
    beta: Any = None  # the layer's β variable when GammaISTA(scale_beta=True)


class _State:
    """Python-side state of a GammaISTA, hidden from Keras' variable tracking."""

    def __init__(self, explicit_gammas: list):
        self.explicit_gammas = explicit_gammas
        self.model: keras.Model | None = None
        self.targets: list[PenalisedGamma] = []
        self.gamma_ids: set[int] = set()


class WrapsInnerOptimizer:
    """Mixin for optimizers that wrap another one (GammaISTA, NetworkSlimming).

    Like ``keras.optimizers.LossScaleOptimizer``: learning rate, iterations and
    slots are the wrapped ``self.inner_optimizer``'s. Put it before
    ``keras.optimizers.Optimizer`` in the bases.
    """

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def _init_gamma_variables(self, gamma_variables: Sequence[Any] | None) -> None:
        """Remember explicit ``gamma_variables`` (variables or paths) for build."""
        self.gamma_variable_paths = (
            None
            if gamma_variables is None
            else tuple(v if isinstance(v, str) else v.path for v in gamma_variables)
        )
        # Plain containers of variables would be picked up by Keras' attribute
        # tracking and saved as optimizer state; keep them in an untracked holder.
        self._state = _State(
            explicit_gammas=[]
            if gamma_variables is None
            else [v for v in gamma_variables if not isinstance(v, str)]
        )

    def _chosen_gamma_variables(self, var_list: list) -> list:
        """The explicit ``gamma_variables`` among ``var_list`` (build time)."""
        return explicit_gamma_variables(
            var_list, self._state.explicit_gammas, self.gamma_variable_paths
        )

    def _penalty_variable(self, name: str, value: Any):
        """A validated, non-trainable float32 penalty strength tracked by this optimizer."""
        value = validated_penalty(name, value)
        with keras.name_scope(self.name, caller=self):
            variable = keras.Variable(
                value, name=name, dtype="float32", trainable=False,
                aggregation="only_first_replica",
            )
        self._track_variable(variable)
        return variable

    def _built_for(self, trainable_variables) -> list:
        """Build on first use (like ``Optimizer.apply``); the variables to update."""
        if not self.built:
            if trainable_variables is None:
                raise ArgumentError(
                    "Build the optimizer first (optimizer.build(variables)) or pass "
                    "trainable_variables."
                )
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        return list(trainable_variables)

    def _build_inner(self, var_list: list) -> None:
        """Build the wrapped optimizer under its own name (its slots keep their paths)."""
        inner = self.inner_optimizer
        with keras.name_scope(inner.name, caller=inner):
            inner.build(var_list)

    def apply(self, grads, trainable_variables=None):
        """Build on first use, then :meth:`_apply_wrapped` (no gradients: nothing to do)."""
        if len(grads) == 0:
            return
        self._apply_wrapped(grads, self._built_for(trainable_variables))

    def _apply_wrapped(self, grads: list, trainable_variables: list) -> None:
        """The wrapper's step: by default the inner optimizer's alone."""
        self.inner_optimizer.apply(grads, trainable_variables)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def attach(self, model: keras.Model):
        """Use ``model``'s BatchNormalization layers for γ discovery.

        Only needed in custom training loops that call ``apply_gradients`` without
        ``model.fit``; returns ``self``.
        """
        self._state.model = model
        return self


# ---------------------------------------------------------------- helpers
def check_inner_optimizer(owner: str, inner_optimizer: Any) -> None:
    """Raise ``TypeError`` unless ``inner_optimizer`` is a Keras 3 optimizer."""
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"{owner} wraps a Keras 3 optimizer instance, e.g. "
            f"{owner}(keras.optimizers.SGD(0.05)); got {inner_optimizer!r}."
        )


def find_gamma_layers(
    owner: str, model: keras.Model | None, var_list: list
) -> list[tuple[str, Any]]:
    """``(qualified_name, layer)`` of the BatchNormalization layers whose γ is in
    ``var_list``, from ``model`` or, when ``None``, the model building the
    optimizer (found up the call stack).

    Raises:
        RuntimeError: no model given and none found (built outside ``fit``).
        NoBatchNormError: no BatchNormalization γ among ``var_list``.
        NonFiniteGammaError: a γ holds NaN/Inf.
    """
    by_id = {id(v) for v in var_list}
    model = model or calling_model(var_list)
    if model is not None:
        model = model_being_trained(model)  # a Distiller's student: names as prune_model's
    if model is None:
        raise RuntimeError(
            f"{owner} could not tell which variables are BatchNormalization γ: "
            "it was built outside model.fit/compile. Call "
            "`optimizer.attach(model)` first, or pass "
            "`gamma_variables=[bn.gamma for bn in ...]`."
        )
    named = [(n, l) for n, l in batchnorm_layers(model) if id(l.gamma) in by_id]
    if not named:
        raise NoBatchNormError(
            f"Model '{model.name}' has no trainable BatchNormalization γ, so "
            f"{owner} would sparsify nothing. Add BatchNormalization after the "
            "conv/dense layers you want to prune, or use the plain optimizer."
        )
    check_finite_gammas(named)
    return named


def explicit_gamma_variables(
    var_list: list, explicit: Sequence[Any], paths: Sequence[str]
) -> list:
    """The variables of ``var_list`` given explicitly (as objects in ``explicit``
    or by ``.path`` in ``paths``), in ``var_list`` order.

    Raises:
        ValueError: a path that is not among ``var_list``.
    """
    explicit_ids = {id(v) for v in explicit}
    paths = set(paths)
    chosen = [v for v in var_list if id(v) in explicit_ids or v.path in paths]
    found = {v.path for v in chosen}
    missing = sorted(p for p in paths if p not in found)
    if missing:
        raise ArgumentError(
            f"gamma_variables {missing} are not among the trainable variables. "
            f"Valid paths include: {', '.join(v.path for v in var_list[:20])} ..."
        )
    return chosen


def validated_penalty(what: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(f"{what} must be finite and ≥ 0, got {value}.")
    return value


def validated_penalties(penalties: Mapping[str, float] | None) -> dict[str, float]:
    if penalties is None:
        return {}
    if not isinstance(penalties, Mapping):
        raise TypeError(
            "penalties must map layer names to λ, e.g. gamma_penalties(model); "
            f"got {type(penalties).__name__}."
        )
    return {str(k): validated_penalty(f"penalties['{k}']", v) for k, v in penalties.items()}


def calling_model(var_list: list) -> keras.Model | None:
    """The ``keras.Model`` up the call stack whose variables these are.

    Keras builds optimizers from model methods (``fit``'s symbolic build, the
    train step, ``compile_from_config`` when loading); the model is that
    method's ``self``.
    """
    wanted = {id(v) for v in var_list}
    frame = inspect.currentframe()
    try:
        depth = 0
        while frame is not None and depth < 80:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, keras.Model):
                ids = {id(v) for v in candidate.trainable_variables}
                if wanted and wanted <= ids:
                    return candidate
            frame = frame.f_back
            depth += 1
    finally:
        del frame
    return None
