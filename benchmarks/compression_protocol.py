"""The compression benchmark's protocol: settings, targets, results file, summary.

Pure bookkeeping, no training: ``compression_runs.py`` trains and measures,
``compression.py`` is the command line, ``compression_report.py`` renders the
JSON; commands, durations and the GPU machine's steps are in
``benchmarks/README.md``.

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
  ``--fold``, ``--carrier_tile``) and is fine-tuned for ``E − s_k`` epochs
  (plain SGD, no penalty): the family's k-th model.
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
``--latency_timing``, for float32 and for int8) and speed-up / MAC reduction,
per-layer widths, training seconds.
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

This is the ``from_scratch`` protocol (``settings["protocol"]``; a results
file without that key is from_scratch). Its presets (``--preset``, in
``compression_presets.py``; individual flags override them):

* ``cpu_short``: a stratified subset of the training set
  (``--train_examples``), E = 4, S = 3, K = 2, 2 seeds. Sized to finish in
  ≈ 30–40 minutes on the shared 2-core development machine; too short to reach
  the accuracy targets (the JSON says so). It was called ``cpu`` when the
  committed ``benchmarks/results/compression_cpu_short.json`` was made (reading a results
  file renames it: :func:`compression_presets.migrate_settings`).
* ``gpu``: all 60,000 training images, the reference twice as wide, E = 40,
  S = 24, K = 3, 3 seeds — for the device machine (GPU training; without
  TensorFlow there, the TFLite measurements follow on a machine with it: see
  ``compression_runs.py``).

The ``from_reference`` protocol (presets ``cpu`` and ``smoke``: every method
starts from a trained reference, tuned on a validation split) is described in
``compression_reference_protocol.py``; this module dispatches to it where the
two differ (settings, summary, notes).
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from typing import Any

import numpy as np

from common import machine_info
from compression_presets import (
    ADDITIVE_SETTINGS, FROM_REFERENCE, FROM_SCRATCH, PRESETS, migrate_settings, protocol_of,
)

SCHEMA = 1

METHODS = ("gamma_ista", "slimming", "l1_norm", "random", "scratch")
REFERENCE = "reference"
PRUNING_METHODS = ("gamma_ista", "slimming", "l1_norm", "random")

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
    from tf_gamma_prune.analysis.channel_graph import FOLD_MODES

    if fold == "auto":
        return "carrier" if "carrier" in FOLD_MODES else "exact"
    if fold not in FOLD_MODES:
        raise SettingsError(f"--fold={fold!r}: prune_model supports {FOLD_MODES} (or 'auto').")
    return fold


def make_settings(preset: str = "cpu", **overrides: Any) -> dict[str, Any]:
    """The effective settings: ``PRESETS[preset]`` with ``overrides``, validated.

    from_scratch: ``stage_epochs`` (cumulative epochs at the end of each stage)
    defaults to an even split of ``sparsify_epochs`` into ``len(rho_stages)``
    stages. from_reference presets are checked by
    ``compression_reference_protocol.check_settings``.

        settings = make_settings("cpu_short", seeds=[0])
    """
    if preset not in PRESETS:
        raise SettingsError(f"--preset={preset!r}; use one of {sorted(PRESETS)}.")
    unknown = set(overrides) - set(PRESETS[preset]) | ({"protocol"} & set(overrides))
    if unknown:
        raise SettingsError(f"Unknown settings {sorted(unknown)} for --preset={preset} "
                            f"({PRESETS[preset]['protocol']}); known: {sorted(PRESETS[preset])}.")
    s = {"preset": preset, **json.loads(json.dumps(PRESETS[preset])), **overrides}
    if s["protocol"] == FROM_REFERENCE:
        from compression_reference_protocol import check_settings

        check_settings(s)
        s["fold"] = resolve_fold(s["fold"])
        _check_measurements(s)
        return json.loads(json.dumps(s))
    s["widths"] = [int(w) for w in s["widths"]]
    s["seeds"] = [int(v) for v in s["seeds"]]
    s["rho_stages"] = [float(r) for r in s["rho_stages"]]
    s["stage_epochs"] = _stage_epochs(s)
    _check_runs(s)
    s["fold"] = resolve_fold(s["fold"])
    _check_measurements(s)
    return json.loads(json.dumps(s))


def _stage_epochs(s: dict[str, Any]) -> list[int]:
    """``s_1 < … < s_K = S``: the given ``stage_epochs``, or an even split of S."""
    k, total, sparsify = len(s["rho_stages"]), int(s["epochs"]), int(s["sparsify_epochs"])
    if k < 1:
        raise SettingsError("--rho_stages needs at least one value (one per stage).")
    stages = s["stage_epochs"] or [math.ceil(sparsify * (i + 1) / k) for i in range(k)]
    stages = [int(e) for e in stages]
    if len(stages) != k:
        raise SettingsError(f"--stage_epochs has {len(stages)} values but --rho_stages {k}.")
    if any(b <= a for a, b in zip([0, *stages], stages)) or stages[-1] != sparsify:
        raise SettingsError(f"--stage_epochs {stages} must increase strictly from > 0 and end at "
                            f"--sparsify_epochs={sparsify}.")
    if sparsify >= total:
        raise SettingsError(f"--sparsify_epochs={sparsify} must be < --epochs={total} "
                            "(every model is fine-tuned for at least one epoch).")
    return stages


def _check_runs(s: dict[str, Any]) -> None:
    """Seeds, widths and penalties that the runs can use."""
    if not s["seeds"] or len(set(s["seeds"])) != len(s["seeds"]):
        raise SettingsError(f"--seeds {s['seeds']}: give distinct seeds.")
    if len(s["widths"]) != 6:
        raise SettingsError(f"--widths needs 6 values (fashion_vgg), got {s['widths']}.")
    if s["penalties"] not in ("paper", "uniform"):
        raise SettingsError(f"--penalties={s['penalties']!r}: 'paper' or 'uniform'.")


def _check_measurements(s: dict[str, Any]) -> None:
    """Latency timing and carrier tile that the measurements can use."""
    if s["latency_timing"] not in ("steady", "interleaved"):
        raise SettingsError(f"--latency_timing={s['latency_timing']!r}: 'steady' or 'interleaved'.")
    if int(s["carrier_tile"]) < 1:
        raise SettingsError(f"--carrier_tile={s['carrier_tile']} must be >= 1.")


def settings_hash(settings: dict) -> str:
    """A short digest of the settings: the cache folder of one configuration.

    ``"protocol": "from_scratch"`` is left out, so the hashes of settings made
    before protocols existed stay valid (gpu: ``e58b4d0dc110``). from_reference:
    the additive ``training_methods`` and their knobs
    (``compression_presets.ADDITIVE_SETTINGS``) are left out too, so adding
    those rows keeps the folder of the models already cached (the cpu preset's
    ``449185f106f0``). Sharing it is harmless: a training method's cache files
    are named by the method and a digest of its knobs
    (``compression_reference.ReferenceRun.path``), and no other model depends
    on them.
    """
    if settings.get("protocol") == FROM_SCRATCH:
        settings = {k: v for k, v in settings.items() if k != "protocol"}
    elif settings.get("protocol") == FROM_REFERENCE:
        settings = {k: v for k, v in settings.items() if k not in ADDITIVE_SETTINGS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def planned_runs(settings: dict) -> list[tuple[str, int | None]]:
    """Every (method, target) of one seed: the reference, then each target's methods."""
    return [(REFERENCE, None)] + [(m, k) for k in range(len(settings["stage_epochs"]))
                                  for m in METHODS]


# ----------------------------------------------------------------------------
# results file
# ----------------------------------------------------------------------------


def record_key(record: dict) -> tuple:
    """``(method, target, seed)``: what identifies one run's record."""
    return (record["method"], record["target"], record["seed"])


class Results:
    """The JSON document: settings, records (appended atomically), summary."""

    def __init__(self, path: pathlib.Path, settings: dict, restart: bool = False):
        self.path = pathlib.Path(path)
        if self.path.exists() and not restart:
            doc = json.loads(self.path.read_text())
            doc["settings"] = self.continued_settings(migrate_settings(doc.get("settings")),
                                                      settings)
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

    def continued_settings(self, old: dict | None, settings: dict) -> dict | None:
        """The file's settings as a run with ``settings`` continues them.

        Here ``old`` as it is (any difference refuses the file);
        ``ReferenceResults`` also continues a file with training methods appended.
        """
        return old

    def has(self, method: str, target: int | None, seed: int) -> bool:
        """Whether that run's record is in the file (measured, pending or unreachable)."""
        return (method, target, seed) in self.done

    def get(self, method: str, target: int | None, seed: int) -> dict | None:
        """That run's record, or None."""
        for r in self.doc["records"]:
            if record_key(r) == (method, target, seed):
                return r
        return None

    def pending(self, seed: int | None = None) -> list[dict]:
        """Records whose TFLite measurements wait for a machine with TensorFlow."""
        return [r for r in self.doc["records"]
                if r.get("tflite_pending") and (seed is None or r["seed"] == seed)]

    def replace(self, record: dict) -> None:
        """Swap in the completed version of a record (same method, target, seed); save."""
        key = record_key(record)
        self.doc["records"] = [record if record_key(r) == key else r for r in self.doc["records"]]
        self.write()

    def add(self, record: dict) -> None:
        """Append one finished run's record and save at once."""
        self.doc["records"].append(record)
        self.done.add(record_key(record))
        self.write()

    def refresh(self) -> None:
        """Recompute everything derived from the records and settings."""
        self.doc["machine"] = machine_info()
        self.doc["network"] = network_info(self.doc["settings"])
        self.doc["targets"] = dict(TARGETS)
        self.doc["summary"] = summarize(self.doc)
        self.doc["public_benchmarks"] = {"source": PUBLIC_SOURCE, "rows": PUBLIC_BENCHMARKS}
        self.doc["notes"] = notes(self.doc)

    def write(self) -> None:
        """Refresh, then replace the file atomically (readers see the old or the new one)."""
        from tf_gamma_prune.atomic_io import write_json_atomic

        self.refresh()
        write_json_atomic(self.path, self.doc)


def network_info(settings: dict) -> dict[str, Any]:
    """The reference network of these settings: widths, parameters, MACs, layers."""
    from tf_gamma_prune import model_cost
    from tf_gamma_prune.reference_models import fashion_vgg

    cost = model_cost(fashion_vgg(widths=settings["widths"]))
    return {"name": "fashion_vgg", "widths": settings["widths"], "params": cost.params,
            "macs": cost.macs,
            "layers": "6 x [Conv3x3 (no bias) - BN - ReLU], MaxPool after conv2 and conv4, "
                      "GlobalAveragePooling, Dropout(0.3), Dense(10) logits; BN momentum 0.9"}


def notes(doc: dict) -> list[str]:
    """Sentences on the schedule, evaluation and latency protocol of ``doc``'s settings."""
    s = doc["settings"]
    if protocol_of(s) == FROM_REFERENCE:
        from compression_reference_protocol import reference_notes

        return reference_notes(doc)
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
    """Mean and sample standard deviation (0 for one value; None, None for none)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


SUMMARY_FIELDS = ("accuracy", "params", "macs", "tflite_float_bytes", "tflite_int8_bytes",
                  "int8_accuracy", "int8_agreement", "latency_ms", "speedup",
                  "int8_latency_ms", "int8_speedup", "mac_reduction", "param_reduction",
                  "speedup_over_mac_reduction", "train_seconds")


def summarize(doc: dict) -> dict[str, Any]:
    """Per (method, target): mean ± std over seeds; the four targets."""
    if protocol_of(doc["settings"]) == FROM_REFERENCE:
        from compression_reference_protocol import summarize_reference

        return summarize_reference(doc)
    groups: dict[tuple, list[dict]] = {}
    for r in doc["records"]:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    order = {m: i for i, m in enumerate((REFERENCE, *METHODS))}
    rows = [_summary_row(method, target, recs) for (method, target), recs in
            sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1] or -1))]
    return {"groups": rows, "targets": evaluate_targets(rows, doc)}


def _summary_row(method: str, target: int | None, recs: list[dict],
                 fields: tuple[str, ...] = SUMMARY_FIELDS) -> dict[str, Any]:
    """One (method, target) group: counts, then mean and std of every measured field."""
    ok = [r for r in recs if r.get("accuracy") is not None]
    row: dict[str, Any] = {"method": method, "target": target, "n": len(ok),
                           "seeds": sorted(r["seed"] for r in ok),
                           "unreachable": len(recs) - len(ok)}
    for field in fields:
        mean, std = _mean_std([r[field] for r in ok if r.get(field) is not None])
        row[field] = mean
        row[f"{field}_std"] = std
    if ok and "sparsify_epochs" in ok[0]:
        row["sparsify_epochs"] = ok[0]["sparsify_epochs"]
        row["finetune_epochs"] = ok[0]["finetune_epochs"]
    if len(ok) < len(recs):
        row["unreachable_reasons"] = sorted({r.get("unreachable", "") for r in recs
                                             if r.get("accuracy") is None})
    return row


def _group(rows: list[dict], method: str, target: int | None) -> dict | None:
    """The summary row of (method, target) with at least one measured run, or None."""
    for row in rows:
        if row["method"] == method and row["target"] == target and row["n"]:
            return row
    return None


def _target(name: str, description: str, value: float | None, threshold: float, higher: bool,
            detail: str, extra: dict | None = None) -> dict[str, Any]:
    """One target's verdict: met when ``value`` is on the right side of ``threshold``."""
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
    family = [r for r in rows if r["method"] == "gamma_ista" and r["n"]]
    return [_compression_accuracy(_group(rows, REFERENCE, None), family),
            _beats_baselines(rows, family, doc["settings"]["match_tolerance"]),
            _latency_follows_macs(family),
            _small_and_accurate(rows)]


def _compression_accuracy(ref: dict | None, family: list[dict]) -> dict[str, Any]:
    """(1) gamma_ista compressed enough loses (almost) no accuracy."""
    t = TARGETS
    args = ("compression_accuracy",
            f"gamma_ista with >= {t['min_mac_reduction']:g}x fewer MACs and >= "
            f"{t['min_param_reduction']:g}x fewer parameters loses <= "
            f"{t['max_accuracy_drop_points']:g} point of test accuracy vs the reference")
    if ref is None or not family:
        return _target(*args, None, t["max_accuracy_drop_points"], False,
                       "no reference or gamma_ista results yet")
    small = [r for r in family if r["mac_reduction"] >= t["min_mac_reduction"]
             and r["param_reduction"] >= t["min_param_reduction"]]
    if small:
        best = max(small, key=lambda r: r["accuracy"])
        drop = 100 * (ref["accuracy"] - best["accuracy"])
        return _target(
            *args, drop, t["max_accuracy_drop_points"], False,
            f"target {best['target'] + 1}: {best['mac_reduction']:.2f}x fewer MACs, "
            f"{best['param_reduction']:.2f}x fewer parameters, accuracy "
            f"{best['accuracy']:.4f} vs reference {ref['accuracy']:.4f}",
            {"target": best["target"]})
    most = max(family, key=lambda r: min(r["mac_reduction"] / t["min_mac_reduction"],
                                         r["param_reduction"] / t["min_param_reduction"]))
    return _target(
        *args, None, t["max_accuracy_drop_points"], False,
        f"no gamma_ista model reaches the compression: the most compressed (target "
        f"{most['target'] + 1}) has {most['mac_reduction']:.2f}x fewer MACs and "
        f"{most['param_reduction']:.2f}x fewer parameters (accuracy drop "
        f"{100 * (ref['accuracy'] - most['accuracy']):.2f} points)",
        {"target": most["target"], "compression_shortfall": {
            "mac_reduction": most["mac_reduction"],
            "param_reduction": most["param_reduction"]}})


def _beats_baselines(rows: list[dict], family: list[dict], tolerance: float) -> dict[str, Any]:
    """(2) gamma_ista is more accurate than slimming and l1_norm at matched MACs."""
    t = TARGETS
    desc = (f"at matched MACs (±{tolerance:.0%}) gamma_ista beats "
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
    if not comparisons:
        return _target("beats_baselines", desc, None, t["min_advantage_points"], True,
                       "no matched slimming / l1_norm results")
    worst = min(comparisons, key=lambda c: c["advantage_points"])
    detail = "; ".join(f"target {c['target'] + 1} vs {c['method']}: "
                       f"{c['advantage_points']:+.2f} points" for c in comparisons)
    return _target("beats_baselines", desc, worst["advantage_points"],
                   t["min_advantage_points"], True, f"smallest advantage; {detail}",
                   {"comparisons": comparisons})


def _latency_follows_macs(family: list[dict]) -> dict[str, Any]:
    """(3) the MAC reduction shows up as TFLite latency."""
    t = TARGETS
    desc = (f"realised TFLite speed-up (float32, 1 thread) >= "
            f"{t['min_speedup_over_mac_reduction']:g} x the MAC reduction (every gamma_ista model)")
    ratios = [(g["target"], g["speedup_over_mac_reduction"], g["speedup"], g["mac_reduction"])
              for g in family if g["speedup_over_mac_reduction"] is not None]
    if not ratios:
        return _target("latency_follows_macs", desc, None,
                       t["min_speedup_over_mac_reduction"], True, "no gamma_ista results")
    worst = min(ratios, key=lambda r: r[1])
    detail = "; ".join(f"target {k + 1}: {s:.2f}x faster / {m:.2f}x fewer MACs = {v:.2f}"
                       for k, v, s, m in ratios)
    return _target("latency_follows_macs", desc, worst[1],
                   t["min_speedup_over_mac_reduction"], True, f"smallest; {detail}")


def _small_and_accurate(rows: list[dict]) -> dict[str, Any]:
    """(4) a small pruned model that is accurate."""
    t = TARGETS
    args = ("small_and_accurate",
            f"a pruned model with <= {t['max_params_small']:,} parameters reaches >= "
            f"{t['min_accuracy_small']:.1%} test accuracy")
    pruned = [r for r in rows if r["method"] in PRUNING_METHODS and r["n"]]
    small = [r for r in pruned if r["params"] <= t["max_params_small"]]
    if small:
        best = max(small, key=lambda r: r["accuracy"])
        return _target(*args, best["accuracy"], t["min_accuracy_small"],
                       True, f"best: {best['method']} target {best['target'] + 1}, "
                       f"{best['params']:,.0f} parameters",
                       {"method": best["method"], "target": best["target"]})
    if pruned:
        least = min(pruned, key=lambda r: r["params"])
        return _target(*args, None, t["min_accuracy_small"], True,
                       f"no pruned model has <= {t['max_params_small']:,} parameters; the "
                       f"smallest ({least['method']} target {least['target'] + 1}) has "
                       f"{least['params']:,.0f} at accuracy {least['accuracy']:.4f}")
    return _target(*args, None, t["min_accuracy_small"], True, "no pruned results")
