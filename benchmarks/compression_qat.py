"""Int8 PTQ against QAT for the compression benchmark's pruned models (a companion step).

``compression.py`` records each run's int8 post-training quantization (PTQ); this adds
quantization-aware training (tfmot, isolated: ``tf_gamma_prune.qat.quantize_aware_finetune``)
for the records of ``--methods`` (default: ``gamma_ista``), from the models the benchmark
cached (``<work_dir>/<settings hash>/seed<seed>/<method>_target<k>_<overrides digest>_final.keras``).
Per record, on the ``--test_examples`` first test images (default all 10,000): the float
model's accuracy, PTQ's and QAT's accuracy and agreement with the float model, both int8
files' sizes, and their 1-thread latency side by side (``compare_latency``, steady). QAT
fine-tunes ``--qat_epochs`` with Adam at ``--learning_rate`` on the first ``--train_examples``
training images, which also calibrate PTQ.

    .venv/bin/python benchmarks/compression_qat.py \\
        --results=benchmarks/results/compression.json      # ≈ 1.5 min per record

Writes ``<results stem>_qat.json`` next to the results (``--output`` to change it); resumable
(a record already there is skipped). A record whose cached model is gone is listed under
``missing`` (rerun ``compression.py`` with the same settings to rebuild it).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets sys.path and TF's log level)
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("results", str(common.result_path("compression")), "A compression results JSON.")
flags.DEFINE_string("work_dir", str(common.RESULTS / "compression_work"), "The benchmark's model cache.")
flags.DEFINE_string("output", None, "Where to write (default: <results stem>_qat.json).")
flags.DEFINE_list("methods", ["gamma_ista"], "Methods whose records get a QAT figure.")
flags.DEFINE_integer("train_examples", 12000, "QAT and calibration images (the first ones).")
flags.DEFINE_integer("test_examples", 0, "Test images evaluated (0: all).")
flags.DEFINE_integer("qat_epochs", 1, "QAT epochs.")
flags.DEFINE_float("learning_rate", 1e-4, "QAT Adam learning rate.")
flags.DEFINE_integer("calibration_examples", 320, "PTQ calibration images.")
flags.DEFINE_integer("runs", 200, "Timed runs per model for the latency comparison.")


def cached_model(results: dict, record: dict) -> pathlib.Path:
    """The ``.keras`` the benchmark cached for ``record`` (see ``compression_reference.ReferenceRun.path``)."""
    from compression_protocol import settings_hash

    overrides = record.get("overrides") or {}
    tag = settings_hash(overrides) if overrides else "default"
    return (pathlib.Path(FLAGS.work_dir) / settings_hash(results["settings"]) / f"seed{record['seed']}"
            / f"{record['method']}_target{record['target']}_{tag}_final.keras")


def key_of(record: dict) -> str:
    return f"{record['method']}/target{record['target']}/seed{record['seed']}"


def measure(model_path: pathlib.Path, x, y, x_test, y_test) -> dict:
    import numpy as np

    import tf_gamma_prune
    from tf_gamma_prune.export import compare_latency, load_keras_model
    from tf_gamma_prune.qat.finetune import _keras_predictions, _tflite_predictions

    model = load_keras_model(str(model_path))
    float_predictions = _keras_predictions(model, x_test)
    calibration = [x[i:i + 32] for i in range(0, FLAGS.calibration_examples, 32)]
    ptq = tf_gamma_prune.to_tflite(model, quantization="int8", representative_data=calibration)
    ptq_predictions = _tflite_predictions(ptq, x_test)
    qat = tf_gamma_prune.quantize_aware_finetune(model, (x, y), epochs=FLAGS.qat_epochs,
                                                 eval_data=(x_test, y_test),
                                                 learning_rate=FLAGS.learning_rate)
    (latency,) = compare_latency(ptq, qat.tflite, threads=(1,), runs=FLAGS.runs)
    return {
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "float_accuracy": float(np.mean(float_predictions == y_test)),
        "ptq": {"accuracy": float(np.mean(ptq_predictions == y_test)),
                "agreement_with_float": float(np.mean(ptq_predictions == float_predictions)),
                "tflite_bytes": len(ptq), "latency_ms": latency.a.median_ms},
        "qat": {"accuracy": qat.accuracy, "agreement_with_float": qat.agreement,
                "tflite_bytes": len(qat.tflite), "latency_ms": latency.b.median_ms,
                "seconds": round(qat.seconds, 1)},
        "qat_minus_ptq_points": 100 * (qat.accuracy - float(np.mean(ptq_predictions == y_test))),
    }


def main(argv):
    del argv
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.data import load_fashion_mnist
    from tf_gamma_prune.errors import ArgumentError

    with open(FLAGS.results) as f:
        results = json.load(f)
    output = FLAGS.output or str(pathlib.Path(FLAGS.results).with_name(
        pathlib.Path(FLAGS.results).stem + "_qat.json"))
    settings = {k: FLAGS[k].value for k in ("methods", "train_examples", "test_examples", "qat_epochs",
                                            "learning_rate", "calibration_examples", "runs")}
    doc = {"benchmark": "compression_qat", "results": os.path.basename(FLAGS.results),
           "settings": settings, "records": {}, "missing": []}
    if os.path.exists(output):
        with open(output) as f:
            old = json.load(f)
        if old.get("settings") != settings:
            raise ArgumentError(f"{output} holds results of other settings; pass another --output.")
        doc["records"] = old.get("records", {})
    (x, y), (x_test, y_test) = load_fashion_mnist(train_examples=FLAGS.train_examples,
                                                  test_examples=FLAGS.test_examples)
    started = time.time()
    for record in results["records"]:
        if record.get("method") not in FLAGS.methods or key_of(record) in doc["records"]:
            continue
        path = cached_model(results, record)
        if not path.exists():
            doc["missing"].append(key_of(record))
            continue
        entry = measure(path, x, y, x_test, y_test)
        entry["record_int8_accuracy"] = record.get("int8_accuracy")  # compression.py's own PTQ figure
        doc["records"][key_of(record)] = entry
        doc["machine"] = common.machine_info()
        write_json_atomic(output, doc)
        print(f"{key_of(record)}: float {entry['float_accuracy']:.4f}, PTQ {entry['ptq']['accuracy']:.4f}, "
              f"QAT {entry['qat']['accuracy']:.4f}", flush=True)
    doc["seconds"] = round(time.time() - started, 1)
    write_json_atomic(output, doc)
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
