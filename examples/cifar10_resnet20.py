"""CIFAR-10 ResNet-20 with the paper's protocol (Ye et al. 2018, CIFAR-10 experiments).

Only the first convolution of each residual block is pruned (its BN γ is
sparsified; every other BN is passed to ``GammaISTA(exclude=...)``), so residual
widths stay intact. ρ warms up at 0.001 and then rises to 0.005; SGD with
learning rate 0.1 and momentum 0.9, batch 125, pad-4-crop-flip augmentation;
then ``prune_model`` removes the zero-γ channels exactly and a short
fine-tuning follows.

    .venv/bin/python examples/cifar10_resnet20.py                          # the protocol (hours on a CPU)
    .venv/bin/python examples/cifar10_resnet20.py --epochs 4 --warmup_epochs 1 \\
        --finetune_epochs 1 --train_examples 10000                         # a quick look

CIFAR-10 comes from tensorflow-datasets, which downloads it (~160 MB) on first
use into ``--data_dir`` (default ``~/tensorflow_datasets``). The script prints a
table (accuracy, parameters, MACs per stage, next to the paper's reference
numbers) and writes ``sparse.keras``, ``pruned.keras``, ``pruned.tflite``, two
plots and TensorBoard logs to ``--out_dir``.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
PAPER_PARAMS = "281,304 → ~177k"
"""ResNet-20 parameters before → after pruning reported for the paper (issue #5)."""


def define_flags() -> None:
    """Register this script's flags (only when run as a script, so tests can import it)."""
    flags.DEFINE_integer("epochs", 160, "Sparsifying epochs (ρ warm-up included).")
    flags.DEFINE_integer("warmup_epochs", 40, "Epochs at the warm-up ρ before the target ρ.")
    flags.DEFINE_integer("finetune_epochs", 40, "Fine-tuning epochs after pruning.")
    flags.DEFINE_integer("batch_size", 125, "Batch size (paper: 125).")
    flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate while sparsifying (paper: 0.1).")
    flags.DEFINE_float("finetune_learning_rate", 0.01, "Initial fine-tuning learning rate (cosine).")
    flags.DEFINE_float("weight_decay", 1e-4, "SGD weight decay of the non-γ weights.")
    flags.DEFINE_float("rho_warmup", 0.001, "ρ during the warm-up (paper: 0.001).")
    flags.DEFINE_float("rho", 0.005, "ρ after the warm-up (paper: 0.005).")
    flags.DEFINE_integer("train_examples", 0, "Use only this many training images (0: all 50,000).")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
    flags.DEFINE_string("out_dir", "saved_models/run/cifar10_resnet20", "Where outputs are written.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


@dataclasses.dataclass
class ProtocolSettings:
    """Everything that defines one run (the flags, as one object).

        settings = ProtocolSettings(epochs=2, warmup_epochs=1, finetune_epochs=1)
    """

    epochs: int = 160
    warmup_epochs: int = 40
    finetune_epochs: int = 40
    batch_size: int = 125
    learning_rate: float = 0.1
    finetune_learning_rate: float = 0.01
    weight_decay: float = 1e-4
    rho_warmup: float = 0.001
    rho: float = 0.005
    seed: int = 0
    verbose: int = 1


@dataclasses.dataclass
class ProtocolResult:
    """Models and numbers of one run.

    ``pruned`` is the model right after ``prune_model`` (same function as
    ``sparse``); ``tuned`` is a fine-tuned copy of it.
    """

    sparse: object
    pruned: object
    tuned: object
    report: object
    rows: list
    paths: dict


def load_cifar10(data_dir: str | None = None, train_examples: int = 0):
    """CIFAR-10 from tensorflow-datasets, standardised per channel: ``(x, y), (x_test, y_test)``.

        (x, y), (x_test, y_test) = load_cifar10()
    """
    import numpy as np

    from tf_gamma_prune.data import load_tfds_arrays

    try:
        (x, y), (x_test, y_test) = load_tfds_arrays("cifar10", ("train", "test"), data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds; all mean "not available"
        raise RuntimeError(
            f"Could not load CIFAR-10 through tensorflow-datasets ({e}). It needs internet access "
            "the first time (~160 MB); or pass --data_dir with a prepared tfds 'cifar10'.") from e
    if train_examples:
        x, y = x[:train_examples], y[:train_examples]
    return (standardize(x), y.astype(np.int32)), (standardize(x_test), y_test.astype(np.int32))


def standardize(images):
    """uint8 RGB images → float32, zero mean and unit variance per channel (CIFAR-10 statistics)."""
    import numpy as np

    mean, std = np.array(CIFAR10_MEAN, np.float32), np.array(CIFAR10_STD, np.float32)
    return ((images.astype(np.float32) / 255.0) - mean) / std


def pruned_bn_names(model) -> list[str]:
    """The BN layers the paper sparsifies: after the first conv of each residual block."""
    from tf_gamma_prune.reference_models import first_conv_bns_of_blocks

    return first_conv_bns_of_blocks(model)


def excluded_bn_names(model) -> list[str]:
    """Every other BN (stem, second convs, projections): ``GammaISTA(exclude=...)``."""
    import keras

    keep = set(pruned_bn_names(model))
    return [layer.name for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization) and layer.name not in keep]


def sparsify(x, y, x_test, y_test, settings: ProtocolSettings, callbacks=()):
    """Train ResNet-20 from scratch with GammaISTA on the first-conv BNs; returns the model.

        model = sparsify(x, y, x_test, y_test, ProtocolSettings(epochs=2, warmup_epochs=1))
    """
    import keras

    from tf_gamma_prune import GammaISTA, gamma_penalties
    from tf_gamma_prune.data import make_dataset
    from tf_gamma_prune.reference_models import resnet20

    keras.utils.set_random_seed(settings.seed)
    model = resnet20()
    steps_per_epoch = len(x) // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(x)} training images make no full batch of {settings.batch_size}; "
                         "lower --batch_size or use more images.")
    rho = settings.rho
    if settings.warmup_epochs > 0:  # ρ_warmup for the first warmup_epochs · steps_per_epoch steps
        rho = keras.optimizers.schedules.PiecewiseConstantDecay(
            [settings.warmup_epochs * steps_per_epoch - 1], [settings.rho_warmup, settings.rho])
    inner = keras.optimizers.SGD(settings.learning_rate, momentum=0.9,
                                 weight_decay=settings.weight_decay or None)
    optimizer = GammaISTA(inner, rho=rho, penalties=gamma_penalties(model),
                          exclude=excluded_bn_names(model))
    model.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = make_dataset(x, y, settings.batch_size, shuffle=True, augment="pad_crop_flip",
                         seed=settings.seed, drop_remainder=True)
    model.fit(train, epochs=settings.epochs, validation_data=make_dataset(x_test, y_test, 500),
              callbacks=list(callbacks), verbose=settings.verbose)
    return model


def fine_tune(model, x, y, settings: ProtocolSettings):
    """Plain SGD (momentum 0.9, cosine decay) on the pruned model, in place."""
    import keras

    from tf_gamma_prune.data import make_dataset

    steps = max(settings.finetune_epochs * (len(x) // settings.batch_size), 1)
    schedule = keras.optimizers.schedules.CosineDecay(settings.finetune_learning_rate, steps)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9,
                                       weight_decay=settings.weight_decay or None),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(make_dataset(x, y, settings.batch_size, shuffle=True, augment="pad_crop_flip",
                           seed=settings.seed, drop_remainder=True),
              epochs=settings.finetune_epochs, verbose=settings.verbose)
    return model


def run_protocol(x, y, x_test, y_test, settings: ProtocolSettings, out_dir: str,
                 run_name: str | None = None) -> ProtocolResult:
    """Sparsify → prune → fine-tune → export; every step announced, outputs in ``out_dir``.

        result = run_protocol(x, y, x_test, y_test, ProtocolSettings(), "saved_models/run/c10")
        print(format_table(result.rows))
    """
    import example_plots
    import fashion_mnist
    from fashion_mnist import StageRow, announce, keras_accuracy

    from tf_gamma_prune import prune_model, sparsity_summary
    from tf_gamma_prune.export import check_parity, save_keras_atomic, to_tflite
    from tf_gamma_prune.analysis.flops import model_cost

    total = 5
    paths = fashion_mnist.output_paths(out_dir, run_name)
    paths = {k: paths[k] for k in ("sparse.keras", "pruned.keras", "pruned.tflite",
                                   "gamma_per_layer.png", "channel_widths.png", "logs")}

    announce(1, total, f"sparsifying ResNet-20 ({settings.epochs} epochs on {len(x):,} images, "
                       f"ρ {settings.rho_warmup} for {settings.warmup_epochs} epochs then {settings.rho})")
    recorder = example_plots.GammaRecorder()
    sparse = sparsify(x, y, x_test, y_test, settings,
                      callbacks=[*fashion_mnist.monitoring_callbacks(paths["logs"]), recorder])
    print(sparsity_summary(sparse))
    save_keras_atomic(sparse, paths["sparse.keras"])

    announce(2, total, "removing the zero-γ channels of the first convs (prune_model, exact)")
    pruned, report = prune_model(sparse, return_report=True, probe_inputs=x_test[:64])
    print(report.summary())

    announce(3, total, f"fine-tuning ({settings.finetune_epochs} epochs)")
    tuned = fine_tune(fashion_mnist.copy_model(pruned), x, y, settings)
    save_keras_atomic(tuned, paths["pruned.keras"])

    announce(4, total, "exporting the fine-tuned model to TFLite and checking parity")
    parity = check_parity(tuned, to_tflite(tuned, paths["pruned.tflite"]), x_test[:64])
    print(f"TFLite float32 parity: max rel {parity.max_rel:.2e}")

    announce(5, total, "evaluating and plotting")
    before, after = model_cost(sparse), model_cost(pruned)
    rows = [
        StageRow("sparsified (GammaISTA)", keras_accuracy(sparse, x_test, y_test), before.params,
                 before.macs),
        StageRow("pruned (exact, no tuning)", keras_accuracy(pruned, x_test, y_test), after.params,
                 after.macs),
        StageRow("pruned + fine-tuned", keras_accuracy(tuned, x_test, y_test), after.params,
                 after.macs),
    ]
    example_plots.plot_gamma_distributions(
        {k: v for k, v in recorder.history.items() if k in set(pruned_bn_names(sparse))},
        paths["gamma_per_layer.png"], epochs=recorder.epochs,
        title="ResNet-20: sorted |γ| of each block's first BN, one curve per epoch")
    example_plots.plot_channel_widths(report.widths, paths["channel_widths.png"],
                                      layers=[n[:-len("_bn1")] + "_conv1" for n in pruned_bn_names(sparse)])
    fashion_mnist.check_outputs_exist(paths)
    return ProtocolResult(sparse, pruned, tuned, report, rows, paths)


def main(argv):
    del argv
    from fashion_mnist import format_table, quiet_absl_logging

    quiet_absl_logging()
    settings = ProtocolSettings(
        epochs=FLAGS.epochs, warmup_epochs=FLAGS.warmup_epochs, finetune_epochs=FLAGS.finetune_epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        finetune_learning_rate=FLAGS.finetune_learning_rate, weight_decay=FLAGS.weight_decay,
        rho_warmup=FLAGS.rho_warmup, rho=FLAGS.rho, seed=FLAGS.seed)
    (x, y), (x_test, y_test) = load_cifar10(FLAGS.data_dir, FLAGS.train_examples)
    result = run_protocol(x, y, x_test, y_test, settings, FLAGS.out_dir)
    print()
    print(format_table(result.rows))
    print(f"paper (Ye et al. 2018, ResNet-20): {PAPER_PARAMS} parameters; this ResNet-20 has "
          f"{result.rows[0].params:,} (1×1 projection shortcuts, BN statistics counted)")
    print(f"exact prune: max relative output deviation {result.report.max_rel_deviation:.1e}")
    logs = result.paths.pop("logs")
    print("files:\n  " + "\n  ".join(sorted(result.paths.values())))
    print(f"TensorBoard logs: {logs}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
