"""GammaISTA against channel-pruning baselines at matched cost, on real Fashion-MNIST.

    .venv/bin/python benchmarks/compression.py      # --preset cpu: benchmarks/results/compression.json
    .venv/bin/python benchmarks/compression.py --preset smoke --out /tmp/smoke.json
    .venv/bin/python benchmarks/compression.py --preset cpu_short \\
        --out benchmarks/results/compression_cpu_short.json          # the 8,000-image run
    .venv/bin/python benchmarks/compression_report.py --write     # docs table + plot (compression.json)
    .venv/bin/python benchmarks/compression.py --preset gpu \\
        --out benchmarks/results/compression_gpu.json               # the device (GPU) machine

Two protocols. ``from_reference`` (presets ``cpu``, the default, and ``smoke``):
every method (GammaISTA, Network Slimming, L1-norm filters, random channels;
then the seed papers' selection criteria and training-time sparsifiers)
starts from a trained reference and gets the same budget after it, scratch
trains GammaISTA's widths from a fresh initialisation, knobs tuned on a
validation split. ``from_scratch`` (presets ``gpu``, ``cpu_short``): every
method trains from a fresh initialisation with the same epoch budget. The
baselines are pruned to GammaISTA's MACs. Measured per run: test accuracy,
parameters, MACs, float32/int8 ``.tflite`` sizes, int8 accuracy, TFLite
latency against the reference; summarised as mean ± std over seeds and four
targets. Resumable (a rerun skips finished runs and cached models).

This file is the command line (absl flags, which override ``--preset``). The
protocols in full: ``compression_reference_protocol.py`` and
``compression_protocol.py``; presets: ``compression_presets.py``; the runs:
``compression_reference.py`` and ``compression_runs.py``; commands, durations
and the GPU machine's steps: ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
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
           "SettingsError", "SettingsMismatchError", "drop_records", "load_data", "main",
           "make_settings",
           "record_key", "run_benchmark", "settings_hash", "stratified_subset", "summarize"]

EXIT_CALL_AGAIN = 75  # main(): stopped at --deadline_minutes, or TFLite measurements pending


def stratified_subset(y, n: int, seed: int = 0):
    """The training subset of ``--train_examples``: ``tf_gamma_prune.data.stratified_indices``."""
    from tf_gamma_prune.data import stratified_indices

    return stratified_indices(y, n, seed=seed)


def drop_records(out: pathlib.Path, keys: list[str]) -> list[dict]:
    """Remove the records named ``METHOD:TARGET:SEED`` (TARGET: the target's index, as in the
    records) from the results file ``out``, atomically, and return them. The next run measures
    them again from the cached final models, with no training: for records whose latency was
    timed while other jobs loaded the machine (``--remeasure``).

    >>> import tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = path.write_text(json.dumps({"records": [{"method": "l1_norm", "target": 0, "seed": 1},
    ...                                             {"method": "random", "target": 0, "seed": 1}]}))
    >>> [r["method"] for r in drop_records(path, ["l1_norm:0:1"])]
    ['l1_norm']
    >>> [r["method"] for r in json.loads(path.read_text())["records"]]
    ['random']
    >>> drop_records(path, ["l1_norm:0:1"])
    Traceback (most recent call last):
    ...
    compression_protocol.SettingsError: --remeasure l1_norm:0:1: no such record in ...r.json (METHOD:TARGET:SEED, TARGET the target's index: 0 for the first of --mac_targets).
    """
    from tf_gamma_prune.atomic_io import write_json_atomic

    doc = json.loads(pathlib.Path(out).read_text())
    wanted = {}
    for key in keys:
        try:
            method, target, seed = key.split(":")
            wanted[(method, int(target), int(seed))] = key
        except ValueError:
            raise SettingsError(f"--remeasure {key}: expected METHOD:TARGET:SEED such as "
                                "l1_norm:0:1 (TARGET the target's index).") from None
    missing = set(wanted) - {record_key(r) for r in doc["records"]}
    if missing:
        raise SettingsError(f"--remeasure {wanted[min(missing)]}: no such record in {out} "
                            "(METHOD:TARGET:SEED, TARGET the target's index: 0 for the first of "
                            "--mac_targets).")
    found = [r for r in doc["records"] if record_key(r) in wanted]
    doc["records"] = [r for r in doc["records"] if record_key(r) not in wanted]
    write_json_atomic(out, doc)
    return found


HELP = {
    "reference": "from_reference: the trained reference .keras ('' with --reference_epochs: "
                 "train one here).",
    "reference_epochs": "from_reference: epochs of a reference trained here (no --reference).",
    "train_examples": "Stratified training subset size (0: all).",
    "validation_examples": "from_reference: training images held out for tuning.",
    "validation_seed": "from_reference: seed of the validation hold-out.",
    "test_examples": "Test images used (0: all).",
    "widths": "Reference fashion_vgg widths (6 values).",
    "epochs": "from_scratch: total epoch budget E of every model.",
    "sparsify_epochs": "Sparsify epochs S (from_scratch: phase 1).",
    "finetune_epochs": "from_reference: fine-tune epochs F after the sparsify phase.",
    "scratch_epochs": "from_reference: scratch training epochs (0: the reference's count).",
    "stage_epochs": "from_scratch: cumulative epochs s_k ending each stage (default: even split).",
    "rho_stages": "from_scratch: GammaISTA rho per stage (K values).",
    "mac_targets": "from_reference: MAC reductions aimed at (e.g. 3,6).",
    "seeds": "Seeds (every run is repeated per seed).",
    "batch_size": "Batch size.",
    "learning_rate": "from_scratch: phase-1 constant learning rate.",
    "sparsify_learning_rate": "from_reference: SGD learning rate of the sparsify phase.",
    "finetune_learning_rate": "Fine-tune initial learning rate (cosine to 0).",
    "momentum": "SGD momentum.",
    "penalties": "from_scratch: GammaISTA per-layer lambda ('paper' or 'uniform').",
    "alpha": "from_reference: gamma-W rescaling factor before ISTA (1: none).",
    "min_channels": "from_reference: GammaISTA keeps at least this many channels per layer.",
    "scale_beta": "from_reference: GammaISTA scales each β with its γ's shrink (keeps -β/γ).",
    "cost_target_every": "from_reference: CostTarget measures every this many steps.",
    "cost_target_reach_at": "from_reference: fraction of the sparsify phase at which CostTarget "
                            "reaches the budget.",
    "slimming_l1": "Network Slimming L1 strength.",
    "criteria_methods": "from_reference: seed-paper selection criteria run after the core "
                        "methods (JSON list).",
    "training_methods": "from_reference: seed-paper training-time sparsifiers run after the "
                        "criteria (receding_importance, admm, coarse_ranking, gamma_ista_tiled); "
                        "appending some "
                        "continues a results file.",
    "rni_strength": "receding_importance: RecedingImportanceRegularizer strength λ.",
    "rni_shift": "receding_importance: the regulariser's shift b.",
    "rni_bn_lr_multiplier": "receding_importance: BatchNormLRMultiplier factor.",
    "rni_start_scale": "receding_importance: each BN's largest γ before w = logit(γ).",
    "admm_rho": "admm: ADMMFilterPruning's starting ρ.",
    "admm_rho_growth": "admm: ρ's factor after every Z/U update.",
    "admm_updates": "admm: Z/U updates over the sparsify phase (update_every = its steps / this).",
    "tile_round_to": "gamma_ista_tiled: CostTarget(round_to=...), the widths' tile.",
    "tuning": "from_reference: JSON {method: [overrides, ...]} tried on the validation split.",
    "augment": "make_dataset augmentation (every method).",
    "match_tolerance": "Relative MAC tolerance when matching the baselines to gamma_ista.",
    "fold": "prune_model fold: 'auto' (carrier when available, else exact) or a mode.",
    "carrier_tile": "prune_model carrier_tile with fold='carrier' (XNNPACK output tile).",
    "latency_runs": "Timed TFLite runs per model.",
    "latency_warmup": "Untimed TFLite runs first.",
    "latency_timing": "compare_latency timing: 'steady' (warm caches) or 'interleaved' (cold).",
    "tflite_eval_examples": "Test images for the int8 accuracy / agreement.",
    "calibration_examples": "Training images for int8 calibration.",
}
LIST_CASTS = {"widths": int, "stage_epochs": int, "seeds": int, "rho_stages": float,
              "mac_targets": float}


def setting_names() -> list[str]:
    """Every setting of any preset (each one a flag), in the presets' order."""
    return list(dict.fromkeys(name for preset in PRESETS.values() for name in preset
                              if name != "protocol"))


def define_flags() -> None:
    """Register the flags (only when run as a script, so tests can import this module).

    One flag per setting of any preset, without a default: a flag given on the
    command line overrides the preset's value (a setting the preset does not
    have is refused).
    """
    from absl import flags

    flags.DEFINE_enum("preset", "cpu", sorted(PRESETS), "Settings preset; flags override it.")
    for name in setting_names():
        example = next(p[name] for p in PRESETS.values() if p.get(name) is not None)
        doc = HELP.get(name, name)
        if isinstance(example, bool):
            flags.DEFINE_boolean(name, None, doc)
        elif isinstance(example, int):
            flags.DEFINE_integer(name, None, doc)
        elif isinstance(example, float):
            flags.DEFINE_float(name, None, doc)
        elif isinstance(example, list):
            flags.DEFINE_list(name, None, doc)
        else:  # str, and dicts given as JSON
            flags.DEFINE_string(name, None, doc)
    flags.DEFINE_string("out", str(DEFAULT_OUT), "Results JSON (appended to, resumable).")
    flags.DEFINE_string("png", None, "Pareto plot (default: --out with .png).")
    flags.DEFINE_string("work_dir", str(DEFAULT_WORK_DIR), "Cache of shared models (git-ignored).")
    flags.DEFINE_boolean("restart", False, "Discard the results in --out and their cached models.")
    flags.DEFINE_float("deadline_minutes", None, "Start no training after this many minutes "
                       "(exit status 75: call again to go on). Not part of the settings.")
    flags.DEFINE_list("remeasure", [], "Records METHOD:TARGET:SEED (TARGET: the index) to measure "
                      "again from the cached final models, no training: for latencies timed while "
                      "other jobs loaded the machine.")


def settings_from_flags() -> dict:
    """The preset named by ``--preset``, with every flag given on the command line."""
    from absl import flags

    FLAGS = flags.FLAGS
    overrides = {}
    for name in setting_names():
        if not FLAGS[name].present:
            continue
        value = FLAGS[name].value
        if name in LIST_CASTS:
            value = [LIST_CASTS[name](v) for v in value]
        elif name == "tuning":
            value = json.loads(value)
        elif name == "reference" and value in ("", "none", "None"):
            value = None
        overrides[name] = value
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
        dropped = drop_records(out, FLAGS.remeasure) if FLAGS.remeasure else []
        for record in dropped:
            print(f"measuring again: {record['method']} target {record['target']} seed "
                  f"{record['seed']} (was {record.get('speedup')}x faster)")
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
