"""Concatenation along the channel axis: each input's channels at their offset.

Concatenation along another axis is a merge (channel ``k`` of every input is
one channel); along the batch axis (or ``axis=None``) it is opaque. The same
rules hold for ``keras.ops.concatenate`` nodes (the op has the same ``axis``).
An input whose every channel was removed is left out of the rebuilt
concatenation.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.Concatenate()).name
'concat'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_gamma_prune.analysis.constants import Constants, as_rank, no_constants, run_layer
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.kinds.merge import MergeKind
from tf_gamma_prune.analysis.layer_graph import LayerCall


class ConcatKind(LayerKind):
    """``Concatenate`` over the last axis."""

    name = "concat"
    single_io = False

    def refine(self, call: LayerCall) -> LayerKind:
        from tf_gamma_prune.analysis.kinds.registry import OPAQUE_KIND

        rank = len(call.node.outputs[0].shape)
        axis = getattr(call.layer, "axis", None)
        if axis is None or axis in (0, -rank):
            return OPAQUE_KIND  # flattening, or stacking examples: kept as is
        if axis not in (-1, rank - 1):
            return SPATIAL_CONCAT_KIND  # over space: channel k of every input is one channel
        return self

    def connect(self, b: Any, call: LayerCall) -> None:
        b.raw[call.outputs[0]] = np.concatenate([b.raw[t] for t in call.inputs])

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        if all(c is None for c in ins):
            return None
        rank = b.rank(call.outputs[0])
        filled = [c if c is not None else no_constants(len(b.raw[t]), b.rank(t))
                  for c, t in zip(ins, call.inputs)]
        values = [as_rank(c.value, rank) for c in filled]
        spatial = np.broadcast_shapes(*[v.shape[:-1] for v in values])
        values = [np.broadcast_to(v, spatial + v.shape[-1:]) for v in values]
        return Constants(np.concatenate([c.mask for c in filled]), np.concatenate(values, axis=-1))

    def rebuild(self, r: Any, call: LayerCall) -> None:
        args, kwargs = call.call_arguments(r.values)
        parts = [v for v in args[0] if v is not r.EMPTY]
        if len(parts) == 1:
            r.values[call.outputs[0]] = parts[0]
            return
        r.rebuild_generic(call, [parts] + list(args[1:]), kwargs)


class SpatialConcatKind(MergeKind):
    """Concatenation along a spatial axis: channel ``k`` of every input is one
    channel (tied, like a merge); a channel constant in every input is constant
    at the output, as the per-position map of the inputs' values put side by
    side (static spatial sizes needed, else ``DynamicShapeError``; the default
    fold then keeps those channels)."""

    name = "concat_space"

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        if any(c is None for c in ins):
            return None  # not constant in every input: not constant at the output
        width = b.width(call.outputs[0])
        mask = np.logical_and.reduce([np.broadcast_to(c.mask, (width,)) for c in ins])
        if not mask.any():
            return None
        maps = [b.as_map(c, t, f"Layer '{call.name}'") for c, t in zip(ins, call.inputs)]
        return Constants(mask, run_layer(call, maps))


SPATIAL_CONCAT_KIND = SpatialConcatKind()
