"""GammaISTA against channel-pruning baselines at matched cost, on real Fashion-MNIST.

    .venv/bin/python benchmarks/compression.py                    # cpu preset (≈ 30–40 min, 2 cores)
    .venv/bin/python benchmarks/compression_report.py --write     # README table + Pareto plot
    .venv/bin/python benchmarks/compression.py --preset gpu \\
        --out benchmarks/results/compression_gpu.json               # the device (GPU) machine

Every method gets the same total epoch budget ``E = S + F`` (sparsify/train
epochs, then fine-tune epochs), the same augmentation (``pad_crop_flip``: pad 2,
random 28×28 crop, random horizontal flip), batch size, optimizer (SGD with
momentum 0.9) and learning-rate schedule shape:

* **phase 1** (training / sparsifying): constant learning rate ``learning_rate``;
* **phase 2** (fine-tuning, and the end of every training run): a fresh SGD,
  cosine decay from ``finetune_learning_rate`` to 0 over the phase's epochs.

Reference network: :func:`tf_gamma_prune.reference_models.fashion_vgg` (6 × [Conv3×3
(no bias) - BN - ReLU], max-pooling after conv2 and conv4, global average pooling,
dropout 0.3, Dense(10) logits; BN names ``bn1`` … ``bn6``), widths ``--widths``.

Protocol, per seed (phase 1 is split into K stages ending after ``s_1 < … <
s_K = S`` epochs, ``--stage_epochs``, default an even split):

* **reference**: the unpruned network, phase 1 for S epochs then phase 2 for
  ``E − S`` epochs. The same run supplies its snapshots after ``s_k`` epochs.
* **gamma_ista** (family of K models): one sparsify run with
  ``GammaISTA(SGD)`` (the paper's per-layer λ, ``--penalties``); ρ is
  ``rho_stages[k]`` during stage k (raised at each stage boundary). At the end
  of stage k the snapshot goes through ``prune_model`` (zero-γ channels removed,
  ``--fold``, ``--carrier_tile``) and is fine-tuned for ``E − s_k`` epochs (plain SGD, no penalty):
  the family's k-th model.
* **slimming** (Network Slimming, Liu et al. 2017): its own sparsify run with
  ``NetworkSlimming(SGD, l1=--slimming_l1)`` (L1 subgradient on γ), snapshots at
  the same ``s_k``; the global |γ| threshold (``gamma_threshold_selection``) is
  chosen by ``selection_for_macs`` to match the gamma_ista model's MACs (±5%);
  removed channels are dropped together with their β (no folding); fine-tune
  ``E − s_k``.
* **l1_norm** (Li et al. 2017): the reference's snapshot at ``s_k``, the same
  fraction of filters with the smallest kernel L1 norm removed in every layer
  (``l1_norm_selection``, fraction matched to the gamma_ista MACs), fine-tune
  ``E − s_k``.
* **random**: the reference's snapshot at ``s_k``, random channels removed down
  to exactly the gamma_ista model's per-layer widths, fine-tune ``E − s_k``.
* **scratch**: ``fashion_vgg(widths=gamma_ista's)`` from a fresh initialisation,
  phase 1 for ``s_k`` epochs then phase 2 for ``E − s_k`` epochs.

All baselines prune through ``prune_model``'s explicit-selection path. The
reference, gamma_ista and slimming runs of one seed start from the same
initialisation. ``--rho_stages``: the cpu preset's values were picked from a
short sweep so that the family spans ≈ 1.5× to ≈ 6× fewer MACs; the gpu
preset's are an untested extrapolation (longer training needs a smaller ρ).
``--slimming_l1`` gives Network Slimming the same shrinking pressure as
GammaISTA: its subgradient goes through SGD momentum, which amplifies a constant
push by ``1 / (1 − momentum)``, so ``l1 = (1 − momentum) · ρ̄ · λ̄`` with ρ̄
the epoch-weighted mean of ``rho_stages`` and λ̄ the mean per-layer penalty
(cpu: 0.1 · 0.12 · 1.85 ≈ 0.022; gpu: 0.1 · 0.00233 · 3.26 ≈ 7.6e-4).

Measured per run (one JSON record): test accuracy (Keras, the whole test set
unless ``--test_examples``), parameters and MACs (``model_cost``), float32 and
int8 ``.tflite`` sizes (int8 calibrated on training images), int8 accuracy and
top-1 agreement with the Keras model on the first ``--tflite_eval_examples``
test images, latency at 1 thread (median ms; speed-up against the seed's
reference ``.tflite`` timed alternately with ``compare_latency`` under
``--latency_timing``, for float32 and for int8) and speed-up / MAC reduction, per-layer widths, training seconds.
The summary holds mean ± std over seeds per (method, target) and the four
targets of the issue with value, threshold, met / not met and margin:

1. gamma_ista at ≥ 3× fewer MACs and ≥ 5× fewer parameters than the reference
   loses ≤ 0.5 point of test accuracy;
2. at matched MACs (±5%) gamma_ista beats slimming and l1_norm by ≥ 0.3 point;
3. realised TFLite speed-up (1 thread, float32) ≥ 0.8 × the MAC reduction;
4. a pruned model with ≤ 100k parameters reaches ≥ 93.0% test accuracy.

Resumable: the shared intermediate models (phase-1 snapshots, the final
reference) are cached as ``.keras`` under ``--work_dir/<settings hash>/``
(git-ignored) and every finished (method, target, seed) record is appended to
the JSON atomically at once; a rerun with the same settings skips finished runs
and never retrains a cached model (a sparsify run interrupted between snapshots
restarts from the last snapshot, with its optimizer state). A rerun with other
settings refuses to mix them: pass a new ``--out`` or ``--restart``.

Presets (``--preset``; individual flags override them):

* ``cpu`` (default): a stratified subset of the training set
  (``--train_examples``), E = 4, S = 3, K = 2, 2 seeds. Sized to finish in
  ≈ 30–40 minutes on the shared 2-core development machine; too short to reach
  the accuracy targets (the JSON says so).
* ``gpu``: all 60,000 training images, the reference twice as wide, E = 40,
  S = 24, K = 3, 3 seeds — for the device machine (GPU training).

Machines without TensorFlow (the lent GPU machine has JAX and PyTorch, no
TensorFlow, and TensorFlow's wheel is larger than what may be carried there):
with ``KERAS_BACKEND=jax`` every run is trained, pruned and measured in Keras
(accuracy, parameters, MACs, widths; the data pipeline is numpy's
:func:`tf_gamma_prune.data.array_batches` with the same augmentation), its final
model is saved under ``<cache>/seed<N>/final/`` and its record says
``"tflite_pending": true``. The same command later, on a machine with
TensorFlow and the cache folder copied back, trains nothing and fills in the
TFLite sizes, int8 accuracy and latencies (``tests/test_compression_without_
tensorflow.py`` runs exactly this with TensorFlow blocked). Each device call
may run 10 minutes: ``--deadline_minutes`` starts no training after that long
(exit status 75: call again; a warm machine keeps the cache between calls).
One call there, from the repository root (``.whl``: the keras, optree and namex
wheels, ``pip download --no-deps --only-binary=:all: --python-version 3.12
--platform manylinux_2_28_x86_64 -d .whl keras==<the version here> optree namex``,
3 MB, the rest is installed there; ``.fmnist``: the four Fashion-MNIST ``.gz``
files; both git-ignored and named in ``carry``)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:. KERAS_BACKEND=jax FASHION_MNIST_DIR=.fmnist
    python3 benchmarks/compression.py --preset gpu --deadline_minutes 7 \
        --out benchmarks/results/compression_gpu.json
    tar cz benchmarks/results/compression_gpu.json \
        benchmarks/results/compression_work/*/seed*/final \
        benchmarks/results/compression_work/*/seed*/reference_final.* \
        | split -b 15M - $OUT/gpu.tgz.part-

and back here: ``cat gpu.tgz.part-* | tar xz``, then the ``--preset gpu
--out benchmarks/results/compression_gpu.json`` command with TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import platform
import shutil
import sys
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

DEFAULT_OUT = HERE / "results" / "compression.json"
DEFAULT_WORK_DIR = HERE / "results" / "compression_work"
SCHEMA = 1
EXIT_CALL_AGAIN = 75  # main(): stopped at --deadline_minutes, or TFLite measurements pending

METHODS = ("gamma_ista", "slimming", "l1_norm", "random", "scratch")
REFERENCE = "reference"
PRUNING_METHODS = ("gamma_ista", "slimming", "l1_norm", "random")

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "train_examples": 8000,
        "test_examples": 0,
        "widths": [32, 32, 64, 64, 128, 128],
        "epochs": 4,
        "sparsify_epochs": 3,
        "stage_epochs": [],
        "rho_stages": [0.09, 0.18],
        "seeds": [0, 1],
        "batch_size": 128,
        "learning_rate": 0.05,
        "finetune_learning_rate": 0.01,
        "momentum": 0.9,
        "penalties": "paper",
        "slimming_l1": 0.022,
        "augment": "pad_crop_flip",
        "match_tolerance": 0.05,
        "fold": "auto",
        "carrier_tile": 8,
        "latency_runs": 100,
        "latency_warmup": 10,
        "latency_timing": "interleaved",  # what its committed results used; "steady" when re-run
        "tflite_eval_examples": 2000,
        "calibration_examples": 200,
    },
    "gpu": {
        "train_examples": 0,
        "test_examples": 0,
        "widths": [64, 64, 128, 128, 256, 256],
        "epochs": 40,
        "sparsify_epochs": 24,
        "stage_epochs": [],
        "rho_stages": [0.001, 0.002, 0.004],
        "seeds": [0, 1, 2],
        "batch_size": 128,
        "learning_rate": 0.05,
        "finetune_learning_rate": 0.01,
        "momentum": 0.9,
        "penalties": "paper",
        "slimming_l1": 0.00076,
        "augment": "pad_crop_flip",
        "match_tolerance": 0.05,
        "fold": "auto",
        "carrier_tile": 8,
        "latency_runs": 200,
        "latency_warmup": 20,
        "latency_timing": "steady",
        "tflite_eval_examples": 10000,
        "calibration_examples": 200,
    },
}

TARGETS = {
    "min_mac_reduction": 3.0,
    "min_param_reduction": 5.0,
    "max_accuracy_drop_points": 0.5,
    "min_advantage_points": 0.3,
    "min_speedup_over_mac_reduction": 0.8,
    "max_params_small": 100_000,
    "min_accuracy_small": 0.93,
}

PUBLIC_BENCHMARKS = [
    {"classifier": "2 Conv <100K parameters", "accuracy": 0.925, "params": "<100k",
     "preprocessing": "None"},
    {"classifier": "2 Conv+pooling+BN", "accuracy": 0.934, "params": None,
     "preprocessing": "None"},
    {"classifier": "DenseNet-BC 768K params", "accuracy": 0.954, "params": "768k",
     "preprocessing": "mean/std normalisation, random crops, horizontal flips"},
]
PUBLIC_SOURCE = ("Fashion-MNIST README, 'Benchmark' section (Debian: zcat "
                 "/usr/share/doc/dataset-fashion-mnist/README.md.gz); submitted, not verified "
                 "by the dataset's authors")


class SettingsError(ValueError):
    """Benchmark settings that cannot work together; the message says which."""


class SettingsMismatchError(RuntimeError):
    """The results file was made with other settings; rerun with a new --out or --restart."""


# ----------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------


def resolve_fold(fold: str) -> str:
    """``"auto"`` → ``"carrier"`` when ``prune_model`` supports it, else ``"exact"``."""
    from tf_gamma_prune.graph import FOLD_MODES

    if fold == "auto":
        return "carrier" if "carrier" in FOLD_MODES else "exact"
    if fold not in FOLD_MODES:
        raise SettingsError(f"--fold={fold!r}: prune_model supports {FOLD_MODES} (or 'auto').")
    return fold


def make_settings(preset: str = "cpu", **overrides: Any) -> dict[str, Any]:
    """The effective settings: ``PRESETS[preset]`` with ``overrides``, validated.

    ``stage_epochs`` (cumulative epochs at the end of each stage) defaults to an
    even split of ``sparsify_epochs`` into ``len(rho_stages)`` stages.

        settings = make_settings("cpu", seeds=[0])
    """
    if preset not in PRESETS:
        raise SettingsError(f"--preset={preset!r}; use one of {sorted(PRESETS)}.")
    unknown = set(overrides) - set(PRESETS[preset])
    if unknown:
        raise SettingsError(f"Unknown settings {sorted(unknown)}; known: {sorted(PRESETS[preset])}.")
    s = {"preset": preset, **json.loads(json.dumps(PRESETS[preset])), **overrides}
    s["widths"] = [int(w) for w in s["widths"]]
    s["seeds"] = [int(v) for v in s["seeds"]]
    s["rho_stages"] = [float(r) for r in s["rho_stages"]]
    k, total, sparsify = len(s["rho_stages"]), int(s["epochs"]), int(s["sparsify_epochs"])
    if k < 1:
        raise SettingsError("--rho_stages needs at least one value (one per stage).")
    if not s["stage_epochs"]:
        s["stage_epochs"] = [math.ceil(sparsify * (i + 1) / k) for i in range(k)]
    s["stage_epochs"] = [int(e) for e in s["stage_epochs"]]
    stages = s["stage_epochs"]
    if len(stages) != k:
        raise SettingsError(f"--stage_epochs has {len(stages)} values but --rho_stages {k}.")
    if any(b <= a for a, b in zip([0, *stages], stages)) or stages[-1] != sparsify:
        raise SettingsError(f"--stage_epochs {stages} must increase strictly from > 0 and end at "
                            f"--sparsify_epochs={sparsify}.")
    if sparsify >= total:
        raise SettingsError(f"--sparsify_epochs={sparsify} must be < --epochs={total} "
                            "(every model is fine-tuned for at least one epoch).")
    if not s["seeds"] or len(set(s["seeds"])) != len(s["seeds"]):
        raise SettingsError(f"--seeds {s['seeds']}: give distinct seeds.")
    if len(s["widths"]) != 6:
        raise SettingsError(f"--widths needs 6 values (fashion_vgg), got {s['widths']}.")
    if s["penalties"] not in ("paper", "uniform"):
        raise SettingsError(f"--penalties={s['penalties']!r}: 'paper' or 'uniform'.")
    s["fold"] = resolve_fold(s["fold"])
    if s["latency_timing"] not in ("steady", "interleaved"):
        raise SettingsError(f"--latency_timing={s['latency_timing']!r}: 'steady' or 'interleaved'.")
    if int(s["carrier_tile"]) < 1:
        raise SettingsError(f"--carrier_tile={s['carrier_tile']} must be >= 1.")
    return json.loads(json.dumps(s))


def settings_hash(settings: dict) -> str:
    """A short digest of the settings: the cache folder of one configuration."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------
# results file
# ----------------------------------------------------------------------------


def tensorflow_available() -> bool:
    """Whether TensorFlow imports here (TFLite conversion needs it; training does not)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def machine_info() -> dict[str, Any]:
    import keras

    tf_version = None
    if tensorflow_available():
        import tensorflow as tf

        tf_version = tf.__version__
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "tensorflow": tf_version,
            "keras": keras.__version__, "keras_backend": keras.backend.backend()}


class DeadlineReached(Exception):
    """``--deadline_minutes`` passed: no new training started (everything so far is saved)."""


def record_key(record: dict) -> tuple:
    return (record["method"], record["target"], record["seed"])


class Results:
    """The JSON document: settings, records (appended atomically), summary."""

    def __init__(self, path: pathlib.Path, settings: dict, restart: bool = False):
        self.path = pathlib.Path(path)
        if self.path.exists() and not restart:
            doc = json.loads(self.path.read_text())
            if doc.get("settings") != settings:
                old = doc.get("settings") or {}
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise SettingsMismatchError(
                    f"{self.path} holds results made with other settings (differing: {diff}); "
                    "results of different settings are never mixed. Pass a new --out, or "
                    "--restart to discard the old results.")
            self.doc = doc
        else:
            self.doc = {"schema": SCHEMA, "benchmark": "compression", "settings": settings,
                        "records": []}
        self.done = {record_key(r) for r in self.doc["records"]}

    def has(self, method: str, target: int | None, seed: int) -> bool:
        return (method, target, seed) in self.done

    def get(self, method: str, target: int | None, seed: int) -> dict | None:
        for r in self.doc["records"]:
            if record_key(r) == (method, target, seed):
                return r
        return None

    def pending(self, seed: int | None = None) -> list[dict]:
        """Records whose TFLite measurements wait for a machine with TensorFlow."""
        return [r for r in self.doc["records"]
                if r.get("tflite_pending") and (seed is None or r["seed"] == seed)]

    def replace(self, record: dict) -> None:
        """Swap in the completed version of a record (same method, target, seed)."""
        from tf_gamma_prune.atomic_io import write_json_atomic

        key = record_key(record)
        self.doc["records"] = [record if record_key(r) == key else r for r in self.doc["records"]]
        self.refresh()
        write_json_atomic(self.path, self.doc)

    def add(self, record: dict) -> None:
        from tf_gamma_prune.atomic_io import write_json_atomic

        self.doc["records"].append(record)
        self.done.add(record_key(record))
        self.refresh()
        write_json_atomic(self.path, self.doc)

    def refresh(self) -> None:
        self.doc["machine"] = machine_info()
        self.doc["network"] = network_info(self.doc["settings"])
        self.doc["targets"] = dict(TARGETS)
        self.doc["summary"] = summarize(self.doc)
        self.doc["public_benchmarks"] = {"source": PUBLIC_SOURCE, "rows": PUBLIC_BENCHMARKS}
        self.doc["notes"] = notes(self.doc)

    def write(self) -> None:
        from tf_gamma_prune.atomic_io import write_json_atomic

        self.refresh()
        write_json_atomic(self.path, self.doc)


def network_info(settings: dict) -> dict[str, Any]:
    from tf_gamma_prune.flops import model_cost
    from tf_gamma_prune.reference_models import fashion_vgg

    cost = model_cost(fashion_vgg(widths=settings["widths"]))
    return {"name": "fashion_vgg", "widths": settings["widths"], "params": cost.params,
            "macs": cost.macs,
            "layers": "6 x [Conv3x3 (no bias) - BN - ReLU], MaxPool after conv2 and conv4, "
                      "GlobalAveragePooling, Dropout(0.3), Dense(10) logits; BN momentum 0.9"}


def notes(doc: dict) -> list[str]:
    s = doc["settings"]
    out = [
        f"schedule: phase 1 SGD(momentum {s['momentum']}) at a constant learning rate "
        f"{s['learning_rate']}; phase 2 a fresh SGD with cosine decay from "
        f"{s['finetune_learning_rate']} to 0; batch {s['batch_size']}; augmentation "
        f"{s['augment']} for every method and phase.",
        f"epoch budget E = {s['epochs']} for every model; target k's models spend s_k = "
        f"{s['stage_epochs']} epochs in phase 1 and E - s_k in phase 2.",
        "accuracy: Keras test accuracy on "
        + (f"the first {s['test_examples']} test images" if s["test_examples"] else
           "the 10,000 test images") + "; int8 accuracy/agreement on the first "
        f"{s['tflite_eval_examples']} test images.",
        "latency: LiteRT CPU interpreter (XNNPACK) at 1 thread, batch 1, each model timed "
        "alternately with the same seed's reference .tflite (compare_latency, "
        f"{s.get('latency_timing', 'interleaved')} timing); speed-up = reference median / model median.",
    ]
    if s["train_examples"]:
        out.append(f"training on a stratified subset of {s['train_examples']} of the 60,000 "
                   "training images: the accuracy targets (made for full training) are not "
                   "expected to be met with this preset; the gpu preset is the full protocol.")
    return out


# ----------------------------------------------------------------------------
# summary and targets
# ----------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(doc: dict) -> dict[str, Any]:
    """Per (method, target): mean ± std over seeds; the four targets."""
    groups: dict[tuple, list[dict]] = {}
    for r in doc["records"]:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    order = {m: i for i, m in enumerate((REFERENCE, *METHODS))}
    rows = []
    for (method, target), recs in sorted(groups.items(),
                                         key=lambda kv: (order.get(kv[0][0], 99), kv[0][1] or -1)):
        ok = [r for r in recs if r.get("accuracy") is not None]
        row: dict[str, Any] = {"method": method, "target": target, "n": len(ok),
                               "seeds": sorted(r["seed"] for r in ok),
                               "unreachable": len(recs) - len(ok)}
        for field in ("accuracy", "params", "macs", "tflite_float_bytes", "tflite_int8_bytes",
                      "int8_accuracy", "int8_agreement", "latency_ms", "speedup",
                      "int8_latency_ms", "int8_speedup", "mac_reduction", "param_reduction",
                      "speedup_over_mac_reduction", "train_seconds"):
            vals = [r[field] for r in ok if r.get(field) is not None]
            mean, std = _mean_std(vals)
            row[field] = mean
            row[f"{field}_std"] = std
        if ok and "sparsify_epochs" in ok[0]:
            row["sparsify_epochs"] = ok[0]["sparsify_epochs"]
            row["finetune_epochs"] = ok[0]["finetune_epochs"]
        if len(ok) < len(recs):
            row["unreachable_reasons"] = sorted({r.get("unreachable", "") for r in recs
                                                 if r.get("accuracy") is None})
        rows.append(row)
    return {"groups": rows, "targets": evaluate_targets(rows, doc)}


def _group(rows: list[dict], method: str, target: int | None) -> dict | None:
    for row in rows:
        if row["method"] == method and row["target"] == target and row["n"]:
            return row
    return None


def _target(name: str, description: str, value: float | None, threshold: float, higher: bool,
            detail: str, extra: dict | None = None) -> dict[str, Any]:
    if value is None:
        met, margin = False, None
    else:
        margin = (value - threshold) if higher else (threshold - value)
        met = margin >= 0
    out = {"name": name, "description": description, "value": value, "threshold": threshold,
           "comparison": ">=" if higher else "<=", "met": met, "margin": margin, "detail": detail}
    out.update(extra or {})
    return out


def evaluate_targets(rows: list[dict], doc: dict) -> list[dict[str, Any]]:
    """The issue's four targets from the per-group means (margin > 0: met with room)."""
    t = TARGETS
    ref = _group(rows, REFERENCE, None)
    family = [r for r in rows if r["method"] == "gamma_ista" and r["n"]]
    out = []

    # (1) compression at (almost) no accuracy cost
    desc = (f"gamma_ista with >= {t['min_mac_reduction']:g}x fewer MACs and >= "
            f"{t['min_param_reduction']:g}x fewer parameters loses <= "
            f"{t['max_accuracy_drop_points']:g} point of test accuracy vs the reference")
    if ref is None or not family:
        out.append(_target("compression_accuracy", desc, None, t["max_accuracy_drop_points"], False,
                           "no reference or gamma_ista results yet"))
    else:
        small = [r for r in family if r["mac_reduction"] >= t["min_mac_reduction"]
                 and r["param_reduction"] >= t["min_param_reduction"]]
        if small:
            best = max(small, key=lambda r: r["accuracy"])
            drop = 100 * (ref["accuracy"] - best["accuracy"])
            out.append(_target(
                "compression_accuracy", desc, drop, t["max_accuracy_drop_points"], False,
                f"target {best['target'] + 1}: {best['mac_reduction']:.2f}x fewer MACs, "
                f"{best['param_reduction']:.2f}x fewer parameters, accuracy "
                f"{best['accuracy']:.4f} vs reference {ref['accuracy']:.4f}",
                {"target": best["target"]}))
        else:
            most = max(family, key=lambda r: min(r["mac_reduction"] / t["min_mac_reduction"],
                                                 r["param_reduction"] / t["min_param_reduction"]))
            out.append(_target(
                "compression_accuracy", desc, None, t["max_accuracy_drop_points"], False,
                f"no gamma_ista model reaches the compression: the most compressed (target "
                f"{most['target'] + 1}) has {most['mac_reduction']:.2f}x fewer MACs and "
                f"{most['param_reduction']:.2f}x fewer parameters (accuracy drop "
                f"{100 * (ref['accuracy'] - most['accuracy']):.2f} points)",
                {"target": most["target"], "compression_shortfall": {
                    "mac_reduction": most["mac_reduction"],
                    "param_reduction": most["param_reduction"]}}))

    # (2) better than the baselines at matched MACs
    desc = (f"at matched MACs (±{doc['settings']['match_tolerance']:.0%}) gamma_ista beats "
            f"slimming and l1_norm by >= {t['min_advantage_points']:g} point mean accuracy")
    comparisons = []
    for g in family:
        for method in ("slimming", "l1_norm"):
            other = _group(rows, method, g["target"])
            if other is None:
                continue
            rel = abs(other["macs"] - g["macs"]) / g["macs"]
            comparisons.append({"target": g["target"], "method": method,
                                "advantage_points": 100 * (g["accuracy"] - other["accuracy"]),
                                "macs_relative_difference": rel})
    if comparisons:
        worst = min(comparisons, key=lambda c: c["advantage_points"])
        detail = "; ".join(f"target {c['target'] + 1} vs {c['method']}: "
                           f"{c['advantage_points']:+.2f} points" for c in comparisons)
        out.append(_target("beats_baselines", desc, worst["advantage_points"],
                           t["min_advantage_points"], True, f"smallest advantage; {detail}",
                           {"comparisons": comparisons}))
    else:
        out.append(_target("beats_baselines", desc, None, t["min_advantage_points"], True,
                           "no matched slimming / l1_norm results"))

    # (3) the MAC reduction shows up as latency
    desc = (f"realised TFLite speed-up (float32, 1 thread) >= "
            f"{t['min_speedup_over_mac_reduction']:g} x the MAC reduction (every gamma_ista model)")
    ratios = [(g["target"], g["speedup_over_mac_reduction"], g["speedup"], g["mac_reduction"])
              for g in family if g["speedup_over_mac_reduction"] is not None]
    if ratios:
        worst = min(ratios, key=lambda r: r[1])
        detail = "; ".join(f"target {k + 1}: {s:.2f}x faster / {m:.2f}x fewer MACs = {v:.2f}"
                           for k, v, s, m in ratios)
        out.append(_target("latency_follows_macs", desc, worst[1],
                           t["min_speedup_over_mac_reduction"], True, f"smallest; {detail}"))
    else:
        out.append(_target("latency_follows_macs", desc, None,
                           t["min_speedup_over_mac_reduction"], True, "no gamma_ista results"))

    # (4) a small model that is accurate
    desc = (f"a pruned model with <= {t['max_params_small']:,} parameters reaches >= "
            f"{t['min_accuracy_small']:.1%} test accuracy")
    pruned = [r for r in rows if r["method"] in PRUNING_METHODS and r["n"]]
    small = [r for r in pruned if r["params"] <= t["max_params_small"]]
    if small:
        best = max(small, key=lambda r: r["accuracy"])
        out.append(_target("small_and_accurate", desc, best["accuracy"], t["min_accuracy_small"],
                           True, f"best: {best['method']} target {best['target'] + 1}, "
                           f"{best['params']:,.0f} parameters",
                           {"method": best["method"], "target": best["target"]}))
    elif pruned:
        least = min(pruned, key=lambda r: r["params"])
        out.append(_target("small_and_accurate", desc, None, t["min_accuracy_small"], True,
                           f"no pruned model has <= {t['max_params_small']:,} parameters; the "
                           f"smallest ({least['method']} target {least['target'] + 1}) has "
                           f"{least['params']:,.0f} at accuracy {least['accuracy']:.4f}"))
    else:
        out.append(_target("small_and_accurate", desc, None, t["min_accuracy_small"], True,
                           "no pruned results"))
    return out


# ----------------------------------------------------------------------------
# data and training
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    calibration: list[np.ndarray]


def stratified_subset(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` examples with the classes as balanced as possible (sorted)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0)
                 for i in range(len(classes))]
    picks = [rng.choice(np.flatnonzero(y == c), size=k, replace=False)
             for c, k in zip(classes, per_class)]
    return np.sort(np.concatenate(picks))


def load_data(settings: dict) -> Data:
    from tf_gamma_prune.data import load_fashion_mnist

    # $FASHION_MNIST_DIR, then Debian's location; tensorflow-datasets only where TF is.
    (x, y), (x_test, y_test) = load_fashion_mnist(use_tfds=tensorflow_available())
    if settings["train_examples"]:
        idx = stratified_subset(y, settings["train_examples"], seed=0)
        x, y = x[idx], y[idx]
    if settings["test_examples"]:
        x_test, y_test = x_test[: settings["test_examples"]], y_test[: settings["test_examples"]]
    order = np.random.default_rng(1).permutation(len(x))[: settings["calibration_examples"]]
    return Data(x, y, x_test, y_test, [x[i:i + 1] for i in order])


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def keras_predictions(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=512, verbose=0), axis=-1)


def tflite_predictions(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """Top-1 predictions of a float-I/O ``.tflite`` classifier, one image at a time."""
    from tf_gamma_prune.export import make_interpreter

    interpreter = make_interpreter(flatbuffer, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    preds = np.empty(len(x), dtype=np.int64)
    for i in range(len(x)):
        interpreter.set_tensor(inp["index"], x[i:i + 1].astype(inp["dtype"]))
        interpreter.invoke()
        preds[i] = int(np.argmax(interpreter.get_tensor(out["index"])[0]))
    return preds


def bn_widths(model) -> dict[str, int]:
    """``{bn_name: width}`` of a fashion_vgg-like model (via ``criteria.layer_widths``)."""
    from tf_gamma_prune.criteria import layer_widths

    return {name: int(w) for name, w in layer_widths(model).items()}


class SeedRun:
    """Every run of one seed; shared models are trained lazily and cached."""

    def __init__(self, settings: dict, seed: int, data: Data, work: pathlib.Path,
                 results: Results, log: Callable[[str], None], stats: dict,
                 deadline: float | None = None):
        self.s, self.seed, self.data, self.work = settings, seed, data, work
        self.results, self.log, self.stats = results, log, stats
        self.deadline = deadline  # time.perf_counter() after which no training starts
        self.tflite = tensorflow_available()
        self.work.mkdir(parents=True, exist_ok=True)
        self.steps_per_epoch = -(-len(data.x) // settings["batch_size"])
        self._ref_tflite: dict[str, bytes] | None = None

    # --- training primitives ---------------------------------------------------
    def dataset(self):
        """tf.data where TensorFlow is; the same augmentation in numpy elsewhere."""
        from tf_gamma_prune.data import array_batches, make_dataset

        make = make_dataset if self.tflite else array_batches
        return make(self.data.x, self.data.y, self.s["batch_size"], shuffle=True,
                    augment=self.s["augment"], seed=self.seed)

    def fit(self, model, initial_epoch: int, epochs: int) -> float:
        start = time.perf_counter()
        if self.deadline is not None and start > self.deadline:
            raise DeadlineReached()
        model.fit(self.dataset(), initial_epoch=initial_epoch, epochs=epochs, verbose=0)
        self.stats["epochs_trained"] += epochs - initial_epoch
        return time.perf_counter() - start

    def phase2(self, model, epochs: int) -> float:
        """Fine-tune / finish: fresh SGD, cosine from the fine-tune rate to 0."""
        import keras

        schedule = keras.optimizers.schedules.CosineDecay(
            self.s["finetune_learning_rate"], epochs * self.steps_per_epoch)
        model.compile(keras.optimizers.SGD(schedule, momentum=self.s["momentum"]),
                      loss=_loss(), metrics=["accuracy"])
        return self.fit(model, 0, epochs)

    def build(self, widths) -> Any:
        import keras

        from tf_gamma_prune.reference_models import fashion_vgg

        keras.utils.set_random_seed(self.seed)
        return fashion_vgg(widths=list(widths))

    def phase1_optimizer(self, kind: str, model):
        import keras

        from tf_gamma_prune import GammaISTA, gamma_penalties

        sgd = keras.optimizers.SGD(self.s["learning_rate"], momentum=self.s["momentum"])
        if kind == REFERENCE:
            return sgd
        if kind == "gamma_ista":
            penalties = gamma_penalties(model) if self.s["penalties"] == "paper" else None
            return GammaISTA(sgd, rho=self.s["rho_stages"][0], penalties=penalties)
        if kind == "slimming":
            from tf_gamma_prune.slimming import NetworkSlimming

            return NetworkSlimming(sgd, l1=self.s["slimming_l1"])
        raise ValueError(kind)

    # --- cached phase-1 runs -------------------------------------------------
    def snapshot_path(self, kind: str, k: int) -> pathlib.Path:
        return self.work / f"{kind}_epoch{self.s['stage_epochs'][k]}.keras"

    def _meta(self, path: pathlib.Path) -> dict:
        meta = path.with_suffix(".json")
        return json.loads(meta.read_text()) if meta.exists() else {}

    def snapshot(self, kind: str, k: int):
        """The phase-1 model of ``kind`` after ``s_k`` epochs (trained once, then cached)."""
        import keras

        path = self.snapshot_path(kind, k)
        if not path.exists():
            self.train_phase1(kind, k)
        return keras.models.load_model(path, compile=False), self._meta(path).get("seconds", 0.0)

    def train_phase1(self, kind: str, upto: int) -> None:
        import keras

        from tf_gamma_prune.atomic_io import save_keras_atomic, write_json_atomic

        stages = self.s["stage_epochs"]
        done = [j for j in range(upto) if self.snapshot_path(kind, j).exists()]
        start_stage = (done[-1] + 1) if done else 0
        if done:
            path = self.snapshot_path(kind, done[-1])
            model = keras.models.load_model(path)  # with the optimizer's state
            seconds = self._meta(path).get("seconds", 0.0)
        else:
            model = self.build(self.s["widths"])
            model.compile(self.phase1_optimizer(kind, model), loss=_loss(), metrics=["accuracy"])
            seconds = 0.0
        for k in range(start_stage, upto + 1):
            first = stages[k - 1] if k else 0
            if kind == "gamma_ista":
                model.optimizer.rho = self.s["rho_stages"][k]
            self.log(f"seed {self.seed}: {kind} phase 1, epochs {first}..{stages[k]}"
                     + (f" (rho {self.s['rho_stages'][k]:g})" if kind == "gamma_ista" else ""))
            seconds += self.fit(model, first, stages[k])
            path = self.snapshot_path(kind, k)
            save_keras_atomic(model, path)
            write_json_atomic(path.with_suffix(".json"), {"seconds": seconds, "epochs": stages[k]})

    def reference_final(self):
        """The reference after phase 1 (S epochs) and phase 2 (E − S epochs), cached."""
        import keras

        from tf_gamma_prune.atomic_io import save_keras_atomic, write_json_atomic

        path = self.work / "reference_final.keras"
        if not path.exists():
            model, seconds = self.snapshot(REFERENCE, len(self.s["stage_epochs"]) - 1)
            self.log(f"seed {self.seed}: reference phase 2, "
                     f"{self.s['epochs'] - self.s['sparsify_epochs']} epochs")
            seconds += self.phase2(model, self.s["epochs"] - self.s["sparsify_epochs"])
            save_keras_atomic(model, path)
            write_json_atomic(path.with_suffix(".json"), {"seconds": seconds})
        return keras.models.load_model(path, compile=False), self._meta(path)["seconds"]

    def reference_tflite(self) -> dict[str, bytes]:
        """The final reference's float32 and int8 ``.tflite`` (cached next to it)."""
        from tf_gamma_prune.export import to_tflite

        if self._ref_tflite is None:
            paths = {"float": self.work / "reference.tflite",
                     "int8": self.work / "reference_int8.tflite"}
            if not all(p.exists() for p in paths.values()):
                model, _ = self.reference_final()
                to_tflite(model, paths["float"])
                to_tflite(model, paths["int8"], quantization="int8",
                          representative_data=self.data.calibration)
            self._ref_tflite = {k: p.read_bytes() for k, p in paths.items()}
        return self._ref_tflite

    # --- measurements --------------------------------------------------------
    def final_path(self, method: str, target: int | None) -> pathlib.Path:
        """Where a run's final model waits for its TFLite measurements."""
        return self.work / "final" / f"{method}_target{target}.keras"

    def measure(self, model, method: str, target: int | None, train_seconds: float,
                shared_seconds: float, extra: dict | None = None) -> dict[str, Any]:
        """The run's record: Keras measurements, then TFLite ones (or pending without TF)."""
        import keras

        from tf_gamma_prune.flops import model_cost

        s, d = self.s, self.data
        preds = keras_predictions(model, d.x_test)
        cost = model_cost(model)
        ref_cost = model_cost(self.build(s["widths"]))
        if not cost.macs:
            raise RuntimeError(f"{method} target {target}: the pruned model has no multiply-adds "
                               "left (every channel of some layer was removed); lower --rho_stages.")
        widths = bn_widths(model)
        widths = {**{name: widths.get(name, 0) for name in bn_widths(self.build(s["widths"]))},
                  **widths}  # a BN whose channels all went is reported with width 0
        stages = s["stage_epochs"]
        record = {
            "method": method, "target": target, "seed": self.seed,
            "sparsify_epochs": stages[target] if target is not None else s["sparsify_epochs"],
            "finetune_epochs": s["epochs"] - (stages[target] if target is not None
                                              else s["sparsify_epochs"]),
            "accuracy": float(np.mean(preds == d.y_test)),
            "params": int(cost.params), "macs": int(cost.macs),
            "param_reduction": ref_cost.params / cost.params,
            "mac_reduction": ref_cost.macs / cost.macs,
            "widths": widths,
            "train_seconds": round(train_seconds, 1), "shared_seconds": round(shared_seconds, 1),
            "trained_with": {"keras_backend": keras.backend.backend(),
                             "machine": platform.machine(), "cpu_count": os.cpu_count()},
        }
        record.update(extra or {})
        if not self.tflite:
            from tf_gamma_prune.atomic_io import save_keras_atomic

            weights_only = keras.models.clone_model(model)  # uncompiled: no optimizer slots saved
            weights_only.set_weights(model.get_weights())
            save_keras_atomic(weights_only, self.final_path(method, target))
            record["tflite_pending"] = True
            return record
        record.update(self.measure_tflite(model, method, preds))
        return record

    def complete_pending(self) -> None:
        """TFLite measurements of this seed's records trained where TF was missing."""
        import keras

        for record in self.results.pending(self.seed):
            path = self.final_path(record["method"], record["target"])
            if not path.exists():
                raise FileNotFoundError(
                    f"{record['method']} target {record['target']} seed {self.seed} waits for its "
                    f"TFLite measurements but {path} is missing: copy the work folder back from the "
                    "machine that trained it, or --restart.")
            self.log(f"seed {self.seed}: {record['method']} target {record['target']}: "
                     "TFLite measurements (trained elsewhere)")
            model = keras.models.load_model(path, compile=False)
            done = {k: v for k, v in record.items() if k != "tflite_pending"}
            done.update(self.measure_tflite(model, record["method"],
                                            keras_predictions(model, self.data.x_test)))
            self.results.replace(done)

    def measure_tflite(self, model, method: str, preds: np.ndarray) -> dict[str, Any]:
        """float32 / int8 ``.tflite`` sizes, int8 accuracy, latency against the reference."""
        from tf_gamma_prune.export import benchmark_latency, compare_latency, to_tflite
        from tf_gamma_prune.flops import model_cost

        s, d = self.s, self.data
        mac_reduction = model_cost(self.build(s["widths"])).macs / model_cost(model).macs
        flt = to_tflite(model)
        int8 = to_tflite(model, quantization="int8", representative_data=d.calibration)
        self.stats["tflite_conversions"] += 2
        n_eval = min(s["tflite_eval_examples"], len(d.x_test))
        int8_preds = tflite_predictions(int8, d.x_test[:n_eval])
        timing = dict(threads=(1,), runs=s["latency_runs"], warmup=s["latency_warmup"],
                      timing=s["latency_timing"])
        if method == REFERENCE:
            lat = benchmark_latency(flt, 1, s["latency_warmup"], s["latency_runs"]).median_ms
            lat8 = benchmark_latency(int8, 1, s["latency_warmup"], s["latency_runs"]).median_ms
            ref_lat, ref_lat8, speedup, speedup8 = lat, lat8, 1.0, 1.0
        else:
            ref = self.reference_tflite()
            (c,) = compare_latency(ref["float"], flt, **timing)
            (c8,) = compare_latency(ref["int8"], int8, **timing)
            lat, ref_lat, speedup = c.b.median_ms, c.a.median_ms, c.speedup
            lat8, ref_lat8, speedup8 = c8.b.median_ms, c8.a.median_ms, c8.speedup
        return {
            "tflite_float_bytes": len(flt), "tflite_int8_bytes": len(int8),
            "int8_accuracy": float(np.mean(int8_preds == d.y_test[:n_eval])),
            "int8_agreement": float(np.mean(int8_preds == preds[:n_eval])),
            "int8_eval_examples": n_eval,
            "latency_ms": lat, "reference_latency_ms": ref_lat, "speedup": speedup,
            "speedup_over_mac_reduction": speedup / mac_reduction if mac_reduction else None,
            "int8_latency_ms": lat8, "int8_reference_latency_ms": ref_lat8,
            "int8_speedup": speedup8,
        }

    def add(self, record: dict) -> None:
        self.results.add(record)
        self.stats["records_added"] += 1
        if record.get("accuracy") is None:
            self.log(f"seed {self.seed}: {record['method']} target {record['target']}: "
                     f"unreachable ({record['unreachable']})")
        else:
            speed = ("TFLite pending" if record.get("tflite_pending")
                     else f"{record['speedup']:.2f}x faster")
            self.log(f"seed {self.seed}: {record['method']} target {record['target']}: accuracy "
                     f"{record['accuracy']:.4f}, {record['params']:,} params, "
                     f"{record['macs']:,} MACs, {speed}")

    def unreachable(self, method: str, k: int, reason: str, extra: dict | None = None) -> dict:
        return {"method": method, "target": k, "seed": self.seed, "accuracy": None,
                "unreachable": reason, **(extra or {})}

    # --- the runs ------------------------------------------------------------
    def run(self) -> None:
        if self.tflite:
            self.complete_pending()
        if not self.results.has(REFERENCE, None, self.seed):
            model, seconds = self.reference_final()
            self.add(self.measure(model, REFERENCE, None, seconds, 0.0))
        for k in range(len(self.s["stage_epochs"])):
            self.run_target(k)

    def run_target(self, k: int) -> None:
        from tf_gamma_prune import prune_model

        s = self.s
        finetune = s["epochs"] - s["stage_epochs"][k]
        if not self.results.has("gamma_ista", k, self.seed):
            sparse, shared = self.snapshot("gamma_ista", k)
            pruned = prune_model(sparse, fold=s["fold"], carrier_tile=s["carrier_tile"])
            self.log(f"seed {self.seed}: gamma_ista target {k}: fine-tune {finetune} epochs")
            seconds = self.phase2(pruned, finetune)
            self.add(self.measure(pruned, "gamma_ista", k, seconds, shared))
        g = self.results.get("gamma_ista", k, self.seed)
        widths, macs = g["widths"], g["macs"]
        empty = sorted(name for name, w in widths.items() if w < 1)
        for method in ("slimming", "l1_norm"):
            if not self.results.has(method, k, self.seed):
                self.run_matched(method, k, macs)
        for method in ("random", "scratch"):
            if self.results.has(method, k, self.seed):
                continue
            if empty:
                self.add(self.unreachable(method, k, f"gamma_ista removed every channel of {empty}"))
            elif method == "random":
                self.run_random(k, widths)
            else:
                self.run_scratch(k, widths)

    def run_matched(self, method: str, k: int, target_macs: int) -> None:
        from tf_gamma_prune import prune_model
        from tf_gamma_prune.criteria import (
            TargetUnreachableError, gamma_threshold_selection, l1_norm_selection,
            selection_for_macs,
        )

        s = self.s
        if method == "slimming":
            snap, shared = self.snapshot("slimming", k)
            criterion = gamma_threshold_selection
        else:
            snap, shared = self.snapshot(REFERENCE, k)
            criterion = l1_norm_selection
        extra = {"macs_target": int(target_macs)}
        try:
            selection, macs = selection_for_macs(snap, criterion, target_macs,
                                                 tolerance=s["match_tolerance"])
        except TargetUnreachableError as e:
            extra["closest_macs"] = int(e.closest_macs)
            self.add(self.unreachable(method, k, str(e), extra))
            return
        pruned = prune_model(snap, selection, fold=s["fold"], carrier_tile=s["carrier_tile"])
        finetune = s["epochs"] - s["stage_epochs"][k]
        self.log(f"seed {self.seed}: {method} target {k}: fine-tune {finetune} epochs")
        seconds = self.phase2(pruned, finetune)
        record = self.measure(pruned, method, k, seconds, shared, extra)
        record["macs_relative_difference"] = (record["macs"] - target_macs) / target_macs
        self.add(record)

    def run_random(self, k: int, widths: dict[str, int]) -> None:
        from tf_gamma_prune import prune_model
        from tf_gamma_prune.criteria import random_selection

        snap, shared = self.snapshot(REFERENCE, k)
        selection = random_selection(snap, widths, seed=self.seed)
        pruned = prune_model(snap, selection, fold=self.s["fold"],
                                 carrier_tile=self.s["carrier_tile"])
        finetune = self.s["epochs"] - self.s["stage_epochs"][k]
        self.log(f"seed {self.seed}: random target {k}: fine-tune {finetune} epochs")
        seconds = self.phase2(pruned, finetune)
        self.add(self.measure(pruned, "random", k, seconds, shared))

    def run_scratch(self, k: int, widths: dict[str, int]) -> None:
        s = self.s
        model = self.build([widths[f"bn{i + 1}"] for i in range(6)])
        model.compile(self.phase1_optimizer(REFERENCE, model), loss=_loss(), metrics=["accuracy"])
        self.log(f"seed {self.seed}: scratch target {k}: {s['stage_epochs'][k]} + "
                 f"{s['epochs'] - s['stage_epochs'][k]} epochs")
        seconds = self.fit(model, 0, s["stage_epochs"][k])
        seconds += self.phase2(model, s["epochs"] - s["stage_epochs"][k])
        self.add(self.measure(model, "scratch", k, seconds, 0.0))


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What one call of :func:`run_benchmark` did."""

    doc: dict
    epochs_trained: int
    records_added: int
    tflite_conversions: int
    work_dir: pathlib.Path
    finished: bool = True  # False: stopped at the deadline, or TFLite measurements pending


def run_benchmark(settings: dict, out: str | os.PathLike = DEFAULT_OUT,
                  work_dir: str | os.PathLike = DEFAULT_WORK_DIR, restart: bool = False,
                  log: Callable[[str], None] = print, png: str | os.PathLike | None = None,
                  deadline_minutes: float | None = None) -> Outcome:
    """Run (or resume) the whole benchmark; returns the JSON document and counters.

        outcome = run_benchmark(make_settings("cpu"), "benchmarks/results/compression.json")

    Without TensorFlow (Keras on JAX, e.g. the GPU machine) every run is trained
    and measured in Keras, its final model saved under the cache and its
    TFLite measurements left pending; a later call with the same settings on a
    machine with TensorFlow fills them in (``outcome.finished`` says whether
    anything is left). ``deadline_minutes``: start no training after this
    long (what is done stays saved; call again to go on).
    """
    results = Results(pathlib.Path(out), settings, restart=restart)
    work = pathlib.Path(work_dir) / settings_hash(settings)
    if restart and work.exists():
        shutil.rmtree(work)
    stats = {"epochs_trained": 0, "records_added": 0, "tflite_conversions": 0}
    t0 = time.perf_counter()

    def stamped(line: str) -> None:
        log(f"[{time.perf_counter() - t0:7.0f} s] {line}")

    planned = [(REFERENCE, None)] + [(m, k) for k in range(len(settings["stage_epochs"]))
                                     for m in METHODS]
    missing = [(m, k, seed) for seed in settings["seeds"] for m, k in planned
               if not results.has(m, k, seed)]
    tflite = tensorflow_available()
    pending_seeds = {r["seed"] for r in results.pending()} if tflite else set()
    stamped(f"{len(missing)} of {len(planned) * len(settings['seeds'])} runs to do, "
            f"{len(results.pending())} waiting for TFLite measurements; results {out}, cache {work}"
            + ("" if tflite else "; no TensorFlow here: TFLite measurements are left pending"))
    deadline = None if deadline_minutes is None else t0 + 60 * deadline_minutes
    finished = True
    if missing or pending_seeds:
        data = load_data(settings)
        try:
            for seed in settings["seeds"]:
                if seed in pending_seeds or any(m[2] == seed for m in missing):
                    SeedRun(settings, seed, data, work / f"seed{seed}", results, stamped, stats,
                            deadline).run()
        except DeadlineReached:
            finished = False
            stamped(f"deadline of {deadline_minutes:g} min reached: stopped before the next "
                    "training; run again to go on")
    results.write()
    finished = finished and not results.pending() and all(
        results.has(m, k, seed) for seed in settings["seeds"] for m, k in planned)
    if png is not None:
        import compression_report

        compression_report.plot(results.doc, png)
    return Outcome(results.doc, stats["epochs_trained"], stats["records_added"],
                   stats["tflite_conversions"], work, finished)


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
    del argv
    from absl import flags, logging

    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    settings = settings_from_flags()
    out = pathlib.Path(FLAGS.out)
    png = pathlib.Path(FLAGS.png) if FLAGS.png else out.with_suffix(".png")
    try:
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
