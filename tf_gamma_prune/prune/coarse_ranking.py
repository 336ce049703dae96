"""Coarse ranking (Wang et al.): rank channels during fine-tuning, not in separate passes.

Iterative pruning alternates *rank → prune → fine-tune*; with a data-driven
criterion the ranking is one more pass over data at every round.
:class:`CoarseRanking` is a Keras callback that accumulates first-order Taylor
(activation × gradient) channel scores *while* the model fine-tunes, every
``interval`` training steps, so a selection is available at any time
(:meth:`CoarseRanking.selection`) and the loop needs no ranking pass of its own.

**The score** (Molchanov et al. 2017's Taylor criterion, here where this
library removes a channel: at the input of each conv/dense layer that reads
it). For one example with loss ``ℓ`` and a channel ``c`` read as the feature
map ``a_c`` by a conv/dense layer, ``|Σ_positions a_c · ∂ℓ/∂a_c|`` is the
first-order change of ``ℓ`` when the channel is set to 0 there (positions of
every reader summed; tied channels summed over their tensors). The callback
adds it up over examples and reports the mean. :meth:`~CoarseRanking.selection`
divides each layer's scores by their L2 norm (Molchanov's layer
normalisation) and cuts the smallest with one global threshold.

**How it fits into** ``fit``: a Keras callback does not see the training
batch or its gradients, so every ``interval`` steps the callback draws the
next batch from its own ``data`` (typically the same training data) and runs
one forward and backward pass in inference mode (``training=False``: no
dropout, BatchNormalization statistics neither used from the batch nor
updated) with a ``tf.GradientTape`` over the intermediate tensors. That costs
about one training step per ``interval`` steps, instead of a separate pass of
many batches per round (``benchmarks/coarse_ranking_time.py`` measures it).
Custom training loops can feed their own batches through
:meth:`~CoarseRanking.update`. TensorFlow backend only.

Unverified: the coarse-ranking paper's text was not available to us; from its
abstract it reuses "intermediate results during fine-tuning" for data-driven
criteria. Which criterion, which intermediate results and how they are
accumulated are our choices (above).

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune import prune_model
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(4, 4, 8, 8, 8, 8), input_shape=(8, 8, 1))
>>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> x = np.random.default_rng(0).random((32, 8, 8, 1), "float32")
>>> y = np.arange(32) % 10
>>> ranking = CoarseRanking(data=(x, y), interval=2, batch_size=8)
>>> _ = model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ranking])
>>> ranking.updates, ranking.examples                # 4 steps, every 2nd one ranked
(2, 16)
>>> selection = ranking.selection(0.5)
>>> sum(len(keep) for keep in selection.values())
20
>>> small = prune_model(model, selection, probe=False)
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Iterator, Mapping, Sequence

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.analysis.constants import accepts_training
from tf_gamma_prune.analysis.layer_graph import TensorId
from tf_gamma_prune.errors import ArgumentError, CriterionError, InputDataError
from tf_gamma_prune.inputs import InputSpec, _checked, input_name, is_stream
from tf_gamma_prune.prune.criteria import Selection, _checked_fraction, _filter_layers, _units
from tf_gamma_prune.prune.criteria_prunenet import pooled_selection
from tf_gamma_prune.prune.criteria_redundancy import _checked_min_channels, _checked_round_to


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class CoarseRanking(keras.callbacks.Callback):
    """Accumulate Taylor (activation × gradient) channel scores during ``fit``.

    Args:
        data: batches ``(x, y)`` or ``(x, y, sample_weight)`` to rank on: one
            in-memory ``(x, y)`` (cut into ``batch_size`` batches) or a stream
            of such batches (``tf.data.Dataset``, list, iterator). Datasets and
            in-memory data are cycled; a one-shot iterator stops the ranking
            (with a warning) when it runs out. Not part of the config: pass it
            again after loading.
        interval: rank one batch every this many training steps.
        batch_size: batch size for in-memory ``data``.

    Attributes:
        updates: batches ranked so far.
        examples: examples ranked so far.
        ranking_seconds: wall time spent ranking (inside :meth:`update`).

    The model must be compiled (its loss is used, through
    ``model.compute_loss``). Fitting a different model resets the scores;
    fitting the same model again keeps accumulating (call :meth:`reset` to
    start over).
    """

    def __init__(self, data: Any = None, *, interval: int = 10, batch_size: int = 32) -> None:
        super().__init__()
        for arg, value in (("interval", interval), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ArgumentError(f"{arg} must be a positive integer, got {value!r}.")
        self.data = data
        self.interval = int(interval)
        self.batch_size = int(batch_size)
        self._ranked_model: keras.Model | None = None
        self._source: Iterator[tuple[Any, Any, Any]] | None = None
        self._warned = False
        self.reset()

    # ------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the accumulated scores (and the channel graph)."""
        self._graph: ChannelGraph | None = None
        self._sites: list[tuple[TensorId, np.ndarray]] = []
        self._totals: np.ndarray | None = None
        self.updates = 0
        self.examples = 0
        self.ranking_seconds = 0.0
        self._steps = 0

    def set_model(self, model: keras.Model) -> None:
        if self._ranked_model is not None and model is not self._ranked_model:
            self.reset()
            self._source = None
        super().set_model(model)

    # ------------------------------------------------------------ fit hooks
    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.data is None:
            raise ArgumentError(
                "CoarseRanking needs data=(x, y) or a dataset of (x, y) batches to rank on "
                "(usually the training data); it is not saved in the config."
            )
        self._prepare(self.model)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps += 1
        if self._steps % self.interval == 0:
            item = self._next_batch()
            if item is not None:
                self.update(*item)

    # ------------------------------------------------------------ ranking
    def update(self, x: Any, y: Any, sample_weight: Any = None) -> None:
        """Rank one batch now: add its per-example ``|Σ a · ∂ℓ/∂a|`` to the scores.

        Args:
            x: model inputs of one batch (array, list or dict of arrays).
            y: targets, as the compiled loss takes them.
            sample_weight: optional per-example weights.

        Raises:
            ArgumentError: not the TensorFlow backend; an uncompiled model; no model.
            InputDataError: ``x`` does not fit the model's inputs.
        """
        model = self._model_or_error()
        self._prepare(model)
        start = time.perf_counter()
        arrays = _checked(x, self._specs, "CoarseRanking data", InputDataError)
        per_example = _taylor(model, self._graph, self._sites, arrays, y, sample_weight)
        self._totals += np.abs(per_example).sum(axis=0)
        self.examples += per_example.shape[0]
        self.updates += 1
        self.ranking_seconds += time.perf_counter() - start

    def channel_scores(self, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Mean per-example Taylor score of each channel of the ranked layers.

        Args:
            layers: conv (or ``Dense``) layer names instead of the default
                (every conv whose channels may be removed on their own).

        Returns:
            ``{layer_name: scores}``, one per output channel (not normalised).

        Raises:
            CriterionError: nothing ranked yet; unknown or unprunable layers.
        """
        scores = self._mean_scores()
        names = _filter_layers(self._graph, layers)
        return {n: scores[self._graph.layer_channels(n)] for n in names}

    def selection(self, prune_fraction: float, *, layers: Sequence[str] | None = None,
                  min_channels: int = 1, round_to: int = 1,
                  normalize: bool = True) -> Selection:
        """The selection the scores so far give: one global threshold.

        Each layer's scores (a unit of tied layers: together) are divided by
        their L2 norm (``normalize=False``: raw scores), then the
        ``floor(prune_fraction · n)`` lowest of the ``n`` removable channels
        of the ranked layers go; each layer keeps ``min_channels`` and a
        multiple of ``round_to`` (best-scored channels come back).

        Args:
            prune_fraction: in ``[0, 1)``.
            layers: conv (or ``Dense``) layer names instead of the default.
            min_channels: channels every layer keeps at least (>= 1).
            round_to: keep each layer's width at a multiple of this.
            normalize: per-layer L2 normalisation before the global threshold.

        Returns:
            ``{layer_name: kept channel indices}`` for ``prune_model(model, ...)``.

        Raises:
            CriterionError: nothing ranked yet; bad fraction / options / layers.
        """
        fraction = _checked_fraction(prune_fraction)
        min_channels = _checked_min_channels(min_channels)
        round_to = _checked_round_to(round_to)
        scores = self._mean_scores().copy()
        graph = self._graph
        names = _filter_layers(graph, layers)
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
        must be the model being ranked.
        """
        if model is not self._ranked_model:
            raise CriterionError(
                f"This CoarseRanking ranks model "
                f"'{getattr(self._ranked_model, 'name', None)}', not '{model.name}'; "
                "pass the model it was fitted with."
            )
        return self.selection(prune_fraction, **kwargs)

    def get_config(self) -> dict[str, Any]:
        """``interval`` and ``batch_size`` (``data`` is not serialised)."""
        return {"interval": self.interval, "batch_size": self.batch_size}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CoarseRanking:
        return cls(**config)

    # ------------------------------------------------------------ helpers
    def _model_or_error(self) -> keras.Model:
        model = getattr(self, "_model", None)
        if model is None:
            raise ArgumentError(
                "CoarseRanking has no model: pass it to model.fit(callbacks=[...]) or call "
                "set_model(model) before update()."
            )
        return model

    def _prepare(self, model: keras.Model) -> None:
        if keras.backend.backend() != "tensorflow":
            raise ArgumentError(
                f"CoarseRanking needs the TensorFlow backend (it uses tf.GradientTape); "
                f"Keras runs on '{keras.backend.backend()}'. Set KERAS_BACKEND=tensorflow."
            )
        if not getattr(model, "compiled", False) or getattr(model, "loss", None) is None:
            raise ArgumentError(
                f"Model '{model.name}' is not compiled with a loss; CoarseRanking ranks with "
                "the compiled loss, so call model.compile(optimizer, loss=...) first."
            )
        if self._graph is not None and model is self._ranked_model:
            return
        self._ranked_model = model
        graph = channel_graph(model)
        self._graph = graph
        lg = graph.layer_graph
        self._specs = [InputSpec(input_name(lg.specs[t], i), tuple(lg.shape(t)))
                       for i, t in enumerate(lg.inputs)]
        sites: dict[TensorId, np.ndarray] = {}
        for _, t in graph.fold_sites():
            groups = graph.channels[t]
            if t not in lg.inputs and not np.all(graph.pinned[groups]):
                sites[t] = groups
        self._sites = list(sites.items())
        self._totals = np.zeros(graph.num_groups)

    def _mean_scores(self) -> np.ndarray:
        if self._totals is None or self.examples == 0:
            raise CriterionError(
                "CoarseRanking has no scores yet: fit the model with it as a callback (at "
                f"least interval={self.interval} steps) or call update(x, y) first."
            )
        return self._totals / self.examples

    def _next_batch(self) -> tuple[Any, Any, Any] | None:
        if self._source is None:
            self._source = _batches(self.data, len(self._specs), self.batch_size)
        try:
            return next(self._source)
        except StopIteration:
            if not self._warned:
                warnings.warn("CoarseRanking: data ran out (a one-shot iterator); ranking "
                              "stops. Pass a tf.data.Dataset or arrays to cycle through.",
                              stacklevel=2)
                self._warned = True
            return None


def _batches(data: Any, n_inputs: int, batch_size: int) -> Iterator[tuple[Any, Any, Any]]:
    """``(x, y, sample_weight)`` batches of ``data``, cycling where it can be re-read."""
    if not is_stream(data, n_inputs):
        x, y, w = _split(data, n_inputs)
        n = len(keras.tree.flatten(x)[0])
        if n == 0:
            return
        while True:
            for start in range(0, n, batch_size):
                take = slice(start, start + batch_size)
                yield (keras.tree.map_structure(lambda a: a[take], x), _take(y, take),
                       _take(w, take))
    one_shot = iter(data) is data
    while True:
        elements = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
        empty = True
        for element in elements:
            empty = False
            yield _split(element, n_inputs)
        if one_shot or empty:
            return


def _take(value: Any, index: slice) -> Any:
    return None if value is None else keras.tree.map_structure(lambda a: a[index], value)


def _split(element: Any, n_inputs: int) -> tuple[Any, Any, Any]:
    """``(x, y[, sample_weight])`` → ``(x, y, sample_weight)``."""
    if isinstance(element, (tuple, list)) and len(element) in (2, 3) and (
            n_inputs == 1 or isinstance(element[0], (tuple, list, Mapping))):
        return element[0], element[1], element[2] if len(element) == 3 else None
    raise InputDataError(
        "CoarseRanking data must be (x, y) or (x, y, sample_weight) batches (the loss needs "
        f"targets); got a {type(element).__name__}."
    )


def _taylor(model: keras.Model, graph: ChannelGraph, sites: list[tuple[TensorId, np.ndarray]],
            arrays: list[np.ndarray], y: Any, sample_weight: Any) -> np.ndarray:
    """``(examples, num_groups)``: ``Σ a · ∂ℓ_n/∂a`` of each example ``n``, by channel group.

    Runs the model's layers eagerly (inference mode) under a ``tf.GradientTape``
    that watches the tensors read by conv/dense layers; ``ℓ_n`` is the example's
    share of the compiled loss times the batch size (exact for the default
    ``"sum_over_batch_size"`` reduction)."""
    import tensorflow as tf

    lg = graph.layer_graph
    wanted = {t for t, _ in sites}
    values: dict[TensorId, Any] = {t: tf.convert_to_tensor(a) for t, a in zip(lg.inputs, arrays)}
    watched: dict[TensorId, Any] = {}
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for call in lg.calls:
            args, kwargs = call.call_arguments(values)
            if accepts_training(call.layer):
                kwargs["training"] = False
            outs = keras.tree.flatten(call.layer(*args, **kwargs))
            for t, v in zip(call.outputs, outs):
                if t in wanted:
                    tape.watch(v)
                    watched[t] = v
                values[t] = v
        outputs = [values[t] for t in lg.outputs]
        y_pred = keras.tree.pack_sequence_as(model.output, outputs) \
            if len(outputs) > 1 else outputs[0]
        loss = model.compute_loss(x=None, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                  training=False)
    order = [t for t, _ in sites if t in watched]
    grads = tape.gradient(loss, [watched[t] for t in order])
    batch = int(arrays[0].shape[0])
    per_example = np.zeros((graph.num_groups, batch))
    by_tensor = dict(sites)
    for t, g in zip(order, grads):
        if g is None:
            continue
        a = tf.cast(watched[t], tf.float32)
        product = a * tf.cast(g, tf.float32)
        axes = list(range(1, len(product.shape) - 1))
        summed = tf.reduce_sum(product, axis=axes) if axes else product  # (batch, C)
        np.add.at(per_example, by_tensor[t], np.asarray(summed, np.float64).T)
    return per_example.T * batch
