"""benchmarks/compression.py where TensorFlow is missing (the GPU machine has JAX, no TF).

A subprocess blocks every ``import tensorflow`` (and tensorflow-datasets, LiteRT),
sets ``KERAS_BACKEND=jax`` and runs the tiny configuration of
``test_compression_benchmark``: every run is trained and measured in Keras, its
final model saved, its TFLite measurements left pending. This process (with
TensorFlow) then calls the benchmark again with the same settings: it trains
nothing and fills the TFLite fields in. Checked against independent
computations: each final model re-evaluated here under TensorFlow gives the
accuracy the JAX run recorded. About 1.5 minutes on 2 cores, so marked slow (the
deadline test, no training, stays in the default suite).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_compression_benchmark import TINY, compression, require_real_fashion_mnist

ROOT = pathlib.Path(__file__).resolve().parent.parent

TFLITE_FIELDS = ("tflite_float_bytes", "tflite_int8_bytes", "int8_accuracy", "latency_ms",
                 "speedup", "speedup_over_mac_reduction")

RUNNER = textwrap.dedent("""
    import importlib.abc, json, os, pathlib, sys

    BLOCKED = ("tensorflow", "tensorflow_datasets", "ai_edge_litert", "tf_keras")

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name}: blocked (a machine without TensorFlow)")
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, sys.argv[1])
    from test_compression_benchmark import TINY, compression

    out, work = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    settings = compression.make_settings("cpu_short", **TINY)
    outcome = compression.run_benchmark(settings, out, work, log=print)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("RESULT " + json.dumps({"finished": outcome.finished, "loaded": loaded,
                                  "epochs": outcome.epochs_trained,
                                  "work": str(outcome.work_dir)}))
""")


@pytest.fixture(scope="module")
def jax_then_tf(tmp_path_factory):
    pytest.importorskip("jax", reason="the JAX backend is what runs where TensorFlow is missing")
    pytest.importorskip("ai_edge_litert", reason="LiteRT interpreter needed for latency")
    require_real_fashion_mnist()
    tmp = tmp_path_factory.mktemp("no_tf")
    out, work = tmp / "results.json", tmp / "work"
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "tests"), str(out), str(work)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    jax_run = json.loads(line[len("RESULT "):])
    jax_doc = json.loads(out.read_text())

    settings = compression.make_settings("cpu_short", **TINY)
    completed = compression.run_benchmark(settings, out, work, log=lambda line: None)
    return dict(jax_run=jax_run, jax_doc=jax_doc, completed=completed, settings=settings)


@pytest.mark.slow  # the GPU machine's path, ≈ 1.5 min: docs/testing.md
def test_training_without_tensorflow_leaves_tflite_pending(jax_then_tf):
    run, doc = jax_then_tf["jax_run"], jax_then_tf["jax_doc"]
    assert run["loaded"] == []  # nothing of TensorFlow was imported
    assert run["finished"] is False and run["epochs"] > 0
    records = doc["records"]
    assert {r["method"] for r in records} == {"reference", *compression.METHODS}
    for r in records:
        assert r["tflite_pending"] is True
        assert r["trained_with"]["keras_backend"] == "jax"
        assert 0.0 <= r["accuracy"] <= 1.0
        assert not any(field in r for field in TFLITE_FIELDS)
        assert (pathlib.Path(run["work"]) / f"seed{r['seed']}" / "final"
                / f"{r['method']}_target{r['target']}.keras").is_file()
    assert doc["machine"]["tensorflow"] is None
    assert next(r for r in records if r["method"] == "reference")["accuracy"] > 0.2  # it learnt


@pytest.mark.slow  # the GPU machine's path, ≈ 1.5 min: docs/testing.md
def test_a_run_with_tensorflow_fills_in_the_pending_measurements(jax_then_tf):
    completed, jax_doc = jax_then_tf["completed"], jax_then_tf["jax_doc"]
    assert completed.finished is True
    assert completed.epochs_trained == 0 and completed.records_added == 0
    assert completed.tflite_conversions == 2 * len(jax_doc["records"])
    before = {compression.record_key(r): r for r in jax_doc["records"]}
    after = {compression.record_key(r): r for r in completed.doc["records"]}
    assert before.keys() == after.keys()
    for key, r in after.items():
        assert "tflite_pending" not in r
        for field in TFLITE_FIELDS:
            assert r[field] is not None, (key, field)
        for field in ("accuracy", "params", "macs", "widths", "trained_with"):
            assert r[field] == before[key][field]  # the Keras measurements are kept as trained
    assert completed.doc["summary"]["groups"][0]["speedup"] is not None


@pytest.mark.slow  # the GPU machine's path, ≈ 1.5 min: docs/testing.md
def test_models_trained_on_jax_give_the_same_accuracy_under_tensorflow(jax_then_tf):
    import keras

    completed, settings = jax_then_tf["completed"], jax_then_tf["settings"]
    data = compression.load_data(settings)
    for r in completed.doc["records"]:
        path = completed.work_dir / f"seed{r['seed']}" / "final" / f"{r['method']}_target{r['target']}.keras"
        model = keras.models.load_model(path, compile=False)
        logits = model.predict(data.x_test, batch_size=256, verbose=0)
        accuracy = float(np.mean(np.argmax(logits, axis=-1) == data.y_test))
        assert abs(accuracy - r["accuracy"]) <= 2 / len(data.y_test), r["method"]  # ≤ 2 near-ties


def test_deadline_stops_before_training_and_a_rerun_goes_on(tmp_path):
    require_real_fashion_mnist()
    settings = compression.make_settings("cpu_short", **TINY)
    outcome = compression.run_benchmark(settings, tmp_path / "r.json", tmp_path / "w",
                                        log=lambda line: None, deadline_minutes=0)
    assert outcome.finished is False
    assert outcome.epochs_trained == 0 and outcome.doc["records"] == []
    assert not list((tmp_path / "w").rglob("*.keras"))
