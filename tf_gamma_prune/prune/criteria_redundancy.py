"""Structural redundancy reduction (Wang et al., CVPR 2021) as selections for ``prune_model``.

The idea: how many filters a layer can lose depends on how *redundant* the
layer is as a whole, more than on which single filter is weakest, so the
layer with the most structural redundancy loses filters first.

* :func:`layer_redundancy` — each conv layer's redundancy ``R`` (for plots).
* :func:`structural_redundancy_selection` — the iterative allocation: remove
  one filter from the layer with the largest ``R``, recompute that layer's
  ``R``, repeat; inside a layer the filter with the smallest kernel L1 norm.
* :func:`redundancy_random_selection` — the same per-layer allocation, random
  filters inside each layer (the paper's cheap, strong baseline).

**Redundancy of a layer.** Each filter (the kernel of one output channel,
flattened) is scaled to unit length. Filters are the vertices of a graph with
an edge where the Euclidean distance of two unit filters is below
``threshold``. With ``N`` filters, ``k`` connected components and ``cover`` a
greedy ℓ-covering number (the fewest filters whose ℓ-step neighbourhoods,
reachability ``(A + I)^ℓ``, reach every filter, found greedily) averaged over
ℓ = 1 and 2::

    R = N / (0.35 · k + 0.65 · cover)

``N`` filters in ``N`` tight clusters are not redundant (``R = 1``); ``N``
filters in ``k`` tight clusters give ``R = N / k``.

What is not verified against the paper (its text was not available to us;
these follow a third-party reading, see ``docs/criteria.md``): the threshold's
scale (here a distance between unit vectors chosen per layer from the filters'
length, :func:`auto_threshold`, or one fixed distance; a reproduction used a
much smaller value on what may be a differently normalised distance), the
0.35/0.65 weights, ℓ ∈ {1, 2}, and
removing one filter per step. Ties in ``R`` (e.g. layers without any edge, all
``R = 1``) go to the layer with more remaining filters, then to the first one.

Tied channels (residual adds, depthwise convolutions; see
:mod:`tf_gamma_prune.analysis.channel_graph`) are handled as in
:func:`~tf_gamma_prune.prune.criteria.l1_norm_selection`: by default only convs
whose channels may be removed on their own are pruned; convs named together in
``layers`` that share channels form one *unit* whose "filter" for a shared
channel is the concatenation of its unit-normalised filters in each conv, and
a removed channel leaves all of them. Concatenations need nothing special: each
input of a ``Concatenate`` keeps its own channels.

Example:

>>> from tf_gamma_prune import prune_model
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
>>> sorted(layer_redundancy(model))[:2]
['conv1', 'conv2']
>>> selection = structural_redundancy_selection(model, 0.5)
>>> sum(len(keep) for keep in selection.values())     # 56 of the 112 filters go
56
>>> small = prune_model(model, selection, probe=False)
>>> small.count_params() < model.count_params()
True
"""

from __future__ import annotations

import collections
import hashlib
import math
from typing import Any, Mapping, Sequence

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.errors import CriterionError
from tf_gamma_prune.prune.criteria import (
    Selection,
    _candidates,
    _checked_fraction,
    _filter_layers,
    _filter_norms,
    _removal_count,
    _selection,
    _units,
)

AUTO_SIGNIFICANCE = 4.0
"""``threshold="auto"`` links two filters whose cosine similarity is this many
standard deviations (``1/√d``) above that of two random directions in their
``d`` dimensions."""

AUTO_MAX_COSINE = 0.95
"""``threshold="auto"`` never links filters less similar than this cosine (in
fewer than about 18 dimensions ``AUTO_SIGNIFICANCE/√d`` would exceed it)."""

DEFAULT_THRESHOLD = "auto"
"""Default edge threshold: ``"auto"``, a distance per layer from the length
``d`` of its filters (:func:`auto_threshold`), so that filters no more alike
than random ones are never linked, whatever ``d``. A number instead is one
Euclidean distance between unit-length filters (0 = parallel, √2 = orthogonal,
2 = opposite) for every layer; e.g. 0.5 links filters whose cosine similarity
exceeds 0.875. A fixed distance means different things at different ``d``:
random unit vectors are at √2 ± 1/√(2d), so in a trained fashion_vgg (``d`` 9
to 1,152) 0.5 links 1.4 % of conv1's 9-number filters and no pair of any other
layer (every other ``R`` is 1), while ``"auto"`` links 0.4 % of conv1's, 4–8 %
of conv2–conv5's and 30 % of conv6's pairs (``docs/criteria.md``). The paper's
value and scale are unverified; inspect yours with :func:`layer_redundancy`."""

COMPONENT_WEIGHT = 0.35
"""Weight of the number of connected components in ``R``'s denominator; the
greedy covering number gets ``1 − COMPONENT_WEIGHT`` (a third-party reading of
the paper, unverified)."""

COVER_ORDERS = (1, 2)
"""The ℓ of the ℓ-covering numbers averaged in ``R``."""

_CACHE_SIZE = 4
_PROCESSES: collections.OrderedDict[tuple, _RedundancyProcess] = collections.OrderedDict()


# ------------------------------------------------------------------ public API
def layer_redundancy(
    model: keras.Model,
    *,
    threshold: float | str = DEFAULT_THRESHOLD,
    layers: Sequence[str] | None = None,
    unknown_layers: str = "error",
) -> dict[str, float]:
    """Each conv layer's structural redundancy ``R`` (see the module doc), for plots.

    Args:
        model: a functional/Sequential Keras model.
        threshold: the edge threshold: ``"auto"`` (default, per layer, see
            :func:`auto_threshold`) or one distance between unit-length filters.
        layers: conv (or ``Dense``) layer names instead of the default (every
            conv whose output channels may be removed on their own). Named
            layers that share channels form one unit and get the unit's ``R``.
        unknown_layers: ``"error"`` (default) or ``"opaque"``: keep layer types
            the channel graph does not know whole (see
            :func:`~tf_gamma_prune.gamma_threshold_selection`).

    Returns:
        ``{layer_name: R}`` in the model's layer order; ``R ≥ 1`` (``R = 1``:
        no two filters closer than ``threshold``).

    Raises:
        CriterionError: bad threshold, unknown layer names, layers without a
            ``(..., in, out)`` kernel, no prunable conv in the model.

    Example:

    >>> import keras, numpy as np
    >>> x = keras.Input((6, 6, 2))
    >>> y = keras.layers.Conv2D(6, 3, name="conv")(x)
    >>> model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(y)))
    >>> a, b = np.random.default_rng(0).normal(size=(2, 3, 3, 2))
    >>> kernel = np.stack([a, a, a, b, b, b], axis=-1)   # two clusters of three
    >>> _ = model.get_layer("conv").kernel.assign(kernel)
    >>> round(layer_redundancy(model)["conv"], 6)
    3.0
    """
    threshold = _checked_threshold(threshold)
    graph = channel_graph(model, unknown_layers=unknown_layers)
    process = _process(graph, layers, threshold, min_channels=1)
    return {name: float(unit.redundancy)
            for unit in process.units for name in unit.names}


def structural_redundancy_selection(
    model: keras.Model,
    prune_fraction: float,
    *,
    threshold: float | str = DEFAULT_THRESHOLD,
    layers: Sequence[str] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    unknown_layers: str = "error",
) -> Selection:
    """Wang et al. 2021: remove filters from the most redundant layer, one at a time.

    With ``n`` the removable filters of the pruned layers (pinned channels
    excluded), it removes ``floor(prune_fraction · n)`` of them: each step
    takes the layer (unit of tied layers) with the largest redundancy ``R``,
    removes its filter with the smallest kernel L1 norm (a tied channel:
    the sum over the unit's convs), and recomputes that layer's ``R`` on the
    filters it has left. A layer stops losing filters at ``min_channels``; when
    every layer is there, fewer than ``floor(prune_fraction · n)`` go. Then
    each layer's width is rounded up to a multiple of ``round_to`` (or its full
    width), putting back its largest-L1 removed filters.

    The removal order does not depend on ``prune_fraction``, so a larger
    fraction removes a superset; it is computed once per model state (kernels,
    options) and reused, which keeps :func:`selection_for_macs` (which calls
    this many times) fast.

    Args:
        model: a functional/Sequential Keras model.
        prune_fraction: in ``[0, 1)``, the fraction of the removable filters to cut.
        threshold: the edge threshold: ``"auto"`` (default, per layer from the
            filters' length, :func:`auto_threshold`) or one distance between
            unit-length filters (see :data:`DEFAULT_THRESHOLD`).
        layers: conv (or ``Dense``) layer names to prune instead of the default
            (every conv whose output channels may be removed on their own;
            residual-tied convs only when named, then ranked as one unit).
        min_channels: channels every pruned layer keeps at least (>= 1).
        round_to: keep each pruned layer's width at a multiple of this.
        unknown_layers: ``"error"`` (default) or ``"opaque"``: keep layer types
            the channel graph does not know whole (see
            :func:`~tf_gamma_prune.gamma_threshold_selection`).

    Returns:
        ``{conv_layer_name: kept filter indices}``.

    Raises:
        CriterionError: fraction outside ``[0, 1)``; bad ``threshold``,
            ``min_channels`` or ``round_to``; unknown layer names, layers
            without a ``(..., in, out)`` kernel, layers whose channels are all
            pinned; no prunable conv in the model.

    Example:

    >>> import keras, numpy as np
    >>> x = keras.Input((6, 6, 2))
    >>> a = keras.layers.Conv2D(4, 3, name="copies")(x)     # to be made redundant
    >>> b = keras.layers.Conv2D(4, 3, name="diverse")(x)
    >>> h = keras.layers.Concatenate()([a, b])
    >>> model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    >>> w = np.random.default_rng(0).normal(size=(3, 3, 2, 1))
    >>> _ = model.get_layer("copies").kernel.assign(w * [1.0, 1.1, 1.2, 1.3])
    >>> {k: v.tolist() for k, v in structural_redundancy_selection(model, 0.375).items()}
    {'copies': [3], 'diverse': [0, 1, 2, 3]}
    """
    fraction = _checked_fraction(prune_fraction)
    threshold = _checked_threshold(threshold)
    min_channels = _checked_min_channels(min_channels)
    round_to = _checked_round_to(round_to)
    graph = channel_graph(model, unknown_layers=unknown_layers)
    process = _process(graph, layers, threshold, min_channels)
    removed = process.removed(_removal_count(fraction, process.num_candidates))
    _finish_widths(process.members, removed, process.scores, min_channels, round_to)
    return _selection(process.members, removed)


def redundancy_random_selection(
    model: keras.Model,
    prune_fraction: float,
    *,
    seed: int = 0,
    threshold: float | str = DEFAULT_THRESHOLD,
    layers: Sequence[str] | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    unknown_layers: str = "error",
) -> Selection:
    """The per-layer widths of :func:`structural_redundancy_selection`, random filters inside.

    Each pruned layer (unit of tied layers) loses exactly as many channels as
    under :func:`structural_redundancy_selection` with the same arguments,
    but the channels are drawn uniformly at random:
    ``numpy.random.default_rng(seed)`` scores every channel group and each unit
    removes its lowest-scored removable channels. Same seed, same choice.

    The paper's redundancy-driven random pruning may instead recompute the
    redundancy after each *random* removal (so the allocation itself would
    differ); here the allocation is shared on purpose, so the two selections
    differ only in which channels go (unverified which the paper meant).

    Args:
        model: a functional/Sequential Keras model.
        prune_fraction: in ``[0, 1)``, as in :func:`structural_redundancy_selection`.
        seed: random seed.
        threshold, layers, min_channels, round_to, unknown_layers: as in
            :func:`structural_redundancy_selection` (``round_to`` puts back
            the highest random scores first).

    Returns:
        ``{conv_layer_name: kept filter indices}``.

    Raises:
        CriterionError: as :func:`structural_redundancy_selection`; a ``seed``
            that is not an integer.

    Example:

    >>> from tf_gamma_prune.reference_models import fashion_vgg
    >>> model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    >>> srr = structural_redundancy_selection(model, 0.5)
    >>> rand = redundancy_random_selection(model, 0.5, seed=3)
    >>> {k: len(v) for k, v in rand.items()} == {k: len(v) for k, v in srr.items()}
    True
    """
    fraction = _checked_fraction(prune_fraction)
    threshold = _checked_threshold(threshold)
    min_channels = _checked_min_channels(min_channels)
    round_to = _checked_round_to(round_to)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise CriterionError(f"seed must be an integer, got {seed!r}.")
    graph = channel_graph(model, unknown_layers=unknown_layers)
    process = _process(graph, layers, threshold, min_channels)
    count = _removal_count(fraction, process.num_candidates)
    allocation = collections.Counter(u for u, _ in process.order_prefix(count))
    random_scores = np.random.default_rng(int(seed)).random(graph.num_groups)
    removed = np.zeros(graph.num_groups, bool)
    for u, unit in enumerate(process.units):
        left = allocation.get(u, 0)
        local = np.argsort(random_scores[unit.groups], kind="stable")
        alive = np.ones(len(unit.groups), bool)
        for i in local:
            if left == 0:
                break
            if unit.removable[i] and unit.can_remove(i, alive, min_channels):
                alive[i] = False
                removed[unit.groups[i]] = True
                left -= 1
    _finish_widths(process.members, removed, random_scores, min_channels, round_to)
    return _selection(process.members, removed)


# ------------------------------------------------------------------ redundancy
def auto_threshold(dimension: int) -> float:
    """The edge distance ``threshold="auto"`` uses for unit filters of ``dimension`` numbers.

    Two random unit vectors in ``d`` dimensions have a cosine similarity of
    about ``N(0, 1/d)``: a fixed distance links almost every random pair when
    ``d`` is small and none, however alike, when it is large. ``"auto"`` links
    a pair when its cosine exceeds ``AUTO_SIGNIFICANCE/√d`` (capped at
    ``AUTO_MAX_COSINE``), i.e. when the two filters are far more alike than
    chance makes them, so random filters get ``R ≈ 1`` in every layer. The
    distance between unit vectors with cosine ``c`` is ``√(2 − 2c)``.

    Args:
        dimension: the number of weights of one (flattened) filter, ``≥ 1``.

    Returns:
        The distance below which two unit-length filters are linked.

    Example:

    >>> round(auto_threshold(1152), 3)   # 3x3x128: cosine above 0.118
    1.328
    >>> round(auto_threshold(9), 3)      # 3x3x1: cosine above the cap, 0.95
    0.316
    """
    if isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)) \
            or dimension < 1:
        raise CriterionError(f"dimension must be an integer >= 1, got {dimension!r}.")
    cosine = min(AUTO_SIGNIFICANCE / math.sqrt(int(dimension)), AUTO_MAX_COSINE)
    return math.sqrt(2.0 - 2.0 * cosine)


def redundancy(distances: np.ndarray, threshold: float) -> float:
    """``R = N / (0.35·k + 0.65·mean_ℓ cover_ℓ)`` of filters with these pairwise distances.

    Args:
        distances: ``(N, N)`` symmetric distances between unit-length filters.
        threshold: edges where the distance is below this.

    Example:

    >>> d = np.array([[0.0, 0.1, 1.4], [0.1, 0.0, 1.4], [1.4, 1.4, 0.0]])
    >>> round(redundancy(d, 0.5), 6)         # clusters {0, 1} and {2}
    1.5
    """
    n = len(distances)
    if n == 0:
        return 0.0
    adjacency = distances < threshold
    np.fill_diagonal(adjacency, True)
    components = _count_components(adjacency)
    covers = []
    reach = adjacency
    for order in range(1, max(COVER_ORDERS) + 1):
        if order > 1:
            step = reach.astype(np.float32) @ adjacency.astype(np.float32)
            reach = step > 0
        if order in COVER_ORDERS:
            covers.append(_greedy_cover(reach))
    cover = float(np.mean(covers))
    return n / (COMPONENT_WEIGHT * components + (1.0 - COMPONENT_WEIGHT) * cover)


def _count_components(adjacency: np.ndarray) -> int:
    """Connected components of an undirected graph (boolean adjacency, diagonal set)."""
    n = len(adjacency)
    label = np.full(n, -1)
    count = 0
    for start in range(n):
        if label[start] >= 0:
            continue
        frontier = np.zeros(n, bool)
        frontier[start] = True
        label[start] = count
        while frontier.any():
            frontier = adjacency[frontier].any(axis=0) & (label < 0)
            label[frontier] = count
        count += 1
    return count


def _greedy_cover(reach: np.ndarray) -> int:
    """Greedy set cover of all vertices by the symmetric neighbourhoods ``reach[v]``.

    Picks, each time, the vertex whose neighbourhood covers the most uncovered
    vertices (the lowest index among equals). ``O(N²)`` overall.
    """
    uncovered = np.ones(len(reach), bool)
    gains = reach.sum(axis=1).astype(np.int64)
    count = 0
    while uncovered.any():
        v = int(np.argmax(gains))
        new = reach[v] & uncovered
        uncovered &= ~new
        gains -= reach[:, new].sum(axis=1)
        count += 1
    return count


# ------------------------------------------------------------------ the process
class _Unit:
    """One pruned layer, or several named layers that share channels."""

    def __init__(self, names: list[str], members: Mapping[str, np.ndarray],
                 graph: ChannelGraph, scores: np.ndarray, threshold: float | str) -> None:
        self.names = names
        self.groups = np.unique(np.concatenate([members[n] for n in names]))
        index = {int(g): i for i, g in enumerate(self.groups)}
        # local indices of each member layer's channels (positions, duplicates kept)
        self.local = [np.array([index[int(g)] for g in members[n]]) for n in names]
        self.removable = ~graph.pinned[self.groups]
        self.scores = scores[self.groups]
        vectors = _unit_vectors(graph, names, members, self.groups, index)
        self.threshold = auto_threshold(_dimension(graph, names)) if threshold == "auto" \
            else float(threshold)
        gram = np.clip(vectors @ vectors.T, -1.0, 1.0)
        sq = np.add.outer((vectors ** 2).sum(1), (vectors ** 2).sum(1)) - 2 * gram
        self.distances = np.sqrt(np.maximum(sq, 0.0))
        self.alive = np.ones(len(self.groups), bool)
        self.redundancy = redundancy(self.distances, self.threshold)
        self._next: tuple[int | None] | None = None  # cached next_removal

    def can_remove(self, i: int, alive: np.ndarray, min_channels: int) -> bool:
        """Whether removing local channel ``i`` leaves every member layer ≥ min_channels wide."""
        for local in self.local:
            if np.any(local == i):
                kept = int(np.count_nonzero(alive[local]))
                if kept - int(np.count_nonzero(local == i)) < min(min_channels, len(local)):
                    return False
        return True

    def next_removal(self, min_channels: int) -> int | None:
        """Local index of the smallest-score removable channel, or None."""
        if self._next is None:
            found = None
            for i in np.argsort(self.scores, kind="stable"):
                if self.alive[i] and self.removable[i] and self.can_remove(
                        int(i), self.alive, min_channels):
                    found = int(i)
                    break
            self._next = (found,)
        return self._next[0]

    def remove(self, i: int) -> None:
        self.alive[i] = False
        self._next = None
        keep = np.flatnonzero(self.alive)
        self.redundancy = redundancy(self.distances[np.ix_(keep, keep)], self.threshold)


class _RedundancyProcess:
    """The greedy removal order of one model state, extended on demand."""

    def __init__(self, graph: ChannelGraph, names: list[str], threshold: float | str,
                 min_channels: int) -> None:
        self.members = {n: graph.layer_channels(n) for n in names}
        self.scores = np.zeros(graph.num_groups)
        for n in names:
            np.add.at(self.scores, self.members[n], _filter_norms(graph, n))
        self.units = [_Unit(unit, self.members, graph, self.scores, threshold)
                      for unit in _units(self.members)]
        self.num_candidates = len(_candidates(graph, self.members, names))
        self.num_groups = graph.num_groups
        self.min_channels = min_channels
        self.order: list[tuple[int, int]] = []  # (unit index, group)
        self.done = False

    def order_prefix(self, count: int) -> list[tuple[int, int]]:
        while len(self.order) < count and not self.done:
            self._step()
        return self.order[:count]

    def removed(self, count: int) -> np.ndarray:
        removed = np.zeros(self.num_groups, bool)
        for _, g in self.order_prefix(count):
            removed[g] = True
        return removed

    def _step(self) -> None:
        best = None
        for u, unit in enumerate(self.units):
            i = unit.next_removal(self.min_channels)
            if i is None:
                continue
            key = (unit.redundancy, int(np.count_nonzero(unit.alive)), -u)
            if best is None or key > best[0]:
                best = (key, u, i)
        if best is None:
            self.done = True
            return
        _, u, i = best
        unit = self.units[u]
        unit.remove(i)
        self.order.append((u, int(unit.groups[i])))


def _unit_vectors(graph: ChannelGraph, names: list[str], members: Mapping[str, np.ndarray],
                  groups: np.ndarray, index: Mapping[int, int]) -> np.ndarray:
    """One unit-length vector per channel group of a unit: its filters in each
    member layer (each unit-normalised), concatenated; zeros where a member lacks
    the channel."""
    blocks = []
    for name in names:
        kernel = np.asarray(keras.ops.convert_to_numpy(_layer(graph, name).kernel), np.float64)
        filters = kernel.reshape(-1, kernel.shape[-1]).T  # (out positions, fan-in)
        norms = np.linalg.norm(filters, axis=1, keepdims=True)
        filters = np.divide(filters, norms, out=np.zeros_like(filters), where=norms > 0)
        positions: dict[int, list[int]] = {}
        for pos, g in enumerate(members[name]):
            positions.setdefault(index[int(g)], []).append(pos)
        width = max(len(p) for p in positions.values())
        block = np.zeros((len(groups), width * filters.shape[1]))
        for i, pos in positions.items():
            block[i, :len(pos) * filters.shape[1]] = filters[pos].reshape(-1)
        blocks.append(block)
    vectors = np.concatenate(blocks, axis=1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _layer(graph: ChannelGraph, name: str) -> Any:
    """The layer of the call named ``name``."""
    return next(c.layer for c in graph.layer_graph.calls if c.name == name)


def _dimension(graph: ChannelGraph, names: list[str]) -> int:
    """The number of weights in one (concatenated) filter of a unit's layers."""
    size = sum(math.prod(tuple(_layer(graph, n).kernel.shape)[:-1]) for n in names)
    return max(size, 1)


def _process(graph: ChannelGraph, layers: Sequence[str] | None, threshold: float | str,
             min_channels: int) -> _RedundancyProcess:
    """The (cached) removal process for this graph's pruned layers and kernels."""
    names = _filter_layers(graph, layers)
    digest = hashlib.sha1()
    for name in names:
        layer = next(c.layer for c in graph.layer_graph.calls if c.name == name)
        kernel = np.ascontiguousarray(keras.ops.convert_to_numpy(layer.kernel))
        digest.update(name.encode())
        digest.update(str(kernel.shape).encode())
        digest.update(kernel.tobytes())
        digest.update(np.asarray(graph.layer_channels(name)).tobytes())
        digest.update(graph.pinned[graph.layer_channels(name)].tobytes())
    key = (digest.hexdigest(), graph.num_groups, threshold, min_channels)
    process = _PROCESSES.get(key)
    if process is None:
        process = _RedundancyProcess(graph, names, threshold, min_channels)
        _PROCESSES[key] = process
        while len(_PROCESSES) > _CACHE_SIZE:
            _PROCESSES.popitem(last=False)
    else:
        _PROCESSES.move_to_end(key)
    return process


# ------------------------------------------------------------------ shared helpers
def _finish_widths(members: Mapping[str, np.ndarray], removed: np.ndarray,
                   scores: np.ndarray, min_channels: int, round_to: int) -> None:
    """Put removed channels back (best ``scores`` first, in place) until every
    member layer keeps at least ``min_channels`` channels (or all it has) and a
    multiple of ``round_to`` (or all it has). Tied layers can disagree; it
    iterates until nothing changes (at most 50 rounds)."""
    for _ in range(50):
        changed = False
        for groups in members.values():
            width = len(groups)
            kept = int(np.count_nonzero(~removed[groups]))
            want = max(kept, min(min_channels, width))
            if round_to > 1 and want % round_to:
                want = min(math.ceil(want / round_to) * round_to, width)
            if want <= kept:
                continue
            back = np.unique(groups[removed[groups]])
            back = back[np.argsort(-scores[back], kind="stable")]
            for g in back:
                if kept >= want:
                    break
                removed[g] = False
                kept += int(np.count_nonzero(groups == g))
            changed = True
        if not changed:
            return


def _checked_threshold(threshold: Any) -> float | str:
    if threshold == "auto" and isinstance(threshold, str):
        return "auto"
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating,
                                                                 np.integer)):
        raise CriterionError(f'threshold must be "auto" or a number in (0, 2], got '
                             f"{threshold!r}.")
    value = float(threshold)
    if not 0.0 < value <= 2.0:
        raise CriterionError(
            f"threshold must be in (0, 2] (a distance between unit-length filters: 0 = "
            f"parallel, 2 = opposite), got {value}."
        )
    return value


def _checked_min_channels(min_channels: Any) -> int:
    if isinstance(min_channels, bool) or not isinstance(min_channels, (int, np.integer)) \
            or min_channels < 1:
        raise CriterionError(
            f"min_channels must be an integer >= 1 (a layer without channels would cut the "
            f"network), got {min_channels!r}."
        )
    return int(min_channels)


def _checked_round_to(round_to: Any) -> int:
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise CriterionError(f"round_to must be an integer >= 1, got {round_to!r}.")
    return int(round_to)
