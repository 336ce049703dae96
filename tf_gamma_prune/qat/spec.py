"""A Keras 3 model as a plain, framework-free description for the isolated tf_keras side.

:func:`model_spec` walks a (pruned) Keras 3 model layer by layer and writes
down, for each layer, the tf_keras class and constructor arguments that compute
the same function, how it is called (which tensors it reads and writes), how
tfmot should quantize it, and its weights as numpy arrays in tf_keras' order.
The description is JSON plus one ``.npz`` of weights (:func:`write_spec`), so
the process that rebuilds the model in tf_keras (``_isolated/qat_worker.py``)
never needs Keras 3, and this process never needs tf_keras.

Only the layer types in :data:`SUPPORTED_LAYERS` are converted: everything
:func:`~tf_gamma_prune.prune_model` emits for the usual BN convnets (convs,
Dense, BatchNormalization, activations, pooling, merges, padding, reshapes,
dropout) and the package's own :class:`~tf_gamma_prune.BorderCorrection` and
:class:`~tf_gamma_prune.ConstantFeature`. Anything else raises
:class:`~tf_gamma_prune.UnsupportedLayerError` naming the layer.

Example:

>>> import keras
>>> x = keras.Input((8, 8, 3), name="image")
>>> h = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(x)
>>> h = keras.layers.BatchNormalization(name="bn")(h)
>>> y = keras.layers.ReLU(name="relu")(h)
>>> spec, weights = model_spec(keras.Model(x, y))
>>> [(layer["name"], layer["class_name"], layer["quantize"]) for layer in spec["layers"]]
[('conv', 'Conv2D', 'registry'), ('bn', 'BatchNormalization', 'registry'), ('relu', 'ReLU', 'registry')]
>>> spec["layers"][0]["config"]["filters"], [w.shape for w in weights[0]]
(4, [(3, 3, 3, 4)])
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable

import numpy as np

from tf_gamma_prune.atomic_io import write_atomic
from tf_gamma_prune.errors import UnsupportedLayerError, UnsupportedModelError

SPEC_FORMAT = "tf_gamma_prune.qat/1"

# Activations tfmot's default 8-bit scheme quantizes inside a Conv/Dense layer
# (QuantizeAwareActivation), and those its Activation-layer config accepts.
# Keras 3 names SiLU "silu"; tf_keras (and tfmot) call it "swish".
_LAYER_ACTIVATIONS = {"linear": "linear", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
                      "softmax": "softmax", "silu": "swish", "swish": "swish"}
_ACTIVATION_LAYER = dict(_LAYER_ACTIVATIONS, relu6="relu6")

_WHAT_TO_DO = (
    "quantize_aware_finetune converts only the layer types in tf_gamma_prune.qat.SUPPORTED_LAYERS "
    "(what prune_model emits for BN convnets). Replace this layer by supported ones (e.g. a "
    "separate ReLU / Activation layer), or export with post-training quantization instead: "
    "to_tflite(model, quantization='int8', representative_data=...)."
)


def _unsupported(layer: Any, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"Layer '{layer.name}' ({type(layer).__name__}): {why}. {_WHAT_TO_DO}")


def _activation(layer: Any, name: Any, allowed: dict[str, str]) -> str:
    if isinstance(name, str) and name in allowed:
        return allowed[name]
    raise _unsupported(layer, f"activation {name!r} is not one tfmot quantizes here "
                              f"(supported: {sorted(allowed)})")


def _channels_last(layer: Any, config: dict) -> None:
    fmt = config.get("data_format")
    if fmt not in (None, "channels_last"):
        raise _unsupported(layer, f"data_format={fmt!r}; only 'channels_last' is converted")


def _keep(*keys: str, activation: bool = False) -> Callable[[Any, dict], dict]:
    """A translator keeping ``keys`` of the Keras 3 config (and a checked activation)."""
    def translate(layer: Any, config: dict) -> dict:
        _channels_last(layer, config)
        out = {k: config[k] for k in keys if k in config}
        if activation:
            out["activation"] = _activation(layer, config.get("activation", "linear"),
                                            _LAYER_ACTIVATIONS)
        return out
    return translate


def _batchnorm(layer: Any, config: dict) -> dict:
    axis = config.get("axis", -1)
    rank = len(layer.input.shape) if hasattr(layer, "input") else None
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else axis
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        raise _unsupported(layer, f"BatchNormalization over axis {axis}; only the last axis")
    if config.get("renorm"):
        raise _unsupported(layer, "BatchNormalization with renorm=True")
    return {"axis": -1, "momentum": config["momentum"], "epsilon": config["epsilon"],
            "center": config["center"], "scale": config["scale"]}


def _activation_layer(layer: Any, config: dict) -> dict:
    return {"activation": _activation(layer, config.get("activation"), _ACTIVATION_LAYER)}


def _leaky_relu(layer: Any, config: dict) -> dict:
    return {"alpha": config.get("negative_slope", config.get("alpha", 0.3))}


def _border_correction(layer: Any, config: dict) -> dict:
    out = {"shape": [int(d) for d in layer.map_shape]}
    if layer.segments is not None:
        out["segments"] = [[[int(a), int(b), bool(lit)] for a, b, lit in axis]
                           for axis in layer.segments]
        out["blocks"] = [[int(i) for i in key] for key in layer.block_keys]
    return out


def _constant_feature(layer: Any, config: dict) -> dict:
    return {"shape": [int(d) for d in layer.map_shape]}


_CONV = ("kernel_size", "strides", "padding", "dilation_rate", "use_bias")

#: Keras 3 class name -> (translator of its config to tf_keras arguments, how tfmot quantizes it).
#: ``"registry"``: tfmot's default 8-bit scheme (its registry or its Conv/Dense + BN transforms);
#: ``"output"``: only the layer's output is quantized (a QuantizeConfig of the isolated side).
#: BatchNormalization is ``"registry"`` after a linear Conv2D / DepthwiseConv2D / SeparableConv2D /
#: Dense that feeds only it (tfmot folds the pair), else ``"output"``.
_TRANSLATORS: dict[str, tuple[Callable[[Any, dict], dict], str]] = {
    "Conv2D": (_keep("filters", "groups", *_CONV, activation=True), "registry"),
    "Conv2DTranspose": (_keep("filters", "output_padding", *_CONV, activation=True), "registry"),
    "DepthwiseConv2D": (_keep("depth_multiplier", *_CONV, activation=True), "registry"),
    "SeparableConv2D": (_keep("filters", "depth_multiplier", *_CONV, activation=True), "registry"),
    "Dense": (_keep("units", "use_bias", activation=True), "registry"),
    "BatchNormalization": (_batchnorm, "registry"),
    "ReLU": (_keep("max_value", "negative_slope", "threshold"), "registry"),
    "LeakyReLU": (_leaky_relu, "registry"),
    "Activation": (_activation_layer, "registry"),
    "Softmax": (_keep("axis"), "registry"),
    "MaxPooling2D": (_keep("pool_size", "strides", "padding"), "registry"),
    "AveragePooling2D": (_keep("pool_size", "strides", "padding"), "registry"),
    "GlobalAveragePooling2D": (_keep("keepdims"), "registry"),
    "GlobalMaxPooling2D": (_keep("keepdims"), "registry"),
    "Add": (_keep(), "registry"),
    "Concatenate": (_keep("axis"), "registry"),
    "Subtract": (_keep(), "output"),
    "Multiply": (_keep(), "output"),
    "Average": (_keep(), "output"),
    "Maximum": (_keep(), "output"),
    "Minimum": (_keep(), "output"),
    "ZeroPadding2D": (_keep("padding"), "registry"),
    "Cropping2D": (_keep("cropping"), "registry"),
    "UpSampling2D": (_keep("size", "interpolation"), "registry"),
    "Flatten": (_keep(), "registry"),
    "Reshape": (_keep("target_shape"), "registry"),
    "Dropout": (_keep("rate", "noise_shape", "seed"), "registry"),
    "SpatialDropout2D": (_keep("rate", "seed"), "registry"),
    "BorderCorrection": (_border_correction, "output"),
    "ConstantFeature": (_constant_feature, "output"),
}

#: The Keras 3 layer types :func:`model_spec` converts (and tfmot quantizes).
SUPPORTED_LAYERS: tuple[str, ...] = tuple(sorted(_TRANSLATORS))

_CUSTOM = {"BorderCorrection", "ConstantFeature"}
_FOLDS_BN = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")


def _class_name(layer: Any) -> str:
    cls = type(layer)
    name = cls.__name__
    module = cls.__module__
    if name in _CUSTOM:
        from tf_gamma_prune import layers as own

        if cls is not getattr(own, name):
            raise _unsupported(layer, "a layer class with the name of one of tf_gamma_prune's "
                                      "layers but another implementation")
        return name
    if name in _TRANSLATORS and module.startswith("keras."):
        return name
    if not module.startswith("keras."):
        raise _unsupported(layer, "a custom layer with no tf_keras equivalent on the isolated side")
    raise _unsupported(layer, "a layer type with no tf_keras conversion here")


def _bn_quantize(graph: Any, call: Any) -> str:
    """``"registry"`` when tfmot's Conv/Dense + BN transform will take this BN, else ``"output"``."""
    producer = graph.producer(call.inputs[0]) if len(call.inputs) == 1 else None
    if producer is None or type(producer.layer).__name__ not in _FOLDS_BN:
        return "output"
    if producer.layer.get_config().get("activation", "linear") != "linear":
        return "output"
    if len(graph.consumers(call.inputs[0])) != 1 or graph.outputs.count(call.inputs[0]):
        return "output"
    if len(graph.calls_of(producer.layer)) != 1:
        return "output"
    return "registry"


def _safe_name(name: str, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c in "_-." else "_" for c in name) or "layer"
    out, i = base, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


def model_spec(model: Any) -> tuple[dict, list[list[np.ndarray]]]:
    """Describe ``model`` for the tf_keras side: ``(spec, weights)``.

    Args:
        model: a built functional or Sequential Keras 3 model with one input and
            one output (nested models are inlined, as in ``prune_model``'s output).

    Returns:
        ``spec``: a JSON-serializable dict (``"inputs"``, ``"outputs"``,
        ``"layers"`` with tf_keras ``class_name`` / ``config`` / ``quantize``,
        ``"calls"`` in topological order); ``weights``: per layer of
        ``spec["layers"]``, its weights as float32 arrays in tf_keras' order.

    Raises:
        UnsupportedModelError: a subclassed or unbuilt model, several inputs or
            outputs, a layer called more than once.
        UnsupportedLayerError: a layer type or configuration that is not
            converted (the message names the layer and what to do).
    """
    from tf_gamma_prune.analysis.layer_graph import layer_graph

    graph = layer_graph(model)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedModelError(
            f"Model '{model.name}' has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
            "quantize_aware_finetune fine-tunes single-input, single-output classifiers.")
    index: dict[int, int] = {}
    layers: list[dict] = []
    weights: list[list[np.ndarray]] = []
    calls: list[dict] = []
    taken: set[str] = set()
    for call in graph.calls:
        layer = call.layer
        if not hasattr(layer, "get_weights"):
            raise _unsupported(layer, "a keras.ops call in the functional model (not a layer)")
        class_name = _class_name(layer)
        if len(graph.calls_of(layer)) != 1:
            raise UnsupportedModelError(
                f"Layer '{layer.name}' is called {len(graph.calls_of(layer))} times; tfmot's "
                "quantize_model needs each layer called once. Give each use its own layer.")
        translate, quantize = _TRANSLATORS[class_name]
        config = translate(layer, layer.get_config())
        if class_name == "BatchNormalization":
            quantize = _bn_quantize(graph, call)
        args = call.node.arguments.args
        if len(args) != 1:
            raise _unsupported(layer, f"called with {len(args)} positional arguments")
        index[id(layer)] = len(layers)
        layers.append({
            "name": _safe_name(call.name, taken),
            "keras_name": call.name,
            "class_name": class_name,
            "config": config,
            "trainable": bool(layer.trainable),
            "quantize": quantize,
        })
        weights.append([np.asarray(w, dtype=np.float32) for w in layer.get_weights()])
        calls.append({
            "layer": index[id(layer)],
            "inputs": [int(t) for t in call.inputs],
            "list_input": isinstance(args[0], (list, tuple)),
            "outputs": [int(t) for t in call.outputs],
        })
    (input_id,), (output_id,) = graph.inputs, graph.outputs
    input_layer = getattr(model.inputs[0], "_keras_history", [None])[0]
    spec = {
        "format": SPEC_FORMAT,
        "name": _safe_name(model.name, set()),
        "inputs": [{
            "tensor": int(input_id),
            "name": _safe_name(getattr(input_layer, "name", "input"), set(taken)),
            "shape": [None if d is None else int(d) for d in graph.shape(input_id)[1:]],
        }],
        "outputs": [int(output_id)],
        "layers": layers,
        "calls": calls,
    }
    return spec, weights


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` through :func:`~tf_gamma_prune.write_atomic` (readers never see a part).

    >>> import tempfile
    >>> path = tempfile.mkdtemp() + "/x.npz"
    >>> write_npz_atomic(path, x=np.arange(3))
    >>> np.load(path)["x"].tolist()
    [0, 1, 2]
    """
    write_atomic(path, _npz_bytes(arrays))


def write_spec(directory: str | os.PathLike, stem: str, spec: dict,
               weights: list[list[np.ndarray]]) -> None:
    """Write ``<stem>.json`` and ``<stem>_weights.npz`` (key ``"<layer>_<k>"``) atomically."""
    write_atomic(os.path.join(directory, f"{stem}.json"),
                 (json.dumps(spec, indent=1) + "\n").encode())
    arrays = {f"{i}_{k}": w for i, ws in enumerate(weights) for k, w in enumerate(ws)}
    write_npz_atomic(os.path.join(directory, f"{stem}_weights.npz"), **arrays)
