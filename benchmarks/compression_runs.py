"""The compression benchmark's runs: data, training, pruning, measuring, the driver.

:func:`run_benchmark` runs (or resumes) every run of the protocol described in
``compression_protocol.py``, one :class:`SeedRun` per seed. Shared
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

import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Any, Callable

import numpy as np

from common import RESULTS, machine_info, tensorflow_available
from compression_protocol import REFERENCE, Results, planned_runs, settings_hash

DEFAULT_OUT = RESULTS / "compression.json"
DEFAULT_WORK_DIR = RESULTS / "compression_work"


class DeadlineReached(Exception):
    """``--deadline_minutes`` passed: no new training started (everything so far is saved)."""


# ----------------------------------------------------------------------------
# data and predictions
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """Training and test images of the settings, and the int8 calibration images."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    calibration: list[np.ndarray]


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


def _loss():
    """The training loss of every model: cross-entropy on logits."""
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def keras_predictions(model, x: np.ndarray) -> np.ndarray:
    """Top-1 predictions of a Keras classifier."""
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
    from tf_gamma_prune import layer_widths

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
        """Train from ``initial_epoch`` to ``epochs``; seconds taken (none after the deadline)."""
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
        """``fashion_vgg(widths)``, initialised from this seed."""
        import keras

        from tf_gamma_prune.reference_models import fashion_vgg

        keras.utils.set_random_seed(self.seed)
        return fashion_vgg(widths=list(widths))

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
        from tf_gamma_prune import to_tflite

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

        from tf_gamma_prune import model_cost

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
            "trained_with": machine_info("keras_backend", "machine", "cpu_count"),
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
        from tf_gamma_prune import benchmark_latency, compare_latency, model_cost, to_tflite

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
        """Save a finished run's record and log it."""
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
        """The record of a run that cannot be made (e.g. no selection matches the MACs)."""
        return {"method": method, "target": k, "seed": self.seed, "accuracy": None,
                "unreachable": reason, **(extra or {})}

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
