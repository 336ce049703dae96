"""The compression benchmark's widths, timed side by side in one run.

The compression benchmark times each record against the reference when the
record lands, so records made in different sessions were timed on different
machines, and their speed-ups move with the machine (the same tiled model:
5.94× in one session, 4.84× in another). Latency depends on the widths, not on
the weights, so this script rebuilds ``fashion_vgg`` at every distinct width
vector of the chosen methods' records (random weights), converts each to
float32 TFLite and times them all in one loop (``time_in_turns``, steady
timing, a fresh random order of the models every turn, 1 thread), with the
unpruned reference among them. Recorded per width vector: the methods, targets
and seeds that ended there, MACs, the median milliseconds, the speed-up
against the reference and its ratio to the MAC reduction.

    .venv/bin/python benchmarks/width_speed.py        # about 2 min on 2 idle cores

Reads ``benchmarks/results/compression.json`` (``--source``), writes
``benchmarks/results/width_speed.json``.

Example (the width vectors of two records, one shared):

>>> records = [{"method": "l1_norm", "target": 0, "seed": 0, "widths": {"bn1": 2, "bn2": 3}},
...            {"method": "l1_norm", "target": 0, "seed": 1, "widths": {"bn1": 2, "bn2": 3}},
...            {"method": "random", "target": 0, "seed": 0, "widths": {"bn1": 1, "bn2": 3}}]
>>> distinct_widths(records, ["l1_norm"])
{(2, 3): ['l1_norm target 0 seed 0', 'l1_norm target 0 seed 1']}
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets sys.path and TF's log level)
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
common.define_output_flag("width_speed")
flags.DEFINE_string("source", str(common.result_path("compression")),
                    "The compression benchmark's results, whose widths are timed.")
flags.DEFINE_list("methods", ["gamma_ista", "gamma_ista_tiled", "l1_norm", "l1_norm_tiled"],
                  "Methods whose records' widths are timed.")
flags.DEFINE_integer("runs", 300, "Timed invocations per model.")
flags.DEFINE_integer("block", 10, "Timed invocations per turn (steady timing).")
flags.DEFINE_integer("warmup", 10, "Untimed invocations per model first.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and of the turn order.")


def distinct_widths(records: list[dict], methods: list[str]) -> dict[tuple, list[str]]:
    """``{width vector (bn1, bn2, ...): ["method target k seed s", ...]}`` over the
    measured records of ``methods``, in the order they first appear."""
    out: dict[tuple, list[str]] = {}
    for r in records:
        if r["method"] in methods and r.get("widths"):
            key = tuple(r["widths"][f"bn{i + 1}"] for i in range(len(r["widths"])))
            out.setdefault(key, []).append(f"{r['method']} target {r['target']} seed {r['seed']}")
    return out


def time_side_by_side(flatbuffers: list[bytes], runs: int, block: int, warmup: int,
                      seed: int) -> list[list[float]]:
    """Milliseconds per model, all timed in one loop in a fresh random order every turn."""
    from tf_gamma_prune import latency_side_by_side

    reports = latency_side_by_side(flatbuffers, num_threads=1, runs=runs, warmup=warmup,
                                   block=block, seed=seed)
    return [list(r.samples_ms) for r in reports]


def main(argv):
    del argv
    import keras
    import numpy as np

    from tf_gamma_prune import count_macs, to_tflite
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.reference_models import fashion_vgg

    doc = json.loads(open(FLAGS.source).read())
    reference = tuple(doc["settings"]["widths"])
    groups = {reference: ["reference"], **distinct_widths(doc["records"], FLAGS.methods)}
    flatbuffers, macs = [], []
    for widths in groups:
        keras.utils.set_random_seed(FLAGS.seed)
        model = fashion_vgg(widths=widths)
        flatbuffers.append(to_tflite(model))
        macs.append(int(count_macs(model)))
    samples = time_side_by_side(flatbuffers, FLAGS.runs, FLAGS.block, FLAGS.warmup, FLAGS.seed)
    medians = [float(np.median(s)) for s in samples]
    rows = []
    for (widths, names), m, ms in zip(groups.items(), macs, medians):
        speedup, reduction = medians[0] / ms, macs[0] / m
        rows.append({"widths": list(widths), "records": names, "macs": m, "median_ms": round(ms, 4),
                     "mac_reduction": round(reduction, 3), "speedup": round(speedup, 3),
                     "speedup_over_mac_reduction": round(speedup / reduction, 3)})
        print(f"{'-'.join(map(str, widths)):>24}  {reduction:5.2f}x fewer MACs  {speedup:5.2f}x "
              f"faster  ({speedup / reduction:.2f})  {', '.join(names)}")
    write_json_atomic(FLAGS.output, {
        "benchmark": "width_speed", "source": os.path.relpath(FLAGS.source, common.ROOT),
        "settings": {"methods": FLAGS.methods, "runs": FLAGS.runs, "block": FLAGS.block,
                     "warmup": FLAGS.warmup, "seed": FLAGS.seed, "threads": 1,
                     "timing": "steady, every model in one loop, random order per turn"},
        "machine": common.machine_info(), "rows": rows})


if __name__ == "__main__":
    app.run(main)
