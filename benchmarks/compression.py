"""GammaISTA against channel-pruning baselines at matched cost, on real Fashion-MNIST.

    .venv/bin/python benchmarks/compression.py                    # cpu preset (≈ 30–40 min, 2 cores)
    .venv/bin/python benchmarks/compression_report.py --write     # README table + Pareto plot
    .venv/bin/python benchmarks/compression.py --preset gpu \\
        --out benchmarks/results/compression_gpu.json               # the device (GPU) machine

Every method (GammaISTA, Network Slimming, L1-norm filters, random channels,
training from scratch) gets the same epoch budget, augmentation and schedule;
the baselines are pruned to GammaISTA's MACs. Measured per run: test accuracy,
parameters, MACs, float32/int8 ``.tflite`` sizes, int8 accuracy, TFLite
latency against the seed's reference; summarised as mean ± std over seeds and
four targets. Resumable (a rerun skips finished runs and cached models).

This file is the command line (absl flags, which override ``--preset``). The
protocol in full: ``compression_protocol.py`` (settings, presets, targets,
summary); the runs: ``compression_runs.py``; commands, durations and the GPU
machine's steps: ``benchmarks/README.md``.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # for importers by file path

from compression_protocol import (  # noqa: E402
    METHODS, PRESETS, PUBLIC_BENCHMARKS, PUBLIC_SOURCE, SettingsError, SettingsMismatchError,
    make_settings, record_key, settings_hash, summarize,
)
from compression_runs import DEFAULT_OUT, DEFAULT_WORK_DIR, load_data, run_benchmark  # noqa: E402

# What the tests and reports use as ``compression.<name>``, besides the command line.
__all__ = ["EXIT_CALL_AGAIN", "METHODS", "PRESETS", "PUBLIC_BENCHMARKS", "PUBLIC_SOURCE",
           "SettingsError", "SettingsMismatchError", "load_data", "main", "make_settings",
           "record_key", "run_benchmark", "settings_hash", "stratified_subset", "summarize"]

EXIT_CALL_AGAIN = 75  # main(): stopped at --deadline_minutes, or TFLite measurements pending


def stratified_subset(y, n: int, seed: int = 0):
    """The training subset of ``--train_examples``: ``tf_gamma_prune.data.stratified_indices``."""
    from tf_gamma_prune.data import stratified_indices

    return stratified_indices(y, n, seed=seed)


def define_flags() -> None:
    """Register the flags (only when run as a script, so tests can import this module)."""
    from absl import flags

    cpu = PRESETS["cpu"]
    flags.DEFINE_enum("preset", "cpu", sorted(PRESETS), "Settings preset; flags override it.")
    flags.DEFINE_integer("train_examples", cpu["train_examples"],
                         "Stratified training subset size (0: all 60,000).")
    flags.DEFINE_integer("test_examples", cpu["test_examples"], "Test images used (0: all).")
    flags.DEFINE_list("widths", cpu["widths"], "Reference fashion_vgg widths (6 values).")
    flags.DEFINE_integer("epochs", cpu["epochs"], "Total epoch budget E of every model.")
    flags.DEFINE_integer("sparsify_epochs", cpu["sparsify_epochs"], "Phase-1 epochs S.")
    flags.DEFINE_list("stage_epochs", cpu["stage_epochs"],
                      "Cumulative epochs s_k at the end of each stage (default: even split of S).")
    flags.DEFINE_list("rho_stages", cpu["rho_stages"], "GammaISTA ρ per stage (K values).")
    flags.DEFINE_list("seeds", cpu["seeds"], "Seeds (every run is repeated per seed).")
    flags.DEFINE_integer("batch_size", cpu["batch_size"], "Batch size.")
    flags.DEFINE_float("learning_rate", cpu["learning_rate"], "Phase-1 constant learning rate.")
    flags.DEFINE_float("finetune_learning_rate", cpu["finetune_learning_rate"],
                       "Phase-2 initial learning rate (cosine to 0).")
    flags.DEFINE_float("momentum", cpu["momentum"], "SGD momentum.")
    flags.DEFINE_enum("penalties", cpu["penalties"], ["paper", "uniform"], "GammaISTA per-layer λ.")
    flags.DEFINE_float("slimming_l1", cpu["slimming_l1"], "Network Slimming L1 strength.")
    flags.DEFINE_string("augment", cpu["augment"], "make_dataset augmentation (every method).")
    flags.DEFINE_float("match_tolerance", cpu["match_tolerance"],
                       "Relative MAC tolerance when matching slimming / l1_norm to gamma_ista.")
    flags.DEFINE_string("fold", cpu["fold"],
                        "prune_model fold: 'auto' (carrier when available, else exact) or a mode.")
    flags.DEFINE_integer("carrier_tile", cpu["carrier_tile"],
                         "prune_model carrier_tile with fold='carrier': a carrier channel only where "
                         "it does not start a new XNNPACK output tile of this many channels.")
    flags.DEFINE_integer("latency_runs", cpu["latency_runs"], "Timed TFLite runs per model.")
    flags.DEFINE_integer("latency_warmup", cpu["latency_warmup"], "Untimed TFLite runs first.")
    flags.DEFINE_enum("latency_timing", cpu["latency_timing"], ["steady", "interleaved"],
                      "compare_latency timing: 'steady' (turns of back-to-back runs, warm caches) or "
                      "'interleaved' (single runs alternate, cold caches).")
    flags.DEFINE_integer("tflite_eval_examples", cpu["tflite_eval_examples"],
                         "Test images for the int8 accuracy / agreement.")
    flags.DEFINE_integer("calibration_examples", cpu["calibration_examples"],
                         "Training images for int8 calibration.")
    flags.DEFINE_string("out", str(DEFAULT_OUT), "Results JSON (appended to, resumable).")
    flags.DEFINE_string("png", None, "Pareto plot (default: --out with .png).")
    flags.DEFINE_string("work_dir", str(DEFAULT_WORK_DIR), "Cache of shared models (git-ignored).")
    flags.DEFINE_boolean("restart", False, "Discard the results in --out and their cached models.")
    flags.DEFINE_float("deadline_minutes", None, "Start no training after this many minutes "
                       "(exit status 75: call again to go on). Not part of the settings.")


def settings_from_flags() -> dict:
    """The preset named by ``--preset``, with every flag given on the command line."""
    from absl import flags

    FLAGS = flags.FLAGS
    casts = {"widths": int, "stage_epochs": int, "seeds": int, "rho_stages": float}
    overrides = {}
    for name in PRESETS["cpu"]:
        if FLAGS[name].present:
            value = FLAGS[name].value
            overrides[name] = [casts[name](v) for v in value] if name in casts else value
    return make_settings(FLAGS.preset, **overrides)


def main(argv) -> None:
    """Run or resume the benchmark, print the targets' verdicts; exit 75 when unfinished."""
    del argv
    from absl import flags, logging

    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    out = pathlib.Path(FLAGS.out)
    png = pathlib.Path(FLAGS.png) if FLAGS.png else out.with_suffix(".png")
    try:
        settings = settings_from_flags()
        outcome = run_benchmark(settings, out, FLAGS.work_dir, restart=FLAGS.restart,
                                log=lambda line: print(line, flush=True), png=png,
                                deadline_minutes=FLAGS.deadline_minutes)
    except (SettingsMismatchError, SettingsError) as e:
        sys.exit(f"error: {e}")
    for t in outcome.doc["summary"]["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.4g}"
        print(f"target {t['name']}: {value} {t['comparison']} {t['threshold']:g}: "
              f"{'met' if t['met'] else 'NOT MET'} — {t['detail']}")
    print(f"wrote {out} and {png}")
    if not outcome.finished:
        print("NOT FINISHED: runs are left, or TFLite measurements wait for a machine with "
              "TensorFlow; run the same command again (there) to go on.")
        sys.exit(EXIT_CALL_AGAIN)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
