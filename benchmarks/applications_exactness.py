"""Is prune_model exact on every BatchNorm-based keras.applications model?

For each architecture (weights=None, a small input): random BN statistics and
β, a random half of the γ set to 0, prune, and compare the pruned model's
outputs with the original's on random inputs (inference mode, float64
comparison). Records per model: exact / inexact / unsupported (with the error
message), relative error, parameters and MACs before/after, border
corrections, and timings. Writes benchmarks/results/applications_exactness.json
atomically.

    python benchmarks/applications_exactness.py                # every model
    python benchmarks/applications_exactness.py --models=ResNet50,MobileNetV2

Duration and output: ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import os
import time
import traceback

from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "keras.applications names (default: all BN-based).")
flags.DEFINE_integer("size", 64, "Input height/width (raised to each model's minimum).")
flags.DEFINE_float("zero_fraction", 0.5, "Fraction of γ set to exactly 0.")
flags.DEFINE_float("tolerance", 1e-5, "Relative max error counted as exact.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("update", False, "Keep the other models' results already in --output.")
common.define_output_flag("applications_exactness")

# Every keras.applications architecture of Keras 3 except the larger variants
# of ConvNeXt / VGG (ConvNeXt uses LayerNormalization and VGG no normalization:
# one of each is listed to record why they are out of scope).
ALL_MODELS = [
    "ResNet50", "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2", "ResNet152V2",
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large",
    "DenseNet121", "DenseNet169", "DenseNet201",
    "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
    "EfficientNetB4", "EfficientNetB5", "EfficientNetB6", "EfficientNetB7",
    "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
    "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L",
    "Xception", "InceptionV3", "InceptionResNetV2", "NASNetMobile", "NASNetLarge",
    "ConvNeXtTiny", "VGG16",
]
MIN_SIZE = {"Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75,
            "NASNetMobile": 224, "NASNetLarge": 331}


def check_model(name):
    """Build, randomise, prune and compare one architecture; its JSON record."""
    import keras
    import numpy as np

    from tf_gamma_prune import batchnorm_layers, prune_model
    from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm

    rng = np.random.default_rng(FLAGS.seed)
    size = max(FLAGS.size, MIN_SIZE.get(name, 0))
    record = {"model": name, "input_shape": [size, size, 3]}
    t0 = time.perf_counter()
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    record["build_s"] = round(time.perf_counter() - t0, 2)
    # One generator for the BatchNorms and then the inputs below (randomize_batchnorm
    # draws from a Generator passed as its seed): the same draws, in the same order,
    # as this script's former own randomiser (checked on 7 architectures, identical
    # weights and inputs), so the committed JSON's cases stay what they were.
    randomize_batchnorm(model, seed=rng, zero_fraction=FLAGS.zero_fraction, signed_gamma=True)
    record["batchnorms"] = len(batchnorm_layers(model, with_gamma=False))
    record["batchnorms_with_gamma"] = sum(
        1 for l in model._flatten_layers()
        if isinstance(l, keras.layers.BatchNormalization) and l.scale)
    if record["batchnorms"] == 0:
        record.update(status="not BN-based", reason="no BatchNormalization layer")
        return record
    try:
        t0 = time.perf_counter()
        pruned, report = prune_model(model, return_report=True, probe=False)
        record["prune_s"] = round(time.perf_counter() - t0, 2)
    except Exception as err:  # noqa: BLE001 - recorded, not hidden
        record.update(status="unsupported", error_type=type(err).__name__,
                      reason=str(err).splitlines()[0][:400])
        return record
    x = rng.standard_normal((2, size, size, 3)).astype("float32")
    a = np.asarray(model(x, training=False), np.float64)
    b = np.asarray(pruned(x, training=False), np.float64)
    rel = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    status = "exact" if rel <= FLAGS.tolerance else "inexact"
    if record["batchnorms_with_gamma"] == 0:
        status += " (no BN has a γ: scale=False, nothing to remove)"
    record.update(
        status=status,
        relative_error=rel,
        params_before=report.params_before, params_after=report.params_after,
        macs_before=report.macs_before, macs_after=report.macs_after,
        removed_constant_groups=report.removed_constant,
        border_corrections=len(report.border_corrections),
        border_params=report.border_params,
        constant_layers=len(report.constant_layers),
        notes=report.notes[:5],
    )
    return record


def main(argv):
    del argv
    import keras

    from tf_gamma_prune.atomic_io import write_json_atomic

    names = FLAGS.models or ALL_MODELS
    previous = []
    if FLAGS.update and os.path.exists(FLAGS.output):
        with open(FLAGS.output) as f:
            previous = [r for r in json.load(f)["results"] if r["model"] not in names]
    results = []
    for name in names:
        keras.backend.clear_session()
        try:
            record = check_model(name)
        except Exception as err:  # noqa: BLE001
            record = {"model": name, "status": "error", "error_type": type(err).__name__,
                      "reason": str(err).splitlines()[0][:400],
                      "traceback": traceback.format_exc()[-1500:]}
        print(json.dumps({k: v for k, v in record.items() if k != "traceback"}),
              flush=True)
        results.append(record)
        order = {n: i for i, n in enumerate(ALL_MODELS)}
        merged = sorted(previous + results, key=lambda r: order.get(r["model"], len(order)))
        summary = {}
        for r in merged:
            summary[r["status"]] = summary.get(r["status"], 0) + 1
        write_json_atomic(FLAGS.output, {
            "benchmark": "applications_exactness",
            "tolerance": FLAGS.tolerance,
            "zero_fraction": FLAGS.zero_fraction,
            "seed": FLAGS.seed,
            **common.machine_info("tensorflow", "keras", "python", "machine"),
            "summary": summary,
            "results": merged,
        })


if __name__ == "__main__":
    app.run(main)
