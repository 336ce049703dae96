"""Parameter and multiply-accumulate (MAC) counts of a Keras model.

Only convolutions and dense layers are counted as MACs (BatchNormalization,
activations, pooling and additions are cheap and usually fused); one MAC is
one multiplication plus one addition, so FLOPs ≈ 2 × MACs.

Per layer, with ``P_out`` the number of output positions (product of the output
spatial sizes) and ``k`` the kernel area (product of the kernel sizes):

* ``ConvND``: ``P_out · k · C_in / groups · C_out``
* ``DepthwiseConvND``: ``P_out · k · C_in · depth_multiplier``
* ``SeparableConvND``: the depthwise part plus ``P_out · C_in · depth_multiplier · C_out``
* ``ConvNDTranspose``: ``P_in · k · C_in · C_out``
* ``Dense``: ``(product of the non-batch input dims) · units``

Nested models are counted layer by layer. Parameters are every weight of every
layer (trainable or not, BatchNormalization statistics included), counted once
for shared layers — the same as ``model.count_params()``.

Example:

>>> import keras
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
>>> cost = model_cost(keras.Model(x, y))
>>> cost.macs, cost.params   # 8*8 positions * 9 taps * 3 in * 4 out; 3*3*3*4 + 4
(6912, 112)
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tf_gamma_prune.analysis.kinds import DEPTHWISE, MIXING
from tf_gamma_prune.analysis.layer_graph import LayerCall, LayerGraph, batchnorm_after, layer_graph

if TYPE_CHECKING:
    from tf_gamma_prune.analysis.channel_graph import ChannelGraph

L = keras.layers


@dataclasses.dataclass
class LayerCost:
    """Cost of one layer call: its parameters and MACs."""

    params: int
    macs: int


@dataclasses.dataclass
class ModelCost:
    """Parameters and MACs of a model, in total and per layer (qualified names).

    ``macs`` is ``None`` when a spatial size is unknown (dynamic input shape).
    """

    params: int
    macs: int | None
    per_layer: dict[str, LayerCost]


def _prod(values: Any) -> int | None:
    out = 1
    for v in values:
        if v is None:
            return None
        out *= int(v)
    return out


def _layer_params(layer: Any) -> int:
    return int(sum(math.prod(w.shape) for w in layer.weights))


def call_macs(call: LayerCall, graph: LayerGraph) -> int | None:
    """MACs of one call (0 for layers without multiply-accumulates).

    ``None`` when a needed shape is not static.
    """
    layer = call.layer
    if not call.inputs or not call.outputs:
        return 0
    in_shape = graph.shape(call.inputs[0])
    out_shape = graph.shape(call.outputs[0])
    if isinstance(layer, L.Dense):
        positions = _prod(in_shape[1:-1])
        if positions is None:
            return None
        return positions * int(in_shape[-1]) * int(layer.units)
    kernel = getattr(layer, "kernel_size", None)
    if kernel is None:
        return 0
    taps = _prod(kernel)
    c_in = int(in_shape[-1])
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        p_in = _prod(in_shape[1:-1])
        return None if p_in is None else p_in * taps * c_in * int(out_shape[-1])
    p_out = _prod(out_shape[1:-1])
    if p_out is None:
        return None
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return p_out * taps * c_in * int(layer.depth_multiplier)
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        mid = c_in * int(layer.depth_multiplier)
        return p_out * taps * mid + p_out * mid * int(out_shape[-1])
    groups = int(getattr(layer, "groups", 1) or 1)
    return p_out * taps * (c_in // groups) * int(out_shape[-1])


def model_cost(model: keras.Model) -> ModelCost:
    """Parameters and MACs of ``model`` (functional or Sequential, nested ok).

    Example:

    >>> import keras
    >>> x = keras.Input((4, 4, 8))
    >>> y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    >>> model_cost(keras.Model(x, y)).per_layer["dw"]  # 16 positions * 9 taps * 8
    LayerCost(params=80, macs=1152)
    """
    graph = layer_graph(model)
    per_layer: dict[str, LayerCost] = {}
    total_macs: int | None = 0
    counted: set[int] = set()
    params = 0
    for call in graph.calls:
        macs = call_macs(call, graph)
        p = 0
        if id(call.layer) not in counted:
            counted.add(id(call.layer))
            p = _layer_params(call.layer) if isinstance(call.layer, L.Layer) else 0
            params += p
        prev = per_layer.get(call.name)
        if prev is None:
            per_layer[call.name] = LayerCost(p, macs if macs is not None else 0)
        else:
            prev.macs += macs or 0
        if macs is None:
            total_macs = None
        elif total_macs is not None:
            total_macs += macs
    return ModelCost(params=params, macs=total_macs, per_layer=per_layer)


def count_macs(model: keras.Model) -> int | None:
    """Total multiply-accumulates of one forward pass for one example.

    Example:

    >>> import keras
    >>> x = keras.Input((10,))
    >>> count_macs(keras.Model(x, keras.layers.Dense(3)(x)))
    30
    """
    return model_cost(model).macs


def planned_macs(graph: ChannelGraph, removed: np.ndarray) -> int | None:
    """MACs of the model ``prune_model`` builds when it removes the groups ``removed``.

    Conv/dense layers shrink with their kept input and output channels; one that
    loses every input or output channel costs nothing (it becomes a constant or
    disappears). ``None`` when a spatial size is not static.
    """
    lg = graph.layer_graph
    total = 0
    for call in lg.calls:
        full = call_macs(call, lg)
        if full is None:
            return None
        kind = graph.kinds[call].name if call in graph.kinds else None
        if full == 0 or kind not in (MIXING, DEPTHWISE):
            total += full
            continue
        in_t, out_t = call.inputs[0], call.outputs[0]
        c_in, c_out = graph.width(in_t), graph.width(out_t)
        k_in = int(np.count_nonzero(~removed[graph.channels[in_t]]))
        k_out = int(np.count_nonzero(~removed[graph.channels[out_t]]))
        if k_in == 0 or k_out == 0:
            continue
        if k_in == c_in and k_out == c_out:
            total += full
        elif kind == DEPTHWISE:
            total += full // c_in * k_in
        elif isinstance(call.layer, (L.SeparableConv1D, L.SeparableConv2D)):
            positions = math.prod(int(d) for d in lg.shape(out_t)[1:-1])
            taps = math.prod(call.layer.kernel_size)
            mid = k_in * int(call.layer.depth_multiplier)
            total += positions * taps * mid + positions * mid * k_out
        else:  # conv, dense, transposed conv: bilinear in the channel counts (grouped too)
            total += full * k_in * k_out // (c_in * c_out)
    return total


def planned_params(graph: ChannelGraph, removed: np.ndarray) -> int:
    """Parameters of the model ``prune_model(..., fold="bias")`` builds when it removes
    the groups ``removed`` (BatchNormalization statistics included, shared layers once).

    Conv/dense kernels shrink with their kept input and output channels, biases and
    per-channel weights (BatchNormalization's four) with the kept channels; a
    conv/dense that reads no kept channel becomes a constant map of its kept outputs
    (:class:`~tf_gamma_prune.layers.ConstantFeature`), one that keeps no output
    disappears (with whatever only it read), and a bias-free conv/dense that loses input channels gains a bias for
    their constants unless a BatchNormalization alone reads it (its mean takes them).
    Other layers keep their weights, except a last axis as wide as their input.

    Example:

    >>> import keras, numpy as np
    >>> from tf_gamma_prune.analysis.channel_graph import channel_graph
    >>> x = keras.Input((8, 8, 3))
    >>> h = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(x)
    >>> h = keras.layers.BatchNormalization(name="bn")(h)
    >>> model = keras.Model(x, keras.layers.Dense(2, name="head")(h))
    >>> graph = channel_graph(model)
    >>> removed = np.zeros(graph.num_groups, bool)
    >>> removed[graph.layer_channels("bn")[:3]] = True   # keep one of four channels
    >>> model.count_params(), planned_params(graph, removed)  # 108+16+10 -> 27+4+4
    (134, 35)
    """
    lg = graph.layer_graph
    kept: dict[Any, int] = {}

    def keep(tensor: Any) -> int:
        if tensor not in kept:
            kept[tensor] = int(np.count_nonzero(~removed[graph.channels[tensor]]))
        return kept[tensor]

    live = _live_calls(graph, keep)
    total = 0
    counted: set[int] = set()
    for call in lg.calls:
        layer = call.layer
        if id(layer) in counted or not isinstance(layer, L.Layer) or id(call) not in live:
            continue
        counted.add(id(layer))
        full = _layer_params(layer)
        if full == 0 or not call.inputs or not call.outputs:
            total += full
            continue
        kind = graph.kinds[call].name if call in graph.kinds else None
        in_t, out_t = call.inputs[0], call.outputs[0]
        if in_t not in graph.channels or out_t not in graph.channels:
            total += full
            continue
        c_in, c_out = graph.width(in_t), graph.width(out_t)
        k_in, k_out = keep(in_t), keep(out_t)
        if kind in (MIXING, DEPTHWISE):
            total += _planned_mixing_params(graph, call, removed, c_in, c_out, k_in, k_out)
        else:
            for weight in layer.weights:
                shape = list(weight.shape)
                if shape and shape[-1] == c_in and k_in != c_in:
                    shape[-1] = k_in
                total += math.prod(shape)
    return total


def _live_calls(graph: ChannelGraph, keep: Any) -> set[int]:
    """``id`` of the calls the pruned model still runs: those whose kept outputs
    something live reads (a conv/dense left without inputs becomes a constant and
    reads nothing)."""
    lg = graph.layer_graph
    needed = set(lg.outputs)
    live: set[int] = set()
    for call in reversed(lg.calls):
        if not any(t in needed and (t not in graph.channels or keep(t) > 0)
                   for t in call.outputs):
            continue
        live.add(id(call))
        kind = graph.kinds[call].name if call in graph.kinds else None
        if kind in (MIXING, DEPTHWISE) and call.inputs and call.inputs[0] in graph.channels \
                and keep(call.inputs[0]) == 0:
            continue  # a ConstantFeature: reads nothing
        needed.update(call.inputs)
    return live


def _folds_nonzero(graph: ChannelGraph, tensor: Any, removed: np.ndarray) -> bool:
    """Whether the removed channels of ``tensor`` hold something a bias must take
    (a removed constant that is exactly zero contributes nothing)."""
    gone = removed[graph.channels[tensor]]
    constants = graph.constants.get(tensor)
    if constants is None or not constants.mask[gone].all():
        return True
    return bool(np.any(constants.value[..., gone] != 0))


def _planned_mixing_params(graph: ChannelGraph, call: LayerCall, removed: np.ndarray,
                           c_in: int, c_out: int, k_in: int, k_out: int) -> int:
    """Parameters of one conv/dense (or depthwise) call after the removal."""
    layer = call.layer
    if k_out == 0:
        return 0
    out_shape = graph.layer_graph.shape(call.outputs[0])
    if k_in == 0:  # ConstantFeature: the constant output map of the kept channels
        return math.prod(int(d) for d in out_shape[1:-1]) * k_out
    total = 0
    has_bias = False
    for weight in layer.weights:
        name = weight.path.rsplit("/", 1)[-1]
        shape = list(weight.shape)
        if name == "bias":
            has_bias = True
            total += shape[0] * k_out // c_out if c_out else shape[0]
        elif name == "depthwise_kernel":
            total += math.prod(shape) // c_in * k_in
        elif name == "pointwise_kernel":
            total += math.prod(shape[:-2]) * (shape[-2] // c_in * k_in) * k_out
        elif name == "kernel" and isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
            total += math.prod(shape) // c_in * k_in
        elif name == "kernel" and getattr(layer, "groups", 1) not in (None, 1):
            groups = int(layer.groups)  # (*k, C_in / groups, C_out)
            total += math.prod(shape[:-2]) * (k_in // groups) * k_out
        elif name == "kernel":
            total += math.prod(shape) // (c_in * c_out) * k_in * k_out
        else:
            total += math.prod(shape)
    if not has_bias and k_in < c_in and graph.kinds[call].name == MIXING and _folds_nonzero(
            graph, call.inputs[0], removed):
        shared = len(graph.layer_graph.calls_of(layer)) > 1
        if shared or batchnorm_after(graph.layer_graph, call) is None:
            total += k_out
    return total
