"""Rebuild a narrower model: remove channels, fold their constants downstream.

:func:`prune_model` is the one user action: it analyses the model
(:mod:`~tf_gamma_prune.graph`), decides what to remove
(:mod:`~tf_gamma_prune.selection`) and rebuilds a **new** functional model —
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

* ``fold="exact"`` (default) adds a
  :class:`~tf_gamma_prune.layers.BorderCorrection` after the reader holding
  the per-position difference (the reader's activation moves after it), so
  the pruned model computes the same function; in TFLite it is a
  full-resolution constant ``ADD`` and the activation is no longer fused.
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

import dataclasses
from typing import Any, Iterator, Mapping

import keras
import numpy as np

from tf_gamma_prune.export import CalibrationDataError
from tf_gamma_prune.flops import model_cost
from tf_gamma_prune.graph import (
    CONCAT,
    CONSTANT,
    DEPTHWISE,
    MIXING,
    ChannelGraph,
    DynamicShapeError,
    SharedLayerError,
    UnsupportedLayerError,
    _has_padding_effect,
    channel_graph,
    is_transposed_conv,
    linear_response,
)
from tf_gamma_prune.layer_graph import LayerCall, TensorId, functional_core
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature
from tf_gamma_prune.selection import RemovalPlan, plan_removal, removed_values, same_shape

L = keras.layers


class NonFiniteWeightError(ValueError):
    """A layer holds NaN or Inf weights; pruning would spread them."""


@dataclasses.dataclass
class PruneReport:
    """What :func:`prune_model` did.

    Attributes:
        widths: per conv/dense/depthwise/BatchNormalization layer, output
            channels ``(before, after)``.
        params_before / params_after: parameter counts.
        macs_before / macs_after: multiply-accumulates per example (``None``
            for dynamic input shapes).
        removed_constant: channel groups removed because they were constant.
        removed_selected: channel groups removed because the selection asked.
        border_corrections: layers that got a BorderCorrection (exact fold).
        border_params: numbers stored in those correction maps (included in
            ``params_after``; each map has its conv's output size).
        constant_layers: layers replaced by their constant output.
        fold: ``"exact"``, ``"carrier"`` or ``"bias"``.
        carriers: ``fold="carrier"``: each conv reader whose removed constants
            are carried, and the index (in its input's original channels) of
            the constant channel that carries them.
        carrier_channels: per conv/dense/depthwise/BatchNormalization layer,
            the original output channels kept only as carriers (included in
            ``widths``, ``params_after`` and ``macs_after``).
        max_abs_deviation / max_rel_deviation: largest output difference from
            the original on the probe batch (relative to the largest |output|);
            ``None`` without a probe.
        notes: other decisions and approximations.
    """

    widths: dict[str, tuple[int, int]]
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    removed_constant: int
    removed_selected: int
    border_corrections: list[str]
    constant_layers: list[str]
    fold: str
    border_params: int = 0
    carriers: dict[str, int] = dataclasses.field(default_factory=dict)
    carrier_channels: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    max_abs_deviation: float | None = None
    max_rel_deviation: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"params {self.params_before:,} -> {self.params_after:,}"
            f" ({self.params_after / max(self.params_before, 1):.1%})"
            + (f", of which {self.border_params:,} in border corrections"
               if self.border_params else ""),
        ]
        if self.macs_before is not None and self.macs_after is not None:
            lines.append(
                f"MACs {self.macs_before:,} -> {self.macs_after:,}"
                f" ({self.macs_after / max(self.macs_before, 1):.1%})"
            )
        lines.append(
            f"removed {self.removed_constant} constant and {self.removed_selected} "
            f"selected channel groups; fold={self.fold}"
        )
        if self.carriers:
            kept = ", ".join(f"{n} +{len(c)}" for n, c in self.carrier_channels.items())
            lines.append(
                f"carriers: {len(self.carriers)} reader(s) carry their removed constants "
                f"through a kept constant channel (kept for it: {kept or 'none extra'})"
            )
        if self.max_abs_deviation is not None:
            lines.append(
                f"probe deviation: max abs {self.max_abs_deviation:.3g}, "
                f"max rel {self.max_rel_deviation:.3g}"
            )
        changed = [f"  {n}: {a} -> {b}" for n, (a, b) in self.widths.items() if a != b]
        if changed:
            lines.append("widths:")
            lines.extend(changed)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def prune_model(
    model: keras.Model,
    selection: Mapping[str, Any] | None = None,
    *,
    fold: str = "exact",
    remove_constant: bool = True,
    round_to: int = 1,
    carrier_tile: int = 1,
    calibration_data: Any = None,
    probe: bool = True,
    probe_inputs: Any = None,
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
            output channels (see :mod:`tf_gamma_prune.selection`). Removed
            non-constant channels are dropped (treated as 0) unless
            ``calibration_data`` is given.
        fold: ``"exact"`` (default) folds constants exactly, adding fixed
            border-correction maps where zero padding requires them (needs
            static spatial shapes); ``"carrier"`` is exact too but keeps one
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
    """
    graph = channel_graph(model, fold=fold)
    batches = None
    if calibration_data is not None:
        batches = _calibration_batches(graph, calibration_data)
    weights = _numpy_weights(graph)
    plan = plan_removal(graph, selection, remove_constant=remove_constant,
                        round_to=round_to, calibrated=batches is not None,
                        carrier_tile=carrier_tile)
    means = {}
    if batches is not None and plan.selected.any():
        means = _mean_activations(graph, batches)
    rebuilder = _Rebuilder(graph, plan, weights, means)
    pruned = rebuilder.build(model)
    if not return_report:
        return pruned
    report = _report(model, pruned, graph, plan, rebuilder)
    if probe:
        _probe(model, pruned, report, probe_inputs)
    return pruned, report


# --- weights -------------------------------------------------------------------
def _numpy_weights(graph: ChannelGraph) -> dict[int, dict[str, np.ndarray]]:
    """Every layer's weights as numpy arrays by name; checks they are finite."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for call in graph.graph.calls:
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


# --- calibration means ----------------------------------------------------------
CALIBRATION_EXAMPLES = 1024
"""Batches are taken from a streamed ``calibration_data`` (dataset, iterator)
until at least this many examples are collected; one in-memory batch is used
whole."""


def _calibration_batches(graph: ChannelGraph, data: Any) -> list[list[np.ndarray]]:
    """``calibration_data`` as validated batches, one array per model input.

    Raises:
        CalibrationDataError: wrong structure or shape, no example, NaN/Inf.
    """
    lg = graph.graph
    names = [_input_name(lg.specs[t], i) for i, t in enumerate(lg.inputs)]
    shapes = [lg.shape(t) for t in lg.inputs]
    expected = shapes[0] if len(shapes) == 1 else shapes
    streamed = _is_stream(data)
    batches: list[list[np.ndarray]] = []
    count = 0
    for element in (iter(data) if streamed else [data]):
        xs = _model_inputs(element, names, expected)
        arrays = []
        for x, name, shape in zip(xs, names, shapes):
            x = received = np.asarray(x)
            if x.ndim == len(shape) - 1:  # one example without its batch axis
                x = x[None]
            if x.ndim != len(shape) or any(
                d is not None and d != n for d, n in zip(shape[1:], x.shape[1:])
            ):
                raise CalibrationDataError(
                    f"calibration_data for input '{name}' has shape {tuple(received.shape)}; the "
                    f"model expects {tuple(shape)} (batch first, None = any size)."
                )
            if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
                bad = int(np.count_nonzero(~np.isfinite(x)))
                raise CalibrationDataError(
                    f"calibration_data for input '{name}' has {bad} non-finite value(s) "
                    "(NaN/Inf); the mean activations, and so the folded biases, would be "
                    "non-finite. Clean or re-preprocess the data."
                )
            arrays.append(x)
        n = arrays[0].shape[0] if arrays else 0
        if any(a.shape[0] != n for a in arrays):
            raise CalibrationDataError(
                f"calibration_data inputs have different numbers of examples: "
                f"{[a.shape[0] for a in arrays]}."
            )
        if n:
            batches.append(arrays)
            count += n
        if streamed and count >= CALIBRATION_EXAMPLES:
            break
    if not count:
        raise CalibrationDataError(
            "calibration_data holds no examples; at least one example is needed "
            f"(model input shape {expected})."
        )
    return batches


def _input_name(tensor: Any, index: int) -> str:
    """The name of the InputLayer behind a model input (Keras' dict key for it)."""
    history = getattr(tensor, "_keras_history", None)
    name = getattr(history[0], "name", None) if history else None
    return name or getattr(tensor, "name", None) or f"input {index}"


def _is_stream(data: Any) -> bool:
    """A dataset, iterator or generator of batches (not itself one batch)."""
    if isinstance(data, (np.ndarray, list, tuple, Mapping, str, bytes)):
        return False
    if hasattr(data, "shape") and hasattr(data, "dtype"):  # a tensor
        return False
    return hasattr(data, "__iter__")


def _model_inputs(element: Any, names: list[str], expected: Any) -> list[Any]:
    """One batch's arrays in the model's input order; ``(x, y[, w])`` gives ``x``."""
    n = len(names)
    if isinstance(element, Mapping):
        if all(name in element for name in names):
            return [element[name] for name in names]
        if n > 1:
            raise CalibrationDataError(
                f"calibration_data dict has keys {sorted(map(str, element))}; the model's "
                f"inputs are {names}."
            )
        element = keras.tree.flatten(element)
    if isinstance(element, (list, tuple)):
        if n == 1 and len(element) in (1, 2, 3):
            return _model_inputs(element[0], names, expected)  # x, (x, y), (x, y, w)
        if n > 1 and len(element) == n and not any(
            isinstance(e, (list, tuple, Mapping)) for e in element
        ):
            return list(element)
        if n > 1 and len(element) in (2, 3) and isinstance(element[0], (list, tuple, Mapping)):
            return _model_inputs(element[0], names, expected)  # ((x1, x2), y)
        raise CalibrationDataError(
            f"calibration_data is a {type(element).__name__} of {len(element)} items; the "
            f"model takes {n} input(s) of shape {expected}. Pass one batch (one array per "
            "input, optionally as (x, y)), or a tf.data.Dataset / iterator of batches."
        )
    if n != 1:
        raise CalibrationDataError(
            f"calibration_data is one array; the model takes {n} inputs {names} of shapes "
            f"{expected}: pass a list or dict of arrays."
        )
    return [element]


def _mean_activations(graph: ChannelGraph,
                      batches: list[list[np.ndarray]]) -> dict[TensorId, np.ndarray]:
    """Per-channel mean (over examples and space) of every tensor a mixing
    layer reads, on ``batches``, computed by running the original layers eagerly."""
    sums: dict[TensorId, np.ndarray] = {}
    counts: dict[TensorId, int] = {}
    for batch in batches:
        for t, arr in _activations(graph, batch):
            flat = arr.reshape(-1, arr.shape[-1])
            sums[t] = sums.get(t, 0.0) + flat.sum(axis=0)
            counts[t] = counts.get(t, 0) + flat.shape[0]
    return {t: sums[t] / max(counts[t], 1) for t in sums}


def _activations(graph: ChannelGraph,
                 inputs: list[np.ndarray]) -> Iterator[tuple[TensorId, np.ndarray]]:
    """``(tensor, float64 value)`` of every fold-site tensor on one batch."""
    lg = graph.graph
    wanted = {t for _, t in graph.fold_sites()}
    values: dict[TensorId, Any] = {
        t: keras.ops.convert_to_tensor(v) for t, v in zip(lg.inputs, inputs)
    }
    remaining = {t: len(lg.consumers(t)) for t in values}
    for call in lg.calls:
        args, kwargs = call.call_arguments(values)
        if isinstance(call.layer, L.Layer) and _accepts_training(call.layer):
            kwargs["training"] = False
        outs = keras.tree.flatten(call.layer(*args, **kwargs))
        for t, v in zip(call.outputs, outs):
            values[t] = v
            remaining[t] = len(lg.consumers(t))
            if t in wanted:
                yield t, np.asarray(keras.ops.convert_to_numpy(v), np.float64)
        for t in dict.fromkeys(call.inputs):
            remaining[t] -= 1
            if remaining[t] <= 0 and t not in lg.outputs:
                values.pop(t, None)


def _accepts_training(layer: Any) -> bool:
    import inspect

    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


# --- rebuild ---------------------------------------------------------------------
_EMPTY = object()  # value of a tensor whose every channel was removed


class _Rebuilder:
    def __init__(self, graph: ChannelGraph, plan: RemovalPlan,
                 weights: dict[int, dict[str, np.ndarray]],
                 means: dict[TensorId, np.ndarray]) -> None:
        self.graph = graph
        self.plan = plan
        self.weights = weights
        self.means = means
        removed = plan.removed
        self.keep = {t: np.flatnonzero(~removed[g]) for t, g in graph.channels.items()}
        self.values: dict[TensorId, Any] = {}
        self.new_layers: dict[int, Any] = {}
        self.mean_shift: dict[int, np.ndarray] = {}
        self.shared_bias: dict[int, np.ndarray] = {}
        self.border_corrections: list[str] = []
        self.constant_layers: list[str] = []
        self.notes: list[str] = list(plan.notes) + list(graph.notes)
        self.names = _LayerNames(graph)
        self.bias_deviation = 0.0

    # model --------------------------------------------------------------------
    def build(self, model: keras.Model) -> keras.Model:
        lg = self.graph.graph
        core = functional_core(model)
        new_inputs = []
        for t, kt in zip(lg.inputs, core.inputs):
            name = kt._keras_history.operation.name
            inp = keras.Input(batch_shape=kt.shape, dtype=kt.dtype,
                              sparse=kt.sparse, name=name)
            new_inputs.append(inp)
            self.values[t] = inp
        self.first_input = new_inputs[0]
        for call in lg.calls:
            self.rebuild_call(call)
        outputs = [self.values[t] for t in lg.outputs]
        inputs = keras.tree.pack_sequence_as(core._inputs_struct, new_inputs)
        outputs = keras.tree.pack_sequence_as(core._outputs_struct, outputs)
        pruned = keras.Model(inputs, outputs, name=model.name)
        if not model.trainable:
            pruned.trainable = False
        return pruned

    def rebuild_call(self, call: LayerCall) -> None:
        kind = self.graph.kinds[call]
        if all(len(self.keep[t]) == 0 for t in call.outputs):
            for t in call.outputs:
                self.values[t] = _EMPTY
            return
        if kind == MIXING:
            self.rebuild_mixing(call)
            return
        args, kwargs = call.call_arguments(self.values)
        if kind == CONCAT:
            parts = [v for v in args[0] if v is not _EMPTY]
            if len(parts) == 1:
                self.values[call.outputs[0]] = parts[0]
                return
            args = [parts] + list(args[1:])
        first_use = id(call.layer) not in self.new_layers
        layer = self.layer_for(call)
        arrays = self.weights_for(call) if first_use else {}
        out = _call_building_from(layer, arrays, call.name, args, kwargs)
        for t, v in zip(call.outputs, keras.tree.flatten(out)):
            self.values[t] = v

    # generic layers ---------------------------------------------------------------
    def layer_for(self, call: LayerCall) -> Any:
        old = call.layer
        if id(old) in self.new_layers:
            return self.new_layers[id(old)]
        if not isinstance(old, L.Layer):  # a keras.ops operation node
            try:
                new = type(old).from_config(old.get_config())
            except Exception:  # noqa: BLE001 - stateless: reusing it is harmless
                new = old
            self.new_layers[id(old)] = new
            return new
        config = old.get_config()
        config["name"] = self.names.of(call)
        self.adjust_config(call, config)
        new = type(old).from_config(config)
        self.new_layers[id(old)] = new
        return new

    def adjust_config(self, call: LayerCall, config: dict) -> None:
        layer = call.layer
        in_t, out_t = call.inputs[0], call.outputs[0]
        keep_in = self.keep.get(in_t)
        width_in = self.graph.width(in_t)
        if isinstance(layer, L.Reshape):
            target = list(config["target_shape"])
            target[-1] = len(self.keep[out_t])
            config["target_shape"] = tuple(target)
        if isinstance(layer, BorderCorrection):
            config["shape"] = list(layer.map_shape[:-1]) + [len(keep_in)]
        if isinstance(layer, ConstantFeature):
            config["shape"] = list(layer.map_shape[:-1]) + [len(self.keep[out_t])]
        if isinstance(layer, (L.Rescaling, L.Normalization)):
            for key in ("scale", "offset", "mean", "variance"):
                value = config.get(key)
                if value is not None and np.size(value) == width_in and width_in > 1:
                    config[key] = np.asarray(value).reshape(-1)[keep_in].tolist()

    def weights_for(self, call: LayerCall) -> dict[str, np.ndarray]:
        """The weights of a non-mixing layer, sliced to the kept channels."""
        old = self.weights.get(id(call.layer))
        if not old:
            return {}
        kind = self.graph.kinds[call]
        in_t = call.inputs[0]
        keep_in = self.keep[in_t]
        width_in = self.graph.width(in_t)
        new = {}
        for name, arr in old.items():
            if kind == DEPTHWISE:
                arr = _slice_depthwise(name, arr, keep_in, call.layer.depth_multiplier)
            elif kind == CONSTANT:
                arr = arr[..., self.keep[call.outputs[0]]]
            elif len(keep_in) != width_in and arr.ndim >= 1 and arr.shape[-1] == width_in:
                arr = arr[..., keep_in]
            if name == "moving_mean" and id(call.layer) in self.mean_shift:
                arr = arr - self.mean_shift[id(call.layer)][keep_in].astype(arr.dtype)
            new[name] = arr
        return new

    # conv / dense -----------------------------------------------------------------
    def rebuild_mixing(self, call: LayerCall) -> None:
        layer = call.layer
        in_t, out_t = call.inputs[0], call.outputs[0]
        keep_in, keep_out = self.keep[in_t], self.keep[out_t]
        carried = self.carried(call)
        response = self.fold_response(call, None if carried is None else carried[1])
        if len(keep_in) == 0:
            self.replace_by_constant(call, response)
            return
        u, border = _split_response(response, self.graph.width(out_t))
        u_out = u[keep_out]
        border_out = None if border is None else border[0][..., keep_out]
        if border_out is not None and self.graph.fold == "bias":
            self.bias_deviation = max(self.bias_deviation, float(np.abs(border_out).max()))
            border_out = None
        x = self.values[in_t]
        if id(layer) in self.new_layers:  # shared layer: second use
            new = self.new_layers[id(layer)]
            first = self.shared_bias[id(layer)]
            if not np.allclose(first, u_out, rtol=1e-6, atol=1e-9):
                raise SharedLayerError(
                    f"Layer '{call.name}' is shared, and its uses read removed channels "
                    "with different constants, so one folded bias cannot serve both. "
                    "Give each use its own layer (unshare it) or keep those channels "
                    "(exclude them from the selection / remove_constant=False)."
                )
            y = new(x)
        else:
            new, y = self.new_mixing_layer(call, x, u_out, split_activation=border_out is not None,
                                           carried=carried)
        if border_out is not None:
            name = self.names.fresh(f"{new.name}_border")
            y = BorderCorrection(border_out, name=name, dtype=layer.dtype_policy)(y)
            self.border_corrections.append(call.name)
            if _activation_name(layer) != "linear":
                act_name = self.names.fresh(f"{new.name}_activation")
                y = L.Activation(layer.activation, name=act_name,
                                 dtype=layer.dtype_policy)(y)
        self.values[out_t] = y

    def new_mixing_layer(self, call: LayerCall, x: Any, u_out: np.ndarray,
                         split_activation: bool,
                         carried: tuple[int, np.ndarray, np.ndarray] | None = None,
                         ) -> tuple[Any, Any]:
        layer = call.layer
        in_t, out_t = call.inputs[0], call.outputs[0]
        keep_in, keep_out = self.keep[in_t], self.keep[out_t]
        config = layer.get_config()
        config["name"] = self.names.of(call)
        width_key = "units" if isinstance(layer, L.Dense) else "filters"
        config[width_key] = len(keep_out)
        old = self.weights[id(layer)]
        if carried is not None:
            old = dict(old, kernel=_carry(layer, old["kernel"], *carried))
        bias = old.get("bias")
        fold_needed = bool(np.any(u_out != 0))
        shared = len(self.graph.graph.calls_of(layer)) > 1
        bn = None if (bias is not None or not fold_needed or shared) else self.batchnorm_after(call)
        if fold_needed and bias is None and bn is None:
            config["use_bias"] = True
            bias = np.zeros(self.graph.width(out_t), np.float32)
        if split_activation:
            config["activation"] = "linear"
        new = type(layer).from_config(config)
        self.new_layers[id(layer)] = new
        arrays = _slice_mixing(layer, old, keep_in, keep_out)
        if bias is not None:
            b = np.asarray(bias, np.float64)[keep_out] + (u_out if bn is None else 0.0)
            arrays["bias"] = b
        if bn is not None:
            shift = np.zeros(self.graph.width(out_t))
            shift[keep_out] = u_out
            self.mean_shift[id(bn.layer)] = shift
        y = _call_building_from(new, arrays, call.name, [x], {})
        self.shared_bias[id(layer)] = u_out
        return new, y

    def batchnorm_after(self, call: LayerCall) -> LayerCall | None:
        """The BatchNormalization that alone reads this bias-free layer, if any."""
        lg = self.graph.graph
        out_t = call.outputs[0]
        if out_t in lg.outputs or _activation_name(call.layer) != "linear":
            return None
        readers = lg.consumers(out_t)
        if len(readers) != 1 or not isinstance(readers[0].layer, L.BatchNormalization):
            return None
        if len(lg.calls_of(readers[0].layer)) != 1:
            return None
        return readers[0]

    def carried(self, call: LayerCall) -> tuple[int, np.ndarray, np.ndarray] | None:
        """``(carrier, carried, ratios)`` for a reader with a carrier: the
        carrier's input position, the removed input positions it carries
        (bool) and their values relative to it (``c_j / c_carrier``)."""
        pos = self.plan.carriers.get(call)
        if pos is None:
            return None
        in_t = call.inputs[0]
        means = self.means.get(in_t)
        values, const_in, mean_in = removed_values(self.graph, in_t, self.plan.removed,
                                                   calibrated=means is not None)
        ref = values[:, pos]
        ratios = np.zeros(len(const_in))
        carried = np.zeros(len(const_in), bool)
        for j in np.flatnonzero(const_in):
            if same_shape(values[:, j], ref):
                ratios[j] = float(values[:, j] @ ref) / float(ref @ ref)
                carried[j] = True
        if mean_in.any() and np.all(ref == ref[0]):
            ratios[mean_in] = means[mean_in] / ref[0]
            carried |= mean_in
        return pos, carried, ratios

    def fold_response(self, call: LayerCall,
                      carried: np.ndarray | None = None) -> np.ndarray | None:
        """The pre-activation, bias-free response of ``call`` to the values of
        its removed input channels (constants, calibration means or 0), except
        the ``carried`` ones (a carrier's weights hold those)."""
        in_t = call.inputs[0]
        groups = self.graph.channels[in_t]
        removed = self.plan.removed[groups]
        if carried is not None:
            removed = removed & ~carried
        if not removed.any():
            return None
        const = self.graph.constants.get(in_t)
        rank = len(self.graph.graph.shape(in_t))
        if const is not None:
            value = np.where(removed & const.mask, const.value, 0.0)
            fold_mask = removed & const.mask
        else:
            value = np.zeros((1,) * (rank - 1) + (len(groups),))
            fold_mask = np.zeros(len(groups), bool)
        mean = self.means.get(in_t)
        if mean is not None:
            extra = removed & ~fold_mask
            value = value + np.where(extra, mean, 0.0)
        if not np.any(value != 0):
            return None
        uniform = all(d == 1 for d in value.shape[1:-1])
        spatial = None
        if uniform and _has_padding_effect(call.layer):
            if self.graph.fold == "bias":
                self.notes.append(
                    f"'{call.name}': bias fold ignores the zero padding at its borders"
                )
            else:
                shape = self.graph.graph.shape(in_t)
                if any(d is None for d in shape[1:]):
                    raise DynamicShapeError(
                        f"Zero padding in '{call.name}': its input {shape} has no static "
                        "spatial size, so the exact fold of the removed constant "
                        "channels cannot be computed. Build the model with a static "
                        "input shape or pass fold='bias'."
                    )
                spatial = tuple(shape[1:-1])
        return linear_response(call.layer, value, spatial)

    def replace_by_constant(self, call: LayerCall, response: np.ndarray | None) -> None:
        """A conv/dense whose every input channel was removed outputs a constant."""
        layer = call.layer
        out_t = call.outputs[0]
        shape = self.graph.graph.shape(out_t)
        value = np.zeros((1,) * (len(shape) - 1) + (self.graph.width(out_t),))
        if response is not None:
            value = value + response
        bias = self.weights[id(layer)].get("bias")
        if bias is not None:
            value = value + bias
        fn = getattr(layer, "activation", None)
        if fn is not None and _activation_name(layer) != "linear":
            value = np.asarray(keras.ops.convert_to_numpy(
                fn(keras.ops.convert_to_tensor(value.astype("float32")))), np.float64)
        full = (1,) + tuple(int(d) for d in shape[1:])
        value = np.broadcast_to(value, full)[0][..., self.keep[out_t]]
        name = self.names.of(call)
        y = ConstantFeature(value.astype("float32"), name=name,
                            dtype=layer.dtype_policy)(self.first_input)
        self.constant_layers.append(call.name)
        self.values[out_t] = y


def _activation_name(layer: Any) -> str:
    fn = getattr(layer, "activation", None)
    if fn is None:
        return "linear"
    return str(getattr(fn, "__name__", type(fn).__name__)).lower()


def _split_response(response: np.ndarray | None,
                    width: int) -> tuple[np.ndarray, tuple | None]:
    """Split a response into a per-channel bias part and a border map.

    The bias part is the response at the central position (the interior); the
    border map is what remains (``None`` when the response is uniform).
    """
    if response is None:
        return np.zeros(width), None
    if all(d == 1 for d in response.shape[1:-1]):
        return response.reshape(-1), None
    center = tuple(d // 2 for d in response.shape[1:-1])
    u = response[(0,) + center]
    rest = response - u
    scale = max(float(np.abs(response).max()), 1e-30)
    if float(np.abs(rest).max()) <= 1e-9 * scale:
        return u, None
    return u, (rest[0],)


def _carry(layer: Any, kernel: np.ndarray, carrier: int, carried: np.ndarray,
           ratios: np.ndarray) -> np.ndarray:
    """The kernel with the carried input channels' weights added to the
    carrier's, scaled by their value relative to it (conv / dense kernels)."""
    k = np.asarray(kernel, np.float64).copy()
    idx = np.flatnonzero(carried)
    if is_transposed_conv(layer):  # (*k, C_out, C_in)
        k[..., carrier] += np.tensordot(k[..., idx], ratios[idx], axes=[[-1], [0]])
    else:  # (*k, C_in, C_out) or (C_in, C_out)
        k[..., carrier, :] += np.tensordot(k[..., idx, :], ratios[idx], axes=[[-2], [0]])
    return k.astype(kernel.dtype)


def _slice_mixing(layer: Any, old: dict[str, np.ndarray], keep_in: np.ndarray,
                  keep_out: np.ndarray) -> dict[str, np.ndarray]:
    """Kernels of a conv / separable conv / dense, sliced to the kept channels."""
    known = {"kernel", "bias", "depthwise_kernel", "pointwise_kernel"}
    unknown = set(old) - known
    if unknown:
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has weights "
            f"{sorted(unknown)} that pruning cannot slice (LoRA or quantized "
            "layers?). Merge/dequantize them into a plain layer first."
        )
    out = {}
    if "kernel" in old and is_transposed_conv(layer):  # (*k, C_out, C_in)
        out["kernel"] = old["kernel"][..., keep_out, :][..., keep_in]
    elif "kernel" in old:
        out["kernel"] = old["kernel"][..., keep_in, :][..., keep_out]
    if "depthwise_kernel" in old:
        dw = old["depthwise_kernel"]
        dm = dw.shape[-1]
        out["depthwise_kernel"] = dw[..., keep_in, :]
        mid = (keep_in[:, None] * dm + np.arange(dm)).reshape(-1)
        out["pointwise_kernel"] = old["pointwise_kernel"][..., mid, :][..., keep_out]
    return out


def _slice_depthwise(name: str, arr: np.ndarray, keep_in: np.ndarray, dm: int) -> np.ndarray:
    if name == "kernel":
        return arr[..., keep_in, :]
    if name == "bias":
        return arr.reshape(-1, dm)[keep_in].reshape(-1)
    return arr


def _call_building_from(layer: Any, arrays: dict[str, np.ndarray], name: str,
                        args: list, kwargs: dict) -> Any:
    """Call ``layer``; if that builds it, its weights start from ``arrays``.

    Creating each variable from its final value (rather than from the layer's
    random initializer, then assigning) makes the rebuild about as fast as
    ``keras.models.clone_model``. Weights the layer creates under other names
    (or a layer that was already built) are assigned afterwards.
    """
    if not arrays or not isinstance(layer, L.Layer) or layer.built:
        out = layer(*args, **kwargs)
        _assign(layer, arrays, name)
        return out
    used: set[str] = set()
    original = layer.add_weight

    def add_weight(*a: Any, **kw: Any) -> Any:
        key = kw.get("name")
        if key in arrays and "initializer" in kw and len(a) < 2:
            value = arrays[key]
            used.add(key)

            def initializer(shape: Any, dtype: Any = None) -> Any:
                if tuple(shape) != tuple(value.shape):
                    raise ValueError(
                        f"internal error: weight '{key}' of '{name}' has shape "
                        f"{tuple(shape)} but the sliced value has {value.shape}"
                    )
                return np.asarray(value, dtype=keras.backend.standardize_dtype(dtype))

            kw["initializer"] = initializer
        return original(*a, **kw)

    object.__setattr__(layer, "add_weight", add_weight)
    try:
        out = layer(*args, **kwargs)
    finally:
        object.__delattr__(layer, "add_weight")
    _assign(layer, {k: v for k, v in arrays.items() if k not in used}, name)
    return out


def _assign(layer: Any, arrays: dict[str, np.ndarray], name: str) -> None:
    if not arrays:
        return
    for w in layer.weights:
        if w.name not in arrays:
            continue
        value = arrays[w.name]
        if tuple(value.shape) != tuple(w.shape):
            raise ValueError(
                f"internal error: weight '{w.name}' of '{name}' has shape "
                f"{tuple(w.shape)} but the sliced value has {value.shape}"
            )
        w.assign(np.asarray(value, dtype=w.dtype))


class _LayerNames:
    """Unique names for the rebuilt layers (original names where possible)."""

    def __init__(self, graph: ChannelGraph) -> None:
        self.by_layer: dict[int, str] = {}
        self.used: set[str] = set()
        for call in graph.graph.calls:
            if id(call.layer) in self.by_layer:
                continue
            name = call.layer.name
            if name in self.used:
                name = self.fresh(call.name.replace("/", "_"))
            self.used.add(name)
            self.by_layer[id(call.layer)] = name

    def of(self, call: LayerCall) -> str:
        return self.by_layer[id(call.layer)]

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name


# --- report ----------------------------------------------------------------------
def _report(model: keras.Model, pruned: keras.Model, graph: ChannelGraph,
            plan: RemovalPlan, rebuilder: _Rebuilder) -> PruneReport:
    widths: dict[str, tuple[int, int]] = {}
    carrier_channels: dict[str, list[int]] = {}
    for call in graph.graph.calls:
        layer = call.layer
        if graph.kinds[call] in (MIXING, DEPTHWISE) or isinstance(layer, L.BatchNormalization):
            t = call.outputs[0]
            widths.setdefault(call.name, (graph.width(t), len(rebuilder.keep[t])))
            if plan.carrier is not None:
                kept = np.flatnonzero(plan.carrier[graph.channels[t]])
                if kept.size:
                    carrier_channels.setdefault(call.name, kept.tolist())
    before, after = model_cost(model), model_cost(pruned)
    notes = list(rebuilder.notes)
    if rebuilder.bias_deviation:
        notes.append(
            f"fold='bias': border effects ignored, largest per-position bias error "
            f"{rebuilder.bias_deviation:.3g} (pre-activation)"
        )
    return PruneReport(
        widths=widths,
        params_before=before.params,
        params_after=after.params,
        macs_before=before.macs,
        macs_after=after.macs,
        removed_constant=int(plan.constant.sum()),
        removed_selected=int(plan.selected.sum()),
        border_corrections=rebuilder.border_corrections,
        border_params=sum(int(np.prod(l.map_shape)) for l in pruned.layers
                          if isinstance(l, BorderCorrection)),
        constant_layers=rebuilder.constant_layers,
        fold=graph.fold,
        carriers={call.name: int(pos) for call, pos in plan.carriers.items()},
        carrier_channels=carrier_channels,
        notes=notes,
    )


def probe_batch(model: keras.Model, batch_size: int = 2, seed: int = 0,
                default_size: int = 32) -> list[np.ndarray]:
    """Random normal inputs for ``model`` (unknown sizes become ``default_size``)."""
    rng = np.random.default_rng(seed)
    batch = []
    for kt in functional_core(model).inputs:
        shape = (batch_size,) + tuple(d if d is not None else default_size
                                      for d in kt.shape[1:])
        batch.append(rng.standard_normal(shape).astype(kt.dtype))
    return batch


def output_deviation(original: keras.Model, pruned: keras.Model,
                     inputs: Any) -> tuple[float, float]:
    """Largest absolute and relative output difference (inference mode).

    The relative value divides by the largest |output| of ``original``.
    """
    a = [np.asarray(keras.ops.convert_to_numpy(v), np.float64)
         for v in keras.tree.flatten(original(inputs, training=False))]
    b = [np.asarray(keras.ops.convert_to_numpy(v), np.float64)
         for v in keras.tree.flatten(pruned(inputs, training=False))]
    abs_dev = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    scale = max(float(np.abs(x).max()) for x in a)
    return abs_dev, abs_dev / max(scale, 1e-30)


def _probe(model: keras.Model, pruned: keras.Model, report: PruneReport,
           probe_inputs: Any) -> None:
    inputs = probe_inputs
    if inputs is None:
        batch = probe_batch(model)
        inputs = batch[0] if len(batch) == 1 else batch
    report.max_abs_deviation, report.max_rel_deviation = output_deviation(
        model, pruned, inputs
    )
