"""On-device-style latency of pruned vs unpruned models (LiteRT CPU/XNNPACK).

For each network, an "original" model and a "pruned" one with about
``--prune_fraction`` of its prunable channels removed are exported to float32
TFLite (builtin ops only) and timed side by side with
:func:`tf_gamma_prune.export.compare_latency` (runs alternate between the two
models). Reported per network: .tflite sizes on disk, MACs, latency at each
thread count, the realised speed-up and its ratio to the MAC reduction
(target: ≥ 0.8 at 1 thread).

Networks:

* ``mobilenetv2``: ``keras.applications.MobileNetV2(weights=None)`` at
  ``--input_size``; prunable channels are those behind ``bn_Conv1``, every
  ``block_*_expand_BN`` and ``Conv_1_bn`` (projection outputs are tied by the
  residual additions and stay).
* ``fashion_vgg``: :func:`tf_gamma_prune.reference_models.fashion_vgg`
  (28×28×1); every BatchNormalization is prunable.

Pruners:

* ``gamma`` (default): zero γ of a random ``--prune_fraction`` of the prunable
  channels and remove them with :func:`tf_gamma_prune.surgery.prune_model`
  (the real pipeline), with ``--fold`` (``exact`` adds BorderCorrection ADD
  ops after 'same'-padded convs that read removed constant channels).
* ``width``: build the same architecture with the producing convolutions
  narrowed by the same fraction (a structural twin; no pruning code involved).

    .venv/bin/python benchmarks/tflite_latency.py                  # short run, 96×96
    .venv/bin/python benchmarks/tflite_latency.py --input_size=224 --runs=50

Random weights (never downloaded): latency does not depend on the values.
The 2-core development machine is shared; absolute numbers are only indicative,
the speed-up ratios are what matters.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["mobilenetv2", "fashion_vgg"], "Networks to benchmark.")
flags.DEFINE_integer("input_size", 96, "MobileNetV2 input height/width (224 is the ImageNet size).")
flags.DEFINE_enum("pruner", "gamma", ["gamma", "width"], "How the pruned model is made.")
flags.DEFINE_float("prune_fraction", 0.5, "Fraction of prunable channels removed per layer.")
flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts.")
flags.DEFINE_enum("fold", "exact", ["exact", "bias"], "prune_model's fold (gamma pruner only): 'exact' adds "
                  "BorderCorrection ADDs where zero padding needs them, 'bias' is the paper's plain fold.")
flags.DEFINE_integer("runs", 100, "Timed runs per model and thread count (cheap next to conversion).")
flags.DEFINE_integer("warmup", 10, "Untimed runs first.")
flags.DEFINE_integer("seed", 0, "Seed for weights and the channels removed.")
flags.DEFINE_string("output", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                           "tflite_latency.json"), "JSON results path.")

TARGET_EFFICIENCY = 0.8  # realised speed-up / MAC reduction at 1 thread
PRUNABLE_BN = {
    "mobilenetv2": re.compile(r"^(bn_Conv1|block_\d+_expand_BN|Conv_1_bn)$"),
    "fashion_vgg": re.compile(r"^bn\d+$"),
}


def build(name: str):
    import keras

    if name == "mobilenetv2":
        size = FLAGS.input_size
        return keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=1000)
    if name == "fashion_vgg":
        from tf_gamma_prune.reference_models import fashion_vgg

        return fashion_vgg()
    raise app.UsageError(f"Unknown model {name!r}; use mobilenetv2 or fashion_vgg.")


def randomize_batchnorm(model, rng) -> None:
    """Non-trivial BN statistics, as after training."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.2, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


def prunable_bns(model, name: str) -> list:
    return [layer for layer in model.layers if PRUNABLE_BN[name].match(layer.name)]


def prune_by_gamma(model, name: str, rng):
    """Zero γ of a random fraction of each prunable BN, then prune_model."""
    from tf_gamma_prune.surgery import prune_model

    for bn in prunable_bns(model, name):
        gamma = bn.gamma.numpy()
        drop = rng.choice(len(gamma), int(round(FLAGS.prune_fraction * len(gamma))), replace=False)
        gamma[drop] = 0.0
        bn.gamma.assign(gamma)
    pruned, report = prune_model(model, fold=FLAGS.fold, return_report=True)
    return pruned, {"prune_max_rel_deviation": report.max_rel_deviation, "prune_notes": report.notes}


def prune_by_width(model, name: str, rng):
    """A structural twin whose convolutions feeding prunable BNs are narrower."""
    import keras

    config = model.get_config()
    bn_names = {bn.name for bn in prunable_bns(model, name)}
    producers = set()
    for layer in config["layers"]:
        if layer["name"] in bn_names:
            history = layer["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
            producers.add(history[0])
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":
            layer.pop("build_config", None)  # stale input shapes; layers rebuild on call
        if layer["name"] in producers:
            filters = layer["config"]["filters"]
            layer["config"]["filters"] = filters - int(round(FLAGS.prune_fraction * filters))
    twin = keras.Model.from_config(config)
    randomize_batchnorm(twin, rng)
    return twin, {}


def count_macs(model) -> int | None:
    try:
        from tf_gamma_prune.flops import count_macs as library_count
    except ImportError:  # pragma: no cover - TODO: drop once flops.py is everywhere
        return _local_macs(model)
    return library_count(model)


def _local_macs(model) -> int:
    """Conv/depthwise/dense MACs (TODO: remove; tf_gamma_prune.flops does this)."""
    import keras

    total = 0
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += out[1] * out[2] * k * out[3]
        elif isinstance(layer, keras.layers.Conv2D):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += out[1] * out[2] * k * layer.input.shape[-1] // layer.groups * out[3]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


def bench_one(name: str, workdir: str, threads: list[int]) -> dict:
    import numpy as np

    from tf_gamma_prune import export

    rng = np.random.default_rng(FLAGS.seed)
    model = build(name)
    randomize_batchnorm(model, rng)
    pruned, extra = (prune_by_gamma if FLAGS.pruner == "gamma" else prune_by_width)(model, name, rng)

    entry: dict = {"input_shape": list(model.inputs[0].shape[1:])}
    paths = {}
    for label, m in (("original", model), ("pruned", pruned)):
        started = time.perf_counter()
        path = os.path.join(workdir, f"{name}_{label}.tflite")
        flatbuffer = export.to_tflite(m, path)
        paths[label] = path
        gpu = export.gpu_compatibility(flatbuffer)
        entry[label] = {
            "tflite_bytes": os.path.getsize(path),
            "macs": count_macs(m),
            "params": int(m.count_params()),
            "ops": export.op_counts(flatbuffer),
            "gpu_delegate_compatible": gpu.compatible,
            "gpu_unsupported_ops": gpu.unsupported_ops,
            "convert_seconds": round(time.perf_counter() - started, 2),
        }
    x = np.random.default_rng(1).random((4, *entry["input_shape"]), dtype=np.float32)
    entry["tflite_vs_keras_max_rel"] = export.check_parity(pruned, paths["pruned"], x).max_rel
    entry.update(extra)
    macs_o, macs_p = entry["original"]["macs"], entry["pruned"]["macs"]
    entry["mac_reduction"] = macs_o / macs_p if macs_o and macs_p else None
    entry["size_reduction"] = entry["original"]["tflite_bytes"] / entry["pruned"]["tflite_bytes"]

    comparisons = export.compare_latency(
        paths["original"], paths["pruned"], threads=threads, warmup=FLAGS.warmup, runs=FLAGS.runs,
        progress=lambda line: print(f"  {name}: {line}", file=sys.stderr, flush=True),
    )
    entry["latency"] = {}
    for c in comparisons:
        efficiency = c.speedup / entry["mac_reduction"] if entry["mac_reduction"] else None
        entry["latency"][str(c.num_threads)] = {
            "original_median_ms": c.a.median_ms, "original_p10_ms": c.a.p10_ms, "original_p90_ms": c.a.p90_ms,
            "pruned_median_ms": c.b.median_ms, "pruned_p10_ms": c.b.p10_ms, "pruned_p90_ms": c.b.p90_ms,
            "speedup": c.speedup,
            "speedup_p10": c.a.p10_ms / c.b.p10_ms,  # less sensitive to interference from other processes
            "speedup_over_mac_reduction": efficiency,
        }
    one = entry["latency"].get("1")
    entry["meets_target_1_thread"] = (
        None if one is None or one["speedup_over_mac_reduction"] is None
        else one["speedup_over_mac_reduction"] >= TARGET_EFFICIENCY
    )
    return entry


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    import ai_edge_litert
    import keras
    import tensorflow as tf

    from tf_gamma_prune import export

    keras.utils.set_random_seed(FLAGS.seed)
    threads = [int(t) for t in FLAGS.threads]
    results = {
        "settings": {
            "models": FLAGS.models, "input_size_mobilenetv2": FLAGS.input_size, "pruner": FLAGS.pruner,
            "fold": FLAGS.fold if FLAGS.pruner == "gamma" else None,
            "prune_fraction": FLAGS.prune_fraction, "threads": threads, "runs": FLAGS.runs,
            "warmup": FLAGS.warmup, "seed": FLAGS.seed, "quantization": "none (float32)",
            "runtime": f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')} interpreter, "
                       "default XNNPACK CPU delegate",
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu_count": os.cpu_count(),
            "note": "shared development machine; latency alternates original/pruned runs",
            "target_speedup_over_mac_reduction_1_thread": TARGET_EFFICIENCY,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="tflite_latency_") as workdir:
        for name in FLAGS.models:
            print(f"{name}: building, pruning ({FLAGS.pruner}) and converting...", file=sys.stderr, flush=True)
            results["models"][name] = entry = bench_one(name, workdir, threads)
            one = entry["latency"].get("1", {})
            print(
                f"{name}: size {entry['original']['tflite_bytes']:,} -> {entry['pruned']['tflite_bytes']:,} B, "
                f"MAC reduction {entry['mac_reduction']:.2f}x, speed-up @1 thread {one.get('speedup', float('nan')):.2f}x "
                f"(efficiency {one.get('speedup_over_mac_reduction') or float('nan'):.2f}; "
                f"p10-based speed-up {one.get('speedup_p10', float('nan')):.2f}x)",
                flush=True,
            )
    export.write_atomic(FLAGS.output, (json.dumps(results, indent=2) + "\n").encode())
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
