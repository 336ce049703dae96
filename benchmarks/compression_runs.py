"""The compression benchmark's from_scratch runs: data, training, pruning, the driver.

:func:`run_benchmark` runs (or resumes) every run of the from_scratch protocol
described in ``compression_protocol.py``, one :class:`SeedRun` per seed (and
hands from_reference settings to ``compression_reference.run_reference``).
Training primitives and measurements are shared with the other protocol:
``compression_measure.py``. Shared
intermediate models (phase-1 snapshots, the final reference) are cached as
``.keras`` under ``--work_dir/<settings hash>/`` (git-ignored); a rerun never
retrains a cached model (a sparsify run interrupted between snapshots restarts
from the last snapshot, with its optimizer state), and every finished record
is saved at once.

Machines without TensorFlow (the lent GPU machine has JAX, no TensorFlow):
with ``KERAS_BACKEND=jax`` every run is trained, pruned and measured in Keras
(accuracy, parameters, MACs, widths; the data pipeline is numpy's
:func:`tf_gamma_prune.data.array_batches` with the same augmentation), its final
model is saved under ``<cache>/seed<N>/final/`` and its record says
``"tflite_pending": true``. The same call later, on a machine with TensorFlow
and the cache folder copied back, trains nothing and fills in the TFLite
sizes, int8 accuracy and latencies (``tests/test_compression_without_
tensorflow.py`` runs exactly this with TensorFlow blocked).
``deadline_minutes`` starts no training after that long, so that a call fits a
device machine's time limit. The device machine's steps: ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable

import numpy as np

from common import RESULTS, tensorflow_available
from compression_measure import (  # noqa: F401  (DeadlineReached, Outcome: re-exported)
    Data, DeadlineReached, Outcome, RunBase, loss,
)
from compression_presets import FROM_REFERENCE
from compression_protocol import REFERENCE, Results, planned_runs, settings_hash

DEFAULT_OUT = RESULTS / "compression.json"
DEFAULT_WORK_DIR = RESULTS / "compression_work"


def load_data(settings: dict) -> Data:
    """Fashion-MNIST: a stratified training subset (seed 0) when ``train_examples`` is set."""
    from tf_gamma_prune.data import load_fashion_mnist, stratified_indices

    # $FASHION_MNIST_DIR, then Debian's location; tensorflow-datasets only where TF is.
    (x, y), (x_test, y_test) = load_fashion_mnist(use_tfds=tensorflow_available())
    if settings["train_examples"]:
        idx = stratified_indices(y, settings["train_examples"], seed=0)
        x, y = x[idx], y[idx]
    if settings["test_examples"]:
        x_test, y_test = x_test[: settings["test_examples"]], y_test[: settings["test_examples"]]
    order = np.random.default_rng(1).permutation(len(x))[: settings["calibration_examples"]]
    return Data(x, y, x_test, y_test, [x[i:i + 1] for i in order])


class SeedRun(RunBase):
    """Every from_scratch run of one seed; shared models are trained lazily and cached."""

    def epoch_fields(self, method: str, target: int | None) -> dict[str, Any]:
        """Target k: s_k phase-1 epochs, E − s_k fine-tune (the reference: S and E − S)."""
        s = self.s
        sparsify = s["stage_epochs"][target] if target is not None else s["sparsify_epochs"]
        return {"sparsify_epochs": sparsify, "finetune_epochs": s["epochs"] - sparsify}

    def phase1_optimizer(self, kind: str, model):
        """Phase 1's SGD: plain (reference), in GammaISTA, or in NetworkSlimming."""
        import keras

        from tf_gamma_prune import GammaISTA, gamma_penalties

        sgd = keras.optimizers.SGD(self.s["learning_rate"], momentum=self.s["momentum"])
        if kind == REFERENCE:
            return sgd
        if kind == "gamma_ista":
            penalties = gamma_penalties(model) if self.s["penalties"] == "paper" else None
            return GammaISTA(sgd, rho=self.s["rho_stages"][0], penalties=penalties)
        if kind == "slimming":
            from tf_gamma_prune import NetworkSlimming

            return NetworkSlimming(sgd, l1=self.s["slimming_l1"])
        raise ValueError(kind)

    # --- cached phase-1 runs -------------------------------------------------
    def snapshot_path(self, kind: str, k: int) -> pathlib.Path:
        """Where ``kind``'s phase-1 model after ``s_k`` epochs is cached."""
        return self.work / f"{kind}_epoch{self.s['stage_epochs'][k]}.keras"

    def _meta(self, path: pathlib.Path) -> dict:
        """The JSON next to a cached model (its training seconds), or ``{}``."""
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
        """Phase 1 of ``kind`` up to stage ``upto``, from the last cached snapshot; caches each."""
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
            model.compile(self.phase1_optimizer(kind, model), loss=loss(), metrics=["accuracy"])
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

    # --- the runs ------------------------------------------------------------
    def run(self) -> None:
        """Pending TFLite measurements first (where TF is), then every missing run."""
        if self.tflite:
            self.complete_pending()
        if not self.results.has(REFERENCE, None, self.seed):
            model, seconds = self.reference_final()
            self.add(self.measure(model, REFERENCE, None, seconds, 0.0))
        for k in range(len(self.s["stage_epochs"])):
            self.run_target(k)

    def run_target(self, k: int) -> None:
        """Target k: gamma_ista's k-th model, then the baselines matched to it."""
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
        """slimming / l1_norm pruned to gamma_ista's MACs (±tolerance), then fine-tuned."""
        from tf_gamma_prune import (
            TargetUnreachableError, gamma_threshold_selection, l1_norm_selection, prune_model,
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
        """The reference's snapshot, random channels removed down to ``widths``, fine-tuned."""
        from tf_gamma_prune import prune_model, random_selection

        snap, shared = self.snapshot(REFERENCE, k)
        selection = random_selection(snap, widths, seed=self.seed)
        pruned = prune_model(snap, selection, fold=self.s["fold"],
                                 carrier_tile=self.s["carrier_tile"])
        finetune = self.s["epochs"] - self.s["stage_epochs"][k]
        self.log(f"seed {self.seed}: random target {k}: fine-tune {finetune} epochs")
        seconds = self.phase2(pruned, finetune)
        self.add(self.measure(pruned, "random", k, seconds, shared))

    def run_scratch(self, k: int, widths: dict[str, int]) -> None:
        """A fresh ``fashion_vgg(widths)`` trained for the whole budget (s_k + E - s_k)."""
        s = self.s
        model = self.build([widths[f"bn{i + 1}"] for i in range(6)])
        model.compile(self.phase1_optimizer(REFERENCE, model), loss=loss(), metrics=["accuracy"])
        self.log(f"seed {self.seed}: scratch target {k}: {s['stage_epochs'][k]} + "
                 f"{s['epochs'] - s['stage_epochs'][k]} epochs")
        seconds = self.fit(model, 0, s["stage_epochs"][k])
        seconds += self.phase2(model, s["epochs"] - s["stage_epochs"][k])
        self.add(self.measure(model, "scratch", k, seconds, 0.0))


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------


def run_benchmark(settings: dict, out: str | os.PathLike = DEFAULT_OUT,
                  work_dir: str | os.PathLike = DEFAULT_WORK_DIR, restart: bool = False,
                  log: Callable[[str], None] = print, png: str | os.PathLike | None = None,
                  deadline_minutes: float | None = None) -> Outcome:
    """Run (or resume) the whole benchmark; returns the JSON document and counters.

        outcome = run_benchmark(make_settings("cpu_short"), "benchmarks/results/compression_cpu_short.json")

    from_reference settings (presets ``cpu``, ``smoke``) are run by
    ``compression_reference.run_reference`` (same arguments, same outcome).

    Without TensorFlow (Keras on JAX, e.g. the GPU machine) every run is trained
    and measured in Keras, its final model saved under the cache and its
    TFLite measurements left pending; a later call with the same settings on a
    machine with TensorFlow fills them in (``outcome.finished`` says whether
    anything is left). ``deadline_minutes``: start no training after this
    long (what is done stays saved; call again to go on).
    """
    if settings.get("protocol") == FROM_REFERENCE:
        from compression_reference import run_reference

        return run_reference(settings, out, work_dir, restart=restart, log=log, png=png,
                             deadline_minutes=deadline_minutes)
    results = Results(pathlib.Path(out), settings, restart=restart)
    work = pathlib.Path(work_dir) / settings_hash(settings)
    if restart and work.exists():
        shutil.rmtree(work)
    stats = {"epochs_trained": 0, "records_added": 0, "tflite_conversions": 0}
    t0 = time.perf_counter()

    def stamped(line: str) -> None:
        log(f"[{time.perf_counter() - t0:7.0f} s] {line}")

    planned = planned_runs(settings)
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
