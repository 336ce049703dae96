"""Coarse ranking (Wang et al.): rank channels from the fine-tuning steps themselves.

Iterative pruning alternates *rank → prune → fine-tune*; with a data-driven
criterion the ranking is one more pass over data at every round.
:class:`CoarseRanking` removes that pass: it is an optimizer wrapper that reads
the gradients the optimizer receives anyway and accumulates first-order Taylor
channel scores from them, so a selection is available at any time
(:meth:`CoarseRanking.selection`) at the price of a few element-wise
operations per step.

**The score** (Molchanov et al. 2019, the BatchNormalization form). For a
channel ``c`` of a BatchNormalization output ``y = γ·x̂ + β``, the first-order
change of the batch loss ``L`` when the channel is set to zero is
``Σ_{examples, positions} ∂L/∂y_c · y_c``, and exactly

    Σ ∂L/∂y_c · y_c  =  γ_c · ∂L/∂γ_c  +  β_c · ∂L/∂β_c

because ``∂L/∂γ_c = Σ ∂L/∂y_c · x̂_c`` and ``∂L/∂β_c = Σ ∂L/∂y_c`` (whatever
statistics ``x̂`` was normalised with). ``∂L/∂γ`` and ``∂L/∂β`` are what the
optimizer is handed every training step, and ``γ``, ``β`` are the values the
forward pass used (the wrapper reads them before the inner optimizer updates
them), so the score costs no extra forward or backward pass. Each step adds
the **square** of the batch's value per channel, and the score is the mean
over the steps: ``(1/T) Σ_t (γ·g_γ + β·g_β)_t²``, as Molchanov et al. average
squared per-minibatch contributions. Squared rather than absolute: the square
is what their criterion accumulates; with a gradient already averaged over the
batch, per-example magnitudes (the 2017 criterion's ``|·|`` per example) are
not available from the optimizer anyway. Tied channels (a residual stream
carried by several BatchNormalization layers, see
:mod:`tf_gamma_prune.analysis.channel_graph`) are removed together, so their
signed contributions are added up *before* squaring: the first-order change
of removing the whole group.

**Scope.** Channels are scored where a BatchNormalization with a trainable γ
produces them; a contribution that reaches the loss through a path without
BatchNormalization (e.g. a conv added straight into a residual stream) is not
seen. The gradients are those the optimizer receives: a ``gamma_regularizer``
or a penalty added by a wrapper *outside* CoarseRanking would enter them, so
put CoarseRanking outermost (``CoarseRanking(GammaISTA(SGD(...)))``; note that
``CostTarget`` looks for GammaISTA as the compiled optimizer and does not see
through CoarseRanking). Under ``tf.distribute`` the γ and β gradients are
summed over replicas first (like the inner optimizer does), so the score is
the global batch's. Works with the TensorFlow and JAX backends.

The scores are optimizer variables: they are saved with ``model.save`` and
restored by ``keras.models.load_model`` (whose ``model.optimizer`` is again a
CoarseRanking), and they keep accumulating over several ``fit`` calls until
:meth:`~CoarseRanking.reset`.

Unverified: the coarse-ranking paper's text was not available to us; from its
abstract it reuses "intermediate results during fine-tuning" for data-driven
criteria. Which criterion and which intermediate results (here: the γ and β
gradients) are our choices.

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune import prune_model
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(4, 4, 8, 8, 8, 8), input_shape=(8, 8, 1))
>>> ranking = CoarseRanking(keras.optimizers.SGD(0.01))
>>> model.compile(ranking, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> x = np.random.default_rng(0).random((32, 8, 8, 1), "float32")
>>> y = np.arange(32) % 10
>>> _ = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
>>> ranking.batches                                   # every training step was ranked
4
>>> selection = ranking.selection(0.5)               # keyed by BatchNormalization layer
>>> sum(len(keep) for keep in selection.values())
20
>>> small = prune_model(model, selection, probe=False)
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.errors import ArgumentError, CriterionError
from tf_gamma_prune.prune.criteria import Selection, _checked_fraction, _named_layers, _units
from tf_gamma_prune.prune.criteria_prunenet import pooled_selection
from tf_gamma_prune.prune.criteria_redundancy import _checked_min_channels, _checked_round_to
from tf_gamma_prune.sparsify.distillation import model_being_trained
from tf_gamma_prune.sparsify.wrapper import (
    WrapsInnerOptimizer,
    calling_model,
    check_inner_optimizer,
    find_gamma_layers,
)


def _eager() -> Any:
    """Eager execution for the channel-graph analysis (it reads γ values)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


class _Ranked:
    """One ranked BatchNormalization: graph name, layer, slice of the score vector."""

    def __init__(self, name: str, layer: Any, positions: np.ndarray) -> None:
        self.name = name
        self.layer = layer
        self.positions = positions  # index into the ranked groups, one per channel


class _RankingState:
    """Python-side state (model, channel graph), hidden from Keras' variable tracking."""

    def __init__(self) -> None:
        self.model: keras.Model | None = None
        self.graph: ChannelGraph | None = None
        self.ranked: list[_Ranked] = []
        self.groups: np.ndarray = np.zeros(0, int)  # graph group of each score entry
        self.segment_ids: np.ndarray = np.zeros(0, "int32")


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class CoarseRanking(WrapsInnerOptimizer, keras.optimizers.Optimizer):
    """Wrap a Keras optimizer and accumulate Taylor channel scores from its gradients.

    Args:
        inner_optimizer: any ``keras.optimizers.Optimizer``; it does the
            updates, unchanged (learning rate, iterations and slots are its).
        name: optimizer name.

    Use it as the model's optimizer and keep a reference to it::

        ranking = CoarseRanking(keras.optimizers.SGD(0.01, momentum=0.9))
        model.compile(optimizer=ranking, loss=...)
        model.fit(...)                                    # fine-tune and rank
        model = prune_model(model, ranking.selection(0.2))

    BatchNormalization layers are found as GammaISTA finds them: from the model
    that builds the optimizer (``fit``, ``load_model``), nested models and a
    :class:`~tf_gamma_prune.Distiller`'s student included; in a custom training
    loop call ``ranking.attach(model)`` before the first ``apply_gradients``.
    At build the optimizer also analyses the model's channel graph (which
    channels are tied), as ``prune_model`` does; models it cannot analyse
    (subclassed) raise there.

    Attributes:
        batches: training steps ranked since the last :meth:`reset`.
        ranked_layers: names of the ranked BatchNormalization layers.

    Raises:
        TypeError: ``inner_optimizer`` is not a Keras 3 optimizer.
        NoBatchNormError: the model has no trainable BatchNormalization γ (at build).
        RuntimeError: built outside ``fit`` without ``attach``.
    """

    def __init__(self, inner_optimizer: keras.optimizers.Optimizer, *,
                 name: str | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise ArgumentError(
                f"CoarseRanking does not take {sorted(kwargs)}; set them on the inner "
                "optimizer (e.g. SGD(..., weight_decay=...))."
            )
        check_inner_optimizer("CoarseRanking", inner_optimizer)
        super().__init__(learning_rate=0.0, name=name or "coarse_ranking")
        self.inner_optimizer = inner_optimizer
        self._init_gamma_variables(None)
        self._ranking = _RankingState()
        self._scores = None
        self._batches = None

    # ------------------------------------------------------------------ build
    def build(self, var_list):
        var_list = list(var_list)
        model = self._state.model or calling_model(var_list)
        named = find_gamma_layers("CoarseRanking", model, var_list)  # raises without a model
        model = model_being_trained(model)
        with _eager():  # Keras may build the optimizer inside the traced train step
            graph = channel_graph(model, fold="bias", unknown_layers="opaque")
        ranked, parts = [], []
        seen: set[int] = set()
        for _, layer in named:
            call = next((c for c in graph.layer_graph.calls
                         if c.layer is layer and c.outputs and c.outputs[0] in graph.channels),
                        None)
            if call is None or id(layer) in seen:
                continue
            seen.add(id(layer))
            groups = np.asarray(graph.channels[call.outputs[0]])
            if len(groups) != int(layer.gamma.shape[0]):
                continue  # γ not along the graph's channel axis: not rankable
            ranked.append(_Ranked(call.name, layer, groups))
            parts.append(groups)
        groups = np.unique(np.concatenate(parts)) if parts else np.zeros(0, int)
        for r in ranked:
            r.positions = np.searchsorted(groups, r.positions)
        state = self._ranking
        state.model, state.graph, state.ranked, state.groups = model, graph, ranked, groups
        state.segment_ids = (np.concatenate([r.positions for r in ranked]).astype("int32")
                             if ranked else np.zeros(0, "int32"))
        self._build_inner(var_list)
        self._scores = self.add_variable((max(len(groups), 1),), initializer="zeros",
                                         dtype="float32", aggregation="only_first_replica",
                                         name="taylor_scores")
        self._batches = self.add_variable((), initializer="zeros", dtype="float32",
                                          aggregation="only_first_replica",
                                          name="ranked_batches")
        super().build(var_list)

    # ------------------------------------------------------------------ apply
    def _apply_wrapped(self, grads, trainable_variables):
        self._accumulate(grads, trainable_variables)  # γ, β as the forward pass saw them
        self.inner_optimizer.apply(grads, trainable_variables)

    def _accumulate(self, grads: Sequence[Any], variables: Sequence[Any]) -> None:
        """Add ``(Σ_tied (γ·g_γ + β·g_β))²`` of this step to the scores."""
        ops = keras.ops
        ranked = self._ranking.ranked
        if not ranked:
            return
        by_id = {id(v): g for g, v in zip(grads, variables) if g is not None}
        wanted = []  # (gradient, variable) of every ranked γ and β that has a gradient
        for r in ranked:
            for v in (r.layer.gamma, getattr(r.layer, "beta", None)):
                if v is not None and id(v) in by_id:
                    wanted.append((by_id[id(v)], v))
        if not wanted:
            return
        if keras.backend.backend() == "tensorflow":
            # Under tf.distribute each replica holds its share of the gradient; the
            # inner optimizer sums them, and so does the score (outside: identity).
            reduced = self._all_reduce_sum_gradients([(g, v.value) for g, v in wanted])
            reduced_by_id = {id(v): g for (g, _), (_, v) in zip(reduced, wanted)}
        else:
            reduced_by_id = {id(v): g for g, v in wanted}
        parts = []
        for r in ranked:
            contribution = ops.zeros((len(r.positions),), "float32")
            for v in (r.layer.gamma, getattr(r.layer, "beta", None)):
                g = None if v is None else reduced_by_id.get(id(v))
                if g is not None:
                    value = ops.cast(ops.convert_to_tensor(v), "float32")
                    contribution = contribution + value * ops.cast(g, "float32")
            parts.append(contribution)
        per_group = ops.segment_sum(ops.concatenate(parts, axis=0),
                                    ops.convert_to_tensor(self._ranking.segment_ids),
                                    num_segments=len(self._ranking.groups))
        scale = self.inner_optimizer.loss_scale_factor
        if scale is not None:
            per_group = per_group / scale
        self._scores.assign_add(ops.square(per_group))
        self._batches.assign_add(ops.ones((), "float32"))

    # ------------------------------------------------------------------ results
    @property
    def batches(self) -> int:
        """Training steps ranked since the last :meth:`reset` (0 before build)."""
        if self._batches is None:
            return 0
        return int(round(float(keras.ops.convert_to_numpy(self._batches))))

    @property
    def ranked_layers(self) -> list[str]:
        """Names (as in the channel graph) of the ranked BatchNormalization layers."""
        return [r.name for r in self._ranking.ranked]

    def reset(self) -> None:
        """Forget the accumulated scores (e.g. after pruning the weights in place)."""
        if self._scores is not None:
            self._scores.assign(keras.ops.zeros(self._scores.shape, "float32"))
            self._batches.assign(keras.ops.zeros((), "float32"))

    def channel_scores(self, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Mean squared Taylor score of each channel of the ranked layers.

        Args:
            layers: BatchNormalization layer names (qualified or unique bare
                names) instead of the default (every ranked one whose channels
                may be removed).

        Returns:
            ``{layer_name: scores}``, one per channel (not normalised); tied
            channels carry the score of their group.

        Raises:
            CriterionError: nothing ranked yet; unknown or unranked layers.
        """
        scores = self._group_scores()
        names = self._layers(layers)
        return {n: scores[self._ranking.graph.layer_channels(n)] for n in names}

    def selection(self, prune_fraction: float, *, layers: Sequence[str] | None = None,
                  min_channels: int = 1, round_to: int = 1,
                  normalize: bool = True) -> Selection:
        """The selection the scores so far give: one global threshold.

        Each layer's scores (a unit of tied layers: together) are divided by
        their L2 norm (Molchanov et al. 2017's layer normalisation;
        ``normalize=False``: raw scores), then the ``floor(prune_fraction · n)``
        lowest of the ``n`` removable channels of the ranked layers go; each
        layer keeps ``min_channels`` and a multiple of ``round_to``
        (best-scored channels come back).

        Args:
            prune_fraction: in ``[0, 1)``.
            layers: BatchNormalization layer names instead of the default.
            min_channels: channels every layer keeps at least (>= 1).
            round_to: keep each layer's width at a multiple of this.
            normalize: per-layer L2 normalisation before the global threshold.

        Returns:
            ``{bn_layer_name: kept channel indices}`` for ``prune_model(model, ...)``.

        Raises:
            CriterionError: nothing ranked yet; bad fraction / options / layers.
        """
        fraction = _checked_fraction(prune_fraction)
        min_channels = _checked_min_channels(min_channels)
        round_to = _checked_round_to(round_to)
        scores = self._group_scores().copy()
        graph = self._ranking.graph
        names = self._layers(layers)
        if normalize:
            members = {n: graph.layer_channels(n) for n in names}
            for unit in _units(members):
                groups = np.unique(np.concatenate([members[n] for n in unit]))
                norm = float(np.linalg.norm(scores[groups]))
                if norm > 0:
                    scores[groups] /= norm
        return pooled_selection(graph, names, scores, fraction, min_channels=min_channels,
                                round_to=round_to)

    def criterion(self, model: keras.Model, prune_fraction: float, **kwargs: Any) -> Selection:
        """:meth:`selection` with a criterion's signature, for ``selection_for_macs``.

        ``selection_for_macs(model, ranking.criterion, target_macs)``; ``model``
        must be the model being ranked (or the Distiller training it).
        """
        ranked = self._ranking.model
        if ranked is None or model_being_trained(model) is not ranked:
            raise CriterionError(
                f"This CoarseRanking ranks model '{getattr(ranked, 'name', None)}', not "
                f"'{model.name}'; pass the model it was compiled with."
            )
        return self.selection(prune_fraction, **kwargs)

    # ---------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)

    # ------------------------------------------------------------------ helpers
    def _group_scores(self) -> np.ndarray:
        """``(num_groups,)`` mean squared score of every channel group (0: unranked)."""
        if self._scores is None or self.batches == 0:
            raise CriterionError(
                "CoarseRanking has no scores yet: compile the model with it as the "
                "optimizer and fit at least one step (a custom loop: attach(model), then "
                "apply_gradients)."
            )
        state = self._ranking
        out = np.zeros(state.graph.num_groups)
        values = np.asarray(keras.ops.convert_to_numpy(self._scores), np.float64)
        out[state.groups] = values[: len(state.groups)] / self.batches
        return out

    def _layers(self, layers: Sequence[str] | None) -> list[str]:
        graph = self._ranking.graph
        ranked = self.ranked_layers
        if layers is None:
            names = [n for n in ranked if not np.all(graph.pinned[graph.layer_channels(n)])]
            if not names:
                raise CriterionError(
                    "No ranked BatchNormalization layer has channels that may be removed."
                )
            return names

        def check(name: str) -> None:
            if name not in ranked:
                raise CriterionError(
                    f"'{name}' is not a ranked BatchNormalization layer (one with a trainable "
                    f"γ); CoarseRanking ranks: {', '.join(ranked)}."
                )
            if np.all(graph.pinned[graph.layer_channels(name)]):
                raise CriterionError(f"The channels of '{name}' cannot be removed (pinned).")

        return _named_layers(graph, layers, check)
