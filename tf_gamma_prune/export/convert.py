"""Keras model → TFLite/LiteRT flatbuffer: :func:`to_tflite`.

Converts with TensorFlow's converter, **builtin ops only** (no Flex/SELECT_TF_OPS:
the Flex delegate adds megabytes to an app and no accelerator runs it),
optionally quantized (``"float16"``, ``"dynamic"``, ``"int8"`` with
representative data), and writes the file atomically.

A mixed-precision model (layers with the ``"mixed_float16"`` /
``"mixed_bfloat16"`` policy, or ``"float16"`` / ``"bfloat16"``) has no TFLite
builtin kernels for its half-precision convs and matmuls, so :func:`to_tflite`
converts a float32 copy instead (:func:`float32_copy`: the model re-created from
its config with every such policy set to ``"float32"``, the weights copied as
float32). The global dtype policy is never touched.

Example:

>>> import keras
>>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
>>> flatbuffer = to_tflite(model)
>>> flatbuffer[4:8]
b'TFL3'
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from tf_gamma_prune.atomic_io import write_atomic
from tf_gamma_prune.errors import CalibrationDataError, ExportError
from tf_gamma_prune.export.flatbuffer import assert_builtin_only
from tf_gamma_prune.inputs import InputSpec, model_input_batches, pack_inputs

QUANTIZATIONS = (None, "float16", "dynamic", "int8")

_HALF_POLICIES = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")
_HALF = ("float16", "bfloat16")


def half_precision_layers(model: Any) -> list[str]:
    """Names of the layers of ``model`` (nested ones included) that compute in
    float16 or bfloat16 (a mixed-precision policy).

    >>> import keras
    >>> x = keras.Input((4,))
    >>> y = keras.layers.Dense(2, dtype="mixed_float16", name="d")(x)
    >>> half_precision_layers(keras.Model(x, y))
    ['d']
    """
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is None:
        return []
    names = []
    for layer in flatten(include_self=True, recursive=True):
        policy = getattr(layer, "dtype_policy", None)
        if getattr(policy, "compute_dtype", None) in _HALF:
            names.append(layer.name)
    return names


def _float32_policies(config: Any) -> Any:
    """``config`` with every float16/bfloat16 dtype policy replaced by float32."""
    if isinstance(config, dict):
        if (config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy")
                and isinstance(config.get("config"), dict)
                and config["config"].get("name") in _HALF_POLICIES):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: ("float32" if k == "dtype" and v in _HALF_POLICIES else _float32_policies(v))
                for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return type(config)(_float32_policies(v) for v in config)
    return config


def float32_copy(model: Any) -> Any:
    """A float32 copy of a mixed-precision Keras model (``model`` is not changed).

    The model is re-created from its config with every float16 / bfloat16
    dtype policy (``"mixed_float16"``, ``"mixed_bfloat16"``, ``"float16"``,
    ``"bfloat16"``) replaced by ``"float32"``, and its weights are copied in
    order, cast to float32. The global dtype policy is not used or changed.

    Raises:
        ExportError: the model cannot be re-created from its config (a
            subclassed model, a custom layer without a working ``get_config``),
            its copy has other weights, or a layer of the copy still computes in
            half precision (e.g. a custom layer that hard-codes its sublayers'
            dtype). The message names mixed precision as the cause.

    Example:

    >>> import keras
    >>> x = keras.Input((4,))
    >>> y = keras.layers.Dense(2, dtype="mixed_float16")(x)
    >>> copy = float32_copy(keras.Model(x, y))
    >>> copy.layers[-1].dtype_policy.name, half_precision_layers(copy)
    ('float32', [])
    """
    import keras

    half = half_precision_layers(model)
    cause = (f"The model computes in half precision (a mixed_float16 / float16 dtype policy, "
             f"layers {half[:5]}{' ...' if len(half) > 5 else ''}), which TFLite's builtin "
             "kernels do not run, and to_tflite could not make a float32 copy of it")
    fix = ("Rebuild the model under float32 (layers created with dtype='float32', or "
           "keras.mixed_precision.set_global_policy('float32') before building it), load the "
           "trained weights into it and export that; quantization='float16' still gives "
           "float16 weights.")
    from keras.src.saving.serialization_lib import SafeModeScope

    # The model's own classes (a custom layer need not be registered) and its own
    # Lambda functions (already loaded: no new code) may be re-created.
    own = {type(layer).__name__: type(layer)
           for layer in model._flatten_layers(include_self=False, recursive=True)
           if not type(layer).__module__.startswith("keras.")}
    try:
        config = _float32_policies(model.get_config())
        with keras.saving.CustomObjectScope(own), SafeModeScope(False):
            copy = type(model).from_config(config)
    except Exception as e:  # noqa: BLE001 - anything that stops the copy
        raise ExportError(f"{cause}: re-creating it from its config failed "
                          f"({type(e).__name__}: {e}). {fix}") from e
    old, new = model.weights, copy.weights
    old_shapes = [tuple(w.shape) for w in old]
    new_shapes = [tuple(w.shape) for w in new]
    if old_shapes != new_shapes:
        raise ExportError(f"{cause}: the copy from its config has other weights "
                          f"({len(new)} instead of {len(old)}, or other shapes). {fix}")
    for dst, src in zip(new, old):
        value = np.asarray(keras.ops.convert_to_numpy(src))
        if np.issubdtype(value.dtype, np.floating) or str(value.dtype) == "bfloat16":
            value = value.astype(np.float32)
        dst.assign(value.astype(keras.backend.standardize_dtype(dst.dtype)))
    left = half_precision_layers(copy)
    if left:
        raise ExportError(f"{cause}: layers {left[:5]} still compute in half precision after "
                          f"setting every dtype policy in the config to float32. {fix}")
    return copy








def signature_of(model: Any, batch_size: int | None) -> list:
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


def _inference_fn(model: Any) -> Callable:
    def serve(*args):
        return model(pack_inputs(model, list(args)), training=False)

    return serve


def _representative_dataset(
    data: Any, signature: list, max_samples: int
) -> Callable[[], Iterable[list[np.ndarray]]]:
    """TFLite's representative dataset: ``data`` (read by
    :func:`tf_gamma_prune.inputs.model_input_batches`) cut into the signature's batch size."""
    batch = signature[0].shape[0]
    step = batch if batch is not None else 1
    specs = [InputSpec(spec.name, tuple(spec.shape)) for spec in signature]

    def generate():
        produced = 0
        for xs in model_input_batches(data, specs, what="representative_data",
                                      error=CalibrationDataError):
            arrays = [x.astype(spec.dtype.as_numpy_dtype, copy=False)
                      for x, spec in zip(xs, signature)]
            for start in range(0, arrays[0].shape[0] - step + 1, step):
                yield [a[start:start + step] for a in arrays]
                produced += step
                if produced >= max_samples:
                    return
        if produced == 0:
            raise CalibrationDataError(
                "representative_data holds no examples; pass a non-empty tf.data.Dataset or a "
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
            A mixed-precision model is converted as a float32 copy
            (:func:`float32_copy`), so the file is float32 (float16 weights
            with ``quantization="float16"``).
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
            kernel), or a mixed-precision model could not be copied to float32
            (the message says so); nothing is written to ``path``.

    Example:

    >>> import keras
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> len(to_tflite(m, quantization="dynamic")) > 0
    True
    """
    flatbuffer = to_tflite_variants(
        model, (quantization,), representative_data=representative_data, int8_io=int8_io,
        batch_size=batch_size, input_signature=input_signature,
        calibration_samples=calibration_samples)[quantization]
    if path is not None:
        write_atomic(path, flatbuffer)
    return flatbuffer


def to_tflite_variants(
    model: Any,
    quantizations: Sequence[str | None] = (None, "int8"),
    representative_data: Any = None,
    int8_io: bool = False,
    *,
    paths: Mapping[str | None, str | os.PathLike] | None = None,
    batch_size: int | None = 1,
    input_signature: Sequence[Any] | None = None,
    calibration_samples: int = 200,
) -> dict[str | None, bytes]:
    """:func:`to_tflite` for several quantizations of one model from one export.

    The model is traced and written as a SavedModel once, then converted once per
    entry of ``quantizations`` (the keys of the result, in that order): a float32
    file next to its int8 twin costs one export, not two. ``paths`` maps some of
    those quantizations to where their ``.tflite`` is written (atomically, each
    after all conversions succeeded); the other arguments are :func:`to_tflite`'s.

    Raises:
        ExportError: an unknown or repeated quantization, a path for one not asked
            for, or a failed conversion (nothing is written then).
        CalibrationDataError: ``"int8"`` without (usable) ``representative_data``.

    Example:

    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> files = to_tflite_variants(m, (None, "int8"), [np.ones((8, 4), "float32")])
    >>> [(quantization, flatbuffer[4:8]) for quantization, flatbuffer in files.items()]
    [(None, b'TFL3'), ('int8', b'TFL3')]
    >>> files[None] == to_tflite(m)
    True
    """
    import keras
    import tensorflow as tf

    quantizations = tuple(quantizations)
    for quantization in quantizations:
        if quantization not in QUANTIZATIONS:
            raise ExportError(f"quantization={quantization!r}; use one of {QUANTIZATIONS}.")
    if not quantizations or len(set(quantizations)) != len(quantizations):
        raise ExportError(f"quantizations={quantizations!r}: give each of {QUANTIZATIONS} at most "
                          "once, and at least one.")
    paths = dict(paths or {})
    if set(paths) - set(quantizations):
        raise ExportError(f"paths names {sorted(map(str, set(paths) - set(quantizations)))}, which "
                          f"are not among quantizations={quantizations!r}.")
    if int8_io and "int8" not in quantizations:
        raise ExportError("int8_io=True needs quantization='int8' (the only variant with int8 tensors).")
    if "int8" in quantizations and representative_data is None:
        raise CalibrationDataError(
            "quantization='int8' needs representative_data: pass a tf.data.Dataset or a list of "
            "numpy batches of real, preprocessed model inputs (a few hundred examples), e.g. "
            "representative_data=[x_train[i:i + 32] for i in range(0, 320, 32)]."
        )
    if half_precision_layers(model):
        model = float32_copy(model)
    signature = list(input_signature) if input_signature is not None else signature_of(model, batch_size)
    representative = None
    if "int8" in quantizations:
        representative = _representative_dataset(representative_data, signature,
                                                 calibration_samples)

    files: dict[str | None, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="tf_gamma_prune_export_") as saved_model_dir:
        # Keras 3 note: TFLiteConverter.from_keras_model does the same ExportArchive
        # dance but swallows its errors and prints the whole signature to stdout;
        # converting a plain tf.function/concrete function instead leaves the
        # variables as VAR_HANDLE/READ_VARIABLE ops (not frozen).
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", _inference_fn(model), signature)
        archive.write_out(saved_model_dir, verbose=False)
        for quantization in quantizations:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
            _configure_quantization(converter, quantization, representative,
                                    int8_io and quantization == "int8")
            try:
                flatbuffer = bytes(converter.convert())
            except CalibrationDataError:
                raise
            except Exception as e:  # ConverterError, ValueError, RuntimeError from the calibrator
                cause = e.__cause__ or e.__context__
                if isinstance(cause, CalibrationDataError):
                    raise cause from None
                raise _conversion_error(e, quantization) from e
            assert_builtin_only(flatbuffer)
            files[quantization] = flatbuffer
    for quantization, path in paths.items():
        write_atomic(path, files[quantization])
    return files
