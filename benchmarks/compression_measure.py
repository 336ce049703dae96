"""What both compression protocols share: data holder, training primitives, measuring.

:class:`RunBase` trains and measures the runs of one seed: a dataset with the
benchmark's augmentation, ``fit`` that honours the deadline, the fine-tuning
phase (fresh SGD, cosine to 0), and :meth:`RunBase.measure` / 
:meth:`RunBase.measure_tflite`, which make a run's record (test accuracy,
parameters, MACs, widths, ``.tflite`` sizes, int8 accuracy, latency against
the reference). Each protocol subclasses it: ``compression_runs.SeedRun``
(from_scratch) and ``compression_reference.ReferenceRun`` (from_reference);
a subclass supplies :meth:`RunBase.reference_final` (the unpruned model the
latency is compared with) and :meth:`RunBase.epoch_fields` (the record's
epoch budget).

Machines without TensorFlow: :meth:`RunBase.measure` saves the final model
under ``<seed dir>/final/`` and marks the record ``"tflite_pending"``;
:meth:`RunBase.complete_pending` fills the TFLite fields in later, where
TensorFlow is (see ``compression_runs.py``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable

import numpy as np

from common import machine_info, tensorflow_available
from compression_protocol import REFERENCE, Results


class DeadlineReached(Exception):
    """``--deadline_minutes`` passed: no new training started (everything so far is saved)."""


@dataclasses.dataclass
class Outcome:
    """What one call of ``run_benchmark`` did."""

    doc: dict
    epochs_trained: int
    records_added: int
    tflite_conversions: int
    work_dir: pathlib.Path
    finished: bool = True  # False: stopped at the deadline, or TFLite measurements pending
    trials_added: int = 0  # from_reference: tuning trials finished in this call


@dataclasses.dataclass
class Data:
    """Training, test (and validation) images of the settings, and the int8 calibration images."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    calibration: list[np.ndarray]
    x_val: np.ndarray | None = None  # from_reference: the validation hold-out
    y_val: np.ndarray | None = None


def loss():
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


class RunBase:
    """The runs of one seed: training primitives and measurements (subclassed per protocol)."""

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

    def fit(self, model, initial_epoch: int, epochs: int, callbacks: list | None = None) -> float:
        """Train from ``initial_epoch`` to ``epochs``; seconds taken (none after the deadline)."""
        start = time.perf_counter()
        if self.deadline is not None and start > self.deadline:
            raise DeadlineReached()
        model.fit(self.dataset(), initial_epoch=initial_epoch, epochs=epochs, verbose=0,
                  callbacks=callbacks)
        self.stats["epochs_trained"] += epochs - initial_epoch
        return time.perf_counter() - start

    def phase2(self, model, epochs: int) -> float:
        """Fine-tune / finish: fresh SGD, cosine from the fine-tune rate to 0."""
        import keras

        schedule = keras.optimizers.schedules.CosineDecay(
            self.s["finetune_learning_rate"], epochs * self.steps_per_epoch)
        model.compile(keras.optimizers.SGD(schedule, momentum=self.s["momentum"]),
                      loss=loss(), metrics=["accuracy"])
        return self.fit(model, 0, epochs)

    def build(self, widths) -> Any:
        """``fashion_vgg(widths)``, initialised from this seed."""
        import keras

        from tf_gamma_prune.reference_models import fashion_vgg

        keras.utils.set_random_seed(self.seed)
        return fashion_vgg(widths=list(widths))

    # --- what a protocol supplies ----------------------------------------------
    def reference_final(self) -> tuple[Any, float]:
        """The unpruned model latency is compared with, and its training seconds."""
        raise NotImplementedError

    def epoch_fields(self, method: str, target: int | None) -> dict[str, Any]:
        """The record's epoch budget, e.g. ``{"sparsify_epochs": S, "finetune_epochs": F}``."""
        raise NotImplementedError

    def reference_tflite(self) -> dict[str, bytes]:
        """The final reference's float32 and int8 ``.tflite`` (cached next to it)."""
        from tf_gamma_prune import to_tflite_variants

        if self._ref_tflite is None:
            paths = {"float": self.work / "reference.tflite",
                     "int8": self.work / "reference_int8.tflite"}
            if not all(p.exists() for p in paths.values()):
                model, _ = self.reference_final()
                to_tflite_variants(model, (None, "int8"), self.data.calibration,
                                   paths={None: paths["float"], "int8": paths["int8"]})
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
                               "left (every channel of some layer was removed); weaken the "
                               "sparsification (--rho_stages, --mac_targets).")
        widths = bn_widths(model)
        widths = {**{name: widths.get(name, 0) for name in bn_widths(self.build(s["widths"]))},
                  **widths}  # a BN whose channels all went is reported with width 0
        record = {
            "method": method, "target": target, "seed": self.seed,
            **self.epoch_fields(method, target),
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
        from tf_gamma_prune import benchmark_latency, compare_latency, model_cost, to_tflite_variants

        s, d = self.s, self.data
        mac_reduction = model_cost(self.build(s["widths"])).macs / model_cost(model).macs
        files = to_tflite_variants(model, (None, "int8"), d.calibration)  # one export, two files
        flt, int8 = files[None], files["int8"]
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
            # when: latency ratios move between machines (each session gets a new one, all "vm")
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
