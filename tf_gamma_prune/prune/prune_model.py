"""Rebuild a narrower model: remove channels, fold their constants downstream.

:func:`prune_model` is the one user action: it analyses the model
(:mod:`~tf_gamma_prune.analysis.channel_graph`), decides what to remove
(:mod:`~tf_gamma_prune.prune.plan`) and rebuilds a **new** functional model —
the input model is never modified.

A removed channel disappears from its producer (conv filters, bias, BN slices,
PReLU alphas...) and from every reader. Where a conv/dense layer read it, its
value (a constant for γ = 0 channels) is folded in:

* into the reader's bias: ``b += Σ_spatial W[..., k, :] · c_k``;
* if the reader has no bias and feeds only a BatchNormalization, into that BN's
  moving mean instead: ``moving_mean -= Σ_spatial W[..., k, :] · c_k`` (BN
  computes ``x − mean``, so adding a constant to ``x`` is subtracting it from
  the mean);
* otherwise the reader gets a bias.

With zero padding ('same' convs, ZeroPadding layers) the border positions of a
reader see fewer constant taps than its interior. Three ways to handle that:

* ``fold="exact"`` adds a
  :class:`~tf_gamma_prune.layers.BorderCorrection` after the reader holding
  the per-position difference (the reader's activation moves after it), so
  the pruned model computes the same function. The difference is 0 in the
  interior, so the layer stores only the border ring's blocks (``8·C``
  numbers for a 3×3 'same' conv, whatever the resolution); in TFLite it is a
  few ``SPLIT_V`` / ``ADD`` / ``CONCATENATION`` ops (about 4 KB of flatbuffer
  per reader) and the activation is no longer fused.
* ``fold="carrier"`` is exact too and adds no layer: where a reader would need
  a border map, one removed constant channel ``k`` (the *carrier*) is kept.
  Its producer still computes it (γ = 0 makes BN output exactly β), so zero
  padding treats it like every removed constant, and the reader's weights
  carry the others: ``W[..., k, :] += Σ_j W[..., j, :] · c_j / c_k``. It costs
  one channel per such tensor. With ``round_to=n`` only a constant channel
  that rounding keeps back anyway carries (rounding then prefers the largest
  constants): one more channel would cost a whole block of ``n`` — on
  XNNPACK, whose float kernels compute output channels in tiles (8 on ARM
  NEON, 16 with AVX-512), that is far slower than the border map's ``ADD``.
  ``carrier_tile=8`` keeps a carrier only where it fits in the last, partly
  filled tile of 8 output channels (16 -> 17 starts a new tile, 19 -> 20 does
  not). Where no channel can carry the constants (separable or shared
  readers, constants that are different maps after a depthwise conv, no spare
  channel within ``round_to`` or ``carrier_tile``) the reader falls back to a
  BorderCorrection and the report notes say so.
  Fine-tuning may move the carrier's γ away from 0: it is then an ordinary
  channel (the model stays a valid network, only no longer the original
  function).
* ``fold="bias"`` is the paper's plain bias fold and the report states the
  measured deviation.

Nested models are inlined: the pruned model is one flat functional model whose
layers keep their names (a nested layer whose name clashes with another gets
its qualified name with ``_`` for ``/``).

Example:

>>> import keras, numpy as np
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
>>> y = keras.layers.BatchNormalization(name="bn")(y)
>>> y = keras.layers.ReLU(name="relu")(y)
>>> y = keras.layers.Conv2D(4, 3, padding="same", name="head")(y)
>>> model = keras.Model(x, y)
>>> bn = model.get_layer("bn")
>>> _ = bn.gamma.assign(np.where(np.arange(8) < 3, 0.0, 1.0))
>>> _ = bn.beta.assign(np.linspace(-1, 1, 8))
>>> small, report = prune_model(model, return_report=True)
>>> small.get_layer("conv").filters, report.max_rel_deviation < 1e-5
(5, True)
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph
from tf_gamma_prune.errors import NoBatchNormError, NonFiniteWeightError
from tf_gamma_prune.prune.calibration import calibration_batches, mean_activations
from tf_gamma_prune.prune.plan import plan_removal
from tf_gamma_prune.prune.rebuild import Rebuilder
from tf_gamma_prune.prune.report import PruneReport, build_report, probe_deviation

L = keras.layers


def prune_model(
    model: keras.Model,
    selection: Mapping[str, Any] | None = None,
    *,
    fold: str = "auto",
    remove_constant: bool = True,
    round_to: int = 1,
    carrier_tile: int = 1,
    calibration_data: Any = None,
    probe: bool = True,
    probe_inputs: Any = None,
    unknown_layers: str = "error",
    return_report: bool = False,
) -> keras.Model | tuple[keras.Model, PruneReport]:
    """Remove channels from a BatchNormalization-based Keras model.

    By default every channel that is constant (BatchNormalization γ exactly 0,
    and whatever that makes constant downstream) and can be removed exactly is
    removed; tied channels (residual adds, depthwise convs...) go only where
    they are constant in every member.

    Args:
        model: a functional or Sequential Keras 3 model (nested models are
            inlined). Not modified.
        selection: optional explicit channels to keep, ``{layer_name: keep}``
            with ``keep`` a boolean mask or a list of indices over that layer's
            output channels (see :mod:`tf_gamma_prune.prune.plan`). Removed
            non-constant channels are dropped (treated as 0) unless
            ``calibration_data`` is given.
        fold: ``"auto"`` (default) is exact and never makes the model larger:
            it folds like ``"carrier"``, and where no channel can carry the
            removed constants past zero padding it keeps those constant
            channels instead of adding a border map (nor does it replace a
            layer by a constant map larger than the layer); works with dynamic
            spatial shapes (constants whose maps would need a static size are
            kept). ``"exact"`` folds constants exactly, adding fixed
            border corrections where zero padding requires them (compact:
            the border ring only; needs static spatial shapes); ``"carrier"`` is exact too but keeps one
            constant channel per such tensor and routes the removed constants
            through its weights instead (no extra layer; with ``round_to > 1``
            only channels kept back by rounding carry; falls back to a border
            map where no channel can carry them, see the module doc);
            ``"bias"`` is the paper's plain bias fold.
        remove_constant: remove the exactly removable constant channels (on by
            default, also with a selection).
        round_to: keep conv/dense widths at multiples of this; the extra kept
            channels are those with the largest |γ| (with ``fold="carrier"``,
            among constants the best carriers).
        carrier_tile: with ``fold="carrier"``, keep a carrier channel only
            where it does not make any layer need one more tile of this many
            output channels (elsewhere the reader keeps its BorderCorrection).
            XNNPACK's float kernels compute output channels in tiles of 8 on
            ARM NEON and 16 with AVX-512: 16 -> 17 channels costs as much as
            32, an ADD much less. ``1`` (default) always carries.
        calibration_data: model inputs; removed non-constant channels are
            then replaced by their mean activation over them (folded like
            constants). Either one in-memory batch (an array, a list/tuple/dict
            of arrays for a multi-input model, or an ``(x, y)`` pair whose ``y``
            is ignored), or a ``tf.data.Dataset`` / iterator / generator of such
            batches, of which the first ~``CALIBRATION_EXAMPLES`` examples are
            used. Checked before anything else against the model's input
            shape(s); it must hold at least one example and be finite.
        probe: measure the output deviation from ``model`` on a random batch
            (inference mode) and put it in the report.
        probe_inputs: the batch to probe with instead of random inputs.
        unknown_layers: ``"error"`` (default) raises on a layer type the
            channel graph does not know; ``"opaque"`` keeps each such layer
            (and Lambda layers) whole: all its channels and weights kept, named
            in the report's notes, the rest of the model pruned. (Keras'
            recurrent, attention and wrapper layers and ``keras.ops`` calls
            without a rule are kept whole that way in both modes.)
        return_report: return ``(pruned_model, PruneReport)``.

    Returns:
        The pruned model, or ``(model, report)`` with ``return_report=True``.

    Example:

    >>> import keras, numpy as np
    >>> x = keras.Input((6, 6, 3))
    >>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    >>> h = keras.layers.BatchNormalization(name="bn")(h)
    >>> y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    >>> model = keras.Model(x, y)
    >>> _ = model.get_layer("bn").gamma.assign([1.0, 0.0, 1.0, 0.0])
    >>> prune_model(model).get_layer("conv").filters
    2
    >>> prune_model(model, {"bn": [0]}).get_layer("conv").filters  # + a selection
    1

    With ``fold="carrier"`` a 'same' conv reader keeps one constant channel
    and no BorderCorrection:

    >>> y = keras.layers.Conv2D(2, 3, padding="same", name="reader")(h)
    >>> model = keras.Model(x, y)
    >>> _ = model.get_layer("bn").beta.assign([0.5, 2.0, -1.0, 1.0])
    >>> small, report = prune_model(model, fold="carrier", return_report=True)
    >>> small.get_layer("conv").filters, report.carriers, report.border_corrections
    (3, {'reader': 1}, [])
    >>> report.max_rel_deviation < 1e-5
    True

    Raises:
        UnsupportedModelError / UnsupportedLayerError: subclassed models,
            Lambda layers, unknown layer types (named in the message).
        SharedLayerError: a shared layer whose uses would fold differently.
        DynamicShapeError: exact folding needs a static spatial shape.
        NonFiniteWeightError: NaN/Inf weights (the layer is named).
        CalibrationDataError: ``calibration_data`` that does not fit the
            model's inputs (expected and received shapes in the message),
            holds no example, or has NaN/Inf values.
        SelectionError: unknown layer names, masks of the wrong size,
            selections removing every channel of a layer or pinned channels,
            an empty selection ``{}`` (use ``None`` for no selection).
        NoBatchNormError: no selection and a model normalised only by
            LayerNormalization/GroupNormalization (their γ mix channels and never
            make one constant, so nothing would be removed).

    Warns:
        UserWarning: a BatchNormalization whose every γ is 0 (the model's
            output then no longer depends on its input along that path).
    """
    graph = channel_graph(model, fold=fold, unknown_layers=unknown_layers)
    if selection is None and remove_constant:
        _check_has_gammas(graph)
    _warn_collapsed_layers(graph)
    batches = None
    if calibration_data is not None:
        batches = calibration_batches(graph, calibration_data)
    weights = _numpy_weights(graph)
    plan = plan_removal(graph, selection, remove_constant=remove_constant,
                        round_to=round_to, calibrated=batches is not None,
                        carrier_tile=carrier_tile)
    means = {}
    if batches is not None and plan.selected.any():
        means = mean_activations(graph, batches)
    rebuilder = Rebuilder(graph, plan, weights, means)
    pruned = rebuilder.build(model)
    if not return_report:
        return pruned
    report = build_report(model, pruned, graph, plan, rebuilder)
    if probe:
        probe_deviation(model, pruned, report, probe_inputs)
    return pruned, report


_OTHER_NORMS = (L.LayerNormalization, L.GroupNormalization)


def _check_has_gammas(graph: ChannelGraph) -> None:
    """A model normalised only by LayerNormalization/GroupNormalization would come
    back unchanged: their γ mix channels and never make one constant."""
    layers = [call.layer for call in graph.layer_graph.calls]
    others = sorted({type(layer).__name__ for layer in layers if isinstance(layer, _OTHER_NORMS)})
    if others and not any(isinstance(layer, L.BatchNormalization) and layer.scale
                          for layer in layers):
        raise NoBatchNormError(
            f"The model is normalised by {others} only: their γ normalise across channels, so "
            "no channel becomes constant and prune_model would remove nothing. Pass a "
            "selection (e.g. tf_gamma_prune.l1_norm_selection(model, 0.5)), or use "
            "BatchNormalization and train with GammaISTA."
        )


def _warn_collapsed_layers(graph: ChannelGraph) -> None:
    collapsed = [call.name for call in graph.layer_graph.calls
                 if isinstance(call.layer, L.BatchNormalization) and call.layer.scale
                 and not np.any(keras.ops.convert_to_numpy(call.layer.gamma))]
    if collapsed:
        warnings.warn(
            f"BatchNormalization {collapsed}: every γ is 0, so these layers output constants "
            "and everything that only reads them is constant too (the pruned model may ignore "
            "its input). Train with GammaISTA(min_channels=1) or a smaller ρ to keep every "
            "layer alive.", UserWarning, stacklevel=3)


# --- weights -------------------------------------------------------------------
def _numpy_weights(graph: ChannelGraph) -> dict[int, dict[str, np.ndarray]]:
    """Every layer's weights as numpy arrays by name; checks they are finite."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for call in graph.layer_graph.calls:
        layer = call.layer
        if id(layer) in out or not isinstance(layer, L.Layer):
            continue
        arrays = {}
        for w in layer.weights:
            arr = keras.ops.convert_to_numpy(w)
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                raise NonFiniteWeightError(
                    f"Layer '{call.name}' ({type(layer).__name__}) has non-finite "
                    f"values (NaN/Inf) in its weight '{w.name}'. Training diverged or "
                    "the weights are corrupt: reload a good checkpoint before pruning."
                )
            arrays[w.name] = arr
        out[id(layer)] = arrays
    return out


