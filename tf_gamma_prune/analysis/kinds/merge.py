"""Elementwise merges of several tensors (Add, Multiply, Average, Maximum ...).

Channel ``k`` of every input of the same width is one channel: they are tied
and removed together. An input that broadcasts over channels (width 1) is
pinned. A channel is constant at the output when it is constant in every
input, or (Multiply) constant zero in one of them.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.Add()).name
'merge'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_gamma_prune.analysis.constants import Constants, as_rank, no_constants
from tf_gamma_prune.analysis.kinds.base import LayerKind, run_exact
from tf_gamma_prune.analysis.layer_graph import LayerCall


class MergeKind(LayerKind):
    """Elementwise over several inputs with the same channel axis."""

    name = "merge"
    single_io = False

    def connect(self, b: Any, call: LayerCall) -> None:
        width = b.width(call.outputs[0])
        same = [t for t in call.inputs if len(b.raw[t]) == width]
        for t in call.inputs:
            if len(b.raw[t]) != width:
                b.pin(b.raw[t], f"broadcast over channels in '{call.name}'")
        if not same:
            ids = b.fresh(width)
            b.pin(ids, f"broadcast over channels in '{call.name}'")
        else:
            ids = b.raw[same[0]]
            for t in same[1:]:
                b.tie(ids, b.raw[t])
        b.raw[call.outputs[0]] = ids

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        if all(c is None for c in ins):
            return None
        out_t = call.outputs[0]
        width, rank = b.width(out_t), b.rank(out_t)
        filled = [c if c is not None else no_constants(len(b.raw[t]), b.rank(t))
                  for c, t in zip(ins, call.inputs)]
        mask = np.logical_and.reduce([np.broadcast_to(c.mask, (width,)) for c in filled])
        if type(call.layer).__name__ == "Multiply":
            # a channel that is constant 0 in one factor is 0 in the product
            for c in filled:
                all_zero = np.all(c.value == 0, axis=tuple(range(c.value.ndim - 1)))
                mask = mask | np.broadcast_to(c.mask & all_zero, (width,))
        if not mask.any():
            return None
        value = run_exact(call, [as_rank(c.value, rank) for c in filled])
        return Constants(mask, as_rank(value, rank))
