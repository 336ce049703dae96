"""Prune a model that is already trained: γ–W rescaling → ISTA → prune → rescale back → fine-tune.

The paper's recipe for pretrained networks (Ye et al. 2018, Sec. 4): multiply
every BN γ (and β) by a small α and the kernels that read it by 1/α
(``rescale_gamma(model, alpha)`` — the function is unchanged), so that ISTA's
fixed-size shrink removes channels within a few epochs; prune the zero-γ
channels (``prune_model``); undo the rescaling on the pruned model
(``rescale_gamma(pruned, 1 / alpha)``, exact again, BorderCorrection layers
included); fine-tune briefly.

    .venv/bin/python examples/pretrained.py                                   # the committed baseline
    .venv/bin/python examples/pretrained.py --model my_model.keras --alpha 0.1

Demonstrated on ``saved_models/fashion_vgg_baseline.keras`` (a small Fashion-MNIST
VGG-BN, see ``examples/make_saved_models.py``). Prints a table and writes
``pruned.keras`` and ``pruned.tflite`` to ``--out_dir``.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
BASELINE = "saved_models/fashion_vgg_baseline.keras"


def define_flags() -> None:
    """Register this script's flags (only when run as a script, so tests can import it)."""
    flags.DEFINE_string("model", BASELINE, "The trained .keras model to prune (Fashion-MNIST input).")
    flags.DEFINE_float("alpha", 0.1, "γ–W rescaling factor α (γ, β × α; consuming kernels × 1/α).")
    flags.DEFINE_integer("epochs", 2, "ISTA epochs on the rescaled model.")
    flags.DEFINE_integer("finetune_epochs", 2, "Fine-tuning epochs after pruning.")
    flags.DEFINE_integer("train_examples", 20000, "Training images used (0: all 60,000).")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_float("learning_rate", 2e-4, "SGD learning rate of the ISTA phase. Keep it small: "
                       "α-scaled γ and β take 1/α² larger relative steps (the other weights α² smaller).")
    flags.DEFINE_float("finetune_learning_rate", 0.01, "Initial fine-tuning learning rate (cosine).")
    flags.DEFINE_float("rho", 4.0, "ISTA strength ρ (shrink per step: learning_rate · ρ · λ_layer).")
    flags.DEFINE_string("out_dir", "saved_models/run/pretrained", "Where pruned.keras/.tflite are written.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


@dataclasses.dataclass
class PretrainedResult:
    """What :func:`prune_pretrained` produced.

    ``pruned`` is the fine-tuned, rescaled-back pruned model;
    ``rescale_deviation`` the largest relative output change caused by each
    rescaling (should be ~1e-6); ``prune_deviation`` that of ``prune_model``.
    """

    pruned: object
    report: object
    rows: list
    rescale_deviation: float
    rescale_back_deviation: float
    prune_deviation: float


def relative_deviation(a, b) -> float:
    """``max |a − b| / max |a|`` (how much two models' outputs differ)."""
    import numpy as np

    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def sparsify_rescaled(model, x, y, *, epochs, batch_size, learning_rate, rho, seed, verbose=1):
    """ISTA training of an already trained model (call ``rescale_gamma`` first), in place.

        sparsify_rescaled(model, x, y, epochs=2, batch_size=128, learning_rate=0.001, rho=1.0, seed=0)
    """
    from fashion_mnist import sparsify_trained

    return sparsify_trained(model, x, y, epochs=epochs, batch_size=batch_size,
                            learning_rate=learning_rate, rho=rho, seed=seed, verbose=verbose)


def prune_pretrained(model, x, y, x_test, y_test, *, alpha, epochs, finetune_epochs, batch_size,
                     learning_rate, finetune_learning_rate, rho, seed, verbose=1) -> PretrainedResult:
    """The whole pretrained flow on ``model`` (modified: it ends up rescaled and sparse).

        model = keras.models.load_model("saved_models/fashion_vgg_baseline.keras")
        result = prune_pretrained(model, x, y, x_test, y_test, alpha=0.1, epochs=2, finetune_epochs=1,
                                  batch_size=128, learning_rate=0.001, finetune_learning_rate=0.01,
                                  rho=1.0, seed=0)
    """
    from fashion_mnist import StageRow, announce, copy_model, fine_tune, keras_accuracy

    from tf_gamma_prune import (batchnorm_layers, prune_model, recalibrate_batchnorm, rescale_gamma,
                                sparsity_summary)
    from tf_gamma_prune.analysis.flops import model_cost

    total = 5
    probe = x_test[:256]
    dense_cost = model_cost(model)
    rows = [StageRow("pretrained (dense)", keras_accuracy(model, x_test, y_test),
                     dense_cost.params, dense_cost.macs)]

    announce(1, total, f"γ–W rescaling with α = {alpha} (same function)")
    reference = model.predict(probe, verbose=0)
    rescale_gamma(model, alpha)
    rescale_deviation = relative_deviation(reference, model.predict(probe, verbose=0))

    announce(2, total, f"ISTA on the rescaled γ ({epochs} epochs, ρ = {rho}), then BN statistics "
                       "re-estimated")
    sparsify_rescaled(model, x, y, epochs=epochs, batch_size=batch_size,
                      learning_rate=learning_rate, rho=rho, seed=seed, verbose=verbose)
    recalibrate_batchnorm(model, x, max_batches=40)  # ISTA on α-scaled γ: moving stats lag
    print(sparsity_summary(model))
    rows.append(StageRow("after ISTA (α-scaled)", keras_accuracy(model, x_test, y_test),
                         dense_cost.params, dense_cost.macs))

    announce(3, total, "prune_model, then rescaling back with 1/α")
    pruned, report = prune_model(model, return_report=True, probe_inputs=probe)
    print(report.summary())
    scaled = pruned.predict(probe, verbose=0)
    if batchnorm_layers(pruned):  # ISTA may have emptied every BN (then nothing is scaled)
        rescale_gamma(pruned, 1.0 / alpha)
    rescale_back_deviation = relative_deviation(scaled, pruned.predict(probe, verbose=0))
    pruned_cost = model_cost(pruned)
    rows.append(StageRow("pruned, rescaled back", keras_accuracy(pruned, x_test, y_test),
                         pruned_cost.params, pruned_cost.macs))

    announce(4, total, f"fine-tuning ({finetune_epochs} epochs)")
    pruned = copy_model(pruned)
    if finetune_epochs:
        fine_tune(pruned, x, y, epochs=finetune_epochs, batch_size=batch_size,
                  learning_rate=finetune_learning_rate, seed=seed, verbose=verbose)
    rows.append(StageRow("pruned + fine-tuned", keras_accuracy(pruned, x_test, y_test),
                         pruned_cost.params, pruned_cost.macs))
    announce(5, total, "done")
    return PretrainedResult(pruned, report, rows, rescale_deviation, rescale_back_deviation,
                            report.max_rel_deviation)


def save_with_tflite(model, x_test, keras_path: str, tflite_path: str) -> float:
    """Save ``model`` (no optimizer state) and its float32 .tflite; returns their parity (max rel)."""
    from fashion_mnist import copy_model

    from tf_gamma_prune.export import check_parity, save_keras_atomic, to_tflite

    save_keras_atomic(copy_model(model), keras_path)
    parity = check_parity(model, to_tflite(model, tflite_path), x_test[:64])
    parity.assert_within(1e-4)
    return parity.max_rel


def load_trained_model(path: str):
    """Load a .keras model (safe mode) with the package's custom layers registered."""
    from fashion_mnist import load_keras_model

    return load_keras_model(
        path, f"The committed baseline is {BASELINE}; regenerate it with "
        "`.venv/bin/python examples/make_saved_models.py`, or pass --model your.keras.")


def main(argv):
    del argv
    from fashion_mnist import format_table, quiet_absl_logging

    from tf_gamma_prune.data import load_fashion_mnist

    quiet_absl_logging()
    (x, y), (x_test, y_test) = load_fashion_mnist()
    if FLAGS.train_examples:
        x, y = x[: FLAGS.train_examples], y[: FLAGS.train_examples]
    model = load_trained_model(FLAGS.model)
    result = prune_pretrained(
        model, x, y, x_test, y_test, alpha=FLAGS.alpha, epochs=FLAGS.epochs,
        finetune_epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, finetune_learning_rate=FLAGS.finetune_learning_rate,
        rho=FLAGS.rho, seed=FLAGS.seed)
    keras_path = os.path.join(FLAGS.out_dir, "pruned.keras")
    tflite_path = os.path.join(FLAGS.out_dir, "pruned.tflite")
    parity = save_with_tflite(result.pruned, x_test, keras_path, tflite_path)
    print()
    print(format_table(result.rows))
    print(f"\nrescale α: output change {result.rescale_deviation:.1e}; rescale back on the pruned "
          f"model: {result.rescale_back_deviation:.1e}; prune_model: {result.prune_deviation:.1e}; "
          f"TFLite parity {parity:.1e} (all relative to max |output|)")
    print(f"files:\n  {keras_path}\n  {tflite_path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
