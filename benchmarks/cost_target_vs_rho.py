"""CostTarget against a hand-tuned ρ at the same MAC budget and epochs: budget error and accuracy.

From the committed Fashion-MNIST reference (``saved_models/fashion_vgg_reference.keras``, 93.93 %
test), for each ``--targets`` (MAC reductions) two arms, each ``--sparsify_epochs`` of GammaISTA
(SGD with momentum, ``scale_beta``, ``min_channels``, the paper's λ) on the first ``--train_examples``
training images, ``prune_model``, then ``--finetune_epochs`` of plain SGD:

* ``cost_target``: ``CostTarget(macs=1/target)`` steers ρ (one run, no tuning);
* ``hand_tuned_rho``: what a user without CostTarget does: fixed-ρ runs of the same sparsify phase,
  ρ searched geometrically (×4 until the budget is bracketed, then halving the log-interval), up
  to ``--rho_trials`` runs; the run whose pruned MACs are closest to the budget is fine-tuned. Every
  trial is recorded: the cost of finding ρ is ``rho_trials`` sparsify phases instead of one.

Recorded per target and arm: MACs, the relative budget error, test accuracy (the 10,000 test
images) after fine-tuning, seconds. Resumable: every finished arm is written to the JSON at once
and skipped on a rerun with the same settings.

    .venv/bin/python benchmarks/cost_target_vs_rho.py          # about 25 min on 2 idle cores
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets sys.path and TF's log level)
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
common.define_output_flag("cost_target_vs_rho")
flags.DEFINE_list("targets", ["3", "6"], "MAC reductions (budget = MACs / target).")
flags.DEFINE_integer("train_examples", 12800, "Training images (the first ones).")
flags.DEFINE_integer("sparsify_epochs", 1, "GammaISTA epochs.")
flags.DEFINE_integer("finetune_epochs", 1, "Fine-tune epochs after pruning.")
flags.DEFINE_float("sparsify_learning_rate", 0.005, "GammaISTA's SGD rate (the cpu preset's).")
flags.DEFINE_float("finetune_learning_rate", 0.03, "Fine-tune SGD rate (the cpu preset's).")
flags.DEFINE_integer("min_channels", 4, "GammaISTA(min_channels=...).")
flags.DEFINE_integer("rho_trials", 5, "Fixed-ρ runs of the hand-tuned arm.")
flags.DEFINE_float("rho_start", 0.1, "The hand-tuned arm's first ρ.")
flags.DEFINE_integer("every", 10, "CostTarget(every=...): steps per controller window (100 steps an "
                     "epoch at 12,800 images).")
flags.DEFINE_integer("seed", 0, "Random seed.")

REFERENCE = common.ROOT / "saved_models" / "fashion_vgg_reference.keras"


def settings() -> dict:
    return {k: FLAGS[k].value for k in ("targets", "train_examples", "sparsify_epochs", "finetune_epochs",
                                        "sparsify_learning_rate", "finetune_learning_rate",
                                        "min_channels", "rho_trials", "rho_start", "every", "seed")}


def sparsified(x, y, rho: float | None, budget_fraction: float | None):
    """The reference after the sparsify phase, its pruned model and the controller (or None)."""
    import keras

    from tf_gamma_prune import CostTarget, GammaISTA, gamma_penalties, prune_model

    keras.utils.set_random_seed(FLAGS.seed)
    model = keras.models.load_model(REFERENCE)
    sgd = keras.optimizers.SGD(FLAGS.sparsify_learning_rate, momentum=0.9)
    model.compile(GammaISTA(sgd, rho=rho if rho is not None else 1e-3, penalties=gamma_penalties(model),
                            min_channels=FLAGS.min_channels, scale_beta=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [] if budget_fraction is None else [CostTarget(macs=budget_fraction, every=FLAGS.every,
                                                                    reach_at=0.6)]
    model.fit(x, y, batch_size=128, epochs=FLAGS.sparsify_epochs, verbose=0, callbacks=callbacks,
              shuffle=True)
    return prune_model(model), (callbacks[0] if callbacks else None)


def finetuned_accuracy(pruned, x, y, x_test, y_test) -> float:
    import keras
    import numpy as np

    pruned.compile(keras.optimizers.SGD(FLAGS.finetune_learning_rate, momentum=0.9),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=128, epochs=FLAGS.finetune_epochs, verbose=0, shuffle=True)
    logits = pruned.predict(x_test, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y_test))


def next_rho(trials: list[dict], budget: int) -> float:
    """Geometric search: ×4 (÷4) until the budget is bracketed, then the log-midpoint."""
    above = [t["rho"] for t in trials if t["macs"] > budget]   # too weak
    below = [t["rho"] for t in trials if t["macs"] <= budget]  # strong enough
    if above and below:
        return math.sqrt(max(above) * min(below))
    return trials[-1]["rho"] * (4.0 if above else 0.25)


def main(argv):
    del argv
    import json

    import keras

    from tf_gamma_prune import count_macs
    from tf_gamma_prune.atomic_io import write_json_atomic
    from tf_gamma_prune.data import load_fashion_mnist
    from tf_gamma_prune.errors import ArgumentError

    doc = {"settings": settings(), "machine": common.machine_info(), "records": {}}
    if os.path.exists(FLAGS.output):
        with open(FLAGS.output) as f:
            old = json.load(f)
        if old.get("settings") == doc["settings"]:
            doc["records"] = old.get("records", {})
        else:
            raise ArgumentError(f"{FLAGS.output} holds results of other settings; pass another --output.")
    (x, y), (x_test, y_test) = load_fashion_mnist(train_examples=FLAGS.train_examples)
    reference_macs = count_macs(keras.models.load_model(REFERENCE))
    for target in (float(t) for t in FLAGS.targets):
        budget = round(reference_macs / target)
        key = f"{target:g}x"
        records = doc["records"].setdefault(key, {})
        if "cost_target" not in records:
            started = time.time()
            pruned, controller = sparsified(x, y, None, 1.0 / target)
            macs = count_macs(pruned)
            records["cost_target"] = {
                "macs": macs, "budget_error": macs / budget - 1,
                "accuracy": finetuned_accuracy(pruned, x, y, x_test, y_test),
                "final_rho": controller.history[-1]["rho"], "sparsify_runs": 1,
                "seconds": round(time.time() - started, 1)}
            write_json_atomic(FLAGS.output, doc)
            print(key, "cost_target", records["cost_target"], flush=True)
        if "hand_tuned_rho" not in records:
            started = time.time()
            trials, best, best_model = [], None, None
            rho = FLAGS.rho_start
            for _ in range(FLAGS.rho_trials):
                pruned, _ = sparsified(x, y, rho, None)
                trials.append({"rho": rho, "macs": count_macs(pruned)})
                print(key, "rho trial", trials[-1], flush=True)
                if best is None or abs(trials[-1]["macs"] - budget) < abs(best["macs"] - budget):
                    best, best_model = trials[-1], pruned
                rho = next_rho(trials, budget)
            records["hand_tuned_rho"] = {
                "macs": best["macs"], "budget_error": best["macs"] / budget - 1, "rho": best["rho"],
                "accuracy": finetuned_accuracy(best_model, x, y, x_test, y_test), "trials": trials,
                "sparsify_runs": len(trials), "seconds": round(time.time() - started, 1)}
            write_json_atomic(FLAGS.output, doc)
            print(key, "hand_tuned_rho", {k: v for k, v in records["hand_tuned_rho"].items() if k != "trials"},
                  flush=True)
        records["accuracy_difference"] = records["cost_target"]["accuracy"] - records["hand_tuned_rho"]["accuracy"]
        write_json_atomic(FLAGS.output, doc)
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
