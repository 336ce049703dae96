"""Channel-importance histograms over training: receding importances vs L1 on γ.

Trains the small Fashion-MNIST VGG (``fashion_vgg(widths=(8, 8, 16, 16, 32, 32))``)
twice from the same seed on a subset of the real training images:

* **rni** — every BatchNormalization swapped for ``BoundedBatchNormalization``
  (``to_bounded_batchnorm``) with ``RecedingImportanceRegularizer(--rni_strength,
  shift=--rni_shift)``, the BN parameters at 10x the SGD rate
  (``BatchNormLRMultiplier``); importance = ``sigmoid(w)``;
* **l1_gamma** — Network Slimming (``NetworkSlimming(l1=--l1)``, the paper's VGG
  λ); importance = ``|γ| / max|γ|`` (all layers pooled).

After every epoch it records the importances of all channels and the stated
bimodality statistic: the mass below 0.1, the mass above 0.9, their sum
("tails") and the smaller of the two ("both_modes", which a single spike does
not score: every γ = 1 at initialisation has tails = 1). At the end each model
is cut at ``--prune_fraction`` of its channels by its own global criterion
(``receding_importance_selection`` with ``min_channels=3``;
``gamma_threshold_selection``), evaluated, fine-tuned for
``--fine_tune_epochs`` with plain SGD and evaluated again. SGD has weight
decay ``--weight_decay`` on every variable except, for RNI, the BN parameters
(the recipe).

    nice -n 19 .venv/bin/python benchmarks/importance_histograms.py      # ≈ 5 min, 2 cores

Writes ``benchmarks/results/importance_histograms.json`` (config, per method
the per-epoch statistic and test accuracy, the final importances, the cut) and
``benchmarks/results/importance_histograms.png`` (one row per method, one
histogram per epoch).
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_examples", 8192, "Training images (the first ones of the train split).")
flags.DEFINE_integer("test_examples", 5000, "Test images for the accuracies.")
flags.DEFINE_integer("epochs", 6, "Training epochs per method.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("lr", 0.05, "SGD learning rate (momentum 0.9).")
flags.DEFINE_float("weight_decay", 5e-4, "SGD weight decay (RNI: not on the BN parameters).")
flags.DEFINE_integer("fine_tune_epochs", 1, "Epochs of plain SGD after the cut.")
flags.DEFINE_float("rni_strength", 0.01, "RecedingImportanceRegularizer strength.")
flags.DEFINE_float("rni_shift", 0.0, "RecedingImportanceRegularizer shift b.")
flags.DEFINE_float("l1", 1e-4, "NetworkSlimming λ.")
flags.DEFINE_float("prune_fraction", 0.5, "Fraction of the channels cut at the end.")
flags.DEFINE_integer("seed", 0, "Random seed.")
common.define_output_flag("importance_histograms")

WIDTHS = (8, 8, 16, 16, 32, 32)
BINS = 20


def tails(values) -> dict[str, float]:
    """The stated statistic: mass below 0.1, above 0.9, both together ("tails"), and
    the smaller of the two ("both_modes": 0 unless both ends are populated — the
    tails alone also count a single spike at 1, e.g. every γ = 1 at initialisation)."""
    import numpy as np

    values = np.asarray(values)
    low, high = float(np.mean(values < 0.1)), float(np.mean(values > 0.9))
    return {"below_0_1": round(low, 4), "above_0_9": round(high, 4),
            "tails": round(low + high, 4), "both_modes": round(min(low, high), 4)}


def run_method(method: str, data, test) -> dict:
    import keras
    import numpy as np

    from tf_gamma_prune import (
        BatchNormLRMultiplier,
        NetworkSlimming,
        RecedingImportanceRegularizer,
        gamma_threshold_selection,
        prune_model,
        receding_importance_selection,
        receding_importances,
        to_bounded_batchnorm,
    )
    from tf_gamma_prune.reference_models import fashion_vgg

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(FLAGS.seed)
    sgd = keras.optimizers.SGD(FLAGS.lr, momentum=0.9, weight_decay=FLAGS.weight_decay or None)
    if method == "rni":
        model = to_bounded_batchnorm(
            fashion_vgg(widths=WIDTHS),
            regularizer=RecedingImportanceRegularizer(FLAGS.rni_strength, shift=FLAGS.rni_shift))
        optimizer = BatchNormLRMultiplier(sgd, 10.0)
    else:
        model = fashion_vgg(widths=WIDTHS)
        optimizer = NetworkSlimming(sgd, l1=FLAGS.l1)
    model.compile(optimizer, loss=loss, metrics=["accuracy"])

    def importances():
        values = np.concatenate(list(receding_importances(model).values()))
        return values if method == "rni" else values / values.max()

    epochs = [{"epoch": 0, **tails(importances()), "test_accuracy": None,
               "histogram": np.histogram(importances(), BINS, (0, 1))[0].tolist()}]
    start = time.perf_counter()
    for epoch in range(1, FLAGS.epochs + 1):
        model.fit(*data, batch_size=FLAGS.batch_size, epochs=1, verbose=0)
        accuracy = float(model.evaluate(*test, verbose=0)[1])
        values = importances()
        epochs.append({"epoch": epoch, **tails(values), "test_accuracy": round(accuracy, 4),
                       "histogram": np.histogram(values, BINS, (0, 1))[0].tolist()})
        print(method, epochs[-1]["epoch"], {k: v for k, v in epochs[-1].items()
                                            if k not in ("histogram", "epoch")}, flush=True)
    seconds = time.perf_counter() - start
    if method == "rni":
        selection = receding_importance_selection(model, FLAGS.prune_fraction, min_channels=3)
    else:
        selection = gamma_threshold_selection(model, FLAGS.prune_fraction)
    small = prune_model(model, selection, probe=False)
    small.compile(keras.optimizers.SGD(FLAGS.lr, momentum=0.9), loss=loss, metrics=["accuracy"])
    kept = sum(len(k) for k in selection.values())
    cut_accuracy = float(small.evaluate(*test, verbose=0)[1])
    if FLAGS.fine_tune_epochs:
        small.fit(*data, batch_size=FLAGS.batch_size, epochs=FLAGS.fine_tune_epochs, verbose=0)
    return {
        "epochs": epochs,
        "final_importances": [round(float(v), 5) for v in importances()],
        "cut": {"prune_fraction": FLAGS.prune_fraction, "kept_channels": kept,
                "channels": int(sum(WIDTHS)),
                "test_accuracy_before": epochs[-1]["test_accuracy"],
                "test_accuracy_after_cut_without_fine_tuning": round(cut_accuracy, 4),
                "fine_tune_epochs": FLAGS.fine_tune_epochs,
                "test_accuracy_after_fine_tuning":
                    round(float(small.evaluate(*test, verbose=0)[1]), 4)},
        "training_seconds": round(seconds, 1),
    }


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results)
    columns = len(results[methods[0]]["epochs"])
    fig, axes = plt.subplots(len(methods), columns, figsize=(2.0 * columns, 2.2 * len(methods)),
                             sharex=True, squeeze=False)
    edges = np.linspace(0, 1, BINS + 1)
    labels = {"rni": "RNI: sigmoid(w)", "l1_gamma": "L1 on γ: |γ|/max|γ|"}
    for row, method in enumerate(methods):
        for col, item in enumerate(results[method]["epochs"]):
            ax = axes[row][col]
            ax.bar(edges[:-1], item["histogram"], width=edges[1] - edges[0], align="edge",
                   color="tab:blue" if method == "rni" else "tab:orange")
            ax.set_title(f"epoch {item['epoch']}: <0.1 {item['below_0_1']:.2f}, "
                         f">0.9 {item['above_0_9']:.2f}", fontsize=7)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel(labels.get(method, method), fontsize=8)
    fig.suptitle("Channel importances over training (Fashion-MNIST subset; "
                 "mass below 0.1 and above 0.9)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.data import load_fashion_mnist

    data, test = load_fashion_mnist(use_tfds=False, train_examples=FLAGS.train_examples,
                                    test_examples=FLAGS.test_examples)
    results = {method: run_method(method, data, test) for method in ("rni", "l1_gamma")}
    output = pathlib.Path(FLAGS.output)
    png = output.with_suffix(".png")
    plot(results, png)
    record = {
        "benchmark": "importance_histograms",
        "statistic": "mass of the channel importances below 0.1 plus above 0.9 ('tails'), and "
                     "the smaller of the two ('both_modes'; 0 for one mode, e.g. all gamma = 1 "
                     "at initialisation, where tails = 1) (rni: sigmoid(w); l1_gamma: "
                     "|gamma| / max |gamma|, all layers pooled)",
        "config": {"model": f"fashion_vgg(widths={WIDTHS})", "train_examples": len(data[0]),
                   "test_examples": len(test[0]), "epochs": FLAGS.epochs,
                   "batch_size": FLAGS.batch_size,
                   "sgd": {"lr": FLAGS.lr, "momentum": 0.9, "weight_decay": FLAGS.weight_decay},
                   "fine_tune_epochs": FLAGS.fine_tune_epochs,
                   "rni": {"strength": FLAGS.rni_strength, "shift": FLAGS.rni_shift,
                           "bn_lr_multiplier": 10.0},
                   "l1_gamma": {"l1": FLAGS.l1}, "seed": FLAGS.seed},
        "final": {m: {k: v for k, v in results[m]["epochs"][-1].items() if k != "histogram"}
                  for m in results},
        "methods": results,
        "plot": str(png.relative_to(common.ROOT)) if png.is_relative_to(common.ROOT) else str(png),
        "machine": common.machine_info("tensorflow", "keras", "python", "machine", "cpu_count"),
    }
    write_json_atomic(output, record)
    print(json.dumps(record["final"], indent=1))


if __name__ == "__main__":
    app.run(main)
