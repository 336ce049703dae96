"""The from_reference protocol's runs: every method starts from a trained reference.

:func:`run_reference` runs (or resumes) the protocol described in
``compression_reference_protocol.py``: the shared reference's record, then per
seed and MAC target every method (one :class:`ReferenceRun` per seed), the
first seed's runs preceded by the tuning trials on the validation split.
Measuring (test accuracy, costs, ``.tflite`` sizes, int8 accuracy, latency
against the reference) is ``compression_measure.RunBase``'s.

Resumable: models are cached as ``.keras`` under ``--work_dir/<settings
hash>/`` (git-ignored): a reference trained here, gamma_ista's and admm's
pruned models before fine-tuning, slimming's and receding_importance's
sparsified models, and every run's final model (named by method, target, the
tuning overrides and, for a training method, its knobs: the settings hash
leaves those out, see ``compression_protocol.settings_hash``). Every finished
trial and record is saved to the JSON at once; a rerun skips them and never
retrains a cached model. ``deadline_minutes`` starts no training after that
long.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable

import numpy as np

from common import ROOT, tensorflow_available
from compression_measure import Data, DeadlineReached, Outcome, RunBase, keras_predictions, loss
from compression_protocol import REFERENCE, SettingsError, SettingsMismatchError, settings_hash
from compression_presets import FINETUNE_ONLY, TRAINING_METHOD_SETTINGS, TUNED_LIKE
from compression_reference_protocol import (
    CRITERIA_METHODS, METHODS, TRAINING_METHODS, ReferenceResults, chosen_trial, method_groups,
    trials_of,
)

HISTORY_POINTS = 50  # CostTarget history kept per record


class Unreachable(Exception):
    """A run that cannot be made (no selection matches the MACs, an emptied layer)."""

    def __init__(self, reason: str, extra: dict | None = None):
        super().__init__(reason)
        self.extra = extra or {}


def reference_training():
    """``examples/reference_training.py`` (its ``RECIPE`` and ``compile_reference``)."""
    examples = str(ROOT / "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    import reference_training as module

    return module


def load_reference_data(settings: dict) -> Data:
    """Training (after the validation hold-out; a stratified subset if asked), validation, test."""
    from tf_gamma_prune.data import load_fashion_mnist, stratified_indices, validation_split

    (x, y), (x_test, y_test) = load_fashion_mnist(use_tfds=tensorflow_available())
    (x, y), (x_val, y_val) = validation_split(x, y, settings["validation_examples"],
                                              seed=settings["validation_seed"])
    if settings["train_examples"]:
        idx = stratified_indices(y, settings["train_examples"], seed=0)
        x, y = x[idx], y[idx]
    if settings["test_examples"]:
        x_test, y_test = x_test[: settings["test_examples"]], y_test[: settings["test_examples"]]
    order = np.random.default_rng(1).permutation(len(x))[: settings["calibration_examples"]]
    return Data(x, y, x_test, y_test, [x[i:i + 1] for i in order], x_val, y_val)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a Keras classifier."""
    return float(np.mean(keras_predictions(model, x) == y))


def thin(history: list[dict], points: int = HISTORY_POINTS) -> list[dict]:
    """At most ``points`` evenly spaced entries of ``history``, the last one always kept."""
    if len(history) <= points:
        return list(history)
    idx = np.unique(np.linspace(0, len(history) - 1, points).round().astype(int))
    return [history[i] for i in idx]


@contextlib.contextmanager
def unreachable_below(target: int):
    """``TargetUnreachableError`` inside as :class:`Unreachable` (with the closest MACs)."""
    from tf_gamma_prune import TargetUnreachableError

    try:
        yield
    except TargetUnreachableError as e:
        raise Unreachable(str(e), {"macs_target": target,
                                   "closest_macs": int(e.closest_macs)}) from e


def importance_tails(scores: dict[str, np.ndarray], prefix: str = "") -> dict[str, float]:
    """The pooled importances' mass below 0.1 and above 0.9 (docs/rni_admm.md's statistic)
    and their median."""
    values = np.concatenate(list(scores.values()))
    return {f"{prefix}below_0_1": round(float(np.mean(values < 0.1)), 4),
            f"{prefix}above_0_9": round(float(np.mean(values > 0.9)), 4),
            f"{prefix}median": round(float(np.median(values)), 4)}


def pruned_norm_ratios(model, selection: dict, state: dict) -> dict[str, float]:
    """How far ADMM drove the pruned filters to 0: per layer, the largest pruned filter's L2
    norm over the median kept one's (and the same for the γ of the BN after it), summarised
    over the layers by max and median."""
    import keras

    def ratios(values: np.ndarray, keep) -> float | None:
        pruned = np.setdiff1d(np.arange(len(values)), keep)
        return float(values[pruned].max() / np.median(values[keep])) if len(pruned) else None

    kernel, gamma = [], []
    for name, keep in selection.items():
        w = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
        kernel.append(ratios(np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0), keep))
        bn = state.get(name, {}).get("batchnorm")
        if bn:
            gamma.append(ratios(np.abs(keras.ops.convert_to_numpy(
                model.get_layer(bn).gamma)), keep))
    out = {}
    for what, values in (("filter", kernel), ("gamma", gamma)):
        values = [v for v in values if v is not None]
        if values:
            out[f"pruned_{what}_norm_ratio_max"] = round(max(values), 4)
            out[f"pruned_{what}_norm_ratio_median"] = round(float(np.median(values)), 4)
    return out


def _plain(value: Any) -> Any:
    """JSON-ready: numpy / tensor scalars as Python numbers."""
    return json.loads(json.dumps(value, default=lambda v: np.asarray(v).item()))


@dataclasses.dataclass
class Reference:
    """The shared reference: where it is, how it was trained."""

    path: pathlib.Path
    seed: int | None
    epochs: int | None
    recipe: dict
    train_seconds: float
    source: str
    recorded: dict  # its training record's accuracies (committed reference)

    def load(self):
        """A fresh copy of the reference (uncompiled)."""
        import keras

        import tf_gamma_prune  # noqa: F401  registers the package's layers

        return keras.models.load_model(self.path, compile=False)

    def info(self, scratch_epochs: int) -> dict[str, Any]:
        """The JSON's ``reference`` section (with the file's SHA-256)."""
        return {"source": self.source, "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
                "seed": self.seed, "epochs": self.epochs, "recipe": self.recipe,
                "train_seconds": self.train_seconds, "scratch_epochs": scratch_epochs,
                **self.recorded}


def committed_reference(settings: dict) -> Reference:
    """The reference file of ``settings["reference"]`` and its training record next to it."""
    path = pathlib.Path(settings["reference"])
    path = path if path.is_absolute() else ROOT / path
    if not path.exists():
        raise SettingsError(f"--reference={settings['reference']}: no such file. Train it with "
                            ".venv/bin/python examples/reference_training.py, or pass another.")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    recipe = meta.get("recipe") or dict(reference_training().RECIPE)
    recorded = {k: meta[k] for k in ("test_accuracy", "validation_accuracy", "train_examples")
                if k in meta}
    return Reference(path, recipe.get("seed"), recipe.get("epochs"), recipe,
                     float(meta.get("train_seconds", 0.0)), str(settings["reference"]),
                     {f"recorded_{k}": v for k, v in recorded.items()})


class ReferenceRun(RunBase):
    """Every from_reference run of one seed (models cached under the seed's folder)."""

    def __init__(self, settings: dict, seed: int, data: Data, root: pathlib.Path,
                 results: ReferenceResults, log: Callable[[str], None], stats: dict,
                 deadline: float | None = None, reference: Reference | None = None):
        super().__init__(settings, seed, data, root / f"seed{seed}", results, log, stats, deadline)
        self.root, self.ref, self.overrides = root, reference, {}

    # --- RunBase hooks --------------------------------------------------------
    def reference_final(self):
        """The shared reference (latency baseline) and its training seconds."""
        return self.ref.load(), self.ref.train_seconds

    def epoch_fields(self, method: str, target: int | None) -> dict[str, Any]:
        """Epochs after the reference: S + F, S + F fine-tune, or the scratch epochs."""
        sparsify, finetune = self.s["sparsify_epochs"], self.s["finetune_epochs"]
        if method == REFERENCE:
            return {"reference_epochs": self.ref.epochs}
        if method == "scratch":
            return {"scratch_epochs": self.scratch_epochs()}
        if method in ("gamma_ista", "slimming", *TRAINING_METHODS) and method not in FINETUNE_ONLY:
            return {"sparsify_epochs": sparsify, "finetune_epochs": finetune}
        return {"sparsify_epochs": 0, "finetune_epochs": sparsify + finetune}

    # --- helpers ----------------------------------------------------------------
    def scratch_epochs(self) -> int:
        """``scratch_epochs``, else the reference's epoch count, else the recipe's."""
        return int(self.s["scratch_epochs"] or self.ref.epochs
                   or reference_training().RECIPE["epochs"])

    def with_overrides(self, overrides: dict) -> ReferenceRun:
        """This run with one tuning trial's settings (its models cached under their own names)."""
        view = copy.copy(self)
        view.s, view.overrides = {**self.s, **overrides}, dict(overrides)
        if "sparsify_epochs" in overrides:  # the same budget: S + F stays
            view.s["finetune_epochs"] = (self.s["sparsify_epochs"] + self.s["finetune_epochs"]
                                         - int(overrides["sparsify_epochs"]))
        return view

    def path(self, method: str, target: int | None, stage: str) -> pathlib.Path:
        """Cache path of a model: method, target, tuning overrides (and a training
        method's knobs), stage."""
        keys = {**{k: self.s[k] for k in TRAINING_METHOD_SETTINGS.get(method, ())},
                **self.overrides}
        tag = settings_hash(keys) if keys else "default"
        where = "" if target is None else f"_target{target}"
        return self.work / f"{method}{where}_{tag}_{stage}.keras"

    def cached(self, path: pathlib.Path, make: Callable[[], tuple[Any, dict]]):
        """``(model, meta)`` from the cache, or made by ``make()`` and cached (meta as JSON)."""
        import keras

        import tf_gamma_prune  # noqa: F401
        from tf_gamma_prune.atomic_io import save_keras_atomic, write_json_atomic

        if not path.exists():
            model, meta = make()
            write_json_atomic(path.with_suffix(".json"), _plain(meta))
            save_keras_atomic(model, path)  # last: its presence means "done"
        meta = json.loads(path.with_suffix(".json").read_text())
        return keras.models.load_model(path, compile=False), meta

    def reference_macs(self) -> int:
        """MACs of ``fashion_vgg(widths)``: what the MAC targets divide."""
        from tf_gamma_prune import model_cost
        from tf_gamma_prune.reference_models import fashion_vgg

        return int(model_cost(fashion_vgg(widths=self.s["widths"])).macs)

    def gamma_record(self, k: int) -> dict:
        """This seed's gamma_ista record at target k (what the baselines are matched to)."""
        return self.results.get("gamma_ista", k, self.seed)

    def prune(self, model, selection=None, round_to: int = 1):
        """``prune_model`` with the settings' fold (and ``round_to``)."""
        from tf_gamma_prune import prune_model

        return prune_model(model, selection, fold=self.s["fold"],
                           carrier_tile=self.s["carrier_tile"], round_to=round_to)

    def matched(self, model, criterion, k: int):
        """``model`` pruned by ``criterion`` to gamma_ista's MACs (±tolerance), and the target."""
        selection, extra = self.matched_selection(model, criterion, k)
        return self.prune(model, selection), extra

    def matched_selection(self, model, criterion, k: int):
        """``criterion``'s selection at gamma_ista's MACs (±tolerance), and the target."""
        from tf_gamma_prune import selection_for_macs

        target = int(self.gamma_record(k)["macs"])
        with unreachable_below(target):
            selection, _ = selection_for_macs(model, criterion, target,
                                              tolerance=self.s["match_tolerance"])
        return selection, {"macs_target": target}

    def matched_widths(self, k: int) -> list[int]:
        """gamma_ista's per-layer widths at target k (Unreachable where it emptied a layer)."""
        widths = self.gamma_record(k)["widths"]
        empty = sorted(name for name, w in widths.items() if w < 1)
        if empty:
            raise Unreachable(f"gamma_ista removed every channel of {empty}")
        return [widths[f"bn{i + 1}"] for i in range(6)]

    # --- the methods: each returns (final model, training seconds, record extras) ------
    def train_gamma_ista(self, k: int):
        """Reference → rescale α → GammaISTA + CostTarget → prune → rescale back → F epochs."""
        s, target = self.s, self.s["mac_targets"][k]
        pruned, meta = self.cached(self.path("gamma_ista", k, "pruned"),
                                   lambda: self._sparsify_and_prune(target))
        seconds = meta["seconds"] + self.phase2(pruned, s["finetune_epochs"])
        return pruned, seconds, {"cost_target": meta["cost_target"]}

    def train_gamma_ista_tiled(self, k: int):
        """gamma_ista with ``CostTarget(round_to=tile_round_to)``: the widths end at
        multiples of the tile, within the budget (gamma_ista's chosen trial)."""
        s, target = self.s, self.s["mac_targets"][k]
        pruned, meta = self.cached(
            self.path("gamma_ista_tiled", k, "pruned"),
            lambda: self._sparsify_and_prune(target, round_to=s["tile_round_to"]))
        seconds = meta["seconds"] + self.phase2(pruned, s["finetune_epochs"])
        return pruned, seconds, {"cost_target": meta["cost_target"]}

    def _sparsify_and_prune(self, target: float, round_to: int = 1):
        """The sparsify phase of gamma_ista, up to the rescaled-back pruned model
        (``round_to`` > 1: the controller's tile, for gamma_ista_tiled)."""
        import keras

        from tf_gamma_prune import (
            CostTarget, GammaISTA, batchnorm_layers, gamma_penalties, recalibrate_batchnorm,
            rescale_gamma,
        )

        s, alpha = self.s, self.s["alpha"]
        model = self.ref.load()
        if alpha != 1:
            rescale_gamma(model, alpha)
        sgd = keras.optimizers.SGD(s["sparsify_learning_rate"], momentum=s["momentum"])
        # rho: a placeholder, CostTarget sets its own start value and steers it
        model.compile(GammaISTA(sgd, rho=1e-3, penalties=gamma_penalties(model),
                                min_channels=int(s["min_channels"]),
                                scale_beta=bool(s.get("scale_beta", False))),
                      loss=loss(), metrics=["accuracy"])
        # round_to > 1 also counts the model this run builds (fold, carrier_tile): the
        # alignment decides widths, so a carrier block it did not count would break them
        tiles = {} if round_to == 1 else {"round_to": round_to, "fold": s["fold"],
                                          "carrier_tile": s["carrier_tile"]}
        controller = CostTarget(macs=1.0 / target, every=s["cost_target_every"],
                                reach_at=s["cost_target_reach_at"], **tiles)
        name = "gamma_ista" if round_to == 1 else f"gamma_ista_tiled (round_to {round_to})"
        self.log(f"seed {self.seed}: {name} {target:g}x: sparsify {s['sparsify_epochs']} "
                 f"epochs {self.overrides or ''}")
        seconds = self.fit(model, 0, s["sparsify_epochs"], callbacks=[controller])
        if alpha != 1:
            recalibrate_batchnorm(model, self.data.x, max_batches=40)
        # round_to: the carriers a constant channel needs (scale_beta=False) come in tiles too
        pruned = self.prune(model, round_to=round_to)
        if alpha != 1 and batchnorm_layers(pruned):
            rescale_gamma(pruned, 1.0 / alpha)
        info = {"budget_macs": controller.budget, "within_budget": controller.within_budget(),
                "steps_measured": len(controller.history), "history": thin(controller.history)}
        return pruned, {"seconds": seconds, "cost_target": info}

    def train_slimming(self, k: int):
        """Reference → NetworkSlimming, S epochs (cached) → threshold at gamma_ista's MACs → F."""
        from tf_gamma_prune import gamma_threshold_selection

        sparse, meta = self.cached(self.path("slimming", None, "sparse"), self._slim)
        pruned, extra = self.matched(sparse, gamma_threshold_selection, k)
        return pruned, meta["seconds"] + self.phase2(pruned, self.s["finetune_epochs"]), extra

    def _slim(self):
        """The reference after S epochs of Network Slimming (shared by every target)."""
        import keras

        from tf_gamma_prune import NetworkSlimming

        s = self.s
        model = self.ref.load()
        sgd = keras.optimizers.SGD(s["sparsify_learning_rate"], momentum=s["momentum"])
        model.compile(NetworkSlimming(sgd, l1=s["slimming_l1"]), loss=loss(), metrics=["accuracy"])
        self.log(f"seed {self.seed}: slimming: sparsify {s['sparsify_epochs']} epochs "
                 f"{self.overrides or ''}")
        return model, {"seconds": self.fit(model, 0, s["sparsify_epochs"])}

    def train_l1_norm(self, k: int):
        """Reference → L1-norm filters at gamma_ista's MACs → S + F fine-tune epochs."""
        from tf_gamma_prune import l1_norm_selection

        pruned, extra = self.matched(self.ref.load(), l1_norm_selection, k)
        return pruned, self.finetune_all(pruned, "l1_norm", k), extra

    def train_l1_norm_tiled(self, k: int):
        """Reference → L1-norm filters with widths in tiles of ``tile_round_to``, at the
        MAC budget itself (``tiled_selection_for_macs``) → S + F fine-tune epochs."""
        from tf_gamma_prune import l1_norm_selection, tiled_selection_for_macs

        model = self.ref.load()
        budget = round(self.reference_macs() / self.s["mac_targets"][k])
        with unreachable_below(budget):
            selection, _ = tiled_selection_for_macs(model, l1_norm_selection, budget,
                                                    int(self.s["tile_round_to"]),
                                                    tolerance=self.s["match_tolerance"])
        pruned = self.prune(model, selection)
        return pruned, self.finetune_all(pruned, "l1_norm_tiled", k), {}

    def train_random(self, k: int):
        """Reference → random channels down to gamma_ista's widths → S + F fine-tune epochs."""
        from tf_gamma_prune import random_selection

        widths = dict(zip([f"bn{i + 1}" for i in range(6)], self.matched_widths(k)))
        model = self.ref.load()
        pruned = self.prune(model, random_selection(model, widths, seed=self.seed))
        return pruned, self.finetune_all(pruned, "random", k), {}

    def train_structural_redundancy(self, k: int):
        """Reference → structural redundancy (Wang et al. 2021) at gamma_ista's MACs → S + F."""
        from tf_gamma_prune import structural_redundancy_selection

        return self._train_criterion("structural_redundancy", structural_redundancy_selection, k)

    def train_redundancy_random(self, k: int):
        """Reference → redundancy-driven random filters at gamma_ista's MACs → S + F."""
        from tf_gamma_prune import redundancy_random_selection

        return self._train_criterion("redundancy_random", redundancy_random_selection, k,
                                     seed=self.seed)

    def train_prunenet(self, k: int):
        """Reference → PruneNet global importance (256 training images) at gamma_ista's MACs."""
        from tf_gamma_prune import global_importance_selection

        return self._train_criterion("prunenet", global_importance_selection, k,
                                     data=self.data.x[:256])

    @property
    def min_channels(self) -> int:
        """GammaISTA's floor per layer, given to every criterion that has one (fairness:
        L1-norm and Network Slimming never came near it in the records)."""
        return int(self.s["min_channels"])

    def _train_criterion(self, method: str, criterion, k: int, **options):
        """``criterion(model, fraction, min_channels=..., **options)`` at gamma_ista's MACs → S + F."""
        criterion = functools.partial(criterion, min_channels=self.min_channels, **options)
        pruned, extra = self.matched(self.ref.load(), criterion, k)
        return pruned, self.finetune_all(pruned, method, k), extra

    def train_receding_importance(self, k: int):
        """Reference → bounded BN, S epochs of receding importances (cached) → the global
        quantile of sigmoid(w) at gamma_ista's MACs → standard BN → prune → F epochs."""
        from tf_gamma_prune import receding_importance_selection, to_standard_batchnorm

        # l1_norm's fine-tune rate does not touch the sparsify phase: one sparse model per seed
        phase = self.with_overrides({key: value for key, value in self.overrides.items()
                                     if key != "finetune_learning_rate"})
        sparse, meta = self.cached(phase.path("receding_importance", None, "sparse"),
                                   phase._recede)
        criterion = functools.partial(receding_importance_selection, min_channels=self.min_channels)
        selection, extra = self.matched_selection(sparse, criterion, k)
        pruned = self.prune(to_standard_batchnorm(sparse), selection)
        info = {**meta["receding_importance"],
                "validation_accuracy_pruned": accuracy(pruned, self.data.x_val, self.data.y_val)}
        seconds = meta["seconds"] + self.phase2(pruned, self.s["finetune_epochs"])
        return pruned, seconds, {**extra, "receding_importance": info}

    def _recede(self):
        """The reference after S epochs of receding importances (shared by every target).

        Each BN is first rescaled so its largest γ is ``rni_start_scale`` (the
        same function: ``rescale_gamma`` scales the consuming kernels back), so
        that ``to_bounded_batchnorm(init="gamma", center=True)`` — w = logit(γ),
        β as the shift — computes the reference's function exactly.
        """
        import keras

        from tf_gamma_prune import (
            BatchNormLRMultiplier, RecedingImportanceRegularizer, batchnorm_layers,
            receding_importances, rescale_gamma, to_bounded_batchnorm,
        )

        s = self.s
        model = self.ref.load()
        for name, layer in batchnorm_layers(model):
            largest = float(np.max(np.abs(keras.ops.convert_to_numpy(layer.gamma))))
            rescale_gamma(model, s["rni_start_scale"] / largest, layers=[name])
        model = to_bounded_batchnorm(
            model, regularizer=RecedingImportanceRegularizer(s["rni_strength"],
                                                             shift=s["rni_shift"]),
            init="gamma", center=True)
        start = receding_importances(model)
        sgd = keras.optimizers.SGD(s["sparsify_learning_rate"], momentum=s["momentum"])
        model.compile(BatchNormLRMultiplier(sgd, s["rni_bn_lr_multiplier"]), loss=loss(),
                      metrics=["accuracy"])
        self.log(f"seed {self.seed}: receding_importance: sparsify {s['sparsify_epochs']} epochs "
                 f"{self.overrides or ''}")
        seconds = self.fit(model, 0, s["sparsify_epochs"])
        end = receding_importances(model)
        info = {**importance_tails(start, "start_"), **importance_tails(end),
                "layers_receded": sum(int(np.median(v) < 0.1) for v in end.values()),
                "validation_accuracy_sparsified": accuracy(model, self.data.x_val,
                                                           self.data.y_val)}
        return model, {"seconds": seconds, "receding_importance": info}

    def train_coarse_ranking(self, k: int):
        """Reference → S epochs of SGD under CoarseRanking (cached; its Taylor scores give the
        selection at every target, matched to gamma_ista's MACs) → prune → F epochs."""
        phase = self.with_overrides({key: value for key, value in self.overrides.items()
                                     if key != "finetune_learning_rate"})
        ranked, meta = self.cached(phase.path("coarse_ranking", None, "ranked"), phase._rank)
        if str(k) not in meta["selections"]:
            raise Unreachable(meta["unreachable"].get(str(k), "no selection at this target"))
        selection = {name: np.asarray(kept, int) for name, kept in meta["selections"][str(k)].items()}
        pruned = self.prune(ranked, selection)
        info = {**meta["coarse_ranking"],
                "validation_accuracy_pruned": accuracy(pruned, self.data.x_val, self.data.y_val)}
        seconds = meta["seconds"] + self.phase2(pruned, self.s["finetune_epochs"])
        return pruned, seconds, {"macs_target": meta["macs_targets"][str(k)], "coarse_ranking": info}

    def _rank(self):
        """The reference after S epochs of ``CoarseRanking(SGD)``, with the ranking's
        selection at every target (the scores live in the optimizer, which the cache does
        not keep, so every target's selection is made here, once)."""
        import keras

        from tf_gamma_prune import CoarseRanking, selection_for_macs

        s = self.s
        model = self.ref.load()
        ranking = CoarseRanking(keras.optimizers.SGD(s["sparsify_learning_rate"],
                                                     momentum=s["momentum"]))
        model.compile(ranking, loss=loss(), metrics=["accuracy"])
        self.log(f"seed {self.seed}: coarse_ranking: fine-tune {s['sparsify_epochs']} epochs "
                 f"ranking {self.overrides or ''}")
        seconds = self.fit(model, 0, s["sparsify_epochs"])

        criterion = functools.partial(ranking.criterion, min_channels=self.min_channels)
        selections, targets, unreachable = {}, {}, {}
        for k in range(len(s["mac_targets"])):
            targets[str(k)] = target = int(self.gamma_record(k)["macs"])
            try:
                with unreachable_below(target):
                    selection, _ = selection_for_macs(model, criterion, target,
                                                      tolerance=s["match_tolerance"])
            except Unreachable as error:
                unreachable[str(k)] = str(error)
                continue
            selections[str(k)] = {name: np.asarray(kept).tolist()
                                  for name, kept in selection.items()}
        info = {"batches": int(ranking.batches),
                "validation_accuracy_sparsified": accuracy(model, self.data.x_val, self.data.y_val)}
        return model, {"seconds": seconds, "selections": selections, "macs_targets": targets,
                       "unreachable": unreachable, "coarse_ranking": info}

    def train_admm(self, k: int):
        """Reference → ADMM towards gamma_ista's MACs, S epochs → L1 selection at the
        targets → prune (cached) → F epochs.

        Pruned like every other row, without ``calibration_data``: docs/rni_admm.md's
        recipe folds the pruned channels' constants (≈ β) with it, but under the
        benchmark's carrier fold that adds BorderCorrection maps (in the smoke run
        3x the parameters at the same MACs, and TFLite ADDs), which would make the
        row's size and latency incomparable; the F fine-tune epochs absorb the
        dropped constants. ``validation_accuracy_pruned`` shows what the cut cost.
        """
        pruned, meta = self.cached(self.path("admm", k, "pruned"), lambda: self._admm(k))
        seconds = meta["seconds"] + self.phase2(pruned, self.s["finetune_epochs"])
        return pruned, seconds, {"macs_target": meta["macs_target"], "admm": meta["admm"]}

    def _admm(self, k: int):
        """The sparsify phase of admm at target k, up to the pruned model."""
        import keras

        from tf_gamma_prune import (
            ADMMFilterPruning, admm_selection, admm_targets_for_macs, count_macs,
        )

        s = self.s
        target = int(self.gamma_record(k)["macs"])
        model = self.ref.load()
        with unreachable_below(target):
            widths = admm_targets_for_macs(model, target / count_macs(model),
                                           tolerance=s["match_tolerance"])
        every = max(1, round(s["sparsify_epochs"] * self.steps_per_epoch / s["admm_updates"]))
        admm = ADMMFilterPruning(widths, rho=s["admm_rho"], update_every=every,
                                 rho_growth=s["admm_rho_growth"])
        model.compile(keras.optimizers.SGD(s["sparsify_learning_rate"], momentum=s["momentum"]),
                      loss=loss(), metrics=["accuracy"])
        self.log(f"seed {self.seed}: admm target {k}: sparsify {s['sparsify_epochs']} epochs "
                 f"{self.overrides or ''}")
        seconds = self.fit(model, 0, s["sparsify_epochs"], callbacks=[admm])
        selection = admm_selection(model, widths)
        pruned = self.prune(model, selection)
        info = {**pruned_norm_ratios(model, selection, admm.state()),
                "final_rho": admm.current_rho, "updates": admm.updates, "update_every": every,
                "validation_accuracy_sparsified": accuracy(model, self.data.x_val, self.data.y_val),
                "validation_accuracy_pruned": accuracy(pruned, self.data.x_val, self.data.y_val)}
        return pruned, {"seconds": seconds, "macs_target": target, "admm": info}

    def finetune_all(self, model, method: str, k: int) -> float:
        """S + F fine-tune epochs (methods without a sparsify phase)."""
        epochs = self.s["sparsify_epochs"] + self.s["finetune_epochs"]
        self.log(f"seed {self.seed}: {method} target {k}: fine-tune {epochs} epochs "
                 f"{self.overrides or ''}")
        return self.phase2(model, epochs)

    def train_scratch(self, k: int):
        """``fashion_vgg(gamma_ista's widths)``, fresh, trained with the reference recipe."""
        recipe, epochs = self.ref.recipe, self.scratch_epochs()
        model = self.build(self.matched_widths(k))
        reference_training().compile_reference(
            model, steps=epochs * self.steps_per_epoch, learning_rate=recipe["learning_rate"],
            momentum=recipe["momentum"], weight_decay=recipe["weight_decay"])
        self.log(f"seed {self.seed}: scratch target {k}: {epochs} epochs (reference recipe)")
        return model, self.fit(model, 0, epochs), {}

    # --- runs, trials, records ------------------------------------------------------
    def final_model(self, method: str, k: int):
        """The method's fine-tuned model at target k with this view's overrides (cached)."""
        def make():
            model, seconds, extra = getattr(self, f"train_{method}")(k)
            return model, {"seconds": seconds, "extra": extra}

        return self.cached(self.path(method, k, "final"), make)

    def run(self, methods: tuple = METHODS) -> None:
        """Pending TFLite measurements first (where TF is), then every missing record."""
        if self.tflite:
            self.complete_pending()
        for k in range(len(self.s["mac_targets"])):
            for method in methods:
                if not self.results.has(method, k, self.seed):
                    if method in CRITERIA_METHODS or method in TRAINING_METHODS:
                        self.run_criterion(method, k)
                    else:
                        self.run_method(method, k)

    def run_criterion(self, method: str, k: int) -> None:
        """A selection criterion's or training method's record, with l1_norm's chosen
        fine-tuning overrides (a variant of a core method: that method's chosen trial)."""
        source = TUNED_LIKE.get(method, "l1_norm")
        best = chosen_trial(self.results.doc, source, k)
        overrides = best["overrides"] if best else {}
        extra = {"overrides": overrides, "tuning": f"{source}'s chosen trial"}
        self.add(self.with_overrides(overrides).record(method, k, extra))

    def run_method(self, method: str, k: int) -> None:
        """One record: tuning trials first (first seed), then the chosen trial's settings."""
        trials = trials_of(self.s, method)
        view, extra = self, {}
        if trials:
            if self.seed == self.s["seeds"][0]:
                for i, overrides in enumerate(trials):
                    if self.results.trial(method, k, i) is None:
                        self.run_trial(method, k, i, overrides)
            best = chosen_trial(self.results.doc, method, k)
            if best is None:
                first = self.results.trial(method, k, 0) or {}
                self.add(self.unreachable(method, k, "every tuning trial was unreachable: "
                                          + str(first.get("unreachable")),
                                          {"mac_target": self.s["mac_targets"][k]}))
                return
            view = self.with_overrides(best["overrides"])
            extra = {"overrides": best["overrides"], "tuning_trial": best["trial"],
                     "from_trial": best["trial"] if self.seed == self.s["seeds"][0] else None}
        self.add(view.record(method, k, extra))

    def run_trial(self, method: str, k: int, index: int, overrides: dict) -> None:
        """One tuning trial: the method at target k with ``overrides``, validation accuracy."""
        start = time.perf_counter()
        entry = {"method": method, "target": k, "trial": index, "seed": self.seed,
                 "overrides": overrides}
        try:
            model, meta = self.with_overrides(overrides).final_model(method, k)
        except Unreachable as e:
            entry.update(validation_accuracy=None, unreachable=str(e), **e.extra)
        else:
            from tf_gamma_prune import model_cost

            cost = model_cost(model)
            entry.update(validation_accuracy=accuracy(model, self.data.x_val, self.data.y_val),
                         macs=int(cost.macs), params=int(cost.params),
                         train_seconds=round(meta["seconds"], 1))
        entry["seconds"] = round(time.perf_counter() - start, 1)
        self.results.add_trial(entry)
        self.stats["trials_added"] += 1
        self.log(f"seed {self.seed}: trial {method} target {k} #{index} {overrides}: validation "
                 f"accuracy {entry['validation_accuracy']}")

    def record(self, method: str, k: int, extra: dict) -> dict:
        """The measured record of (method, k) (or its unreachable record); its
        ``measure_seconds`` start once the final model is there (training it, when no
        trial left it in the cache, is its ``train_seconds``)."""
        extra = {**extra, "mac_target": self.s["mac_targets"][k]}
        try:
            model, meta = self.final_model(method, k)
        except Unreachable as e:
            return self.unreachable(method, k, str(e), {**extra, **e.extra})
        start = time.perf_counter()
        extra.update(meta["extra"])
        extra["validation_accuracy"] = accuracy(model, self.data.x_val, self.data.y_val)
        if method == "scratch":
            extra["scratch_recipe"] = "examples/reference_training.py compile_reference"
        record = self.measure(model, method, k, meta["seconds"], 0.0, extra)
        if method in ("gamma_ista", *TUNED_LIKE):
            budget = record["macs_budget"] = round(self.reference_macs() / self.s["mac_targets"][k])
        else:
            budget = record.get("macs_target")
        if budget:
            record["macs_relative_difference"] = (record["macs"] - budget) / budget
        record["measure_seconds"] = round(time.perf_counter() - start, 1)
        return record

    def reference_record(self) -> dict:
        """The shared reference's record (its own seed)."""
        start = time.perf_counter()
        model = self.ref.load()
        extra = {"validation_accuracy": accuracy(model, self.data.x_val, self.data.y_val),
                 "reference": self.ref.source}
        record = self.measure(model, REFERENCE, None, self.ref.train_seconds, 0.0, extra)
        record["seed"] = self.ref.seed
        record["measure_seconds"] = round(time.perf_counter() - start, 1)
        return record

    def prepare_reference(self) -> Reference:
        """The committed reference, or one trained here for ``reference_epochs`` (cached)."""
        if self.s["reference"]:
            self.ref = committed_reference(self.s)
            self._check_widths()
            return self.ref
        module = reference_training()
        recipe = {**module.RECIPE, "epochs": int(self.s["reference_epochs"]),
                  "widths": self.s["widths"], "batch_size": self.s["batch_size"]}

        def make():
            model = self.build(self.s["widths"])  # seeded with recipe["seed"]: see run_reference
            module.compile_reference(model, steps=recipe["epochs"] * self.steps_per_epoch,
                                     learning_rate=recipe["learning_rate"],
                                     momentum=recipe["momentum"],
                                     weight_decay=recipe["weight_decay"])
            self.log(f"reference: training {recipe['epochs']} epochs here")
            return model, {"seconds": self.fit(model, 0, recipe["epochs"])}

        path = self.root / "reference.keras"
        _, meta = self.cached(path, make)
        self.ref = Reference(path, recipe["seed"], recipe["epochs"], recipe, meta["seconds"],
                             f"trained here ({recipe['epochs']} epochs)", {})
        return self.ref

    def _check_widths(self) -> None:
        """The reference file must be ``fashion_vgg(widths)``."""
        from compression_measure import bn_widths

        found = list(bn_widths(self.ref.load()).values())
        if found != self.s["widths"]:
            raise SettingsError(f"{self.ref.source} has widths {found}, the settings say "
                                f"{self.s['widths']}: pass --widths to match.")


def run_reference(settings: dict, out: str | os.PathLike, work_dir: str | os.PathLike,
                  restart: bool = False, log: Callable[[str], None] = print,
                  png: str | os.PathLike | None = None,
                  deadline_minutes: float | None = None) -> Outcome:
    """Run (or resume) the from_reference benchmark; returns the document and counters.

        outcome = run_reference(make_settings("smoke"), "/tmp/smoke.json", "/tmp/work")
    """
    results = ReferenceResults(pathlib.Path(out), settings, restart=restart)
    root = pathlib.Path(work_dir) / settings_hash(settings)
    if restart and root.exists():
        shutil.rmtree(root)
    stats = {"epochs_trained": 0, "records_added": 0, "tflite_conversions": 0, "trials_added": 0}
    t0 = time.perf_counter()

    def stamped(line: str) -> None:
        log(f"[{time.perf_counter() - t0:7.0f} s] {line}")

    missing, tflite = results.missing(), tensorflow_available()
    pending = results.pending() if tflite else []
    stamped(f"{len(missing)} records to do, {len(results.pending())} waiting for TFLite "
            f"measurements; results {out}, cache {root}")
    deadline = None if deadline_minutes is None else t0 + 60 * deadline_minutes
    finished = True
    if missing or pending:
        try:
            _run_seeds(settings, results, root, stamped, stats, deadline)
        except DeadlineReached:
            finished = False
            stamped(f"deadline of {deadline_minutes:g} min reached: stopped before the next "
                    "training; run again to go on")
    results.write()
    finished = finished and not results.pending() and not results.missing()
    if png is not None:
        import compression_report

        compression_report.plot(results.doc, png)
    return Outcome(results.doc, stats["epochs_trained"], stats["records_added"],
                   stats["tflite_conversions"], root, finished, stats["trials_added"])


def _run_seeds(settings: dict, results: ReferenceResults, root: pathlib.Path,
               log: Callable[[str], None], stats: dict, deadline: float | None) -> None:
    """The reference (prepared once, its record), then every seed's runs."""
    data = load_reference_data(settings)
    seed0 = reference_training().RECIPE["seed"]
    maker = ReferenceRun(settings, seed0, data, root, results, log, stats, deadline)
    reference = maker.prepare_reference()
    info = reference.info(maker.scratch_epochs())
    old = results.doc.get("reference")
    if old and old.get("sha256") != info["sha256"]:
        raise SettingsMismatchError(
            f"{results.path} holds results made from another reference file than "
            f"{reference.path} (SHA-256 differs); results of different references are never "
            "mixed. Pass a new --out, or --restart to discard the old results.")
    results.doc["reference"] = info
    if results.reference_record() is None:
        maker.add(maker.reference_record())
    for methods in method_groups(settings):
        for seed in settings["seeds"]:
            ReferenceRun(settings, seed, data, root, results, log, stats, deadline,
                         reference).run(methods)
