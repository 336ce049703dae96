"""What removed channels leave behind, and where it goes: the folding maths of the rebuild.

A removed channel is replaced by a value that does not depend on the input:
its constant (γ = 0 upstream), its mean activation over calibration data, or 0.
The layer reading it (a fold site: conv/dense) receives that value's response
(:func:`removed_response`) in its bias; with ``fold="carrier"`` a kept constant
channel carries the others through its weights instead (:func:`carried_channels`).
A bias-free layer followed by a BatchNormalization that alone reads it folds
into that BN's moving mean instead
(:func:`~tf_gamma_prune.analysis.layer_graph.batchnorm_after`).

These functions read the channel graph and the removal plan; the rebuild engine
(:mod:`tf_gamma_prune.prune.rebuild`) and the mixing kind
(:mod:`tf_gamma_prune.analysis.kinds.mixing`) apply them.
"""

from __future__ import annotations

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph, static_shape
from tf_gamma_prune.analysis.conv_response import has_padding_effect, linear_response
from tf_gamma_prune.analysis.layer_graph import LayerCall, TensorId
from tf_gamma_prune.prune.plan import RemovalPlan, removed_values, same_shape

L = keras.layers


def carried_channels(graph: ChannelGraph, plan: RemovalPlan, means: dict[TensorId, np.ndarray],
                     call: LayerCall) -> tuple[int, np.ndarray, np.ndarray] | None:
    """``(carrier, carried, ratios)`` for a reader with a carrier: the
    carrier's input position, the removed input positions it carries
    (bool) and their values relative to it (``c_j / c_carrier``)."""
    pos = plan.carriers.get(call)
    if pos is None:
        return None
    in_t = call.inputs[0]
    mean = means.get(in_t)
    values, const_in, mean_in = removed_values(graph, in_t, plan.removed,
                                               calibrated=mean is not None)
    ref = values[:, pos]
    ratios = np.zeros(len(const_in))
    carried = np.zeros(len(const_in), bool)
    for j in np.flatnonzero(const_in):
        if same_shape(values[:, j], ref):
            ratios[j] = float(values[:, j] @ ref) / float(ref @ ref)
            carried[j] = True
    if mean_in.any() and np.all(ref == ref[0]):
        ratios[mean_in] = mean[mean_in] / ref[0]
        carried |= mean_in
    return pos, carried, ratios


def removed_response(graph: ChannelGraph, plan: RemovalPlan, means: dict[TensorId, np.ndarray],
                     call: LayerCall, carried: np.ndarray | None,
                     notes: list[str]) -> np.ndarray | None:
    """The pre-activation, bias-free response of ``call`` to the values of
    its removed input channels (constants, calibration means or 0), except
    the ``carried`` ones (a carrier's weights hold those). ``None``: nothing to fold."""
    in_t = call.inputs[0]
    groups = graph.channels[in_t]
    removed = plan.removed[groups]
    if carried is not None:
        removed = removed & ~carried
    if not removed.any():
        return None
    const = graph.constants.get(in_t)
    rank = len(graph.layer_graph.shape(in_t))
    if const is not None:
        value = np.where(removed & const.mask, const.value, 0.0)
        fold_mask = removed & const.mask
    else:
        value = np.zeros((1,) * (rank - 1) + (len(groups),))
        fold_mask = np.zeros(len(groups), bool)
    mean = means.get(in_t)
    if mean is not None:
        value = value + np.where(removed & ~fold_mask, mean, 0.0)
    if not np.any(value != 0):
        return None
    spatial = None
    if all(d == 1 for d in value.shape[1:-1]) and has_padding_effect(call.layer):
        if graph.fold == "bias":
            notes.append(f"'{call.name}': bias fold ignores the zero padding at its borders")
        else:
            spatial = static_shape(graph.layer_graph, in_t, f"Zero padding in '{call.name}'")[:-1]
    return linear_response(call.layer, value, spatial)
