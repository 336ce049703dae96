"""The tf_keras side of tf_gamma_prune.qat: runs only inside the isolated worker process.

This folder is not a Python package on purpose: nothing in the caller's process
imports it (``tf_gamma_prune`` never imports tf_keras or tfmot). The worker
(``qat_worker.py``) is started as a script with ``TF_USE_LEGACY_KERAS=1`` and
imports this module by its folder.

It holds the tf_keras twins of tf_gamma_prune's Keras 3 layers
(:class:`BorderCorrection`, :class:`ConstantFeature`: the same ops, the same
weights in the same order) and :func:`build_model`, which rebuilds a model from
the spec written by ``tf_gamma_prune/qat/spec.py`` layer by layer and copies
its weights.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
import tf_keras


class BorderCorrection(tf_keras.layers.Layer):
    """``y = x + correction`` with the compact ring layout of the Keras 3 layer.

    ``segments`` / ``blocks`` as in ``tf_gamma_prune.layers.BorderCorrection``'s
    config; without them the whole map is one weight. ``call`` splits the input
    into the blocks, adds each block's (broadcast) values and concatenates the
    pieces back: ``SPLIT_V`` / ``ADD`` / ``CONCATENATION`` in TFLite, as in
    Keras 3.
    """

    def __init__(self, shape, segments=None, blocks=None, **kwargs):
        super().__init__(**kwargs)
        self.map_shape = tuple(int(d) for d in shape)
        self.segments = None if segments is None else [
            [(int(a), int(b), bool(lit)) for a, b, lit in axis] for axis in segments]
        self.block_keys = [tuple(int(i) for i in key) for key in (blocks or [])]

    def build(self, input_shape):
        if self.segments is None:
            self.correction = self.add_weight(
                name="correction", shape=self.map_shape, initializer="zeros", trainable=False)
        else:
            self.block_weights = [
                self.add_weight(name="block_" + "_".join(str(i) for i in key),
                                shape=self._block_shape(key), initializer="zeros",
                                trainable=False)
                for key in self.block_keys]
        super().build(input_shape)

    def _block_shape(self, key):
        dims = []
        for axis, s in enumerate(key):
            start, stop, literal = self.segments[axis][s]
            dims.append(stop - start if literal else 1)
        return tuple(dims) + self.map_shape[-1:]

    def call(self, inputs):
        if self.segments is None:
            return inputs + tf.cast(self.correction, inputs.dtype)
        x = inputs
        spatial = self.map_shape[:-1]
        if tuple(x.shape[1:-1]) != spatial and all(d == 1 for d in x.shape[1:-1]):
            x = tf.broadcast_to(x, tf.concat([tf.shape(x)[:1], spatial, tf.shape(x)[-1:]], 0))
        return self._add_blocks(x, 0, ())

    def _add_blocks(self, x, axis, prefix):
        if not any(key[:axis] == prefix for key in self.block_keys):
            return x
        if axis == len(self.segments):
            weight = self.block_weights[self.block_keys.index(prefix)]
            return x + tf.cast(weight, x.dtype)
        segments = self.segments[axis]
        if len(segments) == 1:
            return self._add_blocks(x, axis + 1, prefix + (0,))
        pieces = tf.split(x, [stop - start for start, stop, _ in segments], axis=axis + 1)
        parts = [self._add_blocks(piece, axis + 1, prefix + (s,))
                 for s, piece in enumerate(pieces)]
        return tf.concat(parts, axis=axis + 1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["shape"] = list(self.map_shape)
        if self.segments is not None:
            config["segments"] = [[list(seg) for seg in axis] for axis in self.segments]
            config["blocks"] = [list(key) for key in self.block_keys]
        return config


class ConstantFeature(tf_keras.layers.Layer):
    """Outputs a fixed map for every example; reads its input only for the batch size."""

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        self.map_shape = tuple(int(d) for d in shape)

    def build(self, input_shape):
        self.value = self.add_weight(name="value", shape=self.map_shape, initializer="zeros",
                                     trainable=False)
        super().build(input_shape)

    def call(self, inputs):
        batch = tf.shape(inputs)[:1]
        value = tf.cast(self.value, self.compute_dtype)
        return tf.broadcast_to(value[None], tf.concat([batch, self.map_shape], 0))

    def compute_output_shape(self, input_shape):
        return tf.TensorShape((input_shape[0],) + self.map_shape)

    def get_config(self):
        config = super().get_config()
        config["shape"] = list(self.map_shape)
        return config


CUSTOM_OBJECTS = {"BorderCorrection": BorderCorrection, "ConstantFeature": ConstantFeature}


def read_spec(directory, stem):
    """The spec dict and its weights (per layer, in order) written by ``spec.write_spec``."""
    with open(os.path.join(directory, f"{stem}.json")) as f:
        spec = json.load(f)
    with np.load(os.path.join(directory, f"{stem}_weights.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    weights = []
    for i in range(len(spec["layers"])):
        layer_weights = []
        while f"{i}_{len(layer_weights)}" in arrays:
            layer_weights.append(arrays[f"{i}_{len(layer_weights)}"])
        weights.append(layer_weights)
    return spec, weights


def make_layer(entry):
    """A fresh tf_keras layer for one spec entry."""
    cls = CUSTOM_OBJECTS.get(entry["class_name"]) or getattr(tf_keras.layers, entry["class_name"])
    return cls(name=entry["name"], trainable=entry.get("trainable", True), **entry["config"])


def build_model(spec, weights, annotate=None):
    """Rebuild the spec's model in tf_keras, layer by layer, and copy its weights.

    Args:
        annotate: ``None`` (a plain model) or a function ``(layer, entry) ->
            layer`` that wraps each layer, e.g. in tfmot's ``QuantizeAnnotate``.

    Returns:
        ``(model, layers)``: the functional tf_keras model and the plain layers
        (unwrapped), in spec order.
    """
    (inp,) = spec["inputs"]
    x = tf_keras.Input(shape=tuple(inp["shape"]), name=inp["name"], dtype="float32")
    tensors = {inp["tensor"]: x}
    layers = [make_layer(entry) for entry in spec["layers"]]
    called = [layer if annotate is None else annotate(layer, entry)
              for layer, entry in zip(layers, spec["layers"])]
    for call in spec["calls"]:
        args = [tensors[t] for t in call["inputs"]]
        out = called[call["layer"]](args if call["list_input"] else args[0])
        outs = out if isinstance(out, (list, tuple)) else [out]
        for t, value in zip(call["outputs"], outs):
            tensors[t] = value
    model = tf_keras.Model(x, tensors[spec["outputs"][0]], name=spec["name"])
    for layer, entry, layer_weights in zip(layers, spec["layers"], weights):
        have = [tuple(w.shape) for w in layer.weights]
        want = [tuple(w.shape) for w in layer_weights]
        if have != want:
            raise ValueError(
                f"Layer '{entry['keras_name']}' ({entry['class_name']}): the tf_keras layer has "
                f"weights {have}, the Keras 3 layer {want}; tf_gamma_prune.qat cannot convert it.")
        if layer_weights:
            layer.set_weights(layer_weights)
    return model, layers


def activation_ranges(model, x, batch_size=64):
    """``{layer_name: (min, max)}`` of every layer's float output over ``x``, plus the
    model input's range under ``""`` (inference mode)."""
    layers = [layer for layer in model.layers if not isinstance(layer, tf_keras.layers.InputLayer)]
    probe = tf_keras.Model(model.inputs, [layer.output for layer in layers])
    low = {layer.name: np.inf for layer in layers}
    high = {layer.name: -np.inf for layer in layers}
    for start in range(0, len(x), batch_size):
        outputs = probe(x[start:start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for layer, value in zip(layers, outputs):
            low[layer.name] = min(low[layer.name], float(tf.reduce_min(value)))
            high[layer.name] = max(high[layer.name], float(tf.reduce_max(value)))
    ranges = {name: (low[name], high[name]) for name in low}
    ranges[""] = (float(np.min(x)), float(np.max(x)))
    return ranges


# Activation quantizers (tfmot's MovingAverageQuantizer) and the tensor each one sees:
# a QuantizeWrapper's output quantizer and its layer's post-activation quantizer see the
# wrapped layer's output; the model's QuantizeLayer sees the model input.
_OUTPUT_RANGE_WEIGHTS = {"output_min": 0, "output_max": 1,
                         "post_activation_min": 0, "post_activation_max": 1}


def init_quantizer_ranges(qat_model, ranges, prefix="quant_"):
    """Start tfmot's activation ranges at the float model's observed ranges.

    tfmot starts every moving-average range at [-6, 6] and moves it by 0.1 % a
    step, so a short fine-tuning ends with ranges far too wide (coarse int8
    steps). Starting them at what post-training calibration would use (the
    min/max over the representative data, widened to include 0) leaves the
    fine-tuning to refine them. Returns how many ranges were set.
    """
    count = 0
    for layer in qat_model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            lo, hi = ranges[""]
            suffixes = {f"{layer.name}_min": 0, f"{layer.name}_max": 1}
        elif layer.name.startswith(prefix) and layer.name[len(prefix):] in ranges:
            lo, hi = ranges[layer.name[len(prefix):]]
            suffixes = _OUTPUT_RANGE_WEIGHTS
        else:
            continue
        if not (np.isfinite(lo) and np.isfinite(hi)):
            continue
        bounds = (min(lo, 0.0), max(hi, 0.0))
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in suffixes and weight.shape.rank == 0:
                weight.assign(bounds[suffixes[short]])
                count += 1
    return count
