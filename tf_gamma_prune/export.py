"""Mobile export: Keras model → TFLite/LiteRT flatbuffer, and checks on the result.

* :func:`to_tflite` converts with TensorFlow's converter, **builtin ops only**
  (no Flex/SELECT_TF_OPS: the Flex delegate adds megabytes to an app and no
  accelerator runs it), optionally quantized (``"float16"``, ``"dynamic"``,
  ``"int8"``), and writes the file atomically.
* :func:`check_parity` runs the flatbuffer in the LiteRT interpreter next to the
  Keras model and reports how far apart they are.
* :func:`builtin_op_names`, :func:`custom_op_names`, :func:`assert_builtin_only`
  read the operator codes straight from the flatbuffer.
* :func:`gpu_compatibility` says whether every op can run on the TFLite GPU
  delegate.
* :func:`benchmark_latency` and :func:`compare_latency` time the CPU
  interpreter (XNNPACK).

Example:

>>> import keras, numpy as np
>>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
>>> flatbuffer = to_tflite(model)
>>> "CONV_2D" in builtin_op_names(flatbuffer)
True
>>> report = check_parity(model, flatbuffer, np.random.rand(4, 8, 8, 3).astype("float32"))
>>> report.n, report.max_rel <= 1e-4
(4, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import tempfile
import time
from collections import Counter
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

import numpy as np

from tf_gamma_prune.atomic_io import save_keras_atomic, write_atomic  # noqa: F401 - re-exported

TFLiteSource = Union[bytes, bytearray, memoryview, str, os.PathLike]
QUANTIZATIONS = (None, "float16", "dynamic", "int8")


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------


class ExportError(RuntimeError):
    """A model could not be exported or checked; the message says what to do."""


class CalibrationDataError(ExportError, ValueError):
    """Calibration data is missing or unusable (int8 representative data, prune_model means)."""


class NonBuiltinOpError(ExportError):
    """A flatbuffer contains custom or Flex (TensorFlow) ops."""


class ParityError(ExportError):
    """TFLite and Keras outputs differ by more than the allowed tolerance."""


class ModelFileError(ExportError, ValueError):
    """A model file is missing, empty, truncated, corrupt or not a model of that kind."""


class UnsafeModelError(ModelFileError):
    """A ``.keras`` file holds Python code (a Lambda layer) and was loaded in safe mode."""


class InputShapeError(ExportError, ValueError):
    """Inputs whose shape does not fit the model's input; the message gives the expected shape."""


# ----------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------


TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4-8 of every .tflite


def read_tflite(source: TFLiteSource) -> bytes:
    """The flatbuffer bytes of ``source`` (bytes as they are, or a file path).

    Raises:
        ModelFileError: missing/unreadable file, or bytes that are not a TFLite
            flatbuffer (empty, no ``TFL3`` identifier). A truncated flatbuffer keeps
            its identifier; the interpreter's verifier (:func:`make_interpreter`)
            rejects it.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "The given bytes"
    else:
        where = f"TFLite model {os.fspath(source)!r}"
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelFileError(f"Cannot read {where}: {e}") from e
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(
            f"{where} is not a TFLite flatbuffer ({len(data)} bytes, no 'TFL3' identifier): an empty, "
            "truncated or wrong file."
        )
    return data


def load_keras_model(path: str | os.PathLike, *, trust: bool = False, custom_objects: Mapping | None = None):
    """``keras.models.load_model`` with typed errors for bad files.

    Safe mode is on unless ``trust=True``: a file holding Python code (a Lambda
    layer) is refused, because loading it would run that code. Only pass
    ``trust=True`` for files you trust.

    Raises:
        ModelFileError: missing, empty, truncated or corrupt file, or one Keras
            cannot load (the message keeps Keras' reason).
        UnsafeModelError: a Lambda layer (or other code) under safe mode.
    """
    import zipfile

    import keras

    import tf_gamma_prune.layers  # noqa: F401  registers the package's custom layers

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"No such model file: {path}")
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()  # CRC of every member: catches truncation and bit rot
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ModelFileError(
                f"{path} is not a complete .keras archive ({type(e).__name__}: {e}); the file is "
                "probably truncated (an interrupted copy or save) or not a Keras model."
            ) from e
        if broken is not None:
            raise ModelFileError(f"{path} is corrupt: member {broken!r} fails its CRC check.")
        if "config.json" not in names:
            raise ModelFileError(f"{path} is a zip archive without config.json: not a .keras model.")
    try:
        return keras.models.load_model(path, safe_mode=not trust, custom_objects=custom_objects)
    except Exception as e:  # Keras raises ValueError, TypeError, KeyError, OSError (h5py) ...
        text = str(e)
        if not trust and ("safe_mode" in text or "Lambda" in text):
            raise UnsafeModelError(
                f"Refused to load {path} in safe mode: it contains Python code (e.g. a Lambda layer) "
                "that would run when loaded. If you trust this file, pass trust=True (--trust_model "
                "on the command line)."
            ) from e
        raise ModelFileError(f"Cannot load {path} as a Keras model ({type(e).__name__}: {text[:2000]})") from e


# ----------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------


def _input_signature(model: Any, batch_size: int | None) -> list:
    import tensorflow as tf

    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ExportError(
            f"Model {getattr(model, 'name', model)!r} has no symbolic inputs (subclassed model?). "
            "Pass input_signature=[tf.TensorSpec((1, H, W, C), tf.float32)] to to_tflite."
        )
    return [
        tf.TensorSpec((batch_size,) + tuple(t.shape[1:]), t.dtype, name=t.name) for t in inputs
    ]


def _input_structure(model: Any) -> Any:
    """``model.input`` (tensor, list or dict of inputs) or ``None`` for subclassed models."""
    try:
        return model.input
    except (AttributeError, ValueError):
        return None


def _pack_inputs(model: Any, arrays: list) -> Any:
    """Arrange flat inputs (in ``model.inputs`` order) the way ``model`` is called."""
    import keras

    structure = _input_structure(model)
    if structure is not None and len(keras.tree.flatten(structure)) == len(arrays):
        return keras.tree.pack_sequence_as(structure, list(arrays))
    return arrays[0] if len(arrays) == 1 else list(arrays)


def _inference_fn(model: Any) -> Callable:
    def serve(*args):
        return model(_pack_inputs(model, list(args)), training=False)

    return serve


def _iter_samples(data: Any, n_inputs: int, input_names: Sequence[str]) -> Iterable[list[np.ndarray]]:
    """Yield lists of ``n_inputs`` numpy batches from any supported calibration source."""
    import tensorflow as tf

    if isinstance(data, np.ndarray):  # one big array: iterate over examples
        data = [data]
    elif isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    for element in data:
        if isinstance(element, Mapping):
            missing = [n for n in input_names if n not in element]
            if missing:
                raise CalibrationDataError(
                    f"Representative data dict lacks input(s) {missing}; keys must be the model's "
                    f"input names {list(input_names)}."
                )
            xs = [element[n] for n in input_names]
        elif isinstance(element, (tuple, list)):
            if n_inputs == 1:
                xs = [element[0]]  # (x, y) or (x, y, sample_weight): keep x
            elif len(element) in (2, 3) and isinstance(element[0], (tuple, list, Mapping)):
                yield from _iter_samples([element[0]], n_inputs, input_names)
                continue
            else:
                xs = list(element)
        else:
            xs = [element]
        if len(xs) != n_inputs:
            raise CalibrationDataError(
                f"Representative data element has {len(xs)} input arrays, the model takes {n_inputs}."
            )
        yield [np.asarray(x) for x in xs]


def _representative_dataset(
    data: Any, signature: list, max_samples: int, input_names: Sequence[str]
) -> Callable[[], Iterable[list[np.ndarray]]]:
    batch = signature[0].shape[0]
    step = batch if batch is not None else 1

    def generate():
        produced = 0
        for xs in _iter_samples(data, len(signature), input_names):
            arrays = []
            for x, spec in zip(xs, signature):
                if x.ndim == len(spec.shape) - 1:  # a single example without batch axis
                    x = x[None]
                if x.ndim != len(spec.shape) or any(
                    d is not None and d != n for d, n in zip(tuple(spec.shape)[1:], x.shape[1:])
                ):
                    raise CalibrationDataError(
                        f"Representative batch of shape {x.shape} does not fit input "
                        f"{spec.name!r}: expected (batch,) + {tuple(spec.shape)[1:]}."
                    )
                arrays.append(x.astype(spec.dtype.as_numpy_dtype, copy=False))
            n = arrays[0].shape[0]
            for start in range(0, n - step + 1, step):
                yield [a[start:start + step] for a in arrays]
                produced += step
                if produced >= max_samples:
                    return
        if produced == 0:
            raise CalibrationDataError(
                "Representative data yielded no examples; pass a non-empty tf.data.Dataset or a "
                "list of numpy batches."
            )

    return generate


def _configure_quantization(converter, quantization, representative, int8_io):
    import tensorflow as tf

    if quantization is None:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    elif quantization == "int8":
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def _conversion_error(e: Exception, quantization: str | None) -> ExportError:
    text = str(e)
    select = re.search(r"TF Select ops: ([^\n]+)", text)
    if select:
        return ExportError(
            f"The model uses TensorFlow ops with no TFLite builtin kernel: {select.group(1).strip()}. "
            "Replace the layers that produce them with ones made of builtin ops (the converter "
            "message below names each op's source). Flex ops are deliberately not enabled: they need "
            "the Flex delegate, which adds megabytes to an app and runs on no accelerator.\n\n"
            f"Converter message:\n{text[-4000:]}"
        )
    if quantization == "int8":
        return ExportError(
            "Full-integer (int8) conversion failed; some op probably has no int8 kernel. Try "
            "quantization='dynamic' or 'float16', or replace that op.\n\n"
            f"Converter message:\n{text[-4000:]}"
        )
    return ExportError(f"TFLite conversion failed.\n\nConverter message:\n{text[-4000:]}")


def to_tflite(
    model: Any,
    path: str | os.PathLike | None = None,
    quantization: str | None = None,
    representative_data: Any = None,
    int8_io: bool = False,
    *,
    batch_size: int | None = 1,
    input_signature: Sequence[Any] | None = None,
    calibration_samples: int = 200,
) -> bytes:
    """Convert a Keras model to a TFLite flatbuffer made of builtin ops only.

    Args:
        model: a built Keras 3 model (functional or Sequential; a subclassed one
            needs ``input_signature``). It is traced with ``training=False``.
        path: where to write the ``.tflite`` file (atomically); ``None`` writes nothing.
        quantization: ``None`` (float32), ``"float16"`` (float16 weights),
            ``"dynamic"`` (int8 weights, float activations) or ``"int8"``
            (full-integer: int8 weights and activations, needs ``representative_data``).
        representative_data: calibration inputs for ``"int8"``: a ``tf.data.Dataset``
            or any iterable of batches, each a numpy array, an ``(x, y)`` tuple
            (``x`` is used) or a dict keyed by input name. Use a few hundred real
            training examples, preprocessed exactly like the model's inputs.
        int8_io: with ``"int8"``, make the model's input and output tensors int8
            too (what NPUs/microcontrollers want); else they stay float32 and the
            model quantizes/dequantizes at its edges.
        batch_size: fixed batch size of the exported inputs; phones run one
            example at a time and the GPU delegate wants static shapes. ``None``
            exports a dynamic batch dimension.
        input_signature: ``tf.TensorSpec`` per model input, overriding ``batch_size``.
        calibration_samples: at most this many examples are used for int8 calibration.

    Returns:
        The flatbuffer bytes.

    Raises:
        CalibrationDataError: ``"int8"`` without (usable) ``representative_data``.
        ExportError: the conversion failed (e.g. an op without a TFLite builtin
            kernel); nothing is written to ``path``.

    Example:

    >>> import keras
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> len(to_tflite(m, quantization="dynamic")) > 0
    True
    """
    import keras
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization={quantization!r}; use one of {QUANTIZATIONS}.")
    if int8_io and quantization != "int8":
        raise ExportError("int8_io=True needs quantization='int8' (the only variant with int8 tensors).")
    if quantization == "int8" and representative_data is None:
        raise CalibrationDataError(
            "quantization='int8' needs representative_data: pass a tf.data.Dataset or a list of "
            "numpy batches of real, preprocessed model inputs (a few hundred examples), e.g. "
            "representative_data=[x_train[i:i + 32] for i in range(0, 320, 32)]."
        )
    signature = list(input_signature) if input_signature is not None else _input_signature(model, batch_size)
    input_names = [spec.name for spec in signature]
    representative = None
    if quantization == "int8":
        representative = _representative_dataset(
            representative_data, signature, calibration_samples, input_names
        )

    with tempfile.TemporaryDirectory(prefix="tf_gamma_prune_export_") as saved_model_dir:
        # Keras 3 note: TFLiteConverter.from_keras_model does the same ExportArchive
        # dance but swallows its errors and prints the whole signature to stdout;
        # converting a plain tf.function/concrete function instead leaves the
        # variables as VAR_HANDLE/READ_VARIABLE ops (not frozen).
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", _inference_fn(model), signature)
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        _configure_quantization(converter, quantization, representative, int8_io)
        try:
            flatbuffer = converter.convert()
        except CalibrationDataError:
            raise
        except Exception as e:  # ConverterError, ValueError, RuntimeError from the calibrator
            cause = e.__cause__ or e.__context__
            if isinstance(cause, CalibrationDataError):
                raise cause from None
            raise _conversion_error(e, quantization) from e

    flatbuffer = bytes(flatbuffer)
    assert_builtin_only(flatbuffer)
    if path is not None:
        write_atomic(path, flatbuffer)
    return flatbuffer


def calibration_inputs(source: str, input_shape: Sequence[int | None], n: int = 200, seed: int = 0) -> np.ndarray:
    """Calibration/parity inputs for a single-input model, from a short spec.

    ``source`` is one of:

    * ``"npy:PATH"``: a ``.npy`` array of model inputs (batch first), already
      preprocessed exactly like the model's training inputs;
    * ``"fashion_mnist"``: the first ``n`` Fashion-MNIST training images,
      (N, 28, 28, 1) float32 in [0, 1] (offline copy only; see
      :func:`tf_gamma_prune.data.load_fashion_mnist`);
    * ``"random"``: uniform [0, 1) noise. **Only for smoke tests**: int8 ranges
      calibrated on noise do not match real data.

    >>> calibration_inputs("random", (None, 4, 4, 3), n=2).shape
    (2, 4, 4, 3)
    """
    shape = tuple(input_shape[1:])
    if source == "random":
        if any(d is None for d in shape):
            raise CalibrationDataError(f"Cannot draw random inputs for a dynamic input shape {input_shape}.")
        x = np.random.default_rng(seed).random((n,) + shape, dtype=np.float32)
    elif source.startswith("npy:"):
        try:
            x = np.load(source[4:], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CalibrationDataError(f"Cannot read calibration array {source[4:]!r}: {e}") from e
        x = np.asarray(x, dtype=np.float32)[:n]
    elif source == "fashion_mnist":
        from tf_gamma_prune.data import load_fashion_mnist

        (x, _), _ = load_fashion_mnist(use_tfds=False)
        x = x[:n]
    else:
        raise CalibrationDataError(
            f"Unknown calibration source {source!r}; use 'npy:PATH' (a .npy array of preprocessed "
            "inputs), 'fashion_mnist', or 'random' (smoke tests only)."
        )
    if x.ndim != len(shape) + 1 or any(d is not None and d != s for d, s in zip(shape, x.shape[1:])):
        raise CalibrationDataError(
            f"Calibration inputs of shape {x.shape} do not fit the model input {tuple(input_shape)}."
        )
    if len(x) == 0:
        raise CalibrationDataError(f"Calibration source {source!r} holds no examples.")
    return x


# ----------------------------------------------------------------------------
# reading the flatbuffer
# ----------------------------------------------------------------------------


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - ai-edge-litert is an optional extra
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _operator_names(flatbuffer: bytes) -> tuple[list[str], list[str]]:
    """(name per operator code, name per operator instance over all subgraphs)."""
    schema = _schema()
    names_by_code = {
        v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
    }
    try:
        model = schema.Model.GetRootAs(flatbuffer, 0)
        code_names = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                custom = code.CustomCode()
                code_names.append(f"CUSTOM:{custom.decode() if custom else '?'}")
            else:
                code_names.append(names_by_code.get(builtin, f"BUILTIN_{builtin}"))
        instances = []
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for o in range(subgraph.OperatorsLength()):
                instances.append(code_names[subgraph.Operators(o).OpcodeIndex()])
    except Exception as e:  # malformed buffer
        raise ModelFileError(f"Not a readable TFLite flatbuffer ({type(e).__name__}: {e}).") from e
    return code_names, instances


def op_counts(tflite: TFLiteSource) -> dict[str, int]:
    """How many times each op occurs, over all subgraphs (custom ops as ``"CUSTOM:<code>"``).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> op_counts(to_tflite(m))
    {'FULLY_CONNECTED': 1}
    """
    return dict(sorted(Counter(_operator_names(read_tflite(tflite))[1]).items()))


def builtin_op_names(tflite: TFLiteSource) -> list[str]:
    """Sorted names of the operator codes in the flatbuffer (``"CONV_2D"``, ...).

    Custom ops appear as ``"CUSTOM:<custom code>"`` (Flex ops as ``"CUSTOM:Flex<Op>"``).
    """
    return sorted(set(_operator_names(read_tflite(tflite))[0]))


def custom_op_names(tflite: TFLiteSource) -> list[str]:
    """Sorted custom codes of non-builtin ops (``"FlexErf"``, ...); empty for a clean model."""
    return sorted({n.split(":", 1)[1] for n in _operator_names(read_tflite(tflite))[0] if n.startswith("CUSTOM:")})


def assert_builtin_only(tflite: TFLiteSource) -> None:
    """Raise :class:`NonBuiltinOpError` if the model holds custom or Flex ops."""
    custom = custom_op_names(tflite)
    if custom:
        flex = [c for c in custom if c.startswith("Flex")]
        raise NonBuiltinOpError(
            f"The TFLite model contains non-builtin ops {custom}"
            + (f" ({len(flex)} Flex/TensorFlow ops)" if flex else "")
            + ". Stock LiteRT runtimes and the GPU delegate cannot run them; re-export with "
            "to_tflite (builtin ops only) after replacing the layers that produce them."
        )


# ----------------------------------------------------------------------------
# interpreter
# ----------------------------------------------------------------------------


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


class _SignatureModel:
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


# ----------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How close TFLite outputs are to Keras outputs on the same inputs.

    Attributes:
        max_abs: largest absolute difference over all outputs and examples.
        max_rel: ``max_abs`` of each output divided by that output's largest
            ``|keras value|``, maximised over outputs.
        top1_agreement: fraction of examples whose arg-max class agrees
            (single rank-2 output with more than one column), else ``None``.
        n: number of examples compared.
    """

    max_abs: float
    max_rel: float
    top1_agreement: float | None
    n: int

    def assert_within(self, rtol: float = 1e-4) -> None:
        """Raise :class:`ParityError` when ``max_rel > rtol``."""
        if not self.max_rel <= rtol:
            raise ParityError(
                f"TFLite differs from Keras by {self.max_rel:.3g} (relative to max |output|) > {rtol:g}; "
                f"max_abs={self.max_abs:.3g} over {self.n} examples. A float32 export should match to "
                "~1e-6: check preprocessing inside the model, training-mode layers, or quantization."
            )


def _named_inputs(model: Any, inputs: Any, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)) and len(names) > 1:
        return {n: np.asarray(v) for n, v in zip(names, inputs)}
    if len(names) != 1:
        raise ExportError(f"The model has {len(names)} inputs {names}; pass a list or a dict of arrays.")
    return {names[0]: np.asarray(inputs)}


def _check_parity_inputs(model: Any, named: dict[str, np.ndarray], runner: "_SignatureModel") -> None:
    """Every input has the model's rank and static sizes, and all share one non-zero batch."""
    keras_shapes = {}
    for t in getattr(model, "inputs", None) or []:
        keras_shapes[t.name] = tuple(t.shape)
    if len(keras_shapes) == len(runner.inputs) and set(keras_shapes) != set(runner.inputs):
        keras_shapes = dict(zip(runner.inputs, keras_shapes.values()))  # match by position
    batches = set()
    for name, value in named.items():
        signature = [int(d) for d in np.asarray(runner.inputs[name]["shape_signature"])]
        expected = [None] + [None if d < 0 else d for d in signature[1:]]
        for i, d in enumerate(keras_shapes.get(name, ())[1:], start=1):
            if i < len(expected) and expected[i] is None and d is not None:
                expected[i] = int(d)
        shown = tuple(expected)
        if value.ndim != len(expected) or any(
            e is not None and e != v for e, v in zip(expected[1:], value.shape[1:])
        ):
            raise InputShapeError(
                f"check_parity: input {name!r} has shape {value.shape}; the model expects {shown} "
                "(batch first, None = any size)."
            )
        batches.add(value.shape[0])
    if len(batches) > 1:
        raise InputShapeError(f"check_parity: the inputs have different batch sizes {sorted(batches)}.")
    if batches == {0}:
        raise InputShapeError("check_parity: the inputs hold no examples (batch size 0).")


def check_parity(
    model: Any,
    tflite: TFLiteSource,
    inputs: Any,
    *,
    classifier: bool | None = None,
    chunk: int = 64,
) -> ParityReport:
    """Compare Keras (``training=False``) and LiteRT outputs on ``inputs``.

    Args:
        model: the Keras model that was exported.
        tflite: flatbuffer bytes or path.
        inputs: a float array (batch first), a list of arrays (one per model
            input, in ``model.inputs`` order) or a dict keyed by input name.
            int8-input models get them quantized with the input tensor's scale
            and zero point; int8 outputs are dequantized.
        classifier: force (or forbid) the top-1 agreement; ``None`` decides from
            the output shape.
        chunk: examples per Keras call and per interpreter call for dynamic-batch
            models (fixed-batch models run at their exported batch size).

    Example:

    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    >>> r = check_parity(m, to_tflite(m), np.ones((5, 3), "float32"))
    >>> r.n, r.top1_agreement
    (5, 1.0)
    """
    import keras

    runner = _SignatureModel(read_tflite(tflite))
    keras_names = [t.name for t in getattr(model, "inputs", None) or []] or list(runner.inputs)
    named = _named_inputs(model, inputs, keras_names)
    if set(named) != set(runner.inputs):
        if len(named) == len(runner.inputs):  # flatbuffer from elsewhere: match by position
            named = dict(zip(runner.inputs, named.values()))
        else:
            raise ExportError(f"Inputs {sorted(named)} do not match the TFLite inputs {sorted(runner.inputs)}.")
    _check_parity_inputs(model, named, runner)
    n = next(iter(named.values())).shape[0]
    keras_order = [k for k in keras_names if k in named] if set(keras_names) == set(named) else list(named)

    expected: list[list[np.ndarray]] = []
    for start in range(0, n, chunk):
        x = [named[k][start:start + chunk] for k in keras_order]
        y = model(_pack_inputs(model, x), training=False)
        expected.append([keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(y)])

    got: list[list[np.ndarray]] = []
    step = runner.fixed_batch or chunk
    for start in range(0, n, step):
        part = {k: v[start:start + step] for k, v in named.items()}
        m = next(iter(part.values())).shape[0]
        if runner.fixed_batch and m < step:  # pad the last chunk of a fixed-batch model
            part = {k: np.concatenate([v, np.repeat(v[-1:], step - m, axis=0)]) for k, v in part.items()}
        got.append([o[:m] for o in runner(part)])

    n_outputs = len(expected[0])
    if len(got[0]) != n_outputs:
        raise ExportError(f"Keras gives {n_outputs} outputs, TFLite {len(got[0])}: not the same model?")
    max_abs, max_rel = 0.0, 0.0
    ref_all, out_all = [], []
    for j in range(n_outputs):
        ref = np.concatenate([e[j] for e in expected]).astype(np.float64)
        out = np.concatenate([g[j] for g in got]).astype(np.float64)
        if ref.shape != out.shape:
            raise ExportError(f"Output {j}: Keras shape {ref.shape} vs TFLite {out.shape}.")
        diff = float(np.max(np.abs(ref - out))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
        ref_all.append(ref)
        out_all.append(out)
    if classifier is None:
        classifier = n_outputs == 1 and ref_all[0].ndim == 2 and ref_all[0].shape[1] > 1
    top1 = None
    if classifier:
        top1 = float(np.mean(np.argmax(ref_all[0], -1) == np.argmax(out_all[0], -1)))
    return ParityReport(max_abs=max_abs, max_rel=max_rel, top1_agreement=top1, n=int(n))


# ----------------------------------------------------------------------------
# GPU delegate readiness
# ----------------------------------------------------------------------------

# Ops that tflite::CheckGpuDelegateCompatibility accepts (tensorflow/lite/tools/
# versioning/gpu_compatibility.cc, TF 2.21). It also checks op parameters
# (strides, broadcasting, fused activations...); this table checks names only.
GPU_DELEGATE_OPS = frozenset(
    """ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS CUMSUM
    DENSIFY DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP
    EQUAL EXP FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH
    LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM
    MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN
    REDUCE_PROD RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SELECT
    SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE
    STABLEHLO_CLAMP STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV""".split()
) | frozenset(
    f"CUSTOM:{c}" for c in ("Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Resampler")
)


@dataclasses.dataclass(frozen=True)
class GpuReport:
    """Whether a flatbuffer can run entirely on the TFLite GPU delegate.

    Attributes:
        compatible: no op is known to fall back to the CPU and shapes are static.
        unsupported_ops: op name → count, for ops the GPU delegate does not run.
        analyzer_warnings: the analyzer's ``GPU COMPATIBILITY WARNING`` lines.
        analyzer_says_compatible: whether the analyzer printed "looks compatible".
            The analyzer of the TF 2.21 / ai-edge-litert 2.3 pip wheels is built
            without the per-op check and says so for *every* model, which is why
            the op table is consulted too.
        dynamic_inputs: names of inputs with a dynamic (-1) dimension; the GPU
            delegate needs static shapes.
        analyzer_text: the analyzer's full output, for humans.
    """

    compatible: bool
    unsupported_ops: dict[str, int]
    analyzer_warnings: list[str]
    analyzer_says_compatible: bool
    dynamic_inputs: list[str]
    analyzer_text: str

    def summary(self) -> str:
        if self.compatible:
            return "GPU delegate: every op supported (by name; parameters are checked on device)."
        parts = []
        if self.unsupported_ops:
            parts.append("ops not run by the GPU delegate: " + ", ".join(f"{k}×{v}" for k, v in self.unsupported_ops.items()))
        if self.analyzer_warnings:
            parts.append(f"{len(self.analyzer_warnings)} analyzer warning(s)")
        if self.dynamic_inputs:
            parts.append(f"dynamic input shapes {self.dynamic_inputs} (export with batch_size=1)")
        return "GPU delegate: NOT fully compatible: " + "; ".join(parts)


def analyzer_text(tflite: TFLiteSource, gpu_compatibility: bool = True) -> str:
    """The text that ``tf.lite.experimental.Analyzer.analyze`` prints for the model."""
    import tensorflow as tf

    data = read_tflite(tflite)
    make_interpreter(data)  # the verifier first: the analyzer segfaults on truncated flatbuffers
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=data, gpu_compatibility=gpu_compatibility)
    return buffer.getvalue()


def gpu_compatibility(tflite: TFLiteSource) -> GpuReport:
    """Check that every op of the model can run on the TFLite GPU delegate.

    Combines the analyzer's verdict (``tf.lite.experimental.Analyzer`` with
    ``gpu_compatibility=True``) with a name check against the ops the GPU
    delegate implements, and flags dynamic input shapes.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> gpu_compatibility(to_tflite(m)).compatible
    True
    """
    data = read_tflite(tflite)
    text = analyzer_text(data, gpu_compatibility=True)
    warnings = [line.strip() for line in text.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    unsupported = {
        name: count for name, count in op_counts(data).items() if name not in GPU_DELEGATE_OPS
    }
    runner = _SignatureModel(data)
    dynamic = sorted(k for k, d in runner.inputs.items() if np.any(np.asarray(d["shape_signature"]) < 0))
    return GpuReport(
        compatible=not unsupported and not warnings and not dynamic,
        unsupported_ops=unsupported,
        analyzer_warnings=warnings,
        analyzer_says_compatible="looks compatible with GPU delegate" in text,
        dynamic_inputs=dynamic,
        analyzer_text=text,
    )


# ----------------------------------------------------------------------------
# latency
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """Wall-clock latency of ``interpreter.invoke()`` in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    num_threads: int
    runs: int
    warmup: int
    samples_ms: tuple[float, ...] = dataclasses.field(repr=False, default=())

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], num_threads: int, warmup: int) -> "LatencyReport":
        s = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            median_ms=float(np.median(s)),
            p10_ms=float(np.percentile(s, 10)),
            p90_ms=float(np.percentile(s, 90)),
            num_threads=num_threads,
            runs=len(s),
            warmup=warmup,
            samples_ms=tuple(float(v) for v in s),
        )


class _TimedModel:
    """An interpreter with fixed random inputs, timed one ``invoke`` at a time."""

    def __init__(self, tflite: TFLiteSource, num_threads: int, seed: int = 0):
        self.interpreter = make_interpreter(tflite, num_threads)
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(seed)
        for detail in self.interpreter.get_input_details():
            shape = [max(int(d), 1) for d in detail["shape"]]
            dtype = np.dtype(detail["dtype"])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value = rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True).astype(dtype)
            else:
                value = rng.random(shape, dtype=np.float32).astype(dtype)
            self.interpreter.set_tensor(detail["index"], value)

    def invoke_timed(self) -> float:
        """Run once; return the elapsed milliseconds."""
        start = time.perf_counter_ns()
        self.interpreter.invoke()
        return (time.perf_counter_ns() - start) / 1e6


def benchmark_latency(
    tflite: TFLiteSource, num_threads: int = 1, warmup: int = 5, runs: int = 50
) -> LatencyReport:
    """Time the model on the LiteRT CPU interpreter (XNNPACK) with random inputs.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> benchmark_latency(to_tflite(m), runs=5).median_ms > 0
    True
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup}).")
    timed = _TimedModel(tflite, num_threads)
    for _ in range(warmup):
        timed.invoke_timed()
    return LatencyReport.from_samples([timed.invoke_timed() for _ in range(runs)], num_threads, warmup)


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    """Latency of two models timed side by side at one thread count."""

    num_threads: int
    a: LatencyReport
    b: LatencyReport

    @property
    def speedup(self) -> float:
        """``a.median_ms / b.median_ms``: above 1 when ``b`` is faster."""
        return self.a.median_ms / self.b.median_ms


LatencyTiming = Literal["steady", "interleaved"]


def _check_timing(timing: str, runs: int, warmup: int, block: int) -> None:
    if runs < 1 or warmup < 0 or block < 1:
        raise ValueError(
            f"runs and block must be >= 1 and warmup >= 0 (got runs={runs}, block={block}, warmup={warmup})."
        )
    if timing not in ("steady", "interleaved"):
        raise ValueError(f"timing must be 'steady' or 'interleaved' (got {timing!r}).")


def time_in_turns(
    invokers: Sequence[Callable[[], float]],
    order: Callable[[int], Iterable[int]],
    timing: LatencyTiming = "steady",
    runs: int = 50,
    warmup: int = 5,
    block: int = 10,
) -> list[list[float]]:
    """Time several models side by side; the protocol of :func:`compare_latency`.

    Each invoker runs one model once and returns its milliseconds. Every
    model first runs ``warmup`` untimed invocations. Then the models take
    turns in the order ``order(turn_index)`` gives (indices into
    ``invokers``): with ``timing="steady"`` a turn is one untimed invocation
    (it refills the caches the previous model evicted) and up to ``block``
    timed ones back to back; with ``"interleaved"`` it is one timed invocation.

    Returns:
        ``runs`` milliseconds per invoker, in the order of ``invokers``.

    >>> fake = [lambda: 1.0, lambda: 2.0]
    >>> [len(s) for s in time_in_turns(fake, lambda i: (0, 1), runs=7, warmup=0, block=3)]
    [7, 7]
    """
    _check_timing(timing, runs, warmup, block)
    steady = timing == "steady"
    turns = [block] * (runs // block) + ([runs % block] if runs % block else []) if steady else [1] * runs
    for invoke in invokers:
        for _ in range(warmup):
            invoke()
    samples: list[list[float]] = [[] for _ in invokers]
    for i, count in enumerate(turns):
        for k in order(i):
            if steady:
                invokers[k]()
            samples[k].extend(invokers[k]() for _ in range(count))
    return samples


def compare_latency(
    a: TFLiteSource,
    b: TFLiteSource,
    threads: Sequence[int] = (1, 2),
    warmup: int = 5,
    runs: int = 50,
    progress: Callable[[str], None] | None = None,
    timing: LatencyTiming = "steady",
    block: int = 10,
) -> list[LatencyComparison]:
    """Time ``a`` and ``b`` side by side, alternating, at each thread count.

    ``timing="steady"`` (default) measures what an app that runs one model
    on a stream sees, as TFLite's ``benchmark_model`` does: the models take
    turns (a b, b a, a b, ...); a turn is one untimed invocation, which
    refills the caches the other model evicted, then up to ``block`` timed
    invocations back to back. ``timing="interleaved"`` alternates single
    invocations (a b, b a, ...), so every timed run starts with the other
    model's data in the caches: a cold-cache figure, slower for models whose
    weights do not stay in cache. Either way slow drifts of the machine
    (thermal throttling, other processes) hit both models alike. Each model
    first runs ``warmup`` untimed invocations and is then timed ``runs``
    times per thread count.

    Args:
        progress: called with a one-line status after each thread count, e.g.
            ``lambda line: print(line, file=sys.stderr)``.
        timing: ``"steady"`` or ``"interleaved"`` (see above).
        block: steady timing: timed invocations per turn.

    Returns:
        One :class:`LatencyComparison` per thread count; ``.speedup`` is a/b.

    Example:

    >>> import keras
    >>> big = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(32, 3)])
    >>> small = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3)])
    >>> [c.num_threads for c in compare_latency(to_tflite(big), to_tflite(small), runs=4)]
    [1, 2]
    """
    _check_timing(timing, runs, warmup, block)
    data_a, data_b = read_tflite(a), read_tflite(b)
    results = []
    for n_threads in threads:
        timed = (_TimedModel(data_a, n_threads), _TimedModel(data_b, n_threads))
        samples = time_in_turns(
            [m.invoke_timed for m in timed], lambda i: (0, 1) if i % 2 == 0 else (1, 0), timing, runs, warmup, block
        )
        comparison = LatencyComparison(
            n_threads,
            LatencyReport.from_samples(samples[0], n_threads, warmup),
            LatencyReport.from_samples(samples[1], n_threads, warmup),
        )
        results.append(comparison)
        if progress is not None:
            progress(
                f"[{len(results)}/{len(threads)}] threads={n_threads}: a {comparison.a.median_ms:.3f} ms, "
                f"b {comparison.b.median_ms:.3f} ms, speed-up a/b {comparison.speedup:.2f}x ({timing})"
            )
    return results
