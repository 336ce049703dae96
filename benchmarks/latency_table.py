"""How well a measured LatencyTable predicts the latency of pruned models, against a MAC count.

``fashion_vgg`` (28×28, widths 32-32-64-64-128-128, random BatchNorm
statistics): its table is measured (``measure_latency_table``, 1 thread,
``--step``), then for each ``--fractions`` a random fraction of every
BatchNormalization's channels is zeroed, the model pruned
(``fold="bias"``), and its ``.tflite`` timed side by side with the original
(``export.compare_latency``, steady timing). Recorded per fraction: the
measured latency (the original's measured ``model_ms`` × the measured ratio),
the table's prediction, and the MAC-proportional guess (``model_ms`` × the
pruned fraction of MACs), with their relative errors. Also recorded: the
latency of one conv (``--sweep_layer``) at every output width (step 1), the
tile staircase the table has to capture (17 channels costing what 32 cost).

    .venv/bin/python benchmarks/latency_table.py        # about 5-10 min on 2 cores

Writes ``benchmarks/results/latency_table.json``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets sys.path and TF's log level)
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
common.define_output_flag("latency_table")
flags.DEFINE_list("fractions", ["0.2", "0.4", "0.6", "0.75"], "Fractions of channels zeroed.")
flags.DEFINE_integer("step", 4, "Width step of the table's sweeps.")
flags.DEFINE_integer("runs", 100, "Timed runs per measured op of the table.")
flags.DEFINE_integer("compare_runs", 200, "Timed runs per model in each side-by-side comparison.")
flags.DEFINE_string("sweep_layer", "conv4", "The conv timed at every output width (empty: none).")
flags.DEFINE_integer("seed", 0, "Random seed.")


def random_bn(model, rng) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))


def main(argv):
    del argv
    import keras
    import numpy as np

    from tf_gamma_prune import channel_graph, planned_latency_ms, prune_model
    from tf_gamma_prune.analysis.flops import planned_macs
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.export import benchmark_latency, compare_latency, measure_latency_table, to_tflite
    from tf_gamma_prune.export.layer_latency import _one_op_tflite
    from tf_gamma_prune.reference_models import fashion_vgg

    started = time.time()
    rng = np.random.default_rng(FLAGS.seed)
    model = fashion_vgg()
    random_bn(model, rng)
    table = measure_latency_table(model, step=FLAGS.step, runs=FLAGS.runs,
                                  progress=lambda line: print(line, flush=True))
    original = to_tflite(model)
    rows = []
    for fraction in (float(f) for f in FLAGS.fractions):
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())
        for layer in twin.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                gamma = layer.gamma.numpy()
                gamma[rng.choice(len(gamma), int(fraction * len(gamma)), replace=False)] = 0.0
                layer.gamma.assign(gamma)
        graph = channel_graph(twin, fold="bias")
        removed = graph.removable_constant_groups()
        predicted = planned_latency_ms(graph, removed, table)
        mac_fraction = planned_macs(graph, removed) / planned_macs(graph, np.zeros_like(removed))
        (c,) = compare_latency(original, to_tflite(prune_model(twin, fold="bias")), threads=[1],
                               runs=FLAGS.compare_runs, timing="steady", block=10)
        measured = table.model_ms * c.b.median_ms / c.a.median_ms
        rows.append({"fraction_zeroed": fraction, "mac_fraction": mac_fraction,
                     "measured_ms": measured, "table_ms": predicted, "macs_ms": table.model_ms * mac_fraction,
                     "table_rel_error": predicted / measured - 1,
                     "macs_rel_error": table.model_ms * mac_fraction / measured - 1,
                     "measured_speedup": c.speedup})
        print(f"{fraction:.2f} zeroed: measured {measured:.4f} ms, table {predicted:.4f} "
              f"({rows[-1]['table_rel_error']:+.1%}), MACs {rows[-1]['macs_ms']:.4f} "
              f"({rows[-1]['macs_rel_error']:+.1%})", flush=True)
    sweep = {}
    if FLAGS.sweep_layer:
        layer = model.get_layer(FLAGS.sweep_layer)
        spatial, c_in = tuple(layer.input.shape[1:-1]), int(layer.input.shape[-1])
        for k in range(1, int(layer.filters) + 1):
            sweep[k] = benchmark_latency(_one_op_tflite(layer, spatial, c_in, k), num_threads=1,
                                         runs=FLAGS.runs).median_ms
    doc = {"settings": {"model": "fashion_vgg", "step": FLAGS.step, "runs": FLAGS.runs,
                        "compare_runs": FLAGS.compare_runs, "threads": 1, "seed": FLAGS.seed,
                        "fold": "bias"},
           "machine": common.machine_info(), "table": table.to_json(), "predictions": rows,
           "max_abs_table_error": max(abs(r["table_rel_error"]) for r in rows),
           "max_abs_macs_error": max(abs(r["macs_rel_error"]) for r in rows),
           "sweep_layer": FLAGS.sweep_layer, "sweep_out_ms": sweep,
           "seconds": round(time.time() - started, 1)}
    write_json_atomic(FLAGS.output, doc)
    print(f"wrote {FLAGS.output} (table max error {doc['max_abs_table_error']:.1%}, "
          f"MACs {doc['max_abs_macs_error']:.1%})")


if __name__ == "__main__":
    app.run(main)
