"""Convolutions and dense layers: new output channels; removed inputs fold into the bias.

Analysis: each output channel is new. When every input channel is constant, so
is every output (the layer's response to them, zero padding included). A
grouped convolution (``groups > 1``) ties output ``j`` of every group together,
so each group keeps the same width. Its input channels can go too: the plan
keeps every group's number of inputs equal (it puts channels back where a
group would lose more than another, see
:func:`~tf_gamma_prune.prune.plan.plan_removal`), and a removed input's
contribution folds like any other (into the outputs of its own group).

Rebuild: the kernel is sliced to the kept input and output channels; what the
removed input channels contributed (constants, calibration means) is computed
by the rebuild engine (``r.fold_response``) and goes into the bias (a bias is
added where needed, or the mean of a BatchNormalization that alone reads a
bias-free layer absorbs it). Where zero padding makes that contribution vary at
the borders, the interior part goes into the bias and the rest into a
:class:`~tf_gamma_prune.layers.BorderCorrection` map after the layer
(``fold="exact"``), or is carried by a kept constant channel's weights
(``fold="carrier"``, :func:`carry`), or is ignored (``fold="bias"``). A layer
whose every input channel was removed becomes a
:class:`~tf_gamma_prune.layers.ConstantFeature`.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.Conv2D(4, 3)).folds_constants
True
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.activations import (
    activation_mixes_channels,
    apply_activation,
    layer_activation_name,
)
from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.conv_response import is_transposed_conv, split_response
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall
from tf_gamma_prune.errors import SharedLayerError, UnsupportedLayerError
from tf_gamma_prune.layers import BorderCorrection

L = keras.layers


class MixingKind(LayerKind):
    """Conv1D/2D/3D, their transposed and separable forms, Dense."""

    name = "mixing"
    folds_constants = True

    # --- analysis ------------------------------------------------------------
    def connect(self, b: Any, call: LayerCall) -> None:
        layer = call.layer
        groups = getattr(layer, "groups", 1)
        width = b.width(call.outputs[0])
        if groups != 1:  # output j of every group is one channel: equal widths per group
            ids = np.tile(b.fresh(width // groups), groups)
        else:
            ids = b.fresh(width)
        b.raw[call.outputs[0]] = ids
        if activation_mixes_channels(getattr(layer, "activation", None)):
            b.pin(ids, f"softmax activation of '{call.name}'")

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        src = ins[0]
        if src is None or not src.mask.all():
            return None
        value = apply_activation(call.layer, b.constant_response(call, src, include_bias=True))
        return Constants(np.ones(b.width(call.outputs[0]), bool), value)

    # --- rebuild -------------------------------------------------------------
    def rebuild(self, r: Any, call: LayerCall) -> None:
        layer = call.layer
        in_t, out_t = call.inputs[0], call.outputs[0]
        keep_out = r.keep[out_t]
        carried = r.carried(call)
        response = r.fold_response(call, None if carried is None else carried[1])
        if len(r.keep[in_t]) == 0:
            r.replace_by_constant(call, response)
            return
        u, border = split_response(response, r.graph.width(out_t))
        u_out = u[keep_out]
        border_out = None if border is None else border[0][..., keep_out]
        if border_out is not None and r.graph.fold == "bias":
            r.bias_deviation = max(r.bias_deviation, float(np.abs(border_out).max()))
            border_out = None
        x = r.values[in_t]
        if id(layer) in r.new_layers:  # shared layer: second use
            new = r.new_layers[id(layer)]
            if not np.allclose(r.shared_bias[id(layer)], u_out, rtol=1e-6, atol=1e-9):
                raise SharedLayerError(
                    f"Layer '{call.name}' is shared, and its uses read removed channels "
                    "with different constants, so one folded bias cannot serve both. "
                    "Give each use its own layer (unshare it) or keep those channels "
                    "(exclude them from the selection / remove_constant=False)."
                )
            y = new(x)
        else:
            new, y = self.narrower_layer(r, call, x, u_out, border_out is not None, carried)
        if border_out is not None:
            y = BorderCorrection(border_out, name=r.names.fresh(f"{new.name}_border"),
                                 dtype=layer.dtype_policy)(y)
            r.border_corrections.append(call.name)
            if layer_activation_name(layer) != "linear":
                y = L.Activation(layer.activation, name=r.names.fresh(f"{new.name}_activation"),
                                 dtype=layer.dtype_policy)(y)
        r.values[out_t] = y

    def narrower_layer(self, r: Any, call: LayerCall, x: Any, u_out: np.ndarray,
                       split_activation: bool,
                       carried: tuple[int, np.ndarray, np.ndarray] | None) -> tuple[Any, Any]:
        """The sliced layer with ``u_out`` folded into its bias (or the next BN's mean)."""
        layer = call.layer
        out_t = call.outputs[0]
        keep_in, keep_out = r.keep[call.inputs[0]], r.keep[out_t]
        config = layer.get_config()
        config["name"] = r.names.of(call)
        config["units" if isinstance(layer, L.Dense) else "filters"] = len(keep_out)
        old = r.weights[id(layer)]
        if carried is not None:
            old = dict(old, kernel=carry(layer, old["kernel"], *carried))
        bias = old.get("bias")
        fold_needed = bool(np.any(u_out != 0))
        shared = len(r.graph.layer_graph.calls_of(layer)) > 1
        bn = None if (bias is not None or not fold_needed or shared) else r.batchnorm_after(call)
        if fold_needed and bias is None and bn is None:
            config["use_bias"] = True
            bias = np.zeros(r.graph.width(out_t), np.float32)
        if split_activation:
            config["activation"] = "linear"
        new = type(layer).from_config(config)
        r.new_layers[id(layer)] = new
        arrays = slice_kernels(layer, old, keep_in, keep_out)
        if bias is not None:
            arrays["bias"] = np.asarray(bias, np.float64)[keep_out] + (u_out if bn is None else 0.0)
        if bn is not None:
            shift = np.zeros(r.graph.width(out_t))
            shift[keep_out] = u_out
            r.mean_shift[id(bn.layer)] = shift
        y = r.call_building_from(new, arrays, call.name, [x], {})
        r.shared_bias[id(layer)] = u_out
        return new, y


def carry(layer: Any, kernel: np.ndarray, carrier: int, carried: np.ndarray,
          ratios: np.ndarray) -> np.ndarray:
    """The kernel with the carried input channels' weights added to the
    carrier's, scaled by their value relative to it (conv / dense kernels)."""
    k = np.asarray(kernel, np.float64).copy()
    idx = np.flatnonzero(carried)
    if is_transposed_conv(layer):  # (*k, C_out, C_in)
        k[..., carrier] += np.tensordot(k[..., idx], ratios[idx], axes=[[-1], [0]])
    else:  # (*k, C_in, C_out) or (C_in, C_out)
        k[..., carrier, :] += np.tensordot(k[..., idx, :], ratios[idx], axes=[[-2], [0]])
    return k.astype(kernel.dtype)


def slice_grouped_kernel(layer: Any, kernel: np.ndarray, keep_in: np.ndarray,
                         keep_out: np.ndarray) -> np.ndarray:
    """A grouped kernel ``(*k, C_in / groups, C_out)`` sliced to the kept channels.

    Every group must keep as many inputs (the plan sees to it); they may be
    different ones, so each kept output reads its own group's kept inputs.
    """
    groups = int(layer.groups)
    n_in, c_out = kernel.shape[-2], kernel.shape[-1]
    per_out = c_out // groups
    local = [keep_in[(keep_in >= g * n_in) & (keep_in < (g + 1) * n_in)] - g * n_in
             for g in range(groups)]
    if len({len(kept) for kept in local}) != 1:
        raise UnsupportedLayerError(
            f"Layer '{layer.name}': the groups of this grouped convolution would keep "
            f"{[len(kept) for kept in local]} input channels; every group must keep as "
            "many (please report this: the removal plan should have balanced them)."
        )
    rows = np.stack([local[o // per_out] for o in keep_out], axis=-1)  # (n_kept, outs)
    return kernel[..., rows, keep_out[None, :]]


def slice_kernels(layer: Any, old: dict[str, np.ndarray], keep_in: np.ndarray,
                  keep_out: np.ndarray) -> dict[str, np.ndarray]:
    """Kernels of a conv / separable conv / dense, sliced to the kept channels."""
    unknown = set(old) - {"kernel", "bias", "depthwise_kernel", "pointwise_kernel"}
    if unknown:
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has weights "
            f"{sorted(unknown)} that pruning cannot slice (LoRA or quantized "
            "layers?). Merge/dequantize them into a plain layer first."
        )
    out = {}
    groups = getattr(layer, "groups", 1)
    if groups != 1:  # outputs go in the same places of every group
        out["kernel"] = slice_grouped_kernel(layer, old["kernel"], keep_in, keep_out)
        return out
    if "kernel" in old and is_transposed_conv(layer):  # (*k, C_out, C_in)
        out["kernel"] = old["kernel"][..., keep_out, :][..., keep_in]
    elif "kernel" in old:
        out["kernel"] = old["kernel"][..., keep_in, :][..., keep_out]
    if "depthwise_kernel" in old:
        dw = old["depthwise_kernel"]
        dm = dw.shape[-1]
        out["depthwise_kernel"] = dw[..., keep_in, :]
        mid = (keep_in[:, None] * dm + np.arange(dm)).reshape(-1)
        out["pointwise_kernel"] = old["pointwise_kernel"][..., mid, :][..., keep_out]
    return out
