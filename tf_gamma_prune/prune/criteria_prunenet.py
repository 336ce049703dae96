"""PruneNet (Khetan & Karnin 2020): one global threshold on data-driven channel importance.

A channel matters as much as what it feeds into the next layer. On a small
sample of data, :func:`global_importance_scores` measures, for each channel, the
variance of its contribution to the output of every conv/dense layer that reads
it (its *share* of that layer's output variance), and
:func:`global_importance_selection` removes the channels with the smallest
scores over all pruned layers together: one global threshold, which sets each
layer's width. ``cost_aware=True`` divides each score by the MACs the channel
costs (:func:`channel_mac_costs`), so expensive channels must earn their place.

**The score.** For a layer ``y = Σ_c W_c ⊛ a_c`` reading channels ``a_c``, the
contribution of channel ``c`` to output ``o`` is ``z_{c,o} = W_{c,o} ⊛ a_c`` (the
layer's convolution with channel ``c`` alone; bias and activation aside), and
the channel's contributed variance is ``V_c = Σ_o Var(z_{c,o})``, the variance
over examples and output positions. To compare layers, each reader's ``V_c`` are
divided by their mean over the reader's channels (``normalization="layer_mean"``,
the default: a channel as important as its layer's average scores 1 in every
layer), or by their sum (``"share"``: each reader's scores sum to 1, so a channel
of a 128-wide layer scores ~1/128 and one global threshold cuts the wide layers
first; measured on the committed Fashion-MNIST reference at 6× fewer MACs it cut
conv5 to 4 and conv6 to 6 channels, "layer_mean" 50 and 53). A channel read by
several layers (a residual stream, a branch point) adds its scores. ``Dense`` and
``Conv1D``/``Conv2D`` readers are computed exactly (a depthwise convolution per
channel); ``Conv3D``, transposed and separable readers use
``Var(a_c) · ‖W_c‖²``, which ignores the spatial correlation of ``a_c``.

Unverified: the paper's text was not available to us, and the reading above
(the variance a channel contributes to the next layer, normalised per layer,
one global threshold) is ours, the normalisation included, from its abstract:
"a computationally light-weight yet effective data driven optimization step that discovers the
necessary width per layer". Its actual optimization step may differ.

Layers and tied channels are handled as in
:func:`~tf_gamma_prune.prune.criteria.l1_norm_selection` (by default the convs
whose channels may be removed on their own; named convs that share channels
are scored and removed as one channel). The activations are computed in
inference mode (``training=False``), from at most ``max_examples`` examples.

Example:

>>> import numpy as np
>>> from tf_gamma_prune import prune_model, selection_for_macs, count_macs
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
>>> x = np.random.default_rng(0).random((16, 28, 28, 1), "float32")
>>> selection = global_importance_selection(model, 0.5, data=x)
>>> sum(len(keep) for keep in selection.values())
56
>>> selection, macs = selection_for_macs(model, global_importance_selection,
...                                      count_macs(model) // 2, data=x, cost_aware=True)
>>> small = prune_model(model, selection, probe=False)
>>> count_macs(small) == macs
True
"""

from __future__ import annotations

import collections
import hashlib
import math
from typing import Any, Sequence

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.analysis.conv_response import dense_kernel, is_transposed_conv
from tf_gamma_prune.analysis.flops import call_macs
from tf_gamma_prune.analysis.kinds import DEPTHWISE, MIXING
from tf_gamma_prune.analysis.layer_graph import LayerCall, TensorId
from tf_gamma_prune.errors import ArgumentError, CriterionError, InputDataError
from tf_gamma_prune.inputs import InputSpec, input_name, is_stream, model_input_batches
from tf_gamma_prune.prune.calibration import _activations
from tf_gamma_prune.prune.criteria import (
    Selection,
    _candidates,
    _checked_fraction,
    _filter_layers,
    _removal_count,
    _selection,
)
from tf_gamma_prune.prune.criteria_redundancy import (
    _checked_min_channels,
    _checked_round_to,
    _finish_widths,
)

L = keras.layers

MAX_EXAMPLES = 256
"""Default sample size: examples read from ``data`` (the score is a variance,
which a few hundred examples estimate well for ranking)."""

NORMALIZATIONS = ("layer_mean", "share")
"""How each reader's contributed variances are made comparable across layers."""

_CHUNK_ELEMENTS = 1 << 22  # per-channel contributions held at once (float32)
_CACHE_SIZE = 2
_SCORES: collections.OrderedDict[tuple, tuple[Any, np.ndarray]] = collections.OrderedDict()


# ------------------------------------------------------------------ public API
def global_importance_scores(
    model: keras.Model,
    data: Any,
    *,
    layers: Sequence[str] | None = None,
    cost_aware: bool = False,
    normalization: str = "layer_mean",
    max_examples: int = MAX_EXAMPLES,
    batch_size: int = 32,
    unknown_layers: str = "error",
) -> dict[str, np.ndarray]:
    """Each pruned layer's per-channel PruneNet score (see the module doc), for plots and checks.

    Args:
        model: a functional/Sequential Keras model.
        data: model inputs: one batch (array, ``(x, y)``, dict...) or a stream
            of batches (``tf.data.Dataset``, iterator, list); see
            :mod:`tf_gamma_prune.inputs`. At least 2 examples.
        layers: conv (or ``Dense``) layer names instead of the default.
        cost_aware: divide each score by the channel's MAC cost.
        normalization: ``"layer_mean"`` (default) or ``"share"``: divide each
            reader's contributed variances by their mean or by their sum (see
            the module doc).
        max_examples: read at most this many examples.
        batch_size: split one in-memory batch into batches of this size.
        unknown_layers: ``"error"`` (default) or ``"opaque"``: keep layer types
            the channel graph does not know whole (see
            :func:`~tf_gamma_prune.gamma_threshold_selection`); they run as
            they are, and the channels they read are not scored.

    Returns:
        ``{layer_name: scores}``, one score per output channel of each layer
        (tied channels get the same score in every layer).

    Raises:
        InputDataError: data that does not fit the model, non-finite values,
            fewer than 2 examples.
        CriterionError: unknown layer names, layers without a kernel, no
            prunable conv, bad ``max_examples`` / ``batch_size`` /
            ``normalization``.
        ArgumentError: ``cost_aware`` with a model whose MACs are not static.

    Example:

    >>> import keras, numpy as np
    >>> x = keras.Input((4, 4, 3))
    >>> h = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")(x)
    >>> y = keras.layers.Dense(2, use_bias=False, name="head")(h)
    >>> model = keras.Model(x, y)
    >>> _ = model.get_layer("conv").kernel.assign(np.eye(3).reshape(1, 1, 3, 3))
    >>> _ = model.get_layer("head").kernel.assign(np.ones((3, 2)))
    >>> data = np.random.default_rng(0).normal(size=(64, 4, 4, 3)) * [1.0, 3.0, 2.0]
    >>> scores = global_importance_scores(model, data.astype("float32"))["conv"]
    >>> np.argsort(scores).tolist()        # variances 1 < 4 < 9
    [0, 2, 1]
    >>> round(float(scores.mean()), 6)     # "layer_mean": the layer's average channel scores 1
    1.0
    """
    graph = channel_graph(model, unknown_layers=unknown_layers)
    names = _filter_layers(graph, layers)
    scores = _group_scores(model, graph, data, max_examples, batch_size, normalization)
    if cost_aware:
        scores = _cost_aware(scores, channel_mac_costs(graph))
    return {n: scores[graph.layer_channels(n)] for n in names}


def global_importance_selection(
    model: keras.Model,
    prune_fraction: float,
    *,
    data: Any,
    cost_aware: bool = False,
    normalization: str = "layer_mean",
    layers: Sequence[str] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    max_examples: int = MAX_EXAMPLES,
    batch_size: int = 32,
    unknown_layers: str = "error",
) -> Selection:
    """PruneNet: remove the channels with the smallest global importance, all layers pooled.

    Scores every channel of the pruned layers with
    :func:`global_importance_scores`, pools them (a tied channel once) and
    removes the ``floor(prune_fraction · n)`` smallest of the ``n`` removable
    ones: one global threshold, which decides each layer's width. A layer
    keeps at least ``min_channels`` channels (its best-scored ones come back,
    so slightly fewer can go) and a multiple of ``round_to``.

    The scores are computed once per model state and ``data`` object and
    reused (so :func:`~tf_gamma_prune.selection_for_macs`, which calls this
    many times, runs the data once, and a one-shot iterator works there too).

    Args:
        model: a functional/Sequential Keras model.
        prune_fraction: in ``[0, 1)``, the fraction of the pooled channels to cut.
        data: a small sample of model inputs (see :func:`global_importance_scores`).
        cost_aware: rank by score per MAC (:func:`channel_mac_costs`) instead of score.
        normalization: ``"layer_mean"`` (default) or ``"share"`` (see
            :func:`global_importance_scores`).
        layers: conv (or ``Dense``) layer names to prune instead of the default.
        min_channels: channels every pruned layer keeps at least (>= 1).
        round_to: keep each pruned layer's width at a multiple of this.
        max_examples: read at most this many examples of ``data``.
        batch_size: split one in-memory batch into batches of this size.
        unknown_layers: ``"error"`` (default) or ``"opaque"`` (see
            :func:`global_importance_scores`).

    Returns:
        ``{layer_name: kept channel indices}``.

    Raises:
        CriterionError: fraction outside ``[0, 1)``, bad ``min_channels`` /
            ``round_to`` / ``normalization``; unknown or unprunable layers.
        InputDataError: unusable ``data`` (see :func:`global_importance_scores`).
        ArgumentError: ``cost_aware`` with a model whose MACs are not static.

    Example:

    >>> import keras, numpy as np
    >>> x = keras.Input((4, 4, 3))
    >>> h = keras.layers.Conv2D(4, 1, name="conv")(x)
    >>> y = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    >>> model = keras.Model(x, y)
    >>> data = np.random.default_rng(0).random((8, 4, 4, 3), "float32")
    >>> keep = global_importance_selection(model, 0.5, data=data, round_to=2)
    >>> len(keep["conv"])
    2
    """
    fraction = _checked_fraction(prune_fraction)
    min_channels = _checked_min_channels(min_channels)
    round_to = _checked_round_to(round_to)
    graph = channel_graph(model, unknown_layers=unknown_layers)
    names = _filter_layers(graph, layers)
    scores = _group_scores(model, graph, data, max_examples, batch_size, normalization)
    if cost_aware:
        scores = _cost_aware(scores, channel_mac_costs(graph))
    return pooled_selection(graph, names, scores, fraction, min_channels=min_channels,
                            round_to=round_to)


def channel_mac_costs(graph: ChannelGraph) -> np.ndarray:
    """``(num_groups,)``: the MACs that removing each channel group alone would save.

    Sums, over every conv/dense/depthwise layer that reads or writes the group,
    the MACs of one of its input or output channels (``P_out · k · C_out`` per
    input channel of a conv, ``P_out · k · C_in`` per output channel, ...), with
    every other channel kept — the same counts as
    :func:`~tf_gamma_prune.analysis.flops.planned_macs`.

    Raises:
        ArgumentError: a spatial size is not static.

    Example:

    >>> import keras
    >>> from tf_gamma_prune.analysis.channel_graph import channel_graph
    >>> x = keras.Input((8, 8, 3))
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    >>> y = keras.layers.Conv2D(2, 1, name="b")(h)
    >>> graph = channel_graph(keras.Model(x, y))
    >>> int(channel_mac_costs(graph)[graph.layer_channels("a")[0]])   # 64·9·3 + 64·1·2
    1856
    """
    lg = graph.layer_graph
    costs = np.zeros(graph.num_groups)
    for call in lg.calls:
        kind = graph.kinds[call].name if call in graph.kinds else None
        if kind not in (MIXING, DEPTHWISE):
            continue
        full = call_macs(call, lg)
        if full is None:
            raise ArgumentError(
                f"The MACs of '{call.name}' are not static (a spatial size is unknown); "
                "build the model with a fixed input shape to use cost_aware=True."
            )
        if full == 0:
            continue
        in_t, out_t = call.inputs[0], call.outputs[0]
        c_in, c_out = graph.width(in_t), graph.width(out_t)
        g_in, g_out = graph.channels[in_t], graph.channels[out_t]
        if kind == DEPTHWISE:
            np.add.at(costs, g_in, full // c_in)
        elif isinstance(call.layer, (L.SeparableConv1D, L.SeparableConv2D)):
            positions = math.prod(int(d) for d in lg.shape(out_t)[1:-1])
            taps = math.prod(call.layer.kernel_size)
            dm = int(call.layer.depth_multiplier)
            np.add.at(costs, g_in, positions * taps * dm + positions * dm * c_out)
            np.add.at(costs, g_out, positions * dm * c_in)
        else:  # conv, dense, transposed: bilinear in the channel counts (grouped too)
            unit = full / (c_in * c_out)
            np.add.at(costs, g_in, unit * c_out)
            np.add.at(costs, g_out, unit * c_in)
    return costs


def pooled_selection(graph: ChannelGraph, names: Sequence[str], scores: np.ndarray,
                     fraction: float, *, min_channels: int = 1,
                     round_to: int = 1) -> Selection:
    """One global threshold on per-group ``scores`` over the named layers' channels.

    Removes the ``floor(fraction · n)`` lowest-scored of the ``n`` removable
    (unpinned) channel groups of ``names`` (ties: lower group first), then puts
    back the best-scored ones until each layer keeps ``min_channels`` and a
    multiple of ``round_to``. The shared last step of
    :func:`global_importance_selection` and
    :meth:`~tf_gamma_prune.CoarseRanking.selection`.

    Example:

    >>> import keras, numpy as np
    >>> from tf_gamma_prune.analysis.channel_graph import channel_graph
    >>> x = keras.Input((4, 4, 1))
    >>> h = keras.layers.Conv2D(4, 1, name="conv")(x)
    >>> graph = channel_graph(keras.Model(x, keras.layers.Dense(2)(h)))
    >>> scores = np.zeros(graph.num_groups)
    >>> scores[graph.layer_channels("conv")] = [0.4, 0.1, 0.3, 0.2]
    >>> pooled_selection(graph, ["conv"], scores, 0.5)["conv"].tolist()
    [0, 2]
    """
    members = {n: graph.layer_channels(n) for n in names}
    candidates = _candidates(graph, members, list(names))
    order = candidates[np.argsort(scores[candidates], kind="stable")]
    removed = np.zeros(graph.num_groups, bool)
    removed[order[: _removal_count(fraction, len(candidates))]] = True
    _finish_widths(members, removed, scores, min_channels, round_to)
    return _selection(members, removed)


# ------------------------------------------------------------------ scores
def _cost_aware(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    out = np.full_like(scores, np.inf)  # a channel that costs nothing is never worth removing
    np.divide(scores, costs, out=out, where=costs > 0)
    return out


def _group_scores(model: keras.Model, graph: ChannelGraph, data: Any, max_examples: Any,
                  batch_size: Any, normalization: str = "layer_mean") -> np.ndarray:
    """``(num_groups,)`` summed normalised variances, cached per weights and data."""
    if normalization not in NORMALIZATIONS:
        raise CriterionError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {normalization!r}.")
    for arg, value in (("max_examples", max_examples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise CriterionError(f"{arg} must be a positive integer, got {value!r}.")
    if data is None:
        raise InputDataError(
            "global_importance_selection needs data=: a small sample of model inputs "
            "(an array, (x, y), or a dataset of batches)."
        )
    digest = _model_digest(model, graph)
    stream = is_stream(data, len(graph.layer_graph.inputs))
    key: tuple = (digest, int(max_examples), int(batch_size))
    if stream:  # look before reading: a one-shot iterator can be read only once
        key += ("stream", id(data))
        if key in _SCORES:
            _SCORES.move_to_end(key)
            return _SCORES[key][1][normalization]
    batches = _sample(graph, data, int(max_examples), int(batch_size))
    if batches is None:
        raise InputDataError(
            "data is a one-shot iterator that an earlier call already read (for a model "
            "with other weights); pass a tf.data.Dataset, a list of batches or arrays so "
            "it can be read again."
        )
    if not stream:
        data_digest = hashlib.sha1()
        for batch in batches:
            for a in batch:
                data_digest.update(np.ascontiguousarray(a).tobytes())
        key += ("arrays", data_digest.hexdigest())
        if key in _SCORES:
            _SCORES.move_to_end(key)
            return _SCORES[key][1][normalization]
    scores = _normalised_variances(graph, batches)
    _SCORES[key] = (data if stream else None, scores)  # keeps id(data) from being reused
    while len(_SCORES) > _CACHE_SIZE:
        _SCORES.popitem(last=False)
    return scores[normalization]


def _sample(graph: ChannelGraph, data: Any, max_examples: int,
            batch_size: int) -> list[list[np.ndarray]] | None:
    """At most ``max_examples`` examples as batches; ``None`` for an exhausted one-shot stream."""
    lg = graph.layer_graph
    specs = [InputSpec(input_name(lg.specs[t], i), tuple(lg.shape(t)))
             for i, t in enumerate(lg.inputs)]
    batches, count = [], 0
    for batch in model_input_batches(data, specs, what="data", error=InputDataError,
                                     batch_size=batch_size, max_examples=max_examples):
        take = min(batch[0].shape[0], max_examples - count)
        batches.append([np.asarray(a[:take]) for a in batch])
        count += take
        if count >= max_examples:
            break
    if count == 0 and is_stream(data, len(specs)) and iter(data) is data:
        return None
    if count < 2:
        raise InputDataError(
            f"data holds {count} example(s); the channel scores are variances over "
            "examples and positions, so pass at least 2 (a few hundred is typical)."
        )
    return batches


def _model_digest(model: keras.Model, graph: ChannelGraph) -> str:
    """A digest of the model's structure (calls, shapes) and weights."""
    digest = hashlib.sha1()
    lg = graph.layer_graph
    for call in lg.calls:
        digest.update(f"{call.name}:{type(call.layer).__name__}:{call.inputs}:{call.outputs};"
                      .encode())
    digest.update(str([lg.shape(t) for t in lg.specs]).encode())
    for w in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()


def _normalised_variances(graph: ChannelGraph,
                          batches: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
    """``{normalization: (num_groups,) scores}``: every reader's contributed
    variances over their sum ("share") or their mean over the channel groups
    the reader reads ("layer_mean"), summed per group."""
    readers: dict[TensorId, list[_SiteVariance]] = {}
    for call, t in graph.fold_sites():
        if not np.all(graph.pinned[graph.channels[t]]):
            readers.setdefault(t, []).append(_SiteVariance(call))
    for batch in batches:
        for t, arr in _activations(graph, batch):
            for site in readers.get(t, ()):
                site.add(arr)
    scores = {name: np.zeros(graph.num_groups) for name in NORMALIZATIONS}
    for t, sites in readers.items():
        groups = graph.channels[t]
        n_groups = len(np.unique(groups))  # a Flatten's reader: many entries per group
        for site in sites:
            v = site.variances()
            total = float(v.sum())
            if total > 0:
                np.add.at(scores["share"], groups, v / total)
                np.add.at(scores["layer_mean"], groups, v * (n_groups / total))
    return scores


class _SiteVariance:
    """Accumulates, for one conv/dense reader, each input channel's contributed variance."""

    def __init__(self, call: LayerCall) -> None:
        layer = call.layer
        self.layer = layer
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self.n = 0

        def weights(name: str) -> np.ndarray:
            return np.asarray(keras.ops.convert_to_numpy(getattr(layer, name)), np.float64)

        self.exact_conv = (
            isinstance(layer, (L.Conv1D, L.Conv2D))
            and layer.padding in ("valid", "same") and layer.data_format == "channels_last"
        )
        if self.exact_conv:  # a grouped kernel as its block-diagonal equivalent
            self.kernel = dense_kernel(layer).astype(np.float32)  # (*k, C, O)
        elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
            dw, pw = weights("depthwise_kernel"), weights("pointwise_kernel")
            c, dm = dw.shape[-2], dw.shape[-1]
            dw_sq = (dw ** 2).reshape(-1, c, dm).sum(axis=0)           # (C, dm)
            pw_sq = (pw ** 2).reshape(c, dm, -1).sum(axis=-1)          # (C, dm)
            self.weight = (dw_sq * pw_sq).sum(axis=1)
        elif is_transposed_conv(layer):  # (*k, O, C)
            k = weights("kernel")
            self.weight = (k ** 2).reshape(-1, k.shape[-1]).sum(axis=0)
        else:  # Dense (C, O), Conv3D and others with a (..., C, O) kernel
            k = dense_kernel(layer) if isinstance(layer, L.Conv3D) else weights("kernel")
            self.weight = (k ** 2).reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=(0, 2))

    def add(self, arr: np.ndarray) -> None:
        if self.exact_conv:
            s1, s2, n = self._conv_sums(arr)
        else:
            flat = arr.reshape(-1, arr.shape[-1])
            s1, s2, n = flat.sum(axis=0)[:, None], (flat ** 2).sum(axis=0)[:, None], len(flat)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += n

    def _conv_sums(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Sums of ``z_{c,o}`` and ``z_{c,o}²`` over examples and output positions,
        ``z_{c,o}`` the layer's convolution of channel c alone (a depthwise
        convolution with the kernel's ``(..., c, :)`` slice, chunked over c)."""
        layer = self.layer
        channels, outputs = self.kernel.shape[-2], self.kernel.shape[-1]
        per_channel = arr.shape[0] * max(1, math.prod(arr.shape[1:-1])) * outputs
        chunk = max(1, min(channels, _CHUNK_ELEMENTS // max(per_channel, 1)))
        x = arr.astype(np.float32)
        s1 = np.zeros((channels, outputs))
        s2 = np.zeros((channels, outputs))
        n = 0
        for start in range(0, channels, chunk):
            stop = min(start + chunk, channels)
            z = keras.ops.depthwise_conv(
                x[..., start:stop], self.kernel[..., start:stop, :], strides=layer.strides,
                padding=layer.padding, dilation_rate=layer.dilation_rate)
            z = np.asarray(keras.ops.convert_to_numpy(z), np.float64)
            z = z.reshape(-1, stop - start, outputs)
            s1[start:stop] = z.sum(axis=0)
            s2[start:stop] = (z ** 2).sum(axis=0)
            n = z.shape[0]
        return s1, s2, n

    def variances(self) -> np.ndarray:
        """``(C,)``: ``Σ_o Var(z_{c,o})`` (population variance)."""
        if self.s1 is None or self.n == 0:
            return np.zeros(0)
        mean = self.s1 / self.n
        var = np.maximum(self.s2 / self.n - mean ** 2, 0.0)
        if self.exact_conv:
            return var.sum(axis=1)
        return var[:, 0] * self.weight

