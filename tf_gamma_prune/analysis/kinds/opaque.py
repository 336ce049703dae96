"""Layers that mix channels but cannot absorb constants (Softmax, LayerNormalization ...).

Every channel they read or write is pinned: never removed, and constants stop
there.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.LayerNormalization()).name
'opaque'
"""

from __future__ import annotations

from typing import Any

from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall


class OpaqueKind(LayerKind):
    """Keeps all its input and output channels."""

    name = "opaque"
    single_io = False

    def connect(self, b: Any, call: LayerCall) -> None:
        what = f"{type(call.layer).__name__} '{call.name}'"
        for t in call.inputs:
            b.pin(b.raw[t], f"read by {what}")
        for t in call.outputs:
            b.raw[t] = b.fresh(b.width(t))
            b.pin(b.raw[t], f"written by {what}")
