"""The rebuild engine: a new functional model with narrower layers.

:class:`Rebuilder` walks the original calls in order and asks each call's
:class:`~tf_gamma_prune.analysis.kinds.LayerKind` to re-create it
(``kind.rebuild(r, call)``). Most kinds use :meth:`Rebuilder.rebuild_generic`:
the layer re-created from its config (``kind.adjust_config``) with its weights
sliced to the kept channels (``kind.slice_weight``); convs and dense layers
fold what their removed inputs contributed (:mod:`.folding`). Weights are
created directly from their final values (:func:`call_building_from`), so a
rebuild costs about as much as ``keras.models.clone_model``.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.activations import apply_activation
from tf_gamma_prune.analysis.channel_graph import ChannelGraph
from tf_gamma_prune.analysis.layer_graph import LayerCall, TensorId, batchnorm_after, functional_core
from tf_gamma_prune.layers import ConstantFeature
from tf_gamma_prune.prune.folding import carried_channels, removed_response
from tf_gamma_prune.prune.plan import RemovalPlan

L = keras.layers


class Rebuilder:
    """Rebuilds one model for one removal plan (see the module docstring).

    Attributes the kinds read and write: ``keep`` (kept channel positions per
    tensor), ``values`` (new tensors per original tensor; :attr:`EMPTY` where
    every channel went), ``weights`` (original weights as numpy), ``new_layers``,
    ``names``, ``mean_shift`` (bias folded into a BN's moving mean),
    ``shared_bias``, ``border_corrections``, ``bias_deviation``, ``notes``.
    """

    EMPTY = object()  # value of a tensor whose every channel was removed

    def __init__(self, graph: ChannelGraph, plan: RemovalPlan,
                 weights: dict[int, dict[str, np.ndarray]],
                 means: dict[TensorId, np.ndarray]) -> None:
        self.graph = graph
        self.plan = plan
        self.weights = weights
        self.means = means
        removed = plan.removed
        self.keep = {t: np.flatnonzero(~removed[g]) for t, g in graph.channels.items()}
        self.values: dict[TensorId, Any] = {}
        self.new_layers: dict[int, Any] = {}
        self.mean_shift: dict[int, np.ndarray] = {}
        self.shared_bias: dict[int, np.ndarray] = {}
        self.border_corrections: list[str] = []
        self.constant_layers: list[str] = []
        self.notes: list[str] = list(plan.notes) + list(graph.notes)
        self.names = LayerNames(graph)
        self.bias_deviation = 0.0
        self.first_input = None

    def build(self, model: keras.Model) -> keras.Model:
        lg = self.graph.layer_graph
        core = functional_core(model)
        new_inputs = []
        for t, kt in zip(lg.inputs, core.inputs):
            name = kt._keras_history.operation.name
            inp = keras.Input(batch_shape=kt.shape, dtype=kt.dtype,
                              sparse=kt.sparse, name=name)
            new_inputs.append(inp)
            self.values[t] = inp
        self.first_input = new_inputs[0]
        for call in lg.calls:
            self.rebuild_call(call)
        outputs = [self.values[t] for t in lg.outputs]
        inputs = keras.tree.pack_sequence_as(core._inputs_struct, new_inputs)
        outputs = keras.tree.pack_sequence_as(core._outputs_struct, outputs)
        pruned = keras.Model(inputs, outputs, name=model.name)
        if not model.trainable:
            pruned.trainable = False
        return pruned

    def rebuild_call(self, call: LayerCall) -> None:
        if all(len(self.keep[t]) == 0 for t in call.outputs):
            for t in call.outputs:
                self.values[t] = self.EMPTY
            return
        self.graph.kinds[call].rebuild(self, call)

    # --- the generic rebuild -----------------------------------------------------
    def rebuild_generic(self, call: LayerCall, args: list | None = None,
                        kwargs: dict | None = None) -> None:
        """Re-create the layer from its adjusted config with sliced weights and call it
        on the new inputs (``args``/``kwargs``: the call's arguments, by default
        the original ones with the new tensors)."""
        if args is None:
            args, kwargs = call.call_arguments(self.values)
        first_use = id(call.layer) not in self.new_layers
        layer = self.layer_for(call)
        arrays = self.weights_for(call) if first_use else {}
        out = call_building_from(layer, arrays, call.name, args, kwargs)
        for t, v in zip(call.outputs, keras.tree.flatten(out)):
            self.values[t] = v

    def layer_for(self, call: LayerCall) -> Any:
        old = call.layer
        if id(old) in self.new_layers:
            return self.new_layers[id(old)]
        if not isinstance(old, L.Layer):  # a keras.ops operation node
            try:
                new = type(old).from_config(old.get_config())
            except Exception:  # noqa: BLE001 - stateless: reusing it is harmless
                new = old
            self.new_layers[id(old)] = new
            return new
        config = old.get_config()
        config["name"] = self.names.of(call)
        self.graph.kinds[call].adjust_config(self, call, config)
        new = type(old).from_config(config)
        self.new_layers[id(old)] = new
        return new

    def weights_for(self, call: LayerCall) -> dict[str, np.ndarray]:
        """The layer's weights, each sliced by its kind to the kept channels."""
        old = self.weights.get(id(call.layer))
        if not old:
            return {}
        kind = self.graph.kinds[call]
        return {name: kind.slice_weight(self, call, name, arr) for name, arr in old.items()}

    # --- folding services for the mixing kind -----------------------------------
    def carried(self, call: LayerCall) -> tuple[int, np.ndarray, np.ndarray] | None:
        return carried_channels(self.graph, self.plan, self.means, call)

    def fold_response(self, call: LayerCall, carried: np.ndarray | None = None) -> np.ndarray | None:
        return removed_response(self.graph, self.plan, self.means, call, carried, self.notes)

    def batchnorm_after(self, call: LayerCall) -> LayerCall | None:
        return batchnorm_after(self.graph.layer_graph, call)

    def call_building_from(self, layer: Any, arrays: dict[str, np.ndarray], name: str,
                           args: list, kwargs: dict) -> Any:
        return call_building_from(layer, arrays, name, args, kwargs)

    def replace_by_constant(self, call: LayerCall, response: np.ndarray | None) -> None:
        """A conv/dense whose every input channel was removed outputs a constant."""
        layer = call.layer
        out_t = call.outputs[0]
        shape = self.graph.layer_graph.shape(out_t)
        value = np.zeros((1,) * (len(shape) - 1) + (self.graph.width(out_t),))
        if response is not None:
            value = value + response
        bias = self.weights[id(layer)].get("bias")
        if bias is not None:
            value = value + bias
        value = apply_activation(layer, value)
        full = (1,) + tuple(int(d) for d in shape[1:])
        value = np.broadcast_to(value, full)[0][..., self.keep[out_t]]
        y = ConstantFeature(value.astype("float32"), name=self.names.of(call),
                            dtype=layer.dtype_policy)(self.first_input)
        self.constant_layers.append(call.name)
        self.values[out_t] = y


def call_building_from(layer: Any, arrays: dict[str, np.ndarray], name: str,
                        args: list, kwargs: dict) -> Any:
    """Call ``layer``; if that builds it, its weights start from ``arrays``.

    Creating each variable from its final value (rather than from the layer's
    random initializer, then assigning) makes the rebuild about as fast as
    ``keras.models.clone_model``. Weights the layer creates under other names
    (or a layer that was already built) are assigned afterwards.
    """
    if not arrays or not isinstance(layer, L.Layer) or layer.built:
        out = layer(*args, **kwargs)
        assign_weights(layer, arrays, name)
        return out
    used: set[str] = set()
    original = layer.add_weight

    def add_weight(*a: Any, **kw: Any) -> Any:
        key = kw.get("name")
        if key in arrays and "initializer" in kw and len(a) < 2:
            value = arrays[key]
            used.add(key)

            def initializer(shape: Any, dtype: Any = None) -> Any:
                if tuple(shape) != tuple(value.shape):
                    raise ValueError(
                        f"internal error: weight '{key}' of '{name}' has shape "
                        f"{tuple(shape)} but the sliced value has {value.shape}"
                    )
                return np.asarray(value, dtype=keras.backend.standardize_dtype(dtype))

            kw["initializer"] = initializer
        return original(*a, **kw)

    object.__setattr__(layer, "add_weight", add_weight)
    try:
        out = layer(*args, **kwargs)
    finally:
        object.__delattr__(layer, "add_weight")
    assign_weights(layer, {k: v for k, v in arrays.items() if k not in used}, name)
    return out


def assign_weights(layer: Any, arrays: dict[str, np.ndarray], name: str) -> None:
    if not arrays:
        return
    for w in layer.weights:
        if w.name not in arrays:
            continue
        value = arrays[w.name]
        if tuple(value.shape) != tuple(w.shape):
            raise ValueError(
                f"internal error: weight '{w.name}' of '{name}' has shape "
                f"{tuple(w.shape)} but the sliced value has {value.shape}"
            )
        w.assign(np.asarray(value, dtype=w.dtype))


class LayerNames:
    """Unique names for the rebuilt layers (original names where possible)."""

    def __init__(self, graph: ChannelGraph) -> None:
        self.by_layer: dict[int, str] = {}
        self.used: set[str] = set()
        for call in graph.layer_graph.calls:
            if id(call.layer) in self.by_layer:
                continue
            name = call.layer.name
            if name in self.used:
                name = self.fresh(call.name.replace("/", "_"))
            self.used.add(name)
            self.by_layer[id(call.layer)] = name

    def of(self, call: LayerCall) -> str:
        return self.by_layer[id(call.layer)]

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name = f"{base}_{i}"
            i += 1
        self.used.add(name)
        return name
