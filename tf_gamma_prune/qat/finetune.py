"""Quantization-aware fine-tuning of a pruned Keras 3 model into an int8 ``.tflite``.

:func:`quantize_aware_finetune` describes the model (:mod:`.spec`), writes it and
the data into a temporary folder, and lets an isolated process
(:mod:`.isolate`) rebuild it in tf_keras, run tensorflow-model-optimization's
``quantize_apply`` + ``fit`` and convert it to a full-integer flatbuffer. Back
here the flatbuffer is checked (builtin ops only, every op int8) and evaluated
with the LiteRT interpreter. :func:`tf_keras_outputs` runs only the conversion,
to check it.

Example (arguments are checked before anything starts):

>>> import keras, numpy as np
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> quantize_aware_finetune(model, (np.zeros((8, 4)), np.zeros(8)), epochs=0)
Traceback (most recent call last):
...
tf_gamma_prune.errors.ArgumentError: epochs must be a positive integer (got 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from tf_gamma_prune.atomic_io import write_atomic
from tf_gamma_prune.errors import ArgumentError, ExportError, InputDataError
from tf_gamma_prune.qat.isolate import require_dependencies, run_worker, write_job
from tf_gamma_prune.qat.spec import model_spec, write_npz_atomic, write_spec

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class QATResult:
    """What :func:`quantize_aware_finetune` returns.

    Attributes:
        tflite: the int8 flatbuffer (builtin ops only; float32 input/output
            unless ``int8_io=True``).
        accuracy: top-1 accuracy of ``tflite`` on ``eval_data`` (``None`` without it).
        float_accuracy: the given float Keras model's accuracy on ``eval_data``.
        agreement: fraction of ``eval_data`` examples whose int8 top-1 class equals
            the float model's.
        history: the fine-tuning history (``loss``, ``accuracy`` per epoch).
        n_train: training examples used.
        n_eval: evaluation examples (0 without ``eval_data``).
        seconds: wall time of the whole call.
        versions: TensorFlow, tf_keras and tfmot versions of the isolated run.
        log: the isolated process's standard error.
    """

    tflite: bytes = dataclasses.field(repr=False)
    accuracy: float | None
    float_accuracy: float | None
    agreement: float | None
    history: dict[str, list[float]]
    n_train: int
    n_eval: int
    seconds: float
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    log: str = dataclasses.field(default="", repr=False)

    @property
    def size_bytes(self) -> int:
        """Size of the ``.tflite`` file in bytes."""
        return len(self.tflite)

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.tflite`` file atomically."""
        write_atomic(path, self.tflite)


def _check_arguments(epochs: Any, batch_size: Any, learning_rate: Any, optimizer: Any,
                     representative_samples: Any, export_batch_size: Any) -> None:
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise ArgumentError(f"epochs must be a positive integer (got {epochs!r}).")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ArgumentError(f"batch_size must be a positive integer (got {batch_size!r}).")
    if not (isinstance(learning_rate, (int, float)) and np.isfinite(learning_rate)
            and learning_rate > 0):
        raise ArgumentError(f"learning_rate must be a positive number (got {learning_rate!r}).")
    if optimizer not in OPTIMIZERS:
        raise ArgumentError(f"optimizer must be one of {OPTIMIZERS} (got {optimizer!r}).")
    if not isinstance(representative_samples, (int, np.integer)) or representative_samples < 1:
        raise ArgumentError("representative_samples must be a positive integer "
                            f"(got {representative_samples!r}).")
    if export_batch_size is not None and (not isinstance(export_batch_size, (int, np.integer))
                                          or export_batch_size < 1):
        raise ArgumentError(f"export_batch_size must be None or a positive integer "
                            f"(got {export_batch_size!r}).")


def _labeled_arrays(data: Any, model: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` arrays from ``(x, y)`` or a stream (tf.data, iterator, list) of such batches."""
    from tf_gamma_prune.inputs import input_specs, is_stream, model_input_batches

    if (isinstance(data, (tuple, list)) and len(data) in (2, 3)
            and hasattr(data[0], "shape") and hasattr(data[1], "shape")):
        batches = [tuple(data[:2])]
    elif is_stream(data):
        iterator = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
        batches = []
        for element in iterator:
            if not (isinstance(element, (tuple, list)) and len(element) in (2, 3)):
                raise InputDataError(f"{what}: every batch must be (x, y) or (x, y, sample_weight); "
                                     f"got a {type(element).__name__}.")
            batches.append(tuple(element[:2]))
    else:
        raise InputDataError(
            f"{what} must be (x, y) arrays or a tf.data.Dataset / iterator / list of (x, y) "
            f"batches with integer class labels; got a {type(data).__name__}.")
    if not batches:
        raise InputDataError(f"{what} holds no examples.")
    specs = input_specs(model)
    xs, ys = [], []
    for x, y in batches:
        (x,) = next(model_input_batches(np.asarray(x), specs, what=what))
        xs.append(x.astype(np.float32, copy=False))
        ys.append(np.asarray(y))
    x, y = np.concatenate(xs), np.concatenate(ys)
    return x, _class_labels(y, len(x), int(model.outputs[0].shape[-1]), what)


def _class_labels(y: np.ndarray, n: int, classes: int, what: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == classes and classes > 1:
        y = np.argmax(y, axis=-1)  # one-hot
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise InputDataError(f"{what}: labels of shape {y.shape} for {n} examples; pass integer "
                             "class indices (n,) or one-hot labels (n, classes).")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InputDataError(f"{what}: labels must be integer class indices.")
    if y.dtype.kind not in "iuf":
        raise InputDataError(f"{what}: labels must be integer class indices (got {y.dtype}).")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise InputDataError(f"{what}: labels must lie in [0, {classes}) for this model's "
                             f"{classes} outputs (got {int(y.min())}..{int(y.max())}).")
    return y


def outputs_probabilities(model: Any) -> bool:
    """Whether ``model`` ends in a softmax (so its outputs are probabilities, not logits).

    >>> import keras
    >>> x = keras.Input((4,))
    >>> outputs_probabilities(keras.Model(x, keras.layers.Dense(3, activation="softmax")(x)))
    True
    >>> outputs_probabilities(keras.Model(x, keras.layers.Dense(3)(x)))
    False
    """
    history = getattr(model.outputs[0], "_keras_history", None)
    layer = history[0] if history else None
    if layer is None:
        return False
    if type(layer).__name__ == "Softmax":
        return True
    activation = layer.get_config().get("activation") if hasattr(layer, "get_config") else None
    return activation == "softmax"


def _check_int8(flatbuffer: bytes) -> None:
    """Builtin ops only, and every op but the (de)quantize edges computes in integers."""
    from tf_gamma_prune.export.flatbuffer import assert_builtin_only
    from tf_gamma_prune.export.interpreter import make_interpreter

    assert_builtin_only(flatbuffer)
    interpreter = make_interpreter(flatbuffer)
    ops_details = getattr(interpreter, "_get_ops_details", None)
    if ops_details is None:  # an interpreter without the (private) op listing: builtin check only
        return
    tensors = {d["index"]: np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}
    floating = sorted({
        op["op_name"] for op in ops_details()
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
        and any(tensors.get(int(t), np.dtype("int8")).kind == "f" for t in op["outputs"])
    })
    if floating:
        raise ExportError(
            f"The QAT flatbuffer still computes these ops in float: {floating}. Every op should be "
            "int8; a layer without a quantized kernel in TFLite slipped through.")


def _keras_predictions(model: Any, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    import keras

    return np.concatenate([
        np.argmax(keras.ops.convert_to_numpy(model(x[start:start + chunk], training=False)), -1)
        for start in range(0, len(x), chunk)])


def _tflite_predictions(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    from tf_gamma_prune.export.interpreter import SignatureRunner

    runner = SignatureRunner(flatbuffer, num_threads=1)
    (name,) = list(runner.inputs)
    step = runner.fixed_batch or 256
    predictions = []
    for start in range(0, len(x), step):
        part = x[start:start + step]
        m = len(part)
        if runner.fixed_batch and m < step:
            part = np.concatenate([part, np.repeat(part[-1:], step - m, axis=0)])
        predictions.append(np.argmax(runner({name: part})[0][:m], axis=-1))
    return np.concatenate(predictions)


def quantize_aware_finetune(
    model: Any,
    train_data: Any,
    epochs: int = 1,
    *,
    eval_data: Any = None,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    optimizer: str = "adam",
    from_logits: bool | None = None,
    freeze_batchnorm: bool = False,
    init_ranges: bool = True,
    representative_samples: int = 200,
    int8_io: bool = False,
    export_batch_size: int | None = 1,
    path: str | os.PathLike | None = None,
    seed: int = 0,
    timeout: float | None = None,
    verbose: bool = False,
) -> QATResult:
    """Fine-tune ``model`` with tfmot's quantization-aware training; return an int8 ``.tflite``.

    The model is converted to tf_keras layer by layer (weights copied; the
    package's ``BorderCorrection`` / ``ConstantFeature`` have tf_keras twins),
    wrapped by ``tfmot.quantization.keras.quantize_apply`` (the default 8-bit
    scheme; BN after a linear conv/dense is folded by tfmot, other BNs, the
    package's layers and ``Subtract``/``Multiply``/... get their output
    quantized), fine-tuned with ``fit`` and converted to a full-integer
    flatbuffer. All of this runs in a separate Python process with
    ``TF_USE_LEGACY_KERAS=1`` in *its* environment only, fed through
    atomically written files in a temporary folder: the caller's
    ``os.environ``, ``tf.keras``, ``sys.modules`` (no tf_keras, no tfmot) and
    Keras 3 state are unchanged, and ``model`` is not modified.

    Args:
        model: a built Keras 3 functional or Sequential classifier with one
            input and one output, made of :data:`~tf_gamma_prune.qat.SUPPORTED_LAYERS`
            (everything ``prune_model`` emits for BN convnets).
        train_data: ``(x, y)`` arrays, or a ``tf.data.Dataset`` / iterator / list
            of ``(x, y)`` batches; ``y`` integer class indices (or one-hot).
            Preprocessed exactly like the model's inputs. It is read into memory.
        epochs: fine-tuning epochs.
        eval_data: ``(x, y)`` (same forms) on which the int8 model's accuracy, the
            float model's accuracy and their top-1 agreement are measured.
        batch_size: fine-tuning batch size.
        learning_rate: of the optimizer; QAT fine-tunes a trained model, so use
            a small one (the default ``1e-4`` with Adam).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        from_logits: whether the model outputs logits; ``None`` decides from its
            last layer (a softmax gives probabilities).
        freeze_batchnorm: keep every BatchNormalization's statistics, γ and β
            fixed during the fine-tuning (tfmot's default, ``False``, re-estimates
            the statistics on fake-quantized activations, which moves the model
            a little further from the float one).
        init_ranges: start tfmot's activation ranges at the float model's
            min/max over the representative examples instead of tfmot's
            [-6, 6] (its moving average moves them by 0.1 % a step, so a short
            fine-tuning would end with ranges far too wide).
        representative_samples: the first this many training examples give those
            initial ranges and calibrate the few tensors tfmot leaves without
            learned ranges.
        int8_io: int8 input and output tensors too (else float32, quantized
            inside the model, as ``to_tflite(quantization="int8")``).
        export_batch_size: fixed batch size of the exported input (``None``:
            dynamic), as ``to_tflite``'s ``batch_size``.
        path: also write the ``.tflite`` here (atomically).
        seed: random seed of the fine-tuning (tf_keras).
        timeout: seconds after which the isolated process is stopped.
        verbose: log one line per epoch into ``QATResult.log``.

    Returns:
        A :class:`QATResult` (``tflite``, ``accuracy``, ``agreement``, ...).

    Raises:
        QATDependencyError: tensorflow-model-optimization or tf_keras is not
            installed (``pip install "tf-gamma-prune[tfmot]"``).
        UnsupportedModelError / UnsupportedLayerError: the model or a layer cannot
            be converted or quantized (the message names the layer and what to do).
        InputDataError: data of the wrong shape, non-finite values, bad labels.
        QATError: the isolated process failed or timed out (its stderr tail is in
            the message).
        ExportError: the flatbuffer has non-builtin ops or ops left in float.
    """
    started = time.time()
    _check_arguments(epochs, batch_size, learning_rate, optimizer, representative_samples,
                     export_batch_size)
    require_dependencies()
    spec, weights = model_spec(model)
    if freeze_batchnorm:
        for layer in spec["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["trainable"] = False
    x, y = _labeled_arrays(train_data, model, "train_data")
    evaluation = None if eval_data is None else _labeled_arrays(eval_data, model, "eval_data")
    if from_logits is None:
        from_logits = not outputs_probabilities(model)
    settings = {
        "epochs": int(epochs), "batch_size": int(batch_size),
        "learning_rate": float(learning_rate), "optimizer": optimizer,
        "from_logits": bool(from_logits), "int8_io": bool(int8_io),
        "export_batch_size": None if export_batch_size is None else int(export_batch_size),
        "seed": int(seed), "verbose": bool(verbose), "init_ranges": bool(init_ranges),
    }
    with tempfile.TemporaryDirectory(prefix="tf_gamma_prune_qat_") as job_dir:
        write_spec(job_dir, "model", spec, weights)
        write_npz_atomic(os.path.join(job_dir, "train.npz"), x=x, y=y)
        write_npz_atomic(os.path.join(job_dir, "representative.npz"), x=x[:representative_samples])
        write_job(job_dir, "qat", ["model"], settings)
        log = run_worker(job_dir, timeout=timeout)
        with open(os.path.join(job_dir, "model.tflite"), "rb") as f:
            flatbuffer = f.read()
        with open(os.path.join(job_dir, "result.json")) as f:
            worker = json.load(f)
    _check_int8(flatbuffer)
    accuracy = float_accuracy = agreement = None
    n_eval = 0
    if evaluation is not None:
        x_eval, y_eval = evaluation
        n_eval = len(x_eval)
        int8_predictions = _tflite_predictions(flatbuffer, x_eval)
        float_predictions = _keras_predictions(model, x_eval)
        accuracy = float(np.mean(int8_predictions == y_eval))
        float_accuracy = float(np.mean(float_predictions == y_eval))
        agreement = float(np.mean(int8_predictions == float_predictions))
    if path is not None:
        write_atomic(path, flatbuffer)
    return QATResult(
        tflite=flatbuffer, accuracy=accuracy, float_accuracy=float_accuracy, agreement=agreement,
        history=worker["history"], n_train=int(worker["n_train"]), n_eval=n_eval,
        seconds=time.time() - started, versions=worker.get("versions", {}), log=log)


def tf_keras_outputs(models: Sequence[Any], inputs: Sequence[np.ndarray], *,
                     timeout: float | None = None) -> list[np.ndarray]:
    """The outputs (inference mode) of each model's tf_keras conversion on its inputs.

    Runs only the Keras 3 → tf_keras conversion of :func:`quantize_aware_finetune`
    (no quantization), all models in one isolated process, so a conversion can be
    checked against the Keras 3 model: ``model(x, training=False)``.

    Args:
        models: Keras 3 models (see :func:`quantize_aware_finetune`).
        inputs: one float array (batch first) per model.

    Raises:
        QATDependencyError, UnsupportedModelError, UnsupportedLayerError, QATError:
            as :func:`quantize_aware_finetune`.
    """
    models, inputs = list(models), list(inputs)
    if len(models) != len(inputs):
        raise ArgumentError(f"tf_keras_outputs: {len(models)} models but {len(inputs)} inputs.")
    require_dependencies()
    specs = [model_spec(model) for model in models]
    with tempfile.TemporaryDirectory(prefix="tf_gamma_prune_qat_") as job_dir:
        stems = []
        for i, ((spec, weights), x) in enumerate(zip(specs, inputs)):
            stem = f"model{i}"
            write_spec(job_dir, stem, spec, weights)
            write_npz_atomic(os.path.join(job_dir, f"{stem}_inputs.npz"),
                             x=np.asarray(x, dtype=np.float32))
            stems.append(stem)
        write_job(job_dir, "convert", stems, {})
        run_worker(job_dir, timeout=timeout)
        outputs = []
        for stem in stems:
            with np.load(os.path.join(job_dir, f"{stem}_outputs.npz")) as data:
                outputs.append(data["y"])
    return outputs
