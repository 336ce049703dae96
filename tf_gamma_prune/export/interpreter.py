"""The LiteRT (or TensorFlow Lite) interpreter, and running a flatbuffer through it.

:func:`make_interpreter` prefers ``ai-edge-litert`` and falls back to
``tf.lite.Interpreter``; quantized inputs/outputs are converted on the way in
and out so callers always see float arrays.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from tf_gamma_prune.errors import ExportError, ModelFileError
from tf_gamma_prune.export.model_file import TFLiteSource, read_tflite


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - fallback when ai-edge-litert is missing
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def make_interpreter(tflite: TFLiteSource, num_threads: int | None = None):
    """A LiteRT interpreter (XNNPACK CPU delegate applied by default) for the model."""
    Interpreter = _interpreter_class()
    try:
        return Interpreter(model_content=read_tflite(tflite), num_threads=num_threads)
    except ValueError as e:
        raise ModelFileError(f"LiteRT cannot load the model (truncated or corrupt flatbuffer?): {e}") from e


def _quantize(x: np.ndarray, detail: Mapping) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        raise ExportError(f"Input {detail['name']!r} is {dtype} without quantization parameters.")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: Mapping) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.issubdtype(np.asarray(y).dtype, np.integer) and scale != 0:
        return (y.astype(np.float32) - zero_point) * scale
    return np.asarray(y, dtype=np.float32)


class SignatureRunner:
    """Runs a flatbuffer by its signature: named inputs in, ordered outputs out."""

    def __init__(self, tflite: bytes, num_threads: int | None = None):
        self.interpreter = make_interpreter(tflite, num_threads)
        signatures = self.interpreter.get_signature_list()
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            self.runner = self.interpreter.get_signature_runner(key)
            self.inputs = dict(self.runner.get_input_details())
            outputs = self.runner.get_output_details()
            # Keras 3 export names outputs output_0, output_1, ... in flattened order;
            # the interpreter's plain get_output_details() order is NOT that order.
            self.output_names = sorted(outputs, key=_natural_key)
            self.outputs = outputs
        else:  # a flatbuffer without signature: positional
            self.runner = None
            self.interpreter.allocate_tensors()
            self.inputs = {d["name"]: d for d in self.interpreter.get_input_details()}
            outs = self.interpreter.get_output_details()
            self.output_names = [d["name"] for d in outs]
            self.outputs = {d["name"]: d for d in outs}

    @property
    def fixed_batch(self) -> int | None:
        """The exported batch size, or ``None`` when it is dynamic."""
        sig = next(iter(self.inputs.values()))["shape_signature"]
        return None if len(sig) == 0 or sig[0] < 0 else int(sig[0])

    def __call__(self, named: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        quantized = {k: _quantize(np.asarray(v), self.inputs[k]) for k, v in named.items()}
        if self.runner is not None:
            raw = self.runner(**quantized)
            return [_dequantize(np.array(raw[n]), self.outputs[n]) for n in self.output_names]
        for k, v in quantized.items():
            detail = self.inputs[k]
            if tuple(detail["shape"]) != v.shape:
                self.interpreter.resize_tensor_input(detail["index"], v.shape)
                self.interpreter.allocate_tensors()
                detail["shape"] = np.array(v.shape)
            self.interpreter.set_tensor(detail["index"], v)
        self.interpreter.invoke()
        return [
            _dequantize(np.array(self.interpreter.get_tensor(self.outputs[n]["index"])), self.outputs[n])
            for n in self.output_names
        ]


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
