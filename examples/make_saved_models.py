"""Regenerate the committed Fashion-MNIST models in ``saved_models/``.

    .venv/bin/python examples/make_saved_models.py              # ~10 min on 2 CPU cores
    .venv/bin/python examples/make_saved_models.py --reference  # ~45 min: fashion_vgg_reference.*

Writes (atomically, each well under 2 MB):

* ``fashion_vgg_baseline.keras`` / ``.tflite`` — ``fashion_vgg(widths=(16, 16, 32, 32, 64, 64))``
  trained normally (plain SGD, no pruning), saved without optimizer state;
* ``fashion_vgg_pruned.keras`` / ``.tflite`` — that baseline pruned with the
  pretrained flow of ``examples/pretrained.py`` (γ–W rescaling, ISTA,
  ``prune_model``, rescale back, fine-tune).

Every ``.tflite`` passes ``check_parity`` against its ``.keras`` (≤ 1e-4).
Results differ slightly between machines (thread scheduling), not in kind.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
BASELINE_WIDTHS = (16, 16, 32, 32, 64, 64)
MAX_BYTES = 2 * 1024 * 1024


def define_flags() -> None:
    """Register this script's flags (only when run as a script, so tests can import it)."""
    flags.DEFINE_string("out_dir", "saved_models", "Where the four files are written.")
    flags.DEFINE_integer("epochs", 4, "Baseline training epochs (plain SGD).")
    flags.DEFINE_integer("train_examples", 0, "Training images (0: all 60,000).")
    flags.DEFINE_integer("flow_examples", 20000, "Training images of the pretrained flow (its default).")
    flags.DEFINE_integer("ista_epochs", 2, "ISTA epochs of the pretrained flow.")
    flags.DEFINE_integer("finetune_epochs", 2, "Fine-tuning epochs of the pretrained flow.")
    flags.DEFINE_float("alpha", 0.1, "γ–W rescaling factor of the pretrained flow.")
    flags.DEFINE_float("ista_learning_rate", 2e-4, "SGD learning rate of the ISTA phase.")
    flags.DEFINE_float("rho", 4.0, "ISTA strength of the pretrained flow.")
    flags.DEFINE_boolean("reuse_baseline", False, "Keep an existing fashion_vgg_baseline.keras/.tflite "
                         "in --out_dir and only redo the pruned model.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_boolean("reference", False, "Train the full-data reference "
                         "(fashion_vgg_reference.*, examples/reference_training.py) instead.")


def train_baseline(x, y, x_test, y_test, *, epochs, batch_size=128, learning_rate=0.05, seed=0,
                   verbose=1):
    """The small VGG-BN trained without pruning (SGD momentum, cosine decay).

        baseline = train_baseline(x, y, x_test, y_test, epochs=4)
    """
    import keras

    from tf_gamma_prune.data import make_dataset
    from tf_gamma_prune.reference_models import fashion_vgg

    keras.utils.set_random_seed(seed)
    model = fashion_vgg(widths=BASELINE_WIDTHS)
    steps = epochs * -(-len(x) // batch_size)
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(learning_rate, steps),
                                       momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(make_dataset(x, y, batch_size, shuffle=True, augment="flip", seed=seed),
              validation_data=make_dataset(x_test, y_test, 512), epochs=epochs, verbose=verbose)
    return model


def check_size(path: str) -> None:
    """Refuse files over 2 MB (they would bloat the repository)."""
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise RuntimeError(f"{path} is {size / 2**20:.2f} MB > 2 MB: use smaller widths.")


def make_saved_models(x, y, x_test, y_test, out_dir: str, *, epochs, ista_epochs, finetune_epochs,
                      alpha, rho, ista_learning_rate=2e-4, flow_examples=20000, seed=0,
                      reuse_baseline=False, verbose=1) -> dict[str, str]:
    """Train the baseline, prune it with the pretrained flow, write the four files; returns paths.

        paths = make_saved_models(x, y, x_test, y_test, "saved_models", epochs=4, ista_epochs=2,
                                  finetune_epochs=2, alpha=0.1, rho=4.0)
    """
    from fashion_mnist import announce, format_table
    from pretrained import save_with_tflite, load_trained_model, prune_pretrained

    paths = {name: os.path.join(out_dir, f"fashion_vgg_{name}")
             for name in ("baseline.keras", "baseline.tflite", "pruned.keras", "pruned.tflite")}
    if reuse_baseline and os.path.exists(paths["baseline.keras"]) and os.path.exists(paths["baseline.tflite"]):
        announce(1, 3, f"reusing {paths['baseline.keras']}")
    else:
        announce(1, 3, f"training the baseline ({epochs} epochs on {len(x):,} images)")
        baseline = train_baseline(x, y, x_test, y_test, epochs=epochs, seed=seed, verbose=verbose)
        save_with_tflite(baseline, x_test, paths["baseline.keras"], paths["baseline.tflite"])

    announce(2, 3, "pruning it with the pretrained flow (examples/pretrained.py)")
    result = prune_pretrained(
        load_trained_model(paths["baseline.keras"]), x[:flow_examples], y[:flow_examples], x_test,
        y_test, alpha=alpha, epochs=ista_epochs, finetune_epochs=finetune_epochs, batch_size=128,
        learning_rate=ista_learning_rate, finetune_learning_rate=0.01, rho=rho, seed=seed,
        verbose=verbose)
    save_with_tflite(result.pruned, x_test, paths["pruned.keras"], paths["pruned.tflite"])

    announce(3, 3, "checking sizes")
    for path in paths.values():
        check_size(path)
    print(format_table(result.rows))
    return paths


def main(argv):
    del argv
    from fashion_mnist import quiet_absl_logging

    from tf_gamma_prune.data import load_fashion_mnist

    quiet_absl_logging()
    (x, y), (x_test, y_test) = load_fashion_mnist(train_examples=FLAGS.train_examples)
    if FLAGS.reference:
        from reference_training import RECIPE, train_reference

        record = train_reference(x, y, x_test, y_test, out_dir=FLAGS.out_dir,
                                 work_dir=os.path.join(FLAGS.out_dir, "reference_work"),
                                 epochs=RECIPE["epochs"], seed=FLAGS.seed)
        print(f"reference: test accuracy {record['test_accuracy']:.4f}")
        return
    paths = make_saved_models(x, y, x_test, y_test, FLAGS.out_dir, epochs=FLAGS.epochs,
                              ista_epochs=FLAGS.ista_epochs, finetune_epochs=FLAGS.finetune_epochs,
                              alpha=FLAGS.alpha, rho=FLAGS.rho,
                              ista_learning_rate=FLAGS.ista_learning_rate,
                              flow_examples=FLAGS.flow_examples, seed=FLAGS.seed,
                              reuse_baseline=FLAGS.reuse_baseline)
    print("files:\n  " + "\n  ".join(f"{p} ({os.path.getsize(p) / 1024:.0f} KB)" for p in paths.values()))


if __name__ == "__main__":
    define_flags()
    app.run(main)
