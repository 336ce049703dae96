"""Flatten / Reshape / Permute: channels rearranged in flat (row-major) order.

When the input's channel count divides the output's, output position ``p``
holds input channel ``p mod C`` (Flatten after a feature map repeats each
channel once per position), so the channel can still be removed. Anything else
(a Permute that moves the channel axis, a reshape that splits channels) pins
the channels on both sides.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.Flatten()).name
'reshape'
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall

L = keras.layers


class ReshapeKind(LayerKind):
    """``Flatten``, ``Reshape``, ``Permute``."""

    name = "reshape"

    def connect(self, b: Any, call: LayerCall) -> None:
        src_t, out_t = call.inputs[0], call.outputs[0]
        src = b.raw[src_t]
        c_in, c_out = len(src), b.width(out_t)
        in_shape = b.graph.shape(src_t)
        if isinstance(call.layer, L.Permute):
            decidable = call.layer.dims[-1] == len(in_shape) - 1
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
        if isinstance(call.layer, L.Permute):
            return Constants(src.mask.copy(), np.transpose(src.value, (0,) + tuple(call.layer.dims)))
        mask = np.tile(src.mask, c_out // c_in)
        if src.uniform and c_out == c_in:
            return Constants(mask, src.value.reshape((1,) * (b.rank(out_t) - 1) + (c_out,)))
        x = b.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        return Constants(mask, x.reshape(b.full_shape(out_t, f"Layer '{call.name}'")))

    def adjust_config(self, r: Any, call: LayerCall, config: dict) -> None:
        if isinstance(call.layer, L.Reshape):
            target = list(config["target_shape"])
            target[-1] = len(r.keep[call.outputs[0]])
            config["target_shape"] = tuple(target)
