"""Selection criteria of the classic pruning baselines, as selections for ``prune_model``.

Each criterion returns a *selection* ``{layer_name: kept channel indices}`` (see
:mod:`tf_gamma_prune.prune.plan`); ``prune_model(model, selection)`` then removes
the other channels, dropping them (treated as 0) unless ``calibration_data`` is
given. The baselines:

* :func:`gamma_threshold_selection` — Network Slimming (Liu et al. 2017): one
  *global* threshold on BatchNormalization |γ| over all layers together (train
  with :class:`~tf_gamma_prune.NetworkSlimming` first).
* :func:`l1_norm_selection` — L1-norm filter pruning (Li et al. 2017): the same
  fraction of each conv's filters, those with the smallest kernel L1 norm.
* :func:`random_selection` — random channels at given widths (with
  :func:`layer_widths` of a GammaISTA-pruned model: "same widths, random
  channels"), the control of the smaller-norm-less-informative question.
* :func:`zero_gamma_selection` — the channels GammaISTA kept (non-zero γ) of a
  sparsified model, to apply to another copy of it: *rewinding*, GammaISTA
  choosing the channels and the widths and the original weights of the
  survivors being fine-tuned.
* :func:`selection_for_macs` — bisection on a criterion's prune fraction to hit a
  MAC budget, so that methods are compared at equal cost.

Tied channels (residual adds, depthwise convolutions, shared layers; see
:mod:`tf_gamma_prune.analysis.channel_graph`) are handled as groups: a criterion scores a group
once and keeps or removes it in every layer that carries it, so the selection
always means what it says. Pinned channels (model outputs, channels read by
Softmax/LayerNormalization, ...) are never selected for removal.

Example:

>>> import numpy as np
>>> from tf_gamma_prune import prune_model
>>> from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm
>>> from tf_gamma_prune.reference_models import fashion_vgg
>>> model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
>>> _ = randomize_batchnorm(model, seed=0)
>>> selection = gamma_threshold_selection(model, 0.5)      # 56 of 112 channels
>>> sum(len(keep) for keep in selection.values())
56
>>> small = prune_model(model, selection, probe=False)
>>> sum(layer_widths(small).values())
56
>>> selection, macs = selection_for_macs(model, l1_norm_selection, 1_000_000)
>>> abs(macs - 1_000_000) <= 0.05 * 1_000_000
True
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np

from tf_gamma_prune.analysis.batchnorm import (
    NoBatchNormError,
    is_batchnorm,
    resolve_layer_name,
)
from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.analysis.kinds import CONSTANT, MIXING
from tf_gamma_prune.analysis.layer_graph import layer_graph
from tf_gamma_prune.errors import ArgumentError, CriterionError, TargetUnreachableError
from tf_gamma_prune.prune.plan import plan_removal

L = keras.layers

Selection = dict[str, np.ndarray]

# Layer types whose kernel is (..., input channels, output channels).
_FILTER_LAYERS = (L.Conv1D, L.Conv2D, L.Conv3D)


# ------------------------------------------------------------------ criteria
def gamma_threshold_selection(
    model: keras.Model, prune_fraction: float, *, layers: Sequence[str] | None = None,
    unknown_layers: str = "error",
) -> Selection:
    """Network Slimming's global threshold: cut the smallest |γ| over all layers together.

    Sorts the channels of every listed BatchNormalization layer (default: every
    one with a γ and channels that may be removed) by |γ|, all layers pooled, and
    removes the ``floor(prune_fraction · n)`` smallest. A tied channel (e.g. the
    channels of a residual stream, carried by several BatchNormalization layers)
    counts once, scored by its largest |γ| among them.

    **Never empties a layer**: where the threshold would remove every channel of
    a layer, its channel with the largest |γ| stays, so slightly fewer than
    ``floor(prune_fraction · n)`` channels can go.

    Args:
        model: a functional/Sequential Keras model with BatchNormalization.
        prune_fraction: in ``[0, 1)``, the fraction of the pooled channels to cut.
        layers: BatchNormalization layer names (qualified or unique bare names)
            to pool; channels of other layers are kept.
        unknown_layers: ``"error"`` (default) or ``"opaque"``: keep layer types
            the channel graph does not know (a composite layer with its own
            convs and BNs, a Lambda layer) whole, as
            ``prune_model(..., unknown_layers="opaque")`` does; their channels
            are pinned and never selected.

    Returns:
        ``{bn_layer_name: kept channel indices}`` for every pooled layer.

    Raises:
        NoBatchNormError: the model has no BatchNormalization γ.
        CriterionError: fraction outside ``[0, 1)``; unknown layer names, layers
            that are not BatchNormalization with a γ, or whose channels are all
            pinned.

    Example:

    >>> import keras
    >>> x = keras.Input((6, 6, 1))
    >>> h = keras.layers.BatchNormalization(name="a")(keras.layers.Conv2D(3, 3)(x))
    >>> h = keras.layers.BatchNormalization(name="b")(keras.layers.Conv2D(3, 3)(h))
    >>> y = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    >>> model = keras.Model(x, y)
    >>> _ = model.get_layer("a").gamma.assign([0.5, -0.1, 2.0])
    >>> _ = model.get_layer("b").gamma.assign([0.2, 1.0, -0.3])
    >>> {k: v.tolist() for k, v in gamma_threshold_selection(model, 0.5).items()}
    {'a': [0, 2], 'b': [1]}
    """
    fraction = _checked_fraction(prune_fraction)
    graph = channel_graph(model, unknown_layers=unknown_layers)
    names = _gamma_layers(model, graph, layers)
    scores = graph.gamma_scores()
    members = {n: graph.layer_channels(n) for n in names}
    candidates = _candidates(graph, members, names)
    order = candidates[np.argsort(scores[candidates], kind="stable")]
    removed = np.zeros(graph.num_groups, bool)
    removed[order[: _removal_count(fraction, len(candidates))]] = True
    _keep_one_per_layer(members, removed, scores)
    return _selection(members, removed)


def l1_norm_selection(
    model: keras.Model, prune_fraction: float, *, layers: Sequence[str] | None = None,
    unknown_layers: str = "error",
) -> Selection:
    """Li et al. 2017: cut each conv's filters with the smallest kernel L1 norm.

    For every listed layer it removes ``floor(prune_fraction · n)`` of its ``n``
    filters, those with the smallest ``Σ|W[..., k]|`` (the kernel of output
    channel ``k``), keeping at least one.

    Default layers: every ``Conv1D``/``Conv2D``/``Conv3D`` whose output channels
    may be removed on their own: not pinned, and not tied to the output of any
    other conv/dense layer. **Residual-tied convs are left out by default** (the
    last conv of a residual block, projection shortcuts, the stem: their channels
    are the residual stream, shared through ``Add``), as Li et al. do for ResNets
    ("we only prune the first layer of each residual block"). Naming them in
    ``layers`` prunes them anyway: convs named together that share channels are
    ranked together, each shared channel scored by the sum of the L1 norms of its
    filters in those convs, and removed from all of them.

    Args:
        model: a functional/Sequential Keras model.
        prune_fraction: in ``[0, 1)``, the fraction of each layer's filters to cut.
        layers: conv (or ``Dense``) layer names to prune instead of the default.
        unknown_layers: ``"error"`` (default) or ``"opaque"`` (see
            :func:`gamma_threshold_selection`).

    Returns:
        ``{conv_layer_name: kept filter indices}``.

    Raises:
        CriterionError: fraction outside ``[0, 1)``; unknown layer names, layers
            without a ``(..., in, out)`` kernel, layers whose channels are all
            pinned; no prunable conv in the model.

    Example:

    >>> import keras, numpy as np
    >>> x = keras.Input((6, 6, 1))
    >>> h = keras.layers.Conv2D(4, 1, use_bias=False, name="conv")(x)
    >>> y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    >>> model = keras.Model(x, y)
    >>> _ = model.get_layer("conv").kernel.assign(np.array([[[[1.0, -3.0, 0.5, 2.0]]]]))
    >>> l1_norm_selection(model, 0.5)["conv"].tolist()
    [1, 3]
    """
    fraction = _checked_fraction(prune_fraction)
    graph = channel_graph(model, unknown_layers=unknown_layers)
    names = _filter_layers(graph, layers)
    norms = {n: _filter_norms(graph, n) for n in names}
    members = {n: graph.layer_channels(n) for n in names}
    removed = np.zeros(graph.num_groups, bool)
    scores = np.zeros(graph.num_groups)
    for unit in _units(members):
        unit_members = {n: members[n] for n in unit}
        candidates = _candidates(graph, unit_members, unit)
        for n in unit:
            np.add.at(scores, members[n], norms[n])
        order = candidates[np.argsort(scores[candidates], kind="stable")]
        removed[order[: _removal_count(fraction, len(candidates))]] = True
    _keep_one_per_layer(members, removed, scores)
    return _selection(members, removed)


def zero_gamma_selection(sparse_model: keras.Model, *, unknown_layers: str = "error") -> Selection:
    """The channels of ``sparse_model`` that ``prune_model(sparse_model)`` would keep.

    Every channel group whose output is constant (its BatchNormalization γ at 0,
    as :class:`~tf_gamma_prune.GammaISTA` leaves it) and may be removed is
    dropped; the rest are kept, per BatchNormalization layer. Apply it to the
    model *before* sparsifying (the same architecture: layer names and widths)
    to prune the original weights at GammaISTA's choice of channels, then
    fine-tune (rewinding)::

        selection = zero_gamma_selection(sparse)
        small = prune_model(reference, selection, calibration_data=x_train[:512])

    Example:

    >>> import keras
    >>> x = keras.Input((6, 6, 1))
    >>> h = keras.layers.BatchNormalization(name="a")(keras.layers.Conv2D(3, 3)(x))
    >>> h = keras.layers.BatchNormalization(name="b")(keras.layers.Conv2D(3, 3)(h))
    >>> model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    >>> _ = model.get_layer("a").gamma.assign([0.5, 0.0, 2.0])
    >>> _ = model.get_layer("b").gamma.assign([0.0, 0.0, -0.3])
    >>> {k: v.tolist() for k, v in zero_gamma_selection(model).items()}
    {'a': [0, 2], 'b': [2]}
    """
    graph = channel_graph(sparse_model, fold="bias", unknown_layers=unknown_layers)
    names = _gamma_layers(sparse_model, graph, None)
    removed = graph.removable_constant_groups()
    return _selection({n: graph.layer_channels(n) for n in names}, removed)


def random_selection(
    model: keras.Model, widths: Mapping[str, int], *, seed: int = 0,
    unknown_layers: str = "error",
) -> Selection:
    """Keep ``widths[layer]`` uniformly random output channels of each named layer.

    Each channel group of the model draws one uniform score from
    ``numpy.random.default_rng(seed)``; a layer keeps its ``widths[layer]``
    best-scored channels. So each layer's kept set is a uniformly random subset of
    that size, the same seed gives the same choice, and layers whose channels are
    tied (a residual stream named twice) make the same choice: with equal widths
    they keep the same channels. Pinned channels are always kept (they count
    towards the width).

    Args:
        model: a functional/Sequential Keras model.
        widths: ``{layer_name: channels to keep}`` (any layer with a channel
            axis: BatchNormalization, conv...; qualified or unique bare names,
            e.g. the result of :func:`layer_widths` on a pruned model).
        seed: random seed.
        unknown_layers: ``"error"`` (default) or ``"opaque"`` (see
            :func:`gamma_threshold_selection`).

    Returns:
        ``{layer_name: kept channel indices}`` (sorted).

    Raises:
        CriterionError: unknown layer names, widths that are not integers in
            ``[1, layer width]``, or below the layer's pinned channel count.

    Example:

    >>> from tf_gamma_prune.reference_models import fashion_vgg
    >>> model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    >>> keep = random_selection(model, {"bn1": 3, "bn6": 10}, seed=1)
    >>> [len(keep["bn1"]), len(keep["bn6"])]
    [3, 10]
    >>> bool(np.all(keep["bn1"] == random_selection(model, {"bn1": 3}, seed=1)["bn1"]))
    True
    """
    if not isinstance(widths, Mapping) or not widths:
        raise CriterionError(
            "widths must be a non-empty mapping {layer_name: channels to keep}, e.g. "
            "layer_widths(pruned_model)."
        )
    graph = channel_graph(model, unknown_layers=unknown_layers)
    valid = graph.channel_layer_names()
    rng = np.random.default_rng(seed)
    scores = rng.random(graph.num_groups)
    scores[graph.pinned] = np.inf
    selection: Selection = {}
    for key, width in widths.items():
        name = _resolve(key, valid)
        groups = graph.layer_channels(name)
        if isinstance(width, (bool, np.bool_)) or not isinstance(width, (int, np.integer)):
            raise CriterionError(f"widths['{key}'] must be an integer, got {width!r}.")
        width = int(width)
        pinned = int(np.count_nonzero(graph.pinned[groups]))
        if not max(1, pinned) <= width <= len(groups):
            why = (f"; {pinned} of its channels are pinned "
                   f"({_pin_reason(graph, groups)})" if pinned else "")
            raise CriterionError(
                f"widths['{key}'] = {width}, but '{name}' has {len(groups)} channels"
                f"{why}: pass a width between {max(1, pinned)} and {len(groups)}."
            )
        order = np.argsort(-scores[groups], kind="stable")
        selection[name] = np.sort(order[:width])
    return selection


def layer_widths(model: keras.Model, layers: Sequence[str] | None = None) -> dict[str, int]:
    """Output widths (channels) of a model's BatchNormalization layers, by name.

    Read the widths a GammaISTA run ended with from its pruned model, and feed them
    to :func:`random_selection` on the unpruned model or to
    ``reference_models.fashion_vgg(widths=...)`` for training from scratch.
    ``prune_model`` keeps layer names; it flattens nested models, so a layer
    ``"backbone/bn"`` of the original is ``"bn"`` in the pruned model — bare names
    are accepted wherever they are unique.

    Args:
        model: any functional/Sequential Keras model.
        layers: layer names (any layer; qualified or unique bare names) instead of
            every BatchNormalization layer.

    Returns:
        ``{layer_name: width}`` in the model's layer order.

    Raises:
        NoBatchNormError: no ``layers`` given and the model has no
            BatchNormalization.
        CriterionError: unknown layer names.

    Example:

    >>> from tf_gamma_prune.reference_models import fashion_vgg
    >>> layer_widths(fashion_vgg(widths=(8, 8, 16, 16, 32, 32)))
    {'bn1': 8, 'bn2': 8, 'bn3': 16, 'bn4': 16, 'bn5': 32, 'bn6': 32}
    >>> layer_widths(fashion_vgg(), ["conv1", "logits"])
    {'conv1': 32, 'logits': 10}
    """
    graph = layer_graph(model)
    widths: dict[str, int] = {}
    for call in graph.calls:
        if call.name not in widths and call.outputs:
            shape = graph.shape(call.outputs[0])
            if len(shape) >= 2 and shape[-1] is not None:
                widths[call.name] = int(shape[-1])
    if layers is None:
        bn = {c.name for c in graph.calls if is_batchnorm(c.layer)}
        out = {n: w for n, w in widths.items() if n in bn}
        if not out:
            raise NoBatchNormError(
                f"Model '{model.name}' has no BatchNormalization layer; pass "
                "layers=[...] to read the widths of other layers."
            )
        return out
    if isinstance(layers, str):
        raise CriterionError(f"layers takes a list of names, got the string {layers!r}.")
    out = {}
    for key in layers:
        name = _resolve(key, list(widths))
        out[name] = widths[name]
    return out


def selection_for_macs(
    model: keras.Model,
    criterion: Callable[..., Mapping[str, Any]],
    target_macs: int,
    *,
    tolerance: float = 0.05,
    unknown_layers: str = "error",
    round_to: int = 1,
    **criterion_kwargs: Any,
) -> tuple[Selection, int]:
    """Bisect a criterion's prune fraction until the pruned model's MACs hit a target.

    Calls ``criterion(model, prune_fraction, **criterion_kwargs)`` (e.g.
    :func:`gamma_threshold_selection`, :func:`l1_norm_selection` or any function
    with that signature) and counts the MACs that ``prune_model(model,
    selection)`` (default options) would leave — computed exactly from the removal
    plan, without rebuilding the model (tests check it against ``count_macs`` of
    the rebuilt model).

    Args:
        model: the model to prune.
        criterion: selection criterion taking ``(model, prune_fraction, **kw)``.
        target_macs: the wanted MACs per example (``count_macs`` units).
        tolerance: accepted relative deviation, ``|macs − target| ≤ tolerance ·
            target``.
        unknown_layers: ``"error"`` (default) or ``"opaque"``: keep layer types
            the channel graph does not know whole (see
            :func:`gamma_threshold_selection`); passed on to ``criterion`` when
            it has an ``unknown_layers`` parameter. Prune the result with
            ``prune_model(model, selection, unknown_layers="opaque")``.
        round_to: count the MACs of ``prune_model(model, selection,
            round_to=round_to)``, whose widths are rounded up to multiples of it
            (XNNPACK's tiles); prune with the same ``round_to``. The MACs then
            move in steps of whole tiles, so a target between two steps raises
            :class:`TargetUnreachableError` naming the closest.
        **criterion_kwargs: passed to ``criterion`` (e.g. ``layers=[...]``).

    Returns:
        ``(selection, macs)``: the first selection within tolerance that the
        bisection finds (the unpruned one if that is already within), and the
        MACs of the pruned model.

    Raises:
        TargetUnreachableError: no prune fraction gets within tolerance (the
            target is above the unpruned model's MACs, below what the criterion
            can reach, or between two consecutive steps of the criterion); the
            message and attributes give the closest reachable MACs.
        CriterionError: ``target_macs`` not a positive integer, ``tolerance``
            outside ``[0, 1)``.
        ValueError: the model's MACs are not static (dynamic input shape).
    """
    if isinstance(target_macs, bool) or not isinstance(target_macs, (int, np.integer)) \
            or target_macs <= 0:
        raise CriterionError(f"target_macs must be a positive integer, got {target_macs!r}.")
    target = int(target_macs)
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise CriterionError(f"tolerance must be in [0, 1), got {tolerance!r}.")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise CriterionError(f"round_to must be an integer >= 1, got {round_to!r}.")
    graph = channel_graph(model, unknown_layers=unknown_layers)
    band = tolerance * target
    best: list[Any] = [None, None, None]  # fraction, selection, macs
    if _has_parameter(criterion, "unknown_layers"):
        criterion_kwargs = dict(criterion_kwargs, unknown_layers=unknown_layers)

    def evaluate(fraction: float) -> int:
        selection = criterion(model, fraction, **criterion_kwargs)
        plan = plan_removal(graph, selection, round_to=round_to)
        macs = planned_macs(graph, plan.removed)
        if macs is None:
            raise ArgumentError(
                f"The MACs of model '{model.name}' are not static (a spatial size is "
                "unknown); build it with a fixed input shape to prune to a MAC target."
            )
        if best[2] is None or abs(macs - target) < abs(best[2] - target):
            best[:] = [fraction, dict(selection), macs]
        return macs

    def within(macs: int) -> bool:
        return abs(macs - target) <= band

    lo, hi = 0.0, 1.0 - 1e-9
    macs_lo = evaluate(lo)
    if not within(macs_lo) and macs_lo > target:
        macs_hi = evaluate(hi)
        # The target lies between the extremes: bisect (MACs fall as the fraction grows).
        while not within(macs_hi) and macs_hi < target and hi - lo > 1e-9:
            mid = 0.5 * (lo + hi)
            macs = evaluate(mid)
            if within(macs):
                break
            if macs > target:
                lo = mid
            else:
                hi, macs_hi = mid, macs
    if within(best[2]):
        return best[1], best[2]
    fraction, _, closest = best
    raise TargetUnreachableError(
        f"{getattr(criterion, '__name__', 'the criterion')} cannot bring "
        f"'{model.name}' to {target:,} MACs within ±{tolerance:.0%}: the closest it "
        f"reaches is {closest:,} MACs (prune_fraction {fraction:.4f}; unpruned "
        f"{macs_lo:,}). Pick a target near that, raise the tolerance, or use a "
        "criterion with finer steps" + (
            f" (with round_to={round_to}, tiled_selection_for_macs moves each layer by its "
            "own tiles and reaches more budgets)." if round_to > 1 else "."),
        target_macs=target, closest_macs=int(closest), closest_fraction=float(fraction),
    )


# ------------------------------------------------------------------ helpers
def _has_parameter(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` names a parameter ``name`` (``**kwargs`` does not count: it
    may forward to a function that does not take it)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _checked_fraction(prune_fraction: Any) -> float:
    if isinstance(prune_fraction, bool) or not isinstance(prune_fraction, (int, float, np.floating, np.integer)):
        raise CriterionError(f"prune_fraction must be a number in [0, 1), got {prune_fraction!r}.")
    fraction = float(prune_fraction)
    if not 0.0 <= fraction < 1.0:
        raise CriterionError(
            f"prune_fraction must be in [0, 1), got {fraction} (it is the fraction of "
            "channels to remove; 1 would remove everything)."
        )
    return fraction


def _removal_count(fraction: float, candidates: int) -> int:
    """``floor(fraction · candidates)``, robust to rounding, never all of them."""
    return max(0, min(math.floor(fraction * candidates + 1e-9), candidates - 1))


def _resolve(key: str, names: list[str]) -> str:
    try:
        return resolve_layer_name(key, names)
    except ValueError as err:
        raise CriterionError(str(err)) from None


def _named_layers(graph: ChannelGraph, layers: Sequence[str],
                  check: Callable[[str], None]) -> list[str]:
    """The resolved, de-duplicated graph names of ``layers``, each passed to ``check``."""
    if isinstance(layers, str):
        raise CriterionError(f"layers takes a list of names, got the string {layers!r}.")
    every = graph.channel_layer_names()
    names = []
    for key in layers:
        name = _resolve(key, every)
        check(name)
        if name not in names:
            names.append(name)
    return names


def _pin_reason(graph: ChannelGraph, groups: np.ndarray) -> str:
    pinned = [int(g) for g in np.unique(groups) if graph.pinned[g]]
    return "; ".join(sorted({graph.pin_reasons.get(g, "pinned") for g in pinned}))


def _gamma_layers(model: keras.Model, graph: ChannelGraph,
                  layers: Sequence[str] | None) -> list[str]:
    """Names of the BatchNormalization calls with a γ to pool (graph names)."""
    with_gamma = []
    for call in graph.layer_graph.calls:
        if is_batchnorm(call.layer) and call.layer.scale and call.name not in with_gamma:
            with_gamma.append(call.name)
    if not with_gamma:
        raise NoBatchNormError(
            f"Model '{model.name}' has no BatchNormalization γ, so there is no |γ| to "
            "threshold. Use l1_norm_selection, or a model with BatchNormalization."
        )
    if layers is None:
        names = [n for n in with_gamma if not np.all(graph.pinned[graph.layer_channels(n)])]
        if not names:
            raise CriterionError(
                f"Every BatchNormalization channel of '{model.name}' is pinned "
                f"({_pin_reason(graph, graph.layer_channels(with_gamma[0]))}); nothing to cut."
            )
        return names
    def check(name: str) -> None:
        if name not in with_gamma:
            raise CriterionError(
                f"'{name}' is not a BatchNormalization layer with a γ; "
                f"gamma_threshold_selection pools those only: {', '.join(with_gamma)}."
            )

    return _named_layers(graph, layers, check)


def _filter_layers(graph: ChannelGraph, layers: Sequence[str] | None) -> list[str]:
    """Names of the conv (or Dense) calls to prune by kernel norm."""
    calls = {}
    for call in graph.layer_graph.calls:
        calls.setdefault(call.name, []).append(call)
    if layers is None:
        owners: dict[int, set[str]] = {}
        for call in graph.layer_graph.calls:
            if graph.kinds[call].name in (MIXING, CONSTANT):
                for g in np.unique(graph.channels[call.outputs[0]]):
                    owners.setdefault(int(g), set()).add(call.name)
        names = []
        for name, cs in calls.items():
            layer = cs[0].layer
            if not isinstance(layer, _FILTER_LAYERS) or graph.kinds[cs[0]].name != MIXING:
                continue
            groups = np.unique(graph.layer_channels(name))
            if np.any(graph.pinned[groups]):
                continue
            if any(owners[int(g)] != {name} for g in groups):
                continue  # tied to another conv/dense output (residual stream)
            names.append(name)
        if not names:
            raise CriterionError(
                "The model has no conv layer whose filters can be pruned on their own "
                "(all are pinned or tied through residual adds). Name the convs to "
                "prune with layers=[...]."
            )
        return names

    def check(name: str) -> None:
        layer = calls[name][0].layer
        if not isinstance(layer, (*_FILTER_LAYERS, L.Dense)) or graph.kinds[calls[name][0]].name != MIXING:
            raise CriterionError(
                f"'{name}' ({type(layer).__name__}) has no (..., in, out) kernel to rank "
                "filters by; l1_norm_selection takes Conv1D/2D/3D (and Dense) layers."
            )
        groups = graph.layer_channels(name)
        if np.all(graph.pinned[groups]):
            raise CriterionError(
                f"The output channels of '{name}' cannot be removed "
                f"({_pin_reason(graph, groups)})."
            )

    return _named_layers(graph, layers, check)


def _filter_norms(graph: ChannelGraph, name: str) -> np.ndarray:
    layer = next(c.layer for c in graph.layer_graph.calls if c.name == name)
    kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float64)
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def _units(members: Mapping[str, np.ndarray]) -> list[list[str]]:
    """Layers grouped by shared channel groups (connected components)."""
    names = list(members)
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, n in enumerate(names):
        for g in np.unique(members[n]):
            j = owner.setdefault(int(g), i)
            parent[find(i)] = find(j)
    units: dict[int, list[str]] = {}
    for i, n in enumerate(names):
        units.setdefault(find(i), []).append(n)
    return list(units.values())


def _candidates(graph: ChannelGraph, members: Mapping[str, np.ndarray],
                names: Sequence[str]) -> np.ndarray:
    groups = np.unique(np.concatenate([members[n] for n in names]))
    return groups[~graph.pinned[groups]]


def _keep_one_per_layer(members: Mapping[str, np.ndarray], removed: np.ndarray,
                        scores: np.ndarray) -> None:
    """Put back the best-scored channel of any layer the removal would empty."""
    for groups in members.values():
        if np.all(removed[groups]):
            removed[groups[np.argmax(scores[groups])]] = False


def _selection(members: Mapping[str, np.ndarray], removed: np.ndarray) -> Selection:
    return {n: np.flatnonzero(~removed[groups]) for n, groups in members.items()}
