"""Fashion-MNIST: train the reference VGG-BN network with GammaISTA and watch γ sparsify.

Default run (a few minutes on 2 CPU cores): a subset of the training set, ρ warm-up
then target, per-layer sparsity printed at the end.

    .venv/bin/python examples/fashion_mnist.py            # quick default
    .venv/bin/python examples/fashion_mnist.py --full     # whole training set, more epochs
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_boolean("full", False, "Benchmark setting: all 60k images, more epochs.")
flags.DEFINE_integer("train_examples", 15000, "Training images used by the default run.")
flags.DEFINE_integer("epochs", 3, "Sparsifying epochs (default run).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("learning_rate", 0.05, "Initial SGD learning rate (cosine decay).")
flags.DEFINE_float("rho", 0.1, "Target ISTA strength ρ.")
flags.DEFINE_float("rho_warmup", 0.02, "ρ during the first epoch (paper: warm-up).")
flags.DEFINE_enum("penalties", "paper", ["paper", "uniform"], "Per-layer λ: Ye et al. or 1.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def train_with_gamma_ista(x, y, x_test, y_test, *, epochs, batch_size, learning_rate, rho,
                          rho_warmup, penalties, seed, verbose=1):
    """Build the reference network and sparsify it; returns (model, history)."""
    import keras

    from tf_gamma_prune import GammaISTA, SparsityMonitor, gamma_penalties
    from tf_gamma_prune.data import make_dataset
    from tf_gamma_prune.reference_models import fashion_vgg

    keras.utils.set_random_seed(seed)
    model = fashion_vgg()
    steps_per_epoch = -(-len(x) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch)
    rho_schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [steps_per_epoch - 1], [rho_warmup, rho])
    optimizer = GammaISTA(
        keras.optimizers.SGD(schedule, momentum=0.9),
        rho=rho_schedule,
        penalties=gamma_penalties(model) if penalties == "paper" else None,
    )
    model.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = make_dataset(x, y, batch_size, shuffle=True, augment="flip", seed=seed)
    history = model.fit(train, epochs=epochs, validation_data=make_dataset(x_test, y_test, 512),
                        callbacks=[SparsityMonitor()], verbose=verbose)
    return model, history


def main(argv):
    del argv
    from tf_gamma_prune import gamma_sparsity, sparsity_summary
    from tf_gamma_prune.data import load_fashion_mnist

    (x, y), (x_test, y_test) = load_fashion_mnist()
    if not FLAGS.full:
        x, y = x[: FLAGS.train_examples], y[: FLAGS.train_examples]
    epochs = 12 if FLAGS.full else FLAGS.epochs
    model, history = train_with_gamma_ista(
        x, y, x_test, y_test, epochs=epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, rho=FLAGS.rho, rho_warmup=FLAGS.rho_warmup,
        penalties=FLAGS.penalties, seed=FLAGS.seed)
    print()
    print(f"{'layer':<8} {'zero γ':>7} {'channels':>9}")
    for s in gamma_sparsity(model):
        print(f"{s.name:<8} {s.zeros:>7} {s.channels:>9}")
    print(sparsity_summary(model))
    print(f"test accuracy after sparsification: {history.history['val_accuracy'][-1]:.4f}")


if __name__ == "__main__":
    app.run(main)
