"""Flatten / Reshape / Permute: channels rearranged in flat (row-major) order.

When the input's channel count divides the output's, output position ``p``
holds input channel ``p mod C`` (Flatten after a feature map repeats each
channel once per position), so the channel can still be removed. Anything else
(a Permute that moves the channel axis, a reshape that splits channels) pins
the channels on both sides.

The same kind serves ``keras.ops`` nodes, with stricter conditions because an
op's shape includes the batch axis:

* ``keras.ops.reshape``: the batch size must provably stay (every non-batch
  size static on both sides, same product) and the channel count divide the new
  last axis; the rebuilt op gets the narrower last size (unless it is ``-1``);
* ``keras.ops.transpose``: the batch axis stays first and the channel axis last;
* ``keras.ops.expand_dims`` / ``keras.ops.squeeze``: only axes strictly between
  the batch and the channel axis (``squeeze(x)`` without an axis is rebuilt
  with the axes it squeezed, so a channel count that becomes 1 is not
  squeezed).

Otherwise the channels on both sides are pinned (kept; the node is rebuilt
unchanged).

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.Flatten()).name
'reshape'
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.kinds.spatial import op_name
from tf_gamma_prune.analysis.layer_graph import LayerCall

L = keras.layers


def _permutation(call: LayerCall, rank: int) -> tuple[int, ...] | None:
    """The full axis permutation of a Permute layer or a ``keras.ops.transpose``
    node (``None``: neither)."""
    layer = call.layer
    if isinstance(layer, L.Permute):
        return (0,) + tuple(int(d) for d in layer.dims)
    if op_name(layer) == "Transpose":
        if layer.axes is None:
            return tuple(range(rank))[::-1]
        return tuple(int(a) % rank for a in layer.axes)
    return None


def _squeezed_axes(call: LayerCall, shape: tuple) -> tuple[int, ...]:
    """The axes a ``keras.ops.squeeze`` node removes (non-negative)."""
    axis = call.layer.axis
    if axis is None:
        return tuple(i for i, d in enumerate(shape) if d == 1)
    values = [axis] if np.ndim(axis) == 0 else list(axis)
    return tuple(int(a) % len(shape) for a in values)


def _op_keeps_channels(call: LayerCall, in_shape: tuple, out_shape: tuple) -> bool:
    """A reshape-like ``keras.ops`` node keeps the batch axis first and the
    channel axis last (see the module docstring)."""
    name = op_name(call.layer)
    rank_in, rank_out = len(in_shape), len(out_shape)
    if rank_in < 2 or rank_out < 2:
        return False
    if name == "Reshape":
        sizes_in, sizes_out = in_shape[1:], out_shape[1:]
        if any(d is None for d in sizes_in + sizes_out):
            return False
        return math.prod(sizes_in) == math.prod(sizes_out)
    if name == "ExpandDims":
        axis = call.layer.axis
        values = [axis] if np.ndim(axis) == 0 else list(axis)
        return all(0 < int(a) % rank_out < rank_out - 1 for a in values)
    if name == "Squeeze":
        return all(0 < a < rank_in - 1 for a in _squeezed_axes(call, in_shape))
    return False


class ReshapeKind(LayerKind):
    """``Flatten``, ``Reshape``, ``Permute`` and the ``keras.ops`` reshapes."""

    name = "reshape"

    def connect(self, b: Any, call: LayerCall) -> None:
        src_t, out_t = call.inputs[0], call.outputs[0]
        src = b.raw[src_t]
        c_in, c_out = len(src), b.width(out_t)
        in_shape = b.graph.shape(src_t)
        perm = _permutation(call, len(in_shape))
        if perm is not None:
            decidable = perm[0] == 0 and perm[-1] == len(in_shape) - 1
        elif op_name(call.layer) is not None:
            decidable = (_op_keeps_channels(call, in_shape, b.graph.shape(out_t))
                         and c_out % c_in == 0)
        else:
            decidable = len(in_shape) >= 2 and c_out % c_in == 0
        if not decidable:
            b.rearranged.add(call)
            ids = b.fresh(c_out)
            b.pin(src, f"channels rearranged by '{call.name}'")
            b.pin(ids, f"channels rearranged by '{call.name}'")
            b.raw[out_t] = ids
            return
        b.raw[out_t] = np.tile(src, c_out // c_in)

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        src = ins[0]
        if src is None or call in b.rearranged:
            return None
        out_t = call.outputs[0]
        c_in, c_out = len(b.raw[call.inputs[0]]), len(b.raw[out_t])
        perm = _permutation(call, b.rank(call.inputs[0]))
        if perm is not None:
            return Constants(src.mask.copy(), np.transpose(src.value, perm))
        mask = np.tile(src.mask, c_out // c_in)
        if src.uniform and c_out == c_in:
            return Constants(mask, src.value.reshape((1,) * (b.rank(out_t) - 1) + (c_out,)))
        x = b.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        return Constants(mask, x.reshape(b.full_shape(out_t, f"Layer '{call.name}'")))

    def rebuild(self, r: Any, call: LayerCall) -> None:
        op = call.layer
        name = op_name(op)
        if id(op) not in r.new_layers:  # op nodes are re-created from config unadjusted
            if name == "Reshape":
                shape = [int(d) for d in op.newshape]
                if shape[-1] != -1:
                    shape[-1] = len(r.keep[call.outputs[0]])
                r.new_layers[id(op)] = type(op)(tuple(shape), name=op.name)
            elif name == "Squeeze" and op.axis is None:
                axes = _squeezed_axes(call, r.graph.layer_graph.shape(call.inputs[0]))
                r.new_layers[id(op)] = type(op)(axis=axes, name=op.name)
        r.rebuild_generic(call)

    def adjust_config(self, r: Any, call: LayerCall, config: dict) -> None:
        if isinstance(call.layer, L.Reshape):
            target = list(config["target_shape"])
            target[-1] = len(r.keep[call.outputs[0]])
            config["target_shape"] = tuple(target)
