"""BorderCorrection layouts side by side: the compact ring vs the whole map, latency and file size.

``fashion_vgg`` at several input sizes, random BatchNorm statistics, half of
every BatchNormalization's γ set to zero, pruned with ``fold="carrier",
carrier_tile=8`` (the export the README recommends: border maps where a
carrier channel would cost a tile). The pruned model is then rebuilt twice,
once with every BorderCorrection in the ring layout (``compact=True``) and
once with whole maps (``compact=False``); both are converted to float32
TFLite, checked against the unpruned Keras model, and timed side by side
(``export.compare_latency``, steady timing, 1 thread). The ratio, not the
absolute times, is the result: it decides ``compact="auto"``'s threshold.

    .venv/bin/python benchmarks/border_layout.py             # about 3 min on 2 cores

Writes ``benchmarks/results/border_layout.json``: per input size, both
layouts' ``.tflite`` bytes, op counts, parity and median latency, and
``ring_slowdown`` (ring median / whole median; > 1: the ring is slower) and
``whole_size_ratio`` (whole file / ring file).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets sys.path and TF's log level)
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
common.define_output_flag("border_layout")
flags.DEFINE_list("sizes", ["28", "112", "224"], "Input resolutions (square).")
flags.DEFINE_integer("pixels_per_run", 300 * 28 * 28, "Timed runs per size = this / (size²) + 20.")
flags.DEFINE_integer("seed", 0, "Random seed (BatchNorm statistics, zeroed channels, inputs).")


def pruned_fashion_vgg(size: int, seed: int):
    """(unpruned, pruned) fashion_vgg at ``size``×``size`` with half of each BN's γ at zero."""
    import keras
    import numpy as np

    from tf_gamma_prune import prune_model
    from tf_gamma_prune.reference_models import fashion_vgg

    rng = np.random.default_rng(seed)
    model = fashion_vgg(input_shape=(size, size, 1))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma = rng.uniform(0.5, 1.5, n).astype("float32")
            gamma[rng.choice(n, n // 2, replace=False)] = 0.0
            layer.gamma.assign(gamma)
            layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))
    return model, prune_model(model, fold="carrier", carrier_tile=8)


def with_layout(model, compact: bool):
    """``model`` with every BorderCorrection rebuilt in one layout (other layers shared)."""
    import keras

    from tf_gamma_prune import BorderCorrection

    def clone(layer):
        if isinstance(layer, BorderCorrection):
            return BorderCorrection(layer.full_map().astype("float32"), compact=compact, name=layer.name)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def measure(size: int, workdir: str) -> dict:
    import numpy as np

    from tf_gamma_prune import BorderCorrection, export

    original, pruned = pruned_fashion_vgg(size, FLAGS.seed)
    x = np.random.default_rng(FLAGS.seed + 1).random((4, size, size, 1), dtype=np.float32)
    entry: dict = {"border_corrections": sum(isinstance(la, BorderCorrection) for la in pruned.layers)}
    paths = {}
    for label, compact in (("ring", True), ("whole", False)):
        model = with_layout(pruned, compact)
        paths[label] = os.path.join(workdir, f"{label}_{size}.tflite")
        flatbuffer = export.to_tflite(model, paths[label])
        entry[label] = {
            "tflite_bytes": len(flatbuffer),
            "ops": export.op_counts(flatbuffer),
            "tflite_vs_unpruned_keras_max_rel": export.check_parity(original, paths[label], x).max_rel,
        }
    runs = FLAGS.pixels_per_run // (size * size) + 20
    (c,) = export.compare_latency(paths["ring"], paths["whole"], threads=[1], warmup=5, runs=runs,
                                  timing="steady", block=10)
    entry["ring"]["median_ms"], entry["whole"]["median_ms"] = c.a.median_ms, c.b.median_ms
    entry.update(runs=runs, ring_slowdown=c.a.median_ms / c.b.median_ms,
                 whole_size_ratio=entry["whole"]["tflite_bytes"] / entry["ring"]["tflite_bytes"])
    return entry


def main(argv):
    del argv
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.layers import COMPACT_FROM

    started = time.time()
    results = {"settings": {"sizes": [int(s) for s in FLAGS.sizes], "seed": FLAGS.seed, "threads": 1,
                            "timing": "steady", "fold": "carrier", "carrier_tile": 8,
                            "compact_from": COMPACT_FROM},
               "machine": common.machine_info(), "sizes": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for size in results["settings"]["sizes"]:
            entry = measure(size, workdir)
            results["sizes"][str(size)] = entry
            print(f"{size}x{size}: ring {entry['ring']['median_ms']:.3f} ms, "
                  f"{entry['ring']['tflite_bytes']:,} B; whole {entry['whole']['median_ms']:.3f} ms, "
                  f"{entry['whole']['tflite_bytes']:,} B; ring slowdown {entry['ring_slowdown']:.3f}",
                  flush=True)
    results["seconds"] = round(time.time() - started, 1)
    write_json_atomic(FLAGS.output, results)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
