"""Per-channel layers over space (pooling, padding, cropping, upsampling).

Channel ``k`` stays channel ``k``. A spatially uniform constant stays uniform
through pooling, cropping and upsampling; zero padding turns it into a map
(exactly, with static spatial shapes) unless ``fold="bias"``.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.MaxPooling2D()).name
'spatial'
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_gamma_prune.analysis.constants import (
    Constants,
    as_rank,
    is_zero_padding,
    keeps_uniform,
    run_layer,
)
from tf_gamma_prune.analysis.kinds.base import ChannelwiseKind
from tf_gamma_prune.analysis.layer_graph import LayerCall


class SpatialKind(ChannelwiseKind):
    """Per channel over space, no weights."""

    name = "spatial"

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        src = ins[0]
        if src is None or self.changes_width(b, call):
            return None
        layer = call.layer
        rank_out = b.rank(call.outputs[0])
        if not src.uniform:
            return Constants(src.mask.copy(), as_rank(run_layer(call, [src.value]), rank_out))
        if is_zero_padding(layer):
            if not np.any(src.value != 0):
                return Constants(src.mask.copy(), src.value.copy())
            if b.fold == "bias":
                b.notes.append(f"'{call.name}': zero padding of a constant ignored (bias fold)")
                return Constants(src.mask.copy(), src.value.copy())
        elif keeps_uniform(layer):
            # Keras' 'same' average pooling excludes the padding, max pooling pads -inf.
            return Constants(src.mask.copy(), as_rank(src.value, rank_out))
        x = b.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        return Constants(src.mask.copy(), as_rank(run_layer(call, [x]), rank_out))
