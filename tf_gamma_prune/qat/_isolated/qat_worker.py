"""The isolated worker of tf_gamma_prune.qat: ``python qat_worker.py JOB_DIR``.

Started by ``tf_gamma_prune/qat/isolate.py`` in a fresh process with
``TF_USE_LEGACY_KERAS=1``, so that ``tf.keras`` is tf_keras here (what
tensorflow-model-optimization needs) while the caller's process keeps Keras 3
and never imports tf_keras or tfmot. Everything passes through files in
``JOB_DIR``:

* ``job.json``: ``{"mode": "convert" | "qat", "models": [stems], "settings": {...}}``;
* per model, ``<stem>.json`` + ``<stem>_weights.npz`` (the spec of ``spec.py``);
* ``convert``: ``<stem>_inputs.npz`` (``x``) in, ``<stem>_outputs.npz`` (``y``) out: the
  tf_keras model's inference outputs;
* ``qat``: ``train.npz`` (``x``, ``y``) and ``representative.npz`` (``x``) in,
  ``model.tflite`` and ``result.json`` (history, versions, seconds) out.

On failure it writes ``error.json`` (``kind``: ``"dependency"``, ``"unsupported"``
or ``"failure"``, ``message``, ``traceback``), prints the traceback to stderr and
exits with status 1. It never imports tf_gamma_prune (that would load Keras 3).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # this process only: tf.keras is tf_keras here
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))


class DependencyMissing(Exception):
    pass


def _write(path, data):
    """Write bytes through a temporary file and ``os.replace`` (never a partial file)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path, obj):
    _write(path, (json.dumps(obj, indent=1) + "\n").encode())


def _write_npz(path, **arrays):
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write(path, buffer.getvalue())


def _import_tf_keras():
    try:
        import tensorflow as tf
        import tf_keras
    except ImportError as e:
        raise DependencyMissing(f"tf_keras could not be imported ({e})") from e
    if sys.path[:1] != [HERE]:
        sys.path.insert(0, HERE)
    import qat_tf_keras

    return tf, tf_keras, qat_tf_keras


def _import_tfmot():
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as e:
        raise DependencyMissing(f"tensorflow-model-optimization could not be imported ({e})") from e
    return tfmot


def run_convert(job_dir, job):
    import numpy as np

    _, _, qtk = _import_tf_keras()
    for stem in job["models"]:
        spec, weights = qtk.read_spec(job_dir, stem)
        model, _ = qtk.build_model(spec, weights)
        with np.load(os.path.join(job_dir, f"{stem}_inputs.npz")) as data:
            x = data["x"]
        y = np.asarray(model(x, training=False))
        _write_npz(os.path.join(job_dir, f"{stem}_outputs.npz"), y=y)


def _output_quantize_config(tfmot):
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs,
    )

    return configs.Default8BitOutputQuantizeConfig


def run_qat(job_dir, job):
    import numpy as np

    started = time.time()
    tf, tf_keras, qtk = _import_tf_keras()
    tfmot = _import_tfmot()
    settings = job["settings"]
    tf_keras.utils.set_random_seed(int(settings["seed"]))
    spec, weights = qtk.read_spec(job_dir, job["models"][0])

    OutputConfig = _output_quantize_config(tfmot)
    annotate_layer = tfmot.quantization.keras.quantize_annotate_layer

    def annotate(layer, entry):
        if entry["quantize"] == "output":
            return annotate_layer(layer, OutputConfig())
        return annotate_layer(layer)

    with np.load(os.path.join(job_dir, "representative.npz")) as data:
        rep = data["x"]
    float_model, _ = qtk.build_model(spec, weights)
    ranges = qtk.activation_ranges(float_model, rep)
    annotated, _ = qtk.build_model(spec, weights, annotate)
    scope = dict(qtk.CUSTOM_OBJECTS, Default8BitOutputQuantizeConfig=OutputConfig)
    try:
        with tfmot.quantization.keras.quantize_scope(scope):
            qat = tfmot.quantization.keras.quantize_apply(annotated)
    except RuntimeError as e:
        if "is not supported" in str(e):
            raise UnsupportedInTfmot(str(e)) from e
        raise
    initialized = qtk.init_quantizer_ranges(qat, ranges) if settings.get("init_ranges", True) else 0

    with np.load(os.path.join(job_dir, "train.npz")) as data:
        x, y = data["x"], data["y"]
    if settings["optimizer"] == "sgd":
        optimizer = tf_keras.optimizers.SGD(settings["learning_rate"], momentum=0.9)
    else:
        optimizer = tf_keras.optimizers.Adam(settings["learning_rate"])
    qat.compile(optimizer=optimizer,
                loss=tf_keras.losses.SparseCategoricalCrossentropy(
                    from_logits=bool(settings["from_logits"])),
                metrics=["accuracy"])
    fit_started = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # the caller keeps stderr (QATResult.log)
        history = qat.fit(x, y, batch_size=int(settings["batch_size"]),
                          epochs=int(settings["epochs"]), shuffle=True,
                          verbose=2 if settings.get("verbose") else 0)
    fit_seconds = time.time() - fit_started

    batch = settings["export_batch_size"]
    (inp,) = spec["inputs"]
    signature = tf.TensorSpec((batch,) + tuple(inp["shape"]), tf.float32, name=inp["name"])

    @tf.function(input_signature=[signature])
    def serve(images):
        return qat(images, training=False)

    step = batch or 1

    def representative():
        for start in range(0, len(rep) - step + 1, step):
            yield [rep[start:start + step].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if settings.get("int8_io"):
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()
    _write(os.path.join(job_dir, "model.tflite"), bytes(flatbuffer))
    _write_json(os.path.join(job_dir, "result.json"), {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "n_train": int(len(x)),
        "initialized_ranges": int(initialized),
        "fit_seconds": fit_seconds,
        "seconds": time.time() - started,
        "versions": {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
                     "tensorflow_model_optimization": getattr(tfmot, "__version__", "?")},
    })


class UnsupportedInTfmot(Exception):
    pass


def main(argv):
    if len(argv) != 2:
        print("usage: qat_worker.py JOB_DIR", file=sys.stderr)
        return 2
    job_dir = argv[1]
    try:
        with open(os.path.join(job_dir, "job.json")) as f:
            job = json.load(f)
        {"convert": run_convert, "qat": run_qat}[job["mode"]](job_dir, job)
    except BaseException as e:  # noqa: BLE001 - reported to the caller, then exit 1
        kind = ("dependency" if isinstance(e, DependencyMissing)
                else "unsupported" if isinstance(e, UnsupportedInTfmot) else "failure")
        text = traceback.format_exc()
        print(text, file=sys.stderr)
        try:
            _write_json(os.path.join(job_dir, "error.json"), {
                "kind": kind, "type": type(e).__name__, "message": str(e), "traceback": text})
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
