"""Elementwise layers (activations, dropout, BatchNormalization, Rescaling ...).

Channel ``k`` stays channel ``k``; a constant channel stays constant (its value
goes through the layer); per-channel weights are sliced to the kept channels.
BatchNormalization is a kind of its own (:class:`BatchNormKind`): a γ = 0
channel *creates* a constant, and it absorbs a folded bias into its moving mean.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.ReLU()).name, kind_of_layer(keras.layers.BatchNormalization()).name
('pointwise', 'batchnorm')
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.activations import activation_mixes_channels
from tf_gamma_prune.analysis.constants import Constants, as_rank, no_constants
from tf_gamma_prune.analysis.conv_response import batchnorm_inference
from tf_gamma_prune.analysis.kinds.base import ChannelwiseKind, LayerKind, run_exact
from tf_gamma_prune.analysis.layer_graph import LayerCall
from tf_gamma_prune.errors import UnsupportedLayerError
from tf_gamma_prune.layers import BorderCorrection

L = keras.layers


class PointwiseKind(ChannelwiseKind):
    """Elementwise per channel, with per-channel weights at most."""

    name = "pointwise"

    def refine(self, call: LayerCall) -> LayerKind:
        from tf_gamma_prune.analysis.kinds.registry import OPAQUE_KIND

        layer = call.layer
        if isinstance(layer, L.Activation) and activation_mixes_channels(layer.activation):
            return OPAQUE_KIND
        if isinstance(layer, L.Normalization):
            rank = len(call.node.input_tensors[0].shape)
            if tuple(layer.axis) not in ((-1,), (rank - 1,)):
                return OPAQUE_KIND
        return self

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        src = ins[0]
        if src is None or self.changes_width(b, call):
            return None
        value = run_exact(call, [src.value])
        return Constants(src.mask.copy(), as_rank(value, b.rank(call.outputs[0])))

    def adjust_config(self, r: Any, call: LayerCall, config: dict) -> None:
        layer = call.layer
        keep_in = r.keep.get(call.inputs[0])
        width_in = r.graph.width(call.inputs[0])
        if isinstance(layer, BorderCorrection):
            config["shape"] = list(layer.map_shape[:-1]) + [len(keep_in)]
        if isinstance(layer, (L.Rescaling, L.Normalization)):
            for key in ("scale", "offset", "mean", "variance"):
                value = config.get(key)
                if value is not None and np.size(value) == width_in and width_in > 1:
                    config[key] = np.asarray(value).reshape(-1)[keep_in].tolist()


class BatchNormKind(PointwiseKind):
    """BatchNormalization over the last axis: γ = 0 makes a channel constant (β)."""

    name = "batchnorm"

    def refine(self, call: LayerCall) -> LayerKind:
        layer = call.layer
        rank = len(call.node.input_tensors[0].shape)
        if layer.axis not in (-1, rank - 1):
            raise UnsupportedLayerError(
                f"BatchNormalization '{call.name}' normalises axis {layer.axis}, not "
                "the last (channel) axis; only channels_last models are supported."
            )
        return self

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        if self.changes_width(b, call):
            return None
        layer, src = call.layer, ins[0]
        width, rank = b.width(call.outputs[0]), b.rank(call.outputs[0])
        zero_gamma = np.zeros(width, bool)
        if layer.scale:
            zero_gamma = keras.ops.convert_to_numpy(layer.gamma) == 0
        if src is None:
            if not zero_gamma.any():
                return None
            src = no_constants(width, rank)
        mask = src.mask | zero_gamma
        x = np.where(src.mask, src.value, 0.0)
        return Constants(mask, as_rank(batchnorm_inference(layer, x), rank))

    def slice_weight(self, r: Any, call: LayerCall, name: str, array: np.ndarray) -> np.ndarray:
        array = super().slice_weight(r, call, name, array)
        shift = r.mean_shift.get(id(call.layer))
        if name == "moving_mean" and shift is not None:  # a bias folded into this BN
            array = array - shift[r.keep[call.inputs[0]]].astype(array.dtype)
        return array
