"""The rules of one kind of layer, in one place: :class:`LayerKind`.

Pruning needs to know three things about every layer, and a kind answers all
three, so that supporting a new layer is one addition:

1. **channels** (:meth:`LayerKind.connect`): which output channel positions are
   the same channel as which input positions (a residual ``Add`` ties them, a
   conv creates new ones, a depthwise conv repeats them, an opaque layer pins
   them);
2. **constants** (:meth:`LayerKind.propagate`): what a constant input channel
   becomes at the output (a BN with γ = 0 creates one, pooling keeps it, a conv
   reading only constants is constant);
3. **rebuild** (:meth:`LayerKind.rebuild`, :meth:`LayerKind.slice_weight`,
   :meth:`LayerKind.adjust_config`): how the layer is re-created narrower.

The analysis engine (:class:`~tf_gamma_prune.analysis.channel_graph.ChannelBuilder`,
argument ``b``) and the rebuild engine
(:class:`~tf_gamma_prune.prune.rebuild.Rebuilder`, argument ``r``) call these
methods; a kind reads and writes through them (``b.raw``, ``b.fresh``,
``b.tie``, ``b.pin``; ``r.keep``, ``r.values``, ``r.rebuild_generic``).

Register a kind for your own layer class with
:func:`~tf_gamma_prune.analysis.kinds.register_layer_kind`: one of the named
kinds (``"pointwise"``, ``"spatial"``, ``"opaque"``) or an instance of your own
subclass.

>>> from tf_gamma_prune.analysis.kinds import POINTWISE_KIND
>>> POINTWISE_KIND.name, POINTWISE_KIND.single_io, POINTWISE_KIND.folds_constants
('pointwise', True, False)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.constants import Constants, run_layer
from tf_gamma_prune.analysis.layer_graph import LayerCall

_HALF = ("float16", "bfloat16")


def run_exact(call: LayerCall, values: list[np.ndarray]) -> np.ndarray:
    """:func:`~tf_gamma_prune.analysis.constants.run_layer`, in float32 also for a
    mixed-precision layer.

    A layer with a ``"mixed_float16"`` (or bfloat16) policy would compute the
    constants in half precision; the constants folded downstream must be the
    model's float32 function, so such a layer runs as a float32 copy (same
    config and weights). The layer itself is not changed.
    """
    layer = call.layer
    compute = getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None)
    if compute not in _HALF or not isinstance(layer, keras.layers.Layer):
        return run_layer(call, values)
    config = layer.get_config()
    config["dtype"] = "float32"
    copy = dataclasses.replace(call, layer=type(layer).from_config(config))
    run_layer(copy, values)  # builds it
    for dst, src in zip(copy.layer.weights, layer.weights):
        dst.assign(np.asarray(keras.ops.convert_to_numpy(src), np.float32))
    return run_layer(copy, values)


class LayerKind:
    """How one kind of layer treats channels (see the module docstring).

    Attributes:
        name: the kind's name (``graph.kinds[call].name``).
        single_io: the channel graph only accepts one input and one output.
        folds_constants: a *fold site*: the layer absorbs removed constant input
            channels into its bias (convs, dense layers).
    """

    name = "layer"
    single_io = True
    folds_constants = False

    def refine(self, call: LayerCall) -> "LayerKind":
        """The kind of this particular call (e.g. a softmax ``Activation`` is opaque)."""
        return self

    # --- analysis ------------------------------------------------------------
    def connect(self, b: Any, call: LayerCall) -> None:
        """Give ``call``'s outputs their channel ids (``b.raw[t]``), tie and pin."""
        raise NotImplementedError(f"{type(self).__name__}.connect")

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | list[Constants | None] | None:
        """The constants of ``call``'s output given those of its inputs (``None``: none).

        A kind with several outputs (:mod:`.split`) may return a list, one
        entry per output.
        """
        return None

    # --- rebuild -------------------------------------------------------------
    def rebuild(self, r: Any, call: LayerCall) -> None:
        """Re-create ``call`` narrower and set ``r.values`` of its outputs."""
        r.rebuild_generic(call)

    def slice_weight(self, r: Any, call: LayerCall, name: str, array: np.ndarray) -> np.ndarray:
        """One weight of the layer, sliced to the kept channels.

        The default slices a last axis that has the input's channel count
        (per-channel weights of an elementwise layer).
        """
        keep_in = r.keep[call.inputs[0]]
        width_in = r.graph.width(call.inputs[0])
        if len(keep_in) != width_in and array.ndim >= 1 and array.shape[-1] == width_in:
            return array[..., keep_in]
        return array

    def adjust_config(self, r: Any, call: LayerCall, config: dict) -> None:
        """Change the layer's config for the narrower rebuild (widths, shapes)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class ChannelwiseKind(LayerKind):
    """Output channel ``k`` depends on input channel ``k`` only (same width).

    A layer of such a kind that changes the channel count anyway (e.g. a custom
    layer declared pointwise by mistake) has its channels pinned.
    """

    def connect(self, b: Any, call: LayerCall) -> None:
        src = b.raw[call.inputs[0]]
        out = call.outputs[0]
        width = b.width(out)
        if len(src) != width:
            b.raw[out] = b.fresh(width)
            b.pin(src, f"'{call.name}' changes the channel count")
            b.pin(b.raw[out], f"'{call.name}' changes the channel count")
        else:
            b.raw[out] = src

    @staticmethod
    def changes_width(b: Any, call: LayerCall) -> bool:
        return len(b.raw[call.inputs[0]]) != len(b.raw[call.outputs[0]])
