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
from tf_gamma_prune.analysis.layer_graph import LayerCall, LayerGraph, layer_graph

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
        else:  # conv, dense, transposed conv: bilinear in the channel counts
            total += full // (c_in * c_out) * k_in * k_out
    return total
