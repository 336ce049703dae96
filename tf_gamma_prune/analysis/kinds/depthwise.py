"""Depthwise convolutions: output channel ``k·m + j`` reads input channel ``k`` only.

Input channel ``k`` and its ``m`` (depth multiplier) outputs are removed
together; a constant input channel gives constant outputs (its response, zero
padding included); the kernel and bias are sliced per input channel.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.DepthwiseConv2D(3)).name
'depthwise'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_gamma_prune.analysis.activations import apply_activation
from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall


class DepthwiseKind(LayerKind):
    """``DepthwiseConv1D`` / ``DepthwiseConv2D``."""

    name = "depthwise"

    def connect(self, b: Any, call: LayerCall) -> None:
        b.raw[call.outputs[0]] = np.repeat(b.raw[call.inputs[0]], call.layer.depth_multiplier)

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        src = ins[0]
        if src is None:
            return None
        value = apply_activation(call.layer, b.constant_response(call, src, include_bias=True))
        return Constants(np.repeat(src.mask, call.layer.depth_multiplier), value)

    def slice_weight(self, r: Any, call: LayerCall, name: str, array: np.ndarray) -> np.ndarray:
        keep_in = r.keep[call.inputs[0]]
        if name == "kernel":
            return array[..., keep_in, :]
        if name == "bias":
            dm = call.layer.depth_multiplier
            return array.reshape(-1, dm)[keep_in].reshape(-1)
        return array
