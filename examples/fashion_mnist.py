"""Fashion-MNIST end to end: GammaISTA training → prune_model → fine-tune → TFLite.

The README's main command. The default run takes a few minutes on 2 CPU cores
(a subset of the training set, few epochs); ``--full`` is the benchmark setting.

    .venv/bin/python examples/fashion_mnist.py             # quick default
    .venv/bin/python examples/fashion_mnist.py --full      # all 60k images, more epochs
    .venv/bin/tensorboard --logdir saved_models/run/logs   # watch γ sparsify (live)

It prints one table (accuracy, parameters, MACs, .tflite size, latency per stage)
and writes to ``--out_dir`` (default ``saved_models/run/``, git-ignored): the
models (``sparse.keras``, ``pruned.keras`` and their ``.tflite``), three plots
(``gamma_per_layer.png``: sorted |γ| per layer for every epoch;
``channel_widths.png``: channels per conv before/after pruning;
``accuracy_vs_macs.png``: accuracy against multiply-adds per stage) and
TensorBoard logs under ``logs/<run>/`` (loss/accuracy, zero-γ counts, γ
histograms per epoch). The network is
``tf_gamma_prune.reference_models.fashion_vgg`` (VGG-style, BN after every conv,
32-32-64-64-128-128 channels).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register this script's flags (only when run as a script, so tests can import it)."""
    flags.DEFINE_boolean("full", False, "Benchmark setting: all 60k images, more epochs.")
    flags.DEFINE_integer("train_examples", 15000, "Training images used by the default run.")
    flags.DEFINE_integer("epochs", 3, "Sparsifying epochs (default run).")
    flags.DEFINE_integer("finetune_epochs", 1, "Fine-tuning epochs after pruning (default run).")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_float("learning_rate", 0.05, "Initial SGD learning rate (cosine decay).")
    flags.DEFINE_float("rho", 0.1, "Target ISTA strength ρ.")
    flags.DEFINE_float("rho_warmup", 0.05, "ρ during the first epoch (paper: warm-up).")
    flags.DEFINE_enum("penalties", "paper", ["paper", "uniform"], "Per-layer λ: Ye et al. or 1.")
    flags.DEFINE_string("out_dir", "saved_models/run", "Where models, plots and logs are written.")
    flags.DEFINE_integer("latency_runs", 100, "Timed TFLite runs per model.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


@dataclasses.dataclass
class StageRow:
    """One line of the results table."""

    stage: str
    accuracy: float
    params: int
    macs: int
    tflite_kb: float | None = None
    latency_ms: float | None = None


def train_with_gamma_ista(x, y, x_test, y_test, *, epochs, batch_size, learning_rate, rho,
                          rho_warmup, penalties, seed, verbose=1, callbacks=()):
    """Build the reference network and sparsify it; returns ``(model, history)``.

        model, history = train_with_gamma_ista(x, y, x_test, y_test, epochs=3, batch_size=128,
            learning_rate=0.05, rho=0.1, rho_warmup=0.05, penalties="paper", seed=0)

    ``callbacks`` are added to ``model.fit`` (after the built-in SparsityMonitor
    when they contain none).
    """
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
    callbacks = list(callbacks)
    if not any(isinstance(c, SparsityMonitor) for c in callbacks):
        callbacks.insert(0, SparsityMonitor())
    train = make_dataset(x, y, batch_size, shuffle=True, augment="flip", seed=seed)
    history = model.fit(train, epochs=epochs, validation_data=make_dataset(x_test, y_test, 512),
                        callbacks=callbacks, verbose=verbose)
    return model, history


def monitoring_callbacks(log_dir: str):
    """SparsityMonitor (γ histograms, zero counts) then TensorBoard, both into ``log_dir``.

    The monitor comes first so its ``zero_gamma/*`` values are in the epoch logs
    that TensorBoard writes as scalars. ``tensorboard --logdir <log_dir>/..`` shows
    every run side by side.
    """
    import keras

    from tf_gamma_prune import SparsityMonitor

    return [SparsityMonitor(log_dir=os.path.join(log_dir, "gamma")),
            keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False)]


def fine_tune(model, x, y, *, epochs, batch_size, learning_rate, seed, verbose=1):
    """Short plain-SGD fine-tuning of the pruned model (cosine decay from ``learning_rate``)."""
    import keras

    from tf_gamma_prune.data import make_dataset

    steps = epochs * -(-len(x) // batch_size)
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(learning_rate, steps),
                                       momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(make_dataset(x, y, batch_size, shuffle=True, augment="flip", seed=seed),
              epochs=epochs, verbose=verbose)
    return model


def copy_model(model):
    """Same architecture and weights, uncompiled: fine-tune it without touching ``model``,
    or save it without optimizer state.

        tuned = fine_tune(copy_model(pruned), x, y, ...)
    """
    import keras

    import tf_gamma_prune.layers  # noqa: F401  registers BorderCorrection / ConstantFeature

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def keras_accuracy(model, x, y) -> float:
    """Top-1 accuracy of a logits model on ``(x, y)``."""
    import numpy as np

    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def tflite_accuracy(tflite: bytes, x, y) -> float:
    """Top-1 accuracy of a .tflite classifier, run one image at a time like a phone."""
    import numpy as np

    from tf_gamma_prune.export import make_interpreter

    interpreter = make_interpreter(tflite, num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    correct = 0
    for image, label in zip(x, y):
        value = image[None]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], value.astype(inp["dtype"]))
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == label)
    return correct / len(x)


def format_table(rows: list[StageRow]) -> str:
    """The results table; the .tflite columns appear only when some row has them.

        print(format_table([StageRow("dense", 0.91, 289_066, 29_128_448)]))
    """
    with_tflite = any(r.tflite_kb is not None or r.latency_ms is not None for r in rows)
    header = f"{'stage':<26} {'test acc':>8} {'params':>9} {'MACs':>11}"
    if with_tflite:
        header += f" {'.tflite KB':>10} {'latency ms':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        line = f"{r.stage:<26} {r.accuracy:>8.4f} {r.params:>9,} {r.macs:>11,}"
        if with_tflite:
            size = f"{r.tflite_kb:.1f}" if r.tflite_kb is not None else "-"
            latency = f"{r.latency_ms:.3f}" if r.latency_ms is not None else "-"
            line += f" {size:>10} {latency:>10}"
        lines.append(line)
    return "\n".join(lines)


def quiet_absl_logging() -> None:
    """Hide TensorFlow's INFO chatter (SavedModel export) unless ``--verbosity`` was given."""
    from absl import logging

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def announce(step: int, total: int, text: str) -> None:
    """A progress line for the long steps between the Keras progress bars."""
    print(f"[{step}/{total}] {text}", flush=True)


def conv_layer_names(model) -> list[str]:
    """Names of the model's convolution layers, in graph order (for the widths plot)."""
    import keras

    return [layer.name for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)]


def write_plots(recorder, report, rows: list[StageRow], model, paths: dict[str, str]) -> None:
    """The three PNGs: γ per layer over training, widths before/after, accuracy vs MACs."""
    import example_plots

    example_plots.plot_gamma_distributions(
        recorder.history, paths["gamma_per_layer.png"], epochs=recorder.epochs,
        title="Fashion-MNIST VGG-BN: sorted |γ| per layer, one curve per epoch (GammaISTA)")
    example_plots.plot_channel_widths(report.widths, paths["channel_widths.png"],
                                      layers=conv_layer_names(model))
    example_plots.plot_accuracy_vs_macs(
        [(r.stage.strip(), r.accuracy, r.macs) for r in rows], paths["accuracy_vs_macs.png"],
        title="Fashion-MNIST: test accuracy vs multiply-adds per stage")


def output_paths(out_dir: str, run_name: str | None = None) -> dict[str, str]:
    """Every file and folder the pipeline writes, keyed by file name (``logs`` = this run's log dir)."""
    run_name = run_name or time.strftime("%Y%m%d-%H%M%S")
    names = ("sparse.keras", "pruned.keras", "sparse.tflite", "pruned.tflite", "pruned_int8.tflite",
             "gamma_per_layer.png", "channel_widths.png", "accuracy_vs_macs.png")
    paths = {name: os.path.join(out_dir, name) for name in names}
    paths["logs"] = os.path.join(out_dir, "logs", run_name)
    return paths


def check_outputs_exist(paths: dict[str, str]) -> None:
    """Raise with the missing names if some promised output was not written."""
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise RuntimeError(f"The pipeline finished but did not write: {', '.join(missing)}")


def run_pipeline(x, y, x_test, y_test, *, epochs, finetune_epochs, batch_size, learning_rate,
                 rho, rho_warmup, penalties, out_dir, latency_runs, seed, verbose=1,
                 tflite_eval_examples=2000, run_name=None):
    """Train → prune → fine-tune → export → plots; returns ``(rows, report, paths)``.

        rows, report, paths = run_pipeline(x, y, x_test, y_test, epochs=3, finetune_epochs=1,
            batch_size=128, learning_rate=0.05, rho=0.1, rho_warmup=0.05, penalties="paper",
            out_dir="saved_models/run", latency_runs=100, seed=0)
        print(format_table(rows))

    ``paths`` names every file written (models, plots) and ``paths["logs"]``,
    the TensorBoard folder of this run (``<out_dir>/logs/<run_name>``, default
    name: the start time).
    """
    import numpy as np

    import example_plots
    from tf_gamma_prune import prune_model, sparsity_summary
    from tf_gamma_prune.export import (
        check_parity, compare_latency, save_keras_atomic, to_tflite,
    )
    from tf_gamma_prune.analysis.flops import model_cost

    total = 6
    os.makedirs(out_dir, exist_ok=True)
    paths = output_paths(out_dir, run_name)

    announce(1, total, f"sparsifying with GammaISTA ({epochs} epochs on {len(x):,} images); "
                       f"TensorBoard: tensorboard --logdir {os.path.dirname(paths['logs'])}")
    recorder = example_plots.GammaRecorder()
    model, _ = train_with_gamma_ista(
        x, y, x_test, y_test, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        rho=rho, rho_warmup=rho_warmup, penalties=penalties, seed=seed, verbose=verbose,
        callbacks=[*monitoring_callbacks(paths["logs"]), recorder])
    print(sparsity_summary(model))
    save_keras_atomic(model, paths["sparse.keras"])

    announce(2, total, "removing the zero-γ channels (prune_model, exact)")
    pruned, report = prune_model(model, return_report=True, probe_inputs=x_test[:64])
    print(report.summary())
    acc_sparse = keras_accuracy(model, x_test, y_test)
    acc_pruned = keras_accuracy(pruned, x_test, y_test)

    announce(3, total, f"fine-tuning the pruned model ({finetune_epochs} epochs)")
    fine_tune(pruned, x, y, epochs=finetune_epochs, batch_size=batch_size,
              learning_rate=learning_rate / 5, seed=seed, verbose=verbose)
    save_keras_atomic(pruned, paths["pruned.keras"])
    acc_tuned = keras_accuracy(pruned, x_test, y_test)

    announce(4, total, "exporting float32 and int8 TFLite, checking parity")
    sparse_tfl = to_tflite(model, paths["sparse.tflite"])
    pruned_tfl = to_tflite(pruned, paths["pruned.tflite"])
    int8_tfl = to_tflite(pruned, paths["pruned_int8.tflite"], quantization="int8",
                         representative_data=[x[i:i + 1] for i in range(200)])
    parity = check_parity(pruned, pruned_tfl, x_test[:256])
    parity_int8 = check_parity(pruned, int8_tfl, x_test[:256])
    print(f"TFLite float32 parity: max rel {parity.max_rel:.2e}; int8 top-1 agreement "
          f"{parity_int8.top1_agreement:.4f}")

    announce(5, total, f"timing TFLite at 1 thread ({latency_runs} runs per model, alternating) "
                       "and evaluating the .tflite files")
    (lat,) = compare_latency(sparse_tfl, pruned_tfl, threads=(1,), runs=latency_runs)
    (lat_int8,) = compare_latency(sparse_tfl, int8_tfl, threads=(1,), runs=latency_runs)

    before, after = model_cost(model), model_cost(pruned)
    n_eval = min(tflite_eval_examples, len(x_test))
    rows = [
        StageRow("sparsified (GammaISTA)", acc_sparse, before.params, before.macs,
                 len(sparse_tfl) / 1024, lat.a.median_ms),
        StageRow("pruned (exact, no tuning)", acc_pruned, after.params, after.macs),
        StageRow("pruned + fine-tuned", acc_tuned, after.params, after.macs,
                 len(pruned_tfl) / 1024, lat.b.median_ms),
        StageRow(f"  .tflite float32 ({n_eval})",
                 tflite_accuracy(pruned_tfl, x_test[:n_eval], y_test[:n_eval]),
                 after.params, after.macs, len(pruned_tfl) / 1024, lat.b.median_ms),
        StageRow(f"  .tflite int8 ({n_eval})",
                 tflite_accuracy(int8_tfl, x_test[:n_eval], y_test[:n_eval]),
                 after.params, after.macs, len(int8_tfl) / 1024, lat_int8.b.median_ms),
    ]
    assert np.isfinite(acc_tuned)

    announce(6, total, "plotting")
    write_plots(recorder, report, rows, model, paths)
    check_outputs_exist(paths)
    return rows, report, paths


def main(argv):
    del argv
    from tf_gamma_prune.data import load_fashion_mnist

    quiet_absl_logging()
    (x, y), (x_test, y_test) = load_fashion_mnist()
    if not FLAGS.full:
        x, y = x[: FLAGS.train_examples], y[: FLAGS.train_examples]
    rows, report, paths = run_pipeline(
        x, y, x_test, y_test,
        epochs=20 if FLAGS.full else FLAGS.epochs,
        finetune_epochs=5 if FLAGS.full else FLAGS.finetune_epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate, rho=FLAGS.rho,
        rho_warmup=FLAGS.rho_warmup, penalties=FLAGS.penalties, out_dir=FLAGS.out_dir,
        latency_runs=FLAGS.latency_runs, seed=FLAGS.seed)
    print()
    print(format_table(rows))
    print(f"\nexact prune: max relative output deviation {report.max_rel_deviation:.1e} "
          "(before fine-tuning)")
    logs = paths.pop("logs")
    print("files:\n  " + "\n  ".join(sorted(paths.values())))
    tensorboard = os.path.relpath(os.path.join(os.path.dirname(sys.executable), "tensorboard"))
    print(f"TensorBoard logs: {logs}\n  view with: {tensorboard} --logdir {os.path.dirname(logs)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
