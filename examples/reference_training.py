"""Train the committed Fashion-MNIST reference: ``saved_models/fashion_vgg_reference.keras``.

    .venv/bin/python examples/reference_training.py          # ≈ 2 h on 2 CPU cores, resumable

``fashion_vgg`` (widths 32-32-64-64-128-128) trained on 55,000 of the 60,000
training images; the other 5,000 (stratified, seed 0:
``tf_gamma_prune.data.validation_split``) are the validation split on which every
tuning choice of the compression benchmark is made. The test set is evaluated
once, at the end, and only reported.

Recipe (fixed before the run, not tuned on the test set): SGD momentum 0.9,
batch 128, learning rate 0.05 with cosine decay to 0 over all epochs, decoupled
weight decay 5e-3 on conv/dense kernels only (per step the same shrink as an L2
of 5e-4 through momentum-SGD), the benchmark's augmentation ``pad_crop_flip``
(pad 2, random 28×28 crop, horizontal flip).

Resumable: the training state (weights, optimizer, position) is written to
``--work_dir/checkpoint.npz`` every 100 steps by
:class:`tf_gamma_prune.sparsify.resume.StepCheckpoint`; each finished epoch's
metrics go to ``--work_dir/history.json``. Run the same command again after an
interruption. At the end it writes the ``.keras`` (no optimizer state), its
float32 ``.tflite`` (parity-checked) and ``fashion_vgg_reference.json``, the
training record (recipe, seed, per-epoch history, accuracies, seconds).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
NAME = "fashion_vgg_reference"
RECIPE = {
    "widths": [32, 32, 64, 64, 128, 128],
    "epochs": 24,
    "batch_size": 128,
    "learning_rate": 0.05,
    "schedule": "cosine decay to 0 over all epochs, per step",
    "momentum": 0.9,
    "weight_decay": 5e-3,
    "weight_decay_on": "conv/dense kernels (not BN gamma/beta, not biases), decoupled",
    "augment": "pad_crop_flip",
    "validation_examples": 5000,
    "validation_seed": 0,
    "seed": 0,
}


def define_flags() -> None:
    """Register this script's flags (only when run as a script, so tests can import it)."""
    flags.DEFINE_string("out_dir", "saved_models", "Where the .keras/.tflite/.json are written.")
    flags.DEFINE_string("work_dir", "saved_models/reference_work", "Checkpoint and history.")
    flags.DEFINE_integer("epochs", RECIPE["epochs"], "Training epochs (cosine over all of them).")
    flags.DEFINE_integer("train_examples", 0, "Training images before the hold-out (0: all).")
    flags.DEFINE_integer("seed", RECIPE["seed"], "Random seed.")


def compile_reference(model, *, steps: int, learning_rate: float, momentum: float,
                      weight_decay: float) -> None:
    """SGD + cosine + decoupled weight decay on kernels only."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    optimizer = keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def epoch_recorder(path: pathlib.Path):
    """A callback that writes each finished epoch's logs and seconds into a JSON list."""
    import keras

    from tf_gamma_prune.atomic_io import write_json_atomic

    started = {}

    def on_epoch_end(epoch, logs=None):
        rows = [r for r in (json.loads(path.read_text()) if path.exists() else [])
                if r["epoch"] != epoch]
        rows.append({"epoch": epoch, "seconds": round(time.perf_counter() - started[epoch], 1),
                     **{k: float(v) for k, v in (logs or {}).items()}})
        write_json_atomic(path, sorted(rows, key=lambda r: r["epoch"]))

    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: started.__setitem__(epoch, time.perf_counter()),
        on_epoch_end=on_epoch_end)


def train_reference(x, y, x_test, y_test, *, out_dir: str, work_dir: str, epochs: int,
                    seed: int = 0, verbose: int = 2) -> dict:
    """Train (or resume) the reference; writes the three files and returns the record.

        record = train_reference(x, y, x_test, y_test, out_dir="saved_models",
                                 work_dir="saved_models/reference_work", epochs=24)
    """
    import keras
    import numpy as np

    from pretrained import save_with_tflite
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.data import make_dataset, validation_split
    from tf_gamma_prune.reference_models import fashion_vgg
    from tf_gamma_prune.sparsify.resume import StepCheckpoint, fit_resumable

    r = {**RECIPE, "epochs": epochs, "seed": seed}
    (xt, yt), (xv, yv) = validation_split(x, y, r["validation_examples"], r["validation_seed"])
    work = pathlib.Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    model = fashion_vgg(widths=r["widths"])
    steps_per_epoch = -(-len(xt) // r["batch_size"])
    compile_reference(model, steps=epochs * steps_per_epoch, learning_rate=r["learning_rate"],
                      momentum=r["momentum"], weight_decay=r["weight_decay"])

    def epoch_data(epoch):
        return make_dataset(xt, yt, r["batch_size"], shuffle=True, augment=r["augment"],
                            seed=1000 * seed + epoch)

    start = time.perf_counter()
    fit_resumable(model, epoch_data, epochs, StepCheckpoint(work / "checkpoint.npz", 100),
                  callbacks=[epoch_recorder(work / "history.json")],
                  validation_data=make_dataset(xv, yv, 512), verbose=verbose)
    history = json.loads((work / "history.json").read_text())
    test_accuracy = float(np.mean(np.argmax(model.predict(x_test, 512, verbose=0), -1) == y_test))
    val_accuracy = float(np.mean(np.argmax(model.predict(xv, 512, verbose=0), -1) == yv))
    out = pathlib.Path(out_dir)
    parity = save_with_tflite(model, x_test, str(out / f"{NAME}.keras"), str(out / f"{NAME}.tflite"))
    record = {
        "model": f"{NAME}.keras", "recipe": r, "train_examples": int(len(xt)),
        "validation_accuracy": val_accuracy, "test_accuracy": test_accuracy,
        "params": int(model.count_params()),
        "train_seconds": round(sum(h["seconds"] for h in history), 1),
        "seconds_this_process": round(time.perf_counter() - start, 1),
        "tflite_parity_max_rel": parity, "history": history,
        "machine": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "keras": keras.__version__},
    }
    write_json_atomic(out / f"{NAME}.json", record)
    return record


def main(argv):
    del argv
    from fashion_mnist import quiet_absl_logging

    from tf_gamma_prune.data import load_fashion_mnist

    quiet_absl_logging()
    (x, y), (x_test, y_test) = load_fashion_mnist()
    if FLAGS.train_examples:
        x, y = x[: FLAGS.train_examples], y[: FLAGS.train_examples]
    record = train_reference(x, y, x_test, y_test, out_dir=FLAGS.out_dir, work_dir=FLAGS.work_dir,
                             epochs=FLAGS.epochs, seed=FLAGS.seed)
    print(f"reference: validation {record['validation_accuracy']:.4f}, test "
          f"{record['test_accuracy']:.4f}, {record['params']:,} params, "
          f"{record['train_seconds']:.0f} s of training")


if __name__ == "__main__":
    define_flags()
    app.run(main)
