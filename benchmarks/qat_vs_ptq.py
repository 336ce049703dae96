"""Int8 post-training quantization (PTQ) against quantization-aware training (QAT) of a pruned model.

A small Fashion-MNIST reference network (``fashion_vgg``, widths 8-8-16-16-32-32)
is trained for ``--float_epochs`` on the first ``--train_examples`` training
images, pruned (``l1_norm_selection`` at ``--prune_fraction``, removed channels
replaced by their mean activation and folded with ``fold=--fold``) and
fine-tuned (one epoch at 1e-3, one at 1e-4). That float model is then made int8
two ways, both full-integer with float32 input/output and batch 1:

* PTQ: ``tf_gamma_prune.to_tflite(model, quantization="int8")`` calibrated on
  ``--calibration_examples`` training images;
* QAT: ``tf_gamma_prune.quantize_aware_finetune`` (tensorflow-model-optimization
  in an isolated tf_keras process), ``--qat_epochs`` with Adam on the same
  training subset and its labels, once per ``--qat_learning_rates``.

Recorded on the 10,000 test images: accuracy of the float model and of each
int8 model, each int8 model's top-1 agreement with the float model, file sizes,
and 1-thread LiteRT (XNNPACK) latency of each QAT model against PTQ, timed side
by side (``tf_gamma_prune.export.compare_latency``, steady timing).

With ``--pruned_model PATH`` the float model is that ``.keras`` file instead (a
pruned, fine-tuned model such as the compression benchmark's GammaISTA result;
nothing is trained before quantizing), and ``--train_examples`` images are
only the calibration and QAT data:

    .venv/bin/python benchmarks/qat_vs_ptq.py --pruned_model=gamma_ista_final.keras \
        --output=benchmarks/results/qat_vs_ptq_gamma_ista.json

Needs the ``tfmot`` extra (``pip install "tf-gamma-prune[tfmot]"``) and the
real Fashion-MNIST (``tf_gamma_prune.data.load_fashion_mnist``).

    .venv/bin/python benchmarks/qat_vs_ptq.py
    .venv/bin/python benchmarks/qat_vs_ptq.py --train_examples=60000 --float_epochs=5

Writes ``benchmarks/results/qat_vs_ptq.json`` atomically. Duration: ``benchmarks/README.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_examples", 12000, "Training images used (the first ones).")
flags.DEFINE_string("pruned_model", None, "A pruned, fine-tuned .keras model to quantize instead of "
                    "training one (its training images: the calibration and QAT data).")
flags.DEFINE_integer("float_epochs", 2, "Epochs of float training before pruning.")
flags.DEFINE_float("prune_fraction", 0.25, "l1_norm_selection fraction per conv.")
flags.DEFINE_string("fold", "exact", "prune_model fold (exact: BorderCorrection layers).")
flags.DEFINE_integer("calibration_examples", 320, "PTQ representative images.")
flags.DEFINE_integer("qat_epochs", 1, "QAT fine-tuning epochs.")
flags.DEFINE_list("qat_learning_rates", ["1e-4", "1e-5"], "One QAT run per Adam learning rate.")
flags.DEFINE_integer("runs", 200, "Timed invocations per model for latency.")
flags.DEFINE_integer("seed", 0, "Random seed.")
common.define_output_flag("qat_vs_ptq")


def _pruned_model(x_train, y_train):
    import keras

    import tf_gamma_prune
    from tf_gamma_prune.reference_models import fashion_vgg

    keras.utils.set_random_seed(FLAGS.seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=128, epochs=FLAGS.float_epochs, verbose=0)
    selection = tf_gamma_prune.l1_norm_selection(model, FLAGS.prune_fraction)
    pruned = tf_gamma_prune.prune_model(model, selection, fold=FLAGS.fold,
                                        calibration_data=x_train[:512])
    pruned.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    pruned.fit(x_train, y_train, batch_size=128, epochs=1, verbose=0)
    pruned.optimizer.learning_rate.assign(1e-4)
    pruned.fit(x_train, y_train, batch_size=128, epochs=1, verbose=0)
    return model, pruned


def main(argv):
    del argv
    import numpy as np

    import tf_gamma_prune
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.data import load_fashion_mnist
    from tf_gamma_prune.export import compare_latency
    from tf_gamma_prune.qat.finetune import _keras_predictions, _tflite_predictions

    started = time.time()
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    x_train, y_train = x_train[:FLAGS.train_examples], y_train[:FLAGS.train_examples]
    t0 = time.time()
    if FLAGS.pruned_model:
        from tf_gamma_prune.export import load_keras_model

        model = load_keras_model(FLAGS.pruned_model)
        original = model
    else:
        original, model = _pruned_model(x_train, y_train)
    train_s = time.time() - t0
    kinds = sorted({type(layer).__name__ for layer in model.layers})
    float_predictions = _keras_predictions(model, x_test)
    float_tflite = tf_gamma_prune.to_tflite(model)

    t0 = time.time()
    calibration = [x_train[i:i + 32] for i in range(0, FLAGS.calibration_examples, 32)]
    ptq = tf_gamma_prune.to_tflite(model, quantization="int8", representative_data=calibration)
    ptq_s = time.time() - t0
    ptq_predictions = _tflite_predictions(ptq, x_test)

    def summary(predictions, flatbuffer):
        return {"accuracy": round(float(np.mean(predictions == y_test)), 4),
                "agreement_with_float": round(float(np.mean(predictions == float_predictions)), 4),
                "size_bytes": len(flatbuffer)}

    payload = {
        "benchmark": "qat_vs_ptq",
        "settings": {k: FLAGS[k].value for k in (
            "train_examples", "float_epochs", "prune_fraction", "fold", "calibration_examples",
            "qat_epochs", "qat_learning_rates", "runs", "seed")},
        "pruned_model": None if not FLAGS.pruned_model else {
            "file": os.path.basename(FLAGS.pruned_model),
            "sha256": hashlib.sha256(open(FLAGS.pruned_model, "rb").read()).hexdigest()},
        "model": {"params_before": None if FLAGS.pruned_model else int(original.count_params()),
                  "params_after": int(model.count_params()), "layer_types": kinds},
        "float": {"accuracy": round(float(np.mean(float_predictions == y_test)), 4),
                  "size_bytes": len(float_tflite)},
        "ptq": {**summary(ptq_predictions, ptq), "seconds": round(ptq_s, 1)},
        "qat": {},
    }
    for rate in FLAGS.qat_learning_rates:
        result = tf_gamma_prune.quantize_aware_finetune(
            model, (x_train, y_train), epochs=FLAGS.qat_epochs, eval_data=(x_test, y_test),
            learning_rate=float(rate), seed=FLAGS.seed)
        (latency,) = compare_latency(ptq, result.tflite, threads=(1,), runs=FLAGS.runs)
        payload["qat"][f"lr_{rate}"] = {
            "accuracy": round(result.accuracy, 4),
            "agreement_with_float": round(result.agreement, 4),
            "size_bytes": result.size_bytes,
            "seconds": round(result.seconds, 1),
            "train_loss": [round(v, 4) for v in result.history["loss"]],
            "latency_1_thread_ms": {"ptq_median": round(latency.a.median_ms, 4),
                                    "qat_median": round(latency.b.median_ms, 4),
                                    "ptq_over_qat": round(latency.speedup, 3)},
            "versions": result.versions,
        }
        print(rate, json.dumps(payload["qat"][f"lr_{rate}"]), flush=True)
    payload["train_and_prune_s"] = round(train_s, 1)
    payload["total_s"] = round(time.time() - started, 1)
    payload.update(common.machine_info("tensorflow", "keras", "python", "machine", "cpu_count"))
    write_json_atomic(FLAGS.output, payload)
    print(json.dumps({"float": payload["float"], "ptq": payload["ptq"],
                      "qat": {k: {m: v[m] for m in ("accuracy", "agreement_with_float")}
                              for k, v in payload["qat"].items()}}))


if __name__ == "__main__":
    app.run(main)
