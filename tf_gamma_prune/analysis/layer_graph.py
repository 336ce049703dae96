"""The call graph of a Keras 3 functional or Sequential model, nested models inlined.

Keras keeps a model's structure as ``Node`` objects (one per layer call) linked by
``KerasTensor`` edges, and nested models hide their layers behind one node. Every
analysis in this package (per-layer penalties, the channel graph, surgery) needs
the *flat* picture: each real layer call, in topological order, with the tensors
it reads and writes. :func:`layer_graph` builds that picture once.

Tensors are identified by small integers (``TensorId``) rather than by the
``KerasTensor`` objects, because a nested model that is called twice reuses the
same inner ``KerasTensor`` objects for both calls.

Example:

>>> import keras
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(4, 3, name="conv")(x)
>>> y = keras.layers.BatchNormalization(name="bn")(y)
>>> graph = layer_graph(keras.Model(x, y))
>>> [call.name for call in graph.calls]
['conv', 'bn']
>>> graph.shape(graph.calls[1].outputs[0])
(None, 6, 6, 4)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import keras

from tf_gamma_prune.analysis.activations import layer_activation_name
from tf_gamma_prune.errors import UnsupportedModelError  # noqa: F401

TensorId = int



@dataclasses.dataclass(eq=False)
class LayerCall:
    """One call of one layer (or ``keras.ops`` operation) in the flattened graph.

    Attributes:
        layer: the called ``keras.Layer`` / ``keras.Operation``.
        name: qualified name, ``"outer_model/inner_layer"`` inside nested models.
        inputs: ids of the tensors the call reads, in Keras' flattening order.
        outputs: ids of the tensors the call writes.
        node: the Keras ``Node`` recording the call (its arguments and kwargs).
        input_ids: maps ``id(KerasTensor)`` of the node's arguments to tensor ids.
    """

    layer: Any
    name: str
    inputs: list[TensorId]
    outputs: list[TensorId]
    node: Any
    input_ids: dict[int, TensorId]

    def call_arguments(self, values: dict[TensorId, Any]) -> tuple[list, dict]:
        """The positional and keyword arguments of this call, tensors replaced.

        ``values`` maps tensor ids to the new values (symbolic or eager).
        """
        by_keras_id = {k: values[t] for k, t in self.input_ids.items()}
        args, kwargs = self.node.arguments.fill_in(by_keras_id)
        return list(args), dict(kwargs)


@dataclasses.dataclass(eq=False)
class LayerGraph:
    """Flattened call graph of a model. Build it with :func:`layer_graph`."""

    model: keras.Model
    inputs: list[TensorId]
    outputs: list[TensorId]
    calls: list[LayerCall]
    specs: dict[TensorId, Any]
    producers: dict[TensorId, LayerCall]
    consumers_of: dict[TensorId, list[LayerCall]]

    def producer(self, tensor: TensorId) -> LayerCall | None:
        """The call that writes ``tensor``; ``None`` for a model input."""
        return self.producers.get(tensor)

    def consumers(self, tensor: TensorId) -> list[LayerCall]:
        """The calls that read ``tensor``, in topological order."""
        return self.consumers_of.get(tensor, [])

    def shape(self, tensor: TensorId) -> tuple:
        """Static shape of ``tensor`` (batch dimension usually ``None``)."""
        return tuple(self.specs[tensor].shape)

    def dtype(self, tensor: TensorId) -> str:
        return self.specs[tensor].dtype

    def calls_of(self, layer: Any) -> list[LayerCall]:
        """Every call of ``layer`` (more than one for a shared layer)."""
        return [c for c in self.calls if c.layer is layer]

    def layers(self) -> Iterator[Any]:
        """Each distinct called layer once, in topological order of first call."""
        seen: set[int] = set()
        for call in self.calls:
            if id(call.layer) not in seen:
                seen.add(id(call.layer))
                yield call.layer


def batchnorm_after(graph: LayerGraph, call: LayerCall) -> LayerCall | None:
    """The BatchNormalization call that alone reads this (linear) layer call's output, if
    any: where a bias-free layer folds removed channels' values (into the BN's moving mean).

    >>> x = keras.Input((4,))
    >>> h = keras.layers.Dense(3, use_bias=False, name="d")(x)
    >>> g = layer_graph(keras.Model(x, keras.layers.BatchNormalization(name="bn")(h)))
    >>> batchnorm_after(g, g.calls[0]).name
    'bn'
    """
    out_t = call.outputs[0]
    if out_t in graph.outputs or layer_activation_name(call.layer) != "linear":
        return None
    readers = graph.consumers(out_t)
    if len(readers) != 1 or not isinstance(readers[0].layer, keras.layers.BatchNormalization):
        return None
    if len(graph.calls_of(readers[0].layer)) != 1:
        return None
    return readers[0]


def functional_core(model: keras.Model) -> keras.Model:
    """The functional graph behind ``model`` (Sequential models wrap one).

    Raises:
        UnsupportedModelError: for subclassed or unbuilt models.
    """
    if isinstance(model, keras.Sequential):
        core = getattr(model, "_functional", None)
        if core is None:
            raise UnsupportedModelError(
                f"Sequential model '{model.name}' is not built, so its graph is "
                "unknown. Start it with `keras.Input(shape)` or call "
                "`model.build(input_shape)` first."
            )
        return core
    if not _is_functional(model):
        raise UnsupportedModelError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model: "
            "its call() is Python code whose graph cannot be read. Rebuild it with "
            "the functional API (keras.Input ... keras.Model(inputs, outputs)) or "
            "as keras.Sequential, then prune that."
        )
    return model


def _is_functional(model: Any) -> bool:
    return hasattr(model, "_nodes_by_depth") and hasattr(model, "_operations")


def _is_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model)


def layer_graph(model: keras.Model) -> LayerGraph:
    """Flatten ``model`` into a :class:`LayerGraph`, inlining nested models.

    Args:
        model: a functional or Sequential ``keras.Model`` (nested models allowed).

    Raises:
        UnsupportedModelError: subclassed or unbuilt models (top level or nested).
    """
    builder = _GraphBuilder()
    core = functional_core(model)
    inputs = [builder.new_tensor(t) for t in core.inputs]
    outputs = builder.inline(core, inputs, scope="")
    calls = builder.calls
    producers: dict[TensorId, LayerCall] = {}
    consumers: dict[TensorId, list[LayerCall]] = {}
    for call in calls:
        for t in call.outputs:
            producers[t] = call
        for t in dict.fromkeys(call.inputs):
            consumers.setdefault(t, []).append(call)
    graph = LayerGraph(
        model=model,
        inputs=inputs,
        outputs=outputs,
        calls=calls,
        specs=builder.specs,
        producers=producers,
        consumers_of=consumers,
    )
    if builder.nested:
        _refresh_specs(graph)
    return graph


class _GraphBuilder:
    def __init__(self) -> None:
        self.calls: list[LayerCall] = []
        self.specs: dict[TensorId, Any] = {}
        self.nested = False
        self._next_id = 0

    def new_tensor(self, keras_tensor: Any) -> TensorId:
        tensor = self._next_id
        self._next_id += 1
        self.specs[tensor] = keras_tensor
        return tensor

    def inline(self, core: keras.Model, inputs: list[TensorId], scope: str) -> list[TensorId]:
        """Append the calls of ``core`` fed by ``inputs``; return its output ids."""
        ids: dict[int, TensorId] = {
            id(kt): t for kt, t in zip(core.inputs, inputs)
        }
        for depth in sorted(core._nodes_by_depth, reverse=True):
            for node in core._nodes_by_depth[depth]:
                layer = node.operation
                if layer is None or node.is_input:
                    continue
                missing = [kt for kt in node.input_tensors if id(kt) not in ids]
                if missing:
                    continue  # not reachable from these inputs (Keras skips it too)
                call_inputs = [ids[id(kt)] for kt in node.input_tensors]
                if _is_model(layer):
                    self.nested = True
                    inner = functional_core(layer)
                    inner_outputs = self.inline(
                        inner, call_inputs, scope=f"{scope}{layer.name}/"
                    )
                    for kt, t in zip(node.outputs, inner_outputs):
                        ids[id(kt)] = t
                    continue
                outputs = [self.new_tensor(kt) for kt in node.outputs]
                for kt, t in zip(node.outputs, outputs):
                    ids[id(kt)] = t
                self.calls.append(
                    LayerCall(
                        layer=layer,
                        name=f"{scope}{layer.name}",
                        inputs=call_inputs,
                        outputs=outputs,
                        node=node,
                        input_ids={id(kt): ids[id(kt)] for kt in node.input_tensors},
                    )
                )
        missing_outputs = [kt for kt in core.outputs if id(kt) not in ids]
        if missing_outputs:
            raise UnsupportedModelError(
                f"Model '{core.name}': outputs {missing_outputs} are not reachable "
                "from its inputs; the graph cannot be analysed."
            )
        return [ids[id(kt)] for kt in core.outputs]


def _refresh_specs(graph: LayerGraph) -> None:
    """Recompute tensor specs inside nested models from the outer input specs.

    A backbone built for ``(None, None, 3)`` inputs but called on ``(224, 224, 3)``
    keeps unknown spatial sizes on its own tensors; exact analyses need the sizes
    of this particular use.
    """
    for call in graph.calls:
        args, kwargs = call.call_arguments(graph.specs)
        try:
            spec = call.layer.compute_output_spec(*args, **kwargs)
        except Exception:  # noqa: BLE001 - keep the layer's own (less specific) spec
            continue
        for t, s in zip(call.outputs, keras.tree.flatten(spec)):
            graph.specs[t] = s
