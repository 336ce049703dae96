"""The from_reference protocol of the compression benchmark: settings, results, targets.

Pure bookkeeping, no training (the runs: ``compression_reference.py``). Every
method starts where a user starts, from a trained model, and gets the same
budget after it. Presets (``compression_presets.py``): ``cpu`` (the full
protocol for the 2-core machine) and ``smoke`` (tiny, for the tests).

Data: Fashion-MNIST; 5,000 training images are held out as the validation
split (``tf_gamma_prune.data.validation_split(x, y, 5000, seed=0)``, the split
the committed reference was trained with); the other 55,000 are the training
images (``train_examples`` > 0: a stratified subset of them); the 10,000 test
images are used only for the final records, never for a choice.

Reference: ``reference`` = a ``.keras`` file (``cpu``:
``saved_models/fashion_vgg_reference.keras``, its training record read from
the ``.json`` next to it), or null with ``reference_epochs`` N: ``fashion_vgg
(widths)`` trained here with the reference recipe
(``examples/reference_training.py``'s ``compile_reference``) for N epochs
(``smoke``). It is shared by every seed; its record (method ``reference``)
carries the reference's own seed.

Budget after the reference, the same for every method: S = ``sparsify_epochs``
+ F = ``finetune_epochs`` epochs (``cpu``: 2 + 3; a tuning trial of gamma_ista or
slimming may move the split, ``{"sparsify_epochs": 1}`` → 1 + 4). Fine-tuning is a fresh SGD
(momentum ``momentum``) with a cosine decay from ``finetune_learning_rate`` to
0, augmentation ``augment`` (as the reference's); batch ``batch_size``.
Targets: MAC reductions ``mac_targets`` (``cpu``: 3× and 6×), i.e. a budget of
1/3 and 1/6 of the reference's MACs. Per seed and target:

* **gamma_ista** (the paper's pretrained flow): a copy of the reference,
  ``rescale_gamma(α)`` (``alpha``; 1 = none), S epochs of ``GammaISTA(SGD(
  sparsify_learning_rate), gamma_penalties, min_channels, scale_beta)`` with the
  ``CostTarget`` callback setting ρ (its own start estimate) and steering it
  until the zero-γ pattern meets the MAC budget (``cost_target_every``,
  ``cost_target_reach_at``; its ρ / MAC history is recorded, at most 50
  points), BN statistics recalibrated when α ≠ 1,
  ``prune_model`` (``fold``, ``carrier_tile``), ``rescale_gamma(1/α)``, F
  fine-tune epochs. Its MACs against the budget are recorded
  (``macs_relative_difference``; the protocol asks for ±``match_tolerance``).
* **slimming**: a copy of the reference, S epochs of ``NetworkSlimming(SGD(
  sparsify_learning_rate), l1=slimming_l1)``, the global |γ| threshold matched
  to gamma_ista's MACs (``selection_for_macs``, ±``match_tolerance``), F
  fine-tune epochs.
* **l1_norm**: the reference, ``l1_norm_selection`` matched to gamma_ista's
  MACs, S + F fine-tune epochs.
* **random**: the reference, random channels down to gamma_ista's widths, S + F
  fine-tune epochs.
* **scratch** (Liu et al.'s Scratch-E): ``fashion_vgg(gamma_ista's widths)``
  from a fresh initialisation, trained with the reference's recipe for
  ``scratch_epochs`` epochs (0: the reference's own epoch count).

After the core methods, for every seed: the seed papers' one-shot selection
criteria (``criteria_methods``: the reference, the criterion matched to
gamma_ista's MACs, S + F fine-tune epochs), then their training-time
sparsifiers (``training_methods``, issue 18), shaped like slimming: S epochs
of ``SGD(sparsify_learning_rate)`` from the reference with the method's own
training, a selection matched to gamma_ista's MACs (±``match_tolerance``),
``prune_model``, F fine-tune epochs. Both kinds have no tuning trials of their
own: they fine-tune with l1_norm's chosen overrides (its fine-tune rate), and a
training method's knobs are fixed settings taken from the package's docs and
tests (``compression_presets.py`` says which and why), never tuned here.

* **receding_importance** (Suteu & Guo): the reference with each BN rescaled
  (``rescale_gamma``, the same function) so that its largest γ is
  ``rni_start_scale``, ``to_bounded_batchnorm(init="gamma", center=True)`` (w =
  logit(γ), β kept as the shift, so training starts from the reference's
  function; the paper's layer has no shift and starts from N(0, 1), which would
  throw the reference's BN away), S epochs with ``RecedingImportanceRegularizer
  (rni_strength, shift=rni_shift)`` and ``BatchNormLRMultiplier(SGD,
  rni_bn_lr_multiplier)`` (shared by every target), ``receding_importance_
  selection`` (one global quantile of sigmoid(w), at least 3 channels a layer)
  matched to the MACs, ``to_standard_batchnorm``, ``prune_model``, F epochs.
  Its record's ``receding_importance`` holds the sparsify phase in a few
  numbers: the pooled importances' mass below 0.1 / above 0.9 and median before
  and after it, how many layers receded as a whole (median below 0.1), validation
  accuracy after it and right after the cut.
* **admm** (single-shot ADMM, Wang et al.): per target,
  ``admm_targets_for_macs`` at gamma_ista's MACs (uniform per-layer filter
  counts), S epochs with ``ADMMFilterPruning(rho=admm_rho, rho_growth=
  admm_rho_growth)`` updating Z and U ``admm_updates`` times over the phase,
  ``admm_selection``, ``prune_model`` (like every row, without the recipe's
  ``calibration_data``: see ``ReferenceRun.train_admm``), F epochs. Its
  record's ``admm``: the pruned filters' norm ratio (largest pruned filter /
  median kept one, over the layers: max and median; the same for their γ), the
  final ρ and number of updates, validation accuracy after the phase and right
  after the cut.

* **coarse_ranking** (Taylor scores from the fine-tuning steps, issue 17's
  ``CoarseRanking``): S epochs of ``SGD(sparsify_learning_rate)`` from the
  reference under ``CoarseRanking`` (shared by every target), its selection
  (per-layer L2-normalised Taylor scores, one global threshold, ``min_channels``)
  matched to the MACs, ``prune_model``, F epochs. Its record's
  ``coarse_ranking``: the batches ranked, validation accuracy after the phase
  and right after the cut.

* **gamma_ista_tiled** (a variant of gamma_ista, not a seed paper): gamma_ista
  exactly, with gamma_ista's chosen tuning trial, but ``CostTarget(round_to=
  tile_round_to)``: once the schedule reaches the budget the widths move to
  multiples of the tile within it and hold (XNNPACK computes float32 output
  channels in tiles of 16 here, so a width of 21 pays for 32). It meets the MAC
  budget itself (``macs_budget``, like gamma_ista), it is not matched to
  gamma_ista's MACs. Its record's ``cost_target`` is gamma_ista's.

* **l1_norm_tiled** (a variant of l1_norm, the fair latency comparison for
  gamma_ista_tiled): l1_norm exactly (the reference's weights, S + F fine-tune
  epochs with l1_norm's chosen trial), but its cut made by
  ``tiled_selection_for_macs(l1_norm_selection, round_to=tile_round_to)``: each
  layer's width moves by whole tiles, in L1-norm's own order of removal, to the
  MAC budget itself (``macs_budget``, not gamma_ista's MACs).

A results file written before ``training_methods`` existed (or with fewer of
them) is continued, not refused: :func:`continued_settings`.

Tuning, on the validation split: ``tuning`` = ``{method: [overrides, ...]}``,
the same number of trials for every pruning method (``cpu``: 2 each, each
method's own knob; scratch none). For the first seed only, each trial runs the
method at each target and records its validation accuracy and seconds in the
JSON's ``tuning`` section; the best trial per (method, target) is used for
every seed (the first seed's record measures the chosen trial's model on the
test set). Targets (the issue's, computed from the records by
:func:`evaluate_reference_targets`):

1. gamma_ista with ≥ 3× fewer MACs and ≥ 5× fewer parameters loses ≤ 0.5 point;
2. at matched MACs gamma_ista beats slimming and l1_norm by ≥ 0.3 point mean
   accuracy at every target, and is not behind scratch;
3. steady-state TFLite speed-up ≥ 0.8 × the MAC reduction for every gamma_ista
   model (every seed and target);
4. a pruned model with ≤ 100k parameters reaches ≥ 93.0% test accuracy.
"""

from __future__ import annotations

from typing import Any

from compression_presets import (
    ADDITIVE_SETTINGS, FROM_REFERENCE, TRAINING_METHOD_SETTINGS, TUNED_LIKE,
)
from compression_protocol import (
    METHODS, PRUNING_METHODS, REFERENCE, SUMMARY_FIELDS, TARGETS, Results, SettingsError,
    _compression_accuracy, _group, _small_and_accurate, _summary_row, _target,
)

# The seed papers' one-shot selection criteria (issue 17), run after the core methods:
# reference → the criterion's selection matched to gamma_ista's MACs → S + F fine-tune
# epochs at l1_norm's tuned fine-tuning rate (they differ from l1_norm only in which
# channels go, so they share its tuning instead of getting trials of their own).
CRITERIA_METHODS = ("structural_redundancy", "redundancy_random", "prunenet")
# The seed papers' training-time sparsifiers (issue 18), run after the criteria: S epochs of
# their own training from the reference, a MAC-matched selection, F fine-tune epochs (at
# l1_norm's tuned rate, like the criteria).
TRAINING_METHODS = tuple(TRAINING_METHOD_SETTINGS)
TUNABLE = ("sparsify_epochs", "sparsify_learning_rate", "finetune_learning_rate", "slimming_l1",
           "alpha", "min_channels", "cost_target_every", "cost_target_reach_at", "momentum",
           "scale_beta")
REQUIRED_LEAD = {"slimming": TARGETS["min_advantage_points"],
                 "l1_norm": TARGETS["min_advantage_points"], "scratch": 0.0}
FIELDS = SUMMARY_FIELDS + ("validation_accuracy", "measure_seconds")


# ----------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------


def check_settings(s: dict[str, Any]) -> None:
    """Validate (and normalise in place) from_reference settings; SettingsError says what."""
    s["widths"] = [int(w) for w in s["widths"]]
    s["seeds"] = [int(v) for v in s["seeds"]]
    s["mac_targets"] = [float(t) for t in s["mac_targets"]]
    if len(s["widths"]) != 6:
        raise SettingsError(f"--widths needs 6 values (fashion_vgg), got {s['widths']}.")
    if not s["seeds"] or len(set(s["seeds"])) != len(s["seeds"]):
        raise SettingsError(f"--seeds {s['seeds']}: give distinct seeds.")
    if not s["mac_targets"] or any(t <= 1 for t in s["mac_targets"]) \
            or len(set(s["mac_targets"])) != len(s["mac_targets"]):
        raise SettingsError(f"--mac_targets {s['mac_targets']}: distinct MAC reductions > 1.")
    if bool(s["reference"]) == (int(s["reference_epochs"]) > 0):
        raise SettingsError("Give exactly one reference: --reference=<.keras file> or "
                            "--reference= (none) with --reference_epochs > 0.")
    for key in ("sparsify_epochs", "finetune_epochs", "validation_examples",
                "cost_target_every"):
        if int(s[key]) < 1:
            raise SettingsError(f"--{key}={s[key]} must be >= 1.")
    for key in ("train_examples", "test_examples", "scratch_epochs", "min_channels"):
        if int(s[key]) < 0:
            raise SettingsError(f"--{key}={s[key]} must be >= 0.")
    if s["alpha"] <= 0 or not 0 < s["cost_target_reach_at"] <= 1:
        raise SettingsError("--alpha must be > 0 and --cost_target_reach_at in (0, 1].")
    _check_tuning(s["tuning"])
    budget = int(s["sparsify_epochs"]) + int(s["finetune_epochs"])
    for trials in s["tuning"].values():
        for overrides in trials:
            if not 1 <= int(overrides.get("sparsify_epochs", 1)) < budget:
                raise SettingsError(f"--tuning {overrides!r}: sparsify_epochs must leave at least "
                                    f"one of the {budget} epochs to fine-tuning (F = {budget} - S).")
    s["criteria_methods"] = list(s.get("criteria_methods") or [])
    unknown = sorted(set(s["criteria_methods"]) - set(CRITERIA_METHODS))
    if unknown:
        raise SettingsError(f"--criteria_methods {unknown}: known {CRITERIA_METHODS}.")
    s["training_methods"] = list(s.get("training_methods") or [])
    unknown = sorted(set(s["training_methods"]) - set(TRAINING_METHODS))
    if unknown or len(set(s["training_methods"])) != len(s["training_methods"]):
        raise SettingsError(f"--training_methods {s['training_methods']}: distinct names of "
                            f"{TRAINING_METHODS}.")
    _check_training_knobs(s)


def _check_training_knobs(s: dict[str, Any]) -> None:
    """The knobs of the training methods (numbers; each checked where it is used)."""
    for key in ("rni_strength", "rni_shift", "rni_bn_lr_multiplier", "rni_start_scale",
                "admm_rho", "admm_rho_growth"):
        s[key] = float(s[key])
    s["admm_updates"] = int(s["admm_updates"])
    s["tile_round_to"] = int(s["tile_round_to"])
    if s["tile_round_to"] < 1:
        raise SettingsError(f"--tile_round_to={s['tile_round_to']} must be >= 1 (a channel tile).")
    if s["rni_strength"] < 0 or s["rni_bn_lr_multiplier"] <= 0 \
            or not 0 < s["rni_start_scale"] < 1:
        raise SettingsError("--rni_strength must be >= 0, --rni_bn_lr_multiplier > 0 and "
                            "--rni_start_scale in (0, 1).")
    if s["admm_rho"] <= 0 or s["admm_rho_growth"] < 1 or s["admm_updates"] < 1:
        raise SettingsError("--admm_rho must be > 0, --admm_rho_growth >= 1 and "
                            "--admm_updates >= 1.")


def _check_tuning(tuning: dict) -> None:
    """Known methods, tunable keys, the same number of trials for every pruning method."""
    if not isinstance(tuning, dict) or set(tuning) - set(METHODS):
        raise SettingsError(f"--tuning must map methods {METHODS} to lists of overrides.")
    for method, trials in tuning.items():
        for overrides in trials:
            bad = set(overrides) - set(TUNABLE) if isinstance(overrides, dict) else {"?"}
            if bad:
                raise SettingsError(f"--tuning {method}: {overrides!r} overrides "
                                    f"{sorted(bad)}; tunable: {TUNABLE}.")
            if method not in ("gamma_ista", "slimming") and "sparsify_epochs" in overrides:
                raise SettingsError(f"--tuning {method}: only gamma_ista and slimming have a "
                                    "sparsify phase to tune.")
    counts = {m: len(tuning.get(m, [])) for m in PRUNING_METHODS}
    if len(set(counts.values())) > 1:
        raise SettingsError(f"--tuning must give every pruning method the same number of trials "
                            f"(the same tuning effort), got {counts}.")


def method_groups(settings: dict) -> tuple[tuple[str, ...], ...]:
    """The methods in the order they run, every seed's runs of a group before the next:
    the core methods, the selection criteria, the training-time sparsifiers."""
    return (METHODS, tuple(settings.get("criteria_methods") or ()),
            tuple(settings.get("training_methods") or ()))


def expected_keys(settings: dict) -> list[tuple[str, int, int]]:
    """Every (method, target, seed) record besides the shared reference's: the core
    methods for every seed first, then the selection criteria's, then the training
    methods'."""
    targets = range(len(settings["mac_targets"]))
    return [(m, k, seed) for methods in method_groups(settings)
            for seed in settings["seeds"] for k in targets for m in methods]


def continued_settings(old: dict | None, settings: dict) -> dict | None:
    """``settings`` where a results file with ``old`` may go on with them, else ``old``.

    A from_reference file goes on when the two differ only by training methods
    appended to ``old``'s ``training_methods`` (a file written before the key
    existed has none) and by the knobs of methods ``old`` does not list: its
    records stay valid (nothing they were made with changed), the new methods'
    rows are simply missing. Anything else (a method removed or reordered, a
    knob of a listed method changed, any other setting) keeps ``old``, which
    the caller refuses as a mismatch.

    >>> old = {"protocol": "from_reference", "seeds": [0]}
    >>> new = {**old, "training_methods": ["admm"], "admm_rho": 0.3}
    >>> continued_settings(old, new) == new
    True
    >>> continued_settings({**new, "admm_rho": 0.1}, new)["admm_rho"]  # a run made with 0.1
    0.1
    """
    if old is None or old == settings or old.get("protocol") != FROM_REFERENCE:
        return old
    before = list(old.get("training_methods") or [])
    after = list(settings.get("training_methods") or [])
    if after[:len(before)] != before:
        return old
    kept = {key for m in before for key in TRAINING_METHOD_SETTINGS.get(m, ())}
    ignored = set(ADDITIVE_SETTINGS) - kept

    def rest(s: dict) -> dict:
        return {k: v for k, v in s.items() if k not in ignored}

    return settings if rest(old) == rest(settings) else old


def trials_of(settings: dict, method: str) -> list[dict]:
    """The tuning trials (override dicts) of ``method``; ``[]``: its settings as they are."""
    return list(settings["tuning"].get(method) or [])


# ----------------------------------------------------------------------------
# results file
# ----------------------------------------------------------------------------


class ReferenceResults(Results):
    """The from_reference JSON: also the shared reference's facts and the tuning trials."""

    def __init__(self, path, settings: dict, restart: bool = False):
        self.added: list[str] | None = None  # training methods a continued file gains
        super().__init__(path, settings, restart=restart)
        if self.added:
            self.doc.setdefault("settings_extended", []).append(
                {"training_methods_added": self.added, "records_before": len(self.doc["records"])})
        self.doc.setdefault("tuning", {
            "seed": settings["seeds"][0],
            "selected_on": f"validation accuracy ({settings['validation_examples']:,} held-out "
                           "training images); the best trial per (method, target) is used for "
                           "every seed",
            "trials": []})

    def continued_settings(self, old: dict | None, settings: dict) -> dict | None:
        """:func:`continued_settings`; the methods it adds are noted in the JSON's
        ``settings_extended`` (records before that entry were made without them)."""
        out = continued_settings(old, settings)
        if out is settings and old != settings:
            self.added = list(settings.get("training_methods") or [])[
                len(old.get("training_methods") or []):]
        return out

    def reference_record(self) -> dict | None:
        """The shared reference's record (whatever its seed), or None."""
        return next((r for r in self.doc["records"] if r["method"] == REFERENCE), None)

    def missing(self) -> list[tuple]:
        """Records still to make: the reference's, then every (method, target, seed)."""
        todo = [] if self.reference_record() else [(REFERENCE, None, None)]
        return todo + [key for key in expected_keys(self.doc["settings"]) if key not in self.done]

    def trial(self, method: str, target: int, index: int) -> dict | None:
        """That tuning trial's entry, or None."""
        return next((t for t in self.doc["tuning"]["trials"] if (t["method"], t["target"],
                     t["trial"]) == (method, target, index)), None)

    def add_trial(self, entry: dict) -> None:
        """Append one finished trial and save at once."""
        self.doc["tuning"]["trials"].append(entry)
        self.write()


def chosen_trial(doc: dict, method: str, target: int) -> dict | None:
    """The trial of (method, target) with the best validation accuracy (first on ties).

    For gamma_ista only trials that met the MAC budget (within ``match_tolerance``)
    compete — a less pruned model is easily more accurate; when none met it, the
    trials closest to the budget do.
    """
    trials = [t for t in doc.get("tuning", {}).get("trials", [])
              if t["method"] == method and t["target"] == target
              and t.get("validation_accuracy") is not None]
    budget = _budget_macs(doc, target) if method == "gamma_ista" else None
    if budget and trials:
        errors = [abs(t["macs"] - budget) / budget for t in trials]
        limit = max(doc["settings"]["match_tolerance"], min(errors))
        trials = [t for t, e in zip(trials, errors) if e <= limit]
    return max(trials, key=lambda t: (t["validation_accuracy"], -t["trial"]), default=None)


def _budget_macs(doc: dict, target: int) -> float | None:
    """The reference's MACs divided by the target's reduction (None before the reference record)."""
    ref = next((r for r in doc.get("records", []) if r["method"] == "reference"), None)
    if ref is None or not ref.get("macs"):
        return None
    return ref["macs"] / doc["settings"]["mac_targets"][target]


def reference_notes(doc: dict) -> list[str]:
    """Sentences on data, reference, budget, tuning and latency of ``doc``'s settings."""
    s = doc["settings"]
    budget = s["sparsify_epochs"] + s["finetune_epochs"]
    out = [
        f"data: Fashion-MNIST; {s['validation_examples']:,} training images held out "
        f"(stratified, seed {s['validation_seed']}) for every tuning choice; training on "
        + (f"a stratified subset of {s['train_examples']:,} of the others"
           if s["train_examples"] else "the other training images")
        + "; test accuracy on " + (f"the first {s['test_examples']:,} test images"
                                   if s["test_examples"] else "the 10,000 test images")
        + ", used only for the final records.",
        "reference: " + (f"{s['reference']} (shared by every seed)" if s["reference"] else
                         f"fashion_vgg trained here for {s['reference_epochs']} epochs with the "
                         "reference recipe (shared by every seed)") + ".",
        f"budget after the reference: {budget} epochs for every method (gamma_ista, slimming: "
        f"{s['sparsify_epochs']} sparsify + {s['finetune_epochs']} fine-tune; l1_norm, random: "
        f"{budget} fine-tune); scratch trains from a fresh initialisation with the reference's "
        "recipe for the reference's epoch count.",
        f"fine-tuning: a fresh SGD (momentum {s['momentum']}), cosine from "
        f"{s['finetune_learning_rate']} to 0; augmentation {s['augment']}; batch "
        f"{s['batch_size']}.",
        f"gamma_ista: alpha {s['alpha']}, GammaISTA(SGD {s['sparsify_learning_rate']}), "
        f"rho set and steered by CostTarget (every {s['cost_target_every']} steps, "
        f"budget reached at {s['cost_target_reach_at']:.0%} of the sparsify phase), "
        f"min_channels {s['min_channels']}, scale_beta {bool(s.get('scale_beta', False))}.",
        f"tuning: seed {s['seeds'][0]} only; trials {_trial_counts(s)}; chosen on validation "
        "accuracy per (method, target), then used for every seed.",
        *_training_notes(s),
        "latency: LiteRT CPU interpreter (XNNPACK) at 1 thread, batch 1, each model timed "
        f"alternately with the reference .tflite ({s['latency_timing']} timing); speed-up = "
        "reference median / model median.",
    ]
    if s["train_examples"]:
        out.append("a training subset: the accuracy targets (made for full training) are not "
                   "expected to be met with this preset.")
    return out


def _training_notes(s: dict) -> list[str]:
    """One sentence on the training methods' knobs, when the settings list any."""
    methods = s.get("training_methods") or []
    if not methods:
        return []
    seeds = [m for m in methods if m not in TUNED_LIKE]
    knobs = "; ".join(f"{m}: " + ", ".join(f"{key} {s[key]:g}" for key in
                                          TRAINING_METHOD_SETTINGS[m]) for m in seeds)
    notes = [f"training-time sparsifiers ({', '.join(seeds)}): {s['sparsify_epochs']} epochs "
             f"from the reference at SGD {s['sparsify_learning_rate']}, matched to gamma_ista's "
             f"MACs, {s['finetune_epochs']} fine-tune epochs at l1_norm's chosen rate; knobs fixed "
             f"from the package's docs and tests, not tuned ({knobs})."] if seeds else []
    how = {"gamma_ista": "CostTarget", "l1_norm": "tiled_selection_for_macs"}
    return notes + [f"{m}: {TUNED_LIKE[m]} with its chosen trial, {how[TUNED_LIKE[m]]}(round_to="
                    f"{s['tile_round_to']}), its own MAC budget." for m in methods if m in TUNED_LIKE]


def _trial_counts(s: dict) -> dict[str, int]:
    return {m: len(trials_of(s, m)) for m in METHODS}


# ----------------------------------------------------------------------------
# summary and targets
# ----------------------------------------------------------------------------


def summarize_reference(doc: dict) -> dict[str, Any]:
    """Per (method, target): mean ± std over seeds; targets, tuning choices, budget, seconds."""
    s, records = doc["settings"], doc["records"]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    order = {m: i for i, m in enumerate((REFERENCE, *METHODS, *CRITERIA_METHODS,
                                         *TRAINING_METHODS))}
    rows = []
    for (method, target), recs in sorted(groups.items(), key=lambda kv: (
            kv[0][1] if kv[0][1] is not None else -1, order.get(kv[0][0], 99))):
        row = _summary_row(method, target, recs, FIELDS)
        row["mac_target"] = None if target is None else s["mac_targets"][target]
        ok = [r for r in recs if r.get("accuracy") is not None]
        for key in ("scratch_epochs", "reference_epochs"):
            if ok and ok[0].get(key) is not None:
                row[key] = ok[0][key]
        rows.append(row)
    chosen = [{"method": m, "target": k, **{key: t[key] for key in
                                            ("trial", "overrides", "validation_accuracy")}}
              for k in range(len(s["mac_targets"])) for m in METHODS
              if (t := chosen_trial(doc, m, k)) is not None]
    return {"groups": rows, "targets": evaluate_reference_targets(rows, records, s),
            "tuning": chosen, "budget": budget_check(records, s["match_tolerance"]),
            "seconds": _seconds(doc)}


def budget_check(records: list[dict], tolerance: float) -> dict[str, Any]:
    """gamma_ista's MACs against its budget (reference MACs / target), per record."""
    rows = [{"target": r["target"], "seed": r["seed"], "macs": r["macs"],
             "macs_budget": r["macs_budget"],
             "relative_difference": r["macs_relative_difference"],
             "within": abs(r["macs_relative_difference"]) <= tolerance}
            for r in records if r["method"] == "gamma_ista" and r.get("macs_budget")]
    return {"tolerance": tolerance, "records": rows, "all_within": all(r["within"] for r in rows)}


def _seconds(doc: dict) -> dict[str, float]:
    """Where the time went: tuning trials, training of the records, their measurements."""
    records = doc["records"]
    return {"tuning_trials": round(sum(t.get("train_seconds", 0.0) for t in
                                       doc.get("tuning", {}).get("trials", [])), 1),
            "record_training": round(sum(r.get("train_seconds", 0.0) for r in records
                                         if r["method"] != REFERENCE
                                         and r.get("from_trial") is None), 1),
            "measuring": round(sum(r.get("measure_seconds", 0.0) for r in records), 1)}


def evaluate_reference_targets(rows: list[dict], records: list[dict],
                               settings: dict) -> list[dict[str, Any]]:
    """The issue's four targets from the summary rows (and, for latency, every record)."""
    family = [r for r in rows if r["method"] == "gamma_ista" and r["n"]]
    return [_compression_accuracy(_group(rows, REFERENCE, None), family),
            _leads_at_every_target(rows, len(settings["mac_targets"]),
                                   settings["match_tolerance"]),
            _every_model_fast(records, settings.get("latency_timing", "steady")),
            _small_and_accurate(rows)] + [
        _every_model_fast(records, settings.get("latency_timing", "steady"), method)
        for method, source in TUNED_LIKE.items()
        if source == "gamma_ista" and method in (settings.get("training_methods") or ())]


def _leads_at_every_target(rows: list[dict], n_targets: int, tolerance: float) -> dict:
    """(2) gamma_ista ≥ 0.3 point ahead of slimming and l1_norm, not behind scratch, everywhere.

    The value is the binding comparison's lead (points) and the threshold what
    that comparison requires, so the margin is the smallest lead beyond the
    requirement. A missing comparison (a method unreachable at a target) or MACs
    matched worse than the tolerance leave the target not met.
    """
    desc = (f"at matched MACs (±{tolerance:.0%}) gamma_ista beats slimming and l1_norm by >= "
            f"{TARGETS['min_advantage_points']:g} point mean accuracy at every target and is not "
            "behind scratch")
    comparisons, missing = [], []
    for k in range(n_targets):
        g = _group(rows, "gamma_ista", k)
        for method, need in REQUIRED_LEAD.items():
            other = _group(rows, method, k)
            if g is None or other is None:
                missing.append(f"target {k + 1} {method}")
                continue
            rel = abs(other["macs"] - g["macs"]) / g["macs"]
            comparisons.append({"target": k, "method": method, "required_points": need,
                                "advantage_points": 100 * (g["accuracy"] - other["accuracy"]),
                                "macs_relative_difference": rel, "matched": rel <= tolerance})
    if not comparisons:
        return _target("beats_baselines", desc, None, REQUIRED_LEAD["slimming"], True,
                       "no gamma_ista / baseline results", {"missing": missing})
    worst = min(comparisons, key=lambda c: c["advantage_points"] - c["required_points"])
    detail = "; ".join(f"target {c['target'] + 1} vs {c['method']}: "
                       f"{c['advantage_points']:+.2f} (needs >= {c['required_points']:g})"
                       + ("" if c["matched"] else " NOT MATCHED") for c in comparisons)
    unmatched = [f"target {c['target'] + 1} {c['method']}" for c in comparisons if not c["matched"]]
    if missing or unmatched:
        detail += f"; missing: {missing}; MACs not matched: {unmatched}"
    out = _target("beats_baselines", desc, worst["advantage_points"], worst["required_points"],
                  True, f"binding: target {worst['target'] + 1} vs {worst['method']}; {detail}",
                  {"comparisons": comparisons, "missing": missing})
    out["met"] = out["met"] and not missing and not unmatched
    return out


def _every_model_fast(records: list[dict], timing: str,
                      method: str = "gamma_ista") -> dict[str, Any]:
    """(3) every gamma_ista model's TFLite speed-up ≥ 0.8 × its MAC reduction (``method``:
    the same for a variant of it, the target named ``latency_follows_macs_<variant>``)."""
    t = TARGETS["min_speedup_over_mac_reduction"]
    name = "latency_follows_macs" + ("" if method == "gamma_ista"
                                     else method.replace("gamma_ista", ""))
    desc = (f"{timing} TFLite speed-up (float32, 1 thread) >= {t:g} x the MAC reduction for "
            f"every {method} model (every seed and target)")
    measured = [r for r in records if r["method"] == method
                and r.get("speedup_over_mac_reduction") is not None]
    if not measured:
        return _target(name, desc, None, t, True, f"no {method} results")
    worst = min(measured, key=lambda r: r["speedup_over_mac_reduction"])
    detail = "; ".join(f"target {r['target'] + 1} seed {r['seed']}: {r['speedup']:.2f}x faster / "
                       f"{r['mac_reduction']:.2f}x fewer MACs = "
                       f"{r['speedup_over_mac_reduction']:.2f}" for r in measured)
    if timing != "steady":
        detail += f" ({timing} timing: the target is judged on steady timing)"
    return _target(name, desc, worst["speedup_over_mac_reduction"], t, True,
                   f"smallest: target {worst['target'] + 1} seed {worst['seed']}; {detail}",
                   {"target": worst["target"], "seed": worst["seed"]})
