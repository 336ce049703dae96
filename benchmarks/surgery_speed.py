"""How long does prune_model take, relative to keras.models.clone_model?

Builds ResNet152 (weights=None), sets random BN statistics and zeroes a random
fraction of the γ, then times ``prune_model(model)`` and
``keras.models.clone_model(model)`` in the same process, alternating the two
for ``--repeats`` rounds (so drifts in machine load hit both alike). The
target is a median ratio ≤ 2: pruning rebuilds the model like a clone does,
plus the channel analysis, weight slicing and exact constant folding.

Writes benchmarks/results/surgery_speed.json atomically (temp file + rename).

    python benchmarks/surgery_speed.py --repeats=5

Duration and output: ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
common.define_application_flags(size=224, zero_fraction=0.5)
flags.DEFINE_integer("repeats", 5, "Alternating rounds of clone / prune.")
common.define_output_flag("surgery_speed")


def main(argv):
    del argv
    import keras

    from tf_gamma_prune import prune_model
    from tf_gamma_prune.atomic_io import write_json_atomic

    model, _ = common.random_application(FLAGS.model, FLAGS.size, FLAGS.seed, FLAGS.zero_fraction)
    prune_model(model)  # warm-up: first eager ops, imports
    keras.models.clone_model(model)

    clone_s, prune_s = [], []
    pruned = None
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        keras.models.clone_model(model)
        clone_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pruned = prune_model(model)
        prune_s.append(time.perf_counter() - t0)
        print(f"clone {clone_s[-1]:.2f}s  prune {prune_s[-1]:.2f}s", flush=True)

    t0 = time.perf_counter()
    _, report = prune_model(model, return_report=True)
    report_s = time.perf_counter() - t0
    ratios = [p / c for p, c in zip(prune_s, clone_s)]
    payload = {
        "benchmark": "surgery_speed",
        "model": FLAGS.model,
        "input_shape": [FLAGS.size, FLAGS.size, 3],
        "zero_fraction": FLAGS.zero_fraction,
        "repeats": FLAGS.repeats,
        "clone_model_s": [round(v, 3) for v in clone_s],
        "prune_model_s": [round(v, 3) for v in prune_s],
        "median_clone_s": round(statistics.median(clone_s), 3),
        "median_prune_s": round(statistics.median(prune_s), 3),
        "median_ratio": round(statistics.median(ratios), 3),
        "target_ratio": 2.0,
        "prune_with_report_and_probe_s": round(report_s, 3),
        "params_before": report.params_before,
        "params_after": report.params_after,
        "border_params": report.border_params,
        "macs_before": report.macs_before,
        "macs_after": report.macs_after,
        "probe_max_rel_deviation": report.max_rel_deviation,
        "layers": len(model.layers),
        "pruned_layers": len(pruned.layers),
        **common.machine_info("tensorflow", "keras", "python", "machine", "cpu_count"),
    }
    write_json_atomic(FLAGS.output, payload)
    print(json.dumps({k: payload[k] for k in (
        "median_clone_s", "median_prune_s", "median_ratio", "probe_max_rel_deviation")}))


if __name__ == "__main__":
    app.run(main)
