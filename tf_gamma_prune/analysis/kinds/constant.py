"""``ConstantFeature``: a layer whose output is a fixed tensor (what a conv becomes
when every channel it read was removed). All its channels are constant.

>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> from tf_gamma_prune.layers import ConstantFeature
>>> kind_of_layer(ConstantFeature(shape=[2, 2, 3])).name
'constant'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.conv_response import numpy_weight
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall


class ConstantKind(LayerKind):
    """New channels, every one constant."""

    name = "constant"
    single_io = False

    def connect(self, b: Any, call: LayerCall) -> None:
        b.raw[call.outputs[0]] = b.fresh(b.width(call.outputs[0]))

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        value = numpy_weight(call.layer.value)[None]
        return Constants(np.ones(value.shape[-1], bool), value)

    def slice_weight(self, r: Any, call: LayerCall, name: str, array: np.ndarray) -> np.ndarray:
        return array[..., r.keep[call.outputs[0]]]

    def adjust_config(self, r: Any, call: LayerCall, config: dict) -> None:
        config["shape"] = list(call.layer.map_shape[:-1]) + [len(r.keep[call.outputs[0]])]
