"""Does 2:4 weight sparsity on top of channel pruning make a ``.tflite`` faster on XNNPACK? (No.)

Issue 19 asked for tfmot's structured 2:4 sparsity on the layers left after channel pruning *if
it measurably helps latency on XNNPACK*. This measures the question directly, without tfmot (the
pattern, not the training, decides the speed): the committed pruned model
(``saved_models/fashion_vgg_pruned.keras``) gets, in every conv/dense kernel with at least 4 input
channels, the 2 smallest of every 4 consecutive input-channel weights set to 0 (per output channel
and tap), and is converted twice: plainly (the zeros stored densely) and with
``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (sparse tensors in the file). Both are timed side by side
with the dense original at 1 thread (``compare_latency``, steady).

    .venv/bin/python benchmarks/sparsity_2_4.py          # about 1 min

Writes ``benchmarks/results/sparsity_2_4.json``: sizes, op counts and speed-ups (dense latency /
2:4 latency; 1.0 = no gain). Measured here: 1.00× for both, the sparse encoding adding ``DENSIFY``
ops (XNNPACK runs the densified weights); the file is 28 % smaller. So 2:4 sparsity is not offered.
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
common.define_output_flag("sparsity_2_4")
flags.DEFINE_string("model", str(common.ROOT / "saved_models" / "fashion_vgg_pruned.keras"),
                    "The channel-pruned .keras model.")
flags.DEFINE_integer("runs", 300, "Timed runs per model and comparison.")


def two_of_four_zeroed(model):
    """A copy of ``model`` whose conv/dense kernels keep the 2 largest of every 4 input weights."""
    import keras
    import numpy as np

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.kernel.shape[-2] >= 4:
            kernel = layer.kernel.numpy()
            rows = np.moveaxis(kernel, -2, -1).reshape(-1, kernel.shape[-2])  # (taps·out, in)
            n = rows.shape[1] // 4 * 4
            groups = rows[:, :n].reshape(len(rows), -1, 4)
            np.put_along_axis(groups, np.argsort(np.abs(groups), axis=-1)[..., :2], 0.0, axis=-1)
            rows[:, :n] = groups.reshape(len(rows), n)
            shape = kernel.shape[:-2] + (kernel.shape[-1], kernel.shape[-2])
            layer.kernel.assign(np.moveaxis(rows.reshape(shape), -1, -2))
    return copy


def sparse_encoded_tflite(model) -> bytes:
    """``model`` converted with ``EXPERIMENTAL_SPARSITY`` (sparse weight tensors in the file)."""
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", lambda x: model(x, training=False),
                             [tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)])
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        return converter.convert()


def main(argv):
    del argv
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.export import compare_latency, load_keras_model, op_counts, to_tflite

    started = time.time()
    model = load_keras_model(FLAGS.model)
    sparse = two_of_four_zeroed(model)
    files = {"dense": to_tflite(model), "two_four_dense_zeros": to_tflite(sparse),
             "two_four_sparse_encoded": sparse_encoded_tflite(sparse)}
    doc = {"settings": {"model": os.path.relpath(FLAGS.model, common.ROOT), "runs": FLAGS.runs,
                        "threads": 1, "timing": "steady"},
           "machine": common.machine_info(), "variants": {}}
    for name, flatbuffer in files.items():
        entry = {"tflite_bytes": len(flatbuffer), "ops": op_counts(flatbuffer)}
        if name != "dense":
            (c,) = compare_latency(files["dense"], flatbuffer, threads=[1], runs=FLAGS.runs,
                                   timing="steady", block=10)
            entry.update(dense_ms=c.a.median_ms, median_ms=c.b.median_ms, speedup=c.speedup)
            print(f"{name}: {c.speedup:.3f}x ({len(flatbuffer):,} bytes)", flush=True)
        doc["variants"][name] = entry
    doc["seconds"] = round(time.time() - started, 1)
    write_json_atomic(FLAGS.output, doc)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
