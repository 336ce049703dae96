"""Layers that mix channels but cannot absorb constants (Softmax, LayerNormalization ...).

Every channel they read or write is pinned: never removed, and constants stop
there.

:class:`KeptWholeKind` is the opaque kind of a layer the channel graph keeps
whole: one the registry does not know (a composite custom layer holding its
own convs and BNs, a Lambda layer) when the caller opted in with
``unknown_layers="opaque"``, Keras' recurrent, attention and wrapper layers
(``registry.KEPT_WHOLE_LAYERS``), and any ``keras.ops`` node without a rule.
Its channels are pinned like any opaque layer's, the report's notes name it,
and it is rebuilt whole: re-created from its config (a Lambda layer: around the
same Python function) with every weight copied
unchanged, in order, so nothing inside it is sliced or folded.

>>> import keras
>>> from tf_gamma_prune.analysis.kinds import kind_of_layer
>>> kind_of_layer(keras.layers.LayerNormalization()).name
'opaque'
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall
from tf_gamma_prune.errors import UnsupportedLayerError

L = keras.layers


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


class KeptWholeKind(OpaqueKind):
    """An unknown layer kept whole (``unknown_layers="opaque"``)."""

    def connect(self, b: Any, call: LayerCall) -> None:
        super().connect(b, call)
        note = f"kept whole: layer '{call.name}' (type {type(call.layer).__name__})"
        if note not in b.notes:
            b.notes.append(note)

    def rebuild(self, r: Any, call: LayerCall) -> None:
        old = call.layer
        if not isinstance(old, L.Layer):  # a keras.ops node: stateless
            r.rebuild_generic(call)
            return
        new = r.new_layers.get(id(old))
        first_use = new is None
        if first_use:
            new = _recreate(old, r.names.of(call), call.name)
            r.new_layers[id(old)] = new
        args, kwargs = call.call_arguments(r.values)
        out = new(*args, **kwargs)
        if first_use:
            _copy_weights(old, new, call.name)
        for t, v in zip(call.outputs, keras.tree.flatten(out)):
            r.values[t] = v


def _recreate(old: Any, name: str, qualified: str) -> Any:
    """A new, unbuilt copy of ``old`` named ``name``."""
    if isinstance(old, L.Lambda):
        # The same Python function (not its serialized bytecode, which loses closures).
        return L.Lambda(old.function, output_shape=old._output_shape, mask=old.mask,
                        arguments=old.arguments, name=name, dtype=old.dtype_policy)
    try:
        config = old.get_config()
        config["name"] = name
        return type(old).from_config(config)
    except Exception as e:  # noqa: BLE001 - any failure means: cannot be copied
        raise UnsupportedLayerError(
            f"Layer '{qualified}' ({type(old).__name__}) is kept whole "
            "but cannot be re-created from its config "
            f"({type(e).__name__}: {e}). Give the class a get_config() that returns its "
            "constructor arguments (what keras.saving needs too)."
        ) from e


def _copy_weights(old: Any, new: Any, qualified: str) -> None:
    """Every weight of ``old`` into ``new``, in order, unchanged."""
    src, dst = old.weights, new.weights
    shapes_src = [tuple(w.shape) for w in src]
    shapes_dst = [tuple(w.shape) for w in dst]
    if shapes_src != shapes_dst:
        raise UnsupportedLayerError(
            f"Layer '{qualified}' ({type(old).__name__}) is kept whole "
            "but its copy from config has weights of shapes "
            f"{shapes_dst}, the original {shapes_src}; its get_config() probably misses "
            "a constructor argument."
        )
    for a, w in zip(dst, src):
        a.assign(np.asarray(keras.ops.convert_to_numpy(w)))
