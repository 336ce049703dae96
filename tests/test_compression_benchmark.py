"""benchmarks/compression.py end to end on a tiny configuration, and its bookkeeping.

The end-to-end run (≈ 1 minute on 2 cores) trains every method on 1,000 real
Fashion-MNIST images with tiny widths, E = 2, one stage, one seed; the checks
compare its records with independent computations (model_cost of a freshly built
network, a re-evaluation of the cached reference, the gamma_ista widths).
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def _load_module():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("compression_bench", BENCHMARKS / "compression.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


compression = _load_module()

TINY = dict(train_examples=1000, test_examples=500, widths=[8, 8, 16, 16, 16, 16], epochs=2,
            sparsify_epochs=1, rho_stages=[0.9], seeds=[0], batch_size=50, latency_runs=3,
            latency_warmup=1, tflite_eval_examples=50, calibration_examples=10)


def require_real_fashion_mnist() -> None:
    """Skip unless Debian's dataset-fashion-mnist (or $FASHION_MNIST_DIR) is there."""
    from tf_gamma_prune.data import DatasetNotFoundError, load_fashion_mnist

    try:
        load_fashion_mnist(use_tfds=False)
    except DatasetNotFoundError:
        pytest.skip("real Fashion-MNIST not installed (dataset-fashion-mnist)")


def _cache_files(work: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in sorted(work.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("ai_edge_litert", reason="LiteRT interpreter needed for latency")
    require_real_fashion_mnist()
    tmp = tmp_path_factory.mktemp("compression")
    settings = compression.make_settings("cpu_short", **TINY)
    out, work_dir = tmp / "results.json", tmp / "work"
    first = compression.run_benchmark(settings, out, work_dir, log=lambda line: None,
                                      png=tmp / "results.png")
    text, files = out.read_text(), _cache_files(first.work_dir)
    second = compression.run_benchmark(settings, out, work_dir, log=lambda line: None)
    return dict(settings=settings, out=out, work_dir=work_dir, first=first, second=second,
                text_after_first=text, files_after_first=files, png=tmp / "results.png")


def _records(doc) -> dict[str, dict]:
    return {r["method"]: r for r in doc["records"]}


def test_every_method_has_a_sane_record(tiny_run):
    doc = json.loads(tiny_run["out"].read_text())
    records = _records(doc)
    assert sorted(records) == sorted(["reference", *compression.METHODS])
    assert len(doc["records"]) == 6
    for r in doc["records"]:
        if r.get("accuracy") is None:  # only a matched baseline may be unreachable
            assert r["method"] in ("slimming", "l1_norm") and r["unreachable"]
            continue
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["int8_accuracy"] <= 1.0
        assert 0.0 <= r["int8_agreement"] <= 1.0 and r["int8_eval_examples"] == 50
        assert 0 < r["tflite_int8_bytes"] < r["tflite_float_bytes"]
        assert r["latency_ms"] > 0 and r["reference_latency_ms"] > 0 and r["speedup"] > 0
        assert r["speedup_over_mac_reduction"] == pytest.approx(r["speedup"] / r["mac_reduction"])
        measured = datetime.datetime.strptime(r["measured_at"], "%Y-%m-%dT%H:%M:%SZ")
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        assert abs(now - measured) < datetime.timedelta(hours=2)  # when it was timed
        assert sorted(r["widths"]) == [f"bn{i}" for i in range(1, 7)]
        assert r["sparsify_epochs"] + r["finetune_epochs"] == 2
    # the reference learned something (chance is 0.1)
    assert records["reference"]["accuracy"] > 0.2


def test_costs_match_independent_counts(tiny_run):
    from tf_gamma_prune.analysis.flops import model_cost
    from tf_gamma_prune.reference_models import fashion_vgg

    records = _records(json.loads(tiny_run["out"].read_text()))
    reference = model_cost(fashion_vgg(widths=TINY["widths"]))
    assert records["reference"]["macs"] == reference.macs
    assert records["reference"]["params"] == reference.params
    gamma = records["gamma_ista"]
    assert gamma["macs"] < reference.macs, "the tiny GammaISTA run removed nothing"
    assert gamma["mac_reduction"] == pytest.approx(reference.macs / gamma["macs"])
    # random pruning and scratch training use exactly GammaISTA's widths
    for method in ("random", "scratch"):
        assert records[method]["widths"] == gamma["widths"]
        assert records[method]["macs"] == gamma["macs"]
    scratch = model_cost(fashion_vgg(widths=[gamma["widths"][f"bn{i}"] for i in range(1, 7)]))
    assert records["scratch"]["params"] == scratch.params
    assert records["scratch"]["macs"] == scratch.macs
    # matched baselines: within ±5% of GammaISTA's MACs, or an explicit unreachable record
    for method in ("slimming", "l1_norm"):
        r = records[method]
        assert r["macs_target"] == gamma["macs"]
        if r.get("accuracy") is None:
            assert abs(r["closest_macs"] - gamma["macs"]) > 0.05 * gamma["macs"]
        else:
            assert abs(r["macs"] - gamma["macs"]) <= 0.05 * gamma["macs"]
            assert r["macs_relative_difference"] == pytest.approx(
                (r["macs"] - gamma["macs"]) / gamma["macs"])


def test_reference_accuracy_is_the_cached_models(tiny_run):
    import keras

    from tf_gamma_prune.data import load_fashion_mnist

    _, (x_test, y_test) = load_fashion_mnist(use_tfds=False)
    model = keras.models.load_model(tiny_run["first"].work_dir / "seed0" / "reference_final.keras",
                                    compile=False)
    logits = model.predict(x_test[:500], verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y_test[:500]))
    assert _records(tiny_run["first"].doc)["reference"]["accuracy"] == pytest.approx(accuracy)


def test_summary_and_plot_written(tiny_run):
    doc = json.loads(tiny_run["out"].read_text())
    groups = {(g["method"], g["target"]): g for g in doc["summary"]["groups"]}
    assert groups[("reference", None)]["n"] == 1
    assert groups[("gamma_ista", 0)]["accuracy"] == _records(doc)["gamma_ista"]["accuracy"]
    assert [t["name"] for t in doc["summary"]["targets"]] == [
        "compression_accuracy", "beats_baselines", "latency_follows_macs", "small_and_accurate"]
    assert doc["settings"] == tiny_run["settings"]
    assert tiny_run["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_trains_nothing_and_changes_nothing(tiny_run):
    first, second = tiny_run["first"], tiny_run["second"]
    assert first.epochs_trained > 0 and first.records_added == 6
    assert second.epochs_trained == 0
    assert second.records_added == 0 and second.tflite_conversions == 0
    after = json.loads(tiny_run["out"].read_text())
    assert after["records"] == json.loads(tiny_run["text_after_first"])["records"]
    assert _cache_files(second.work_dir) == tiny_run["files_after_first"]


def test_other_settings_are_refused(tiny_run):
    before = tiny_run["out"].read_text()
    other = compression.make_settings("cpu_short", **{**TINY, "epochs": 3})
    with pytest.raises(compression.SettingsMismatchError, match=r"--out.*--restart|epochs"):
        compression.run_benchmark(other, tiny_run["out"], tiny_run["work_dir"],
                                  log=lambda line: None)
    assert tiny_run["out"].read_text() == before


@pytest.mark.slow
def test_a_lost_record_is_redone_from_the_cache(tiny_run, tmp_path):
    """Only the missing run is redone; the shared snapshot comes from the cache."""
    doc = json.loads(tiny_run["out"].read_text())
    out = tmp_path / "partial.json"
    doc["records"] = [r for r in doc["records"] if r["method"] != "random"]
    out.write_text(json.dumps(doc))
    outcome = compression.run_benchmark(tiny_run["settings"], out, tiny_run["work_dir"],
                                        log=lambda line: None)
    assert outcome.records_added == 1
    assert outcome.epochs_trained == 1  # the fine-tune only (E - s_1), no phase-1 retraining
    redone = _records(outcome.doc)["random"]
    assert redone["widths"] == _records(json.loads(tiny_run["text_after_first"]))["random"]["widths"]


# --- fast checks, no training ------------------------------------------------------


def test_settings_validation():
    s = compression.make_settings("cpu_short")
    assert s["stage_epochs"] == [2, 3] and s["fold"] in ("carrier", "exact")
    assert compression.make_settings("gpu")["stage_epochs"] == [8, 16, 24]
    with pytest.raises(compression.SettingsError, match="sparsify_epochs"):
        compression.make_settings("cpu_short", epochs=3, sparsify_epochs=3)
    with pytest.raises(compression.SettingsError, match="stage_epochs"):
        compression.make_settings("cpu_short", stage_epochs=[2, 2])
    with pytest.raises(compression.SettingsError, match="Unknown settings"):
        compression.make_settings("cpu_short", epoch=3)
    assert compression.settings_hash(s) == compression.settings_hash(json.loads(json.dumps(s)))
    assert compression.settings_hash(s) != compression.settings_hash({**s, "seeds": [0]})


def test_stratified_subset_balances_classes():
    y = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]
    idx = compression.stratified_subset(y, 205)
    counts = np.bincount(y[idx], minlength=10)
    assert len(set(idx.tolist())) == 205 and counts.max() - counts.min() <= 1


def _record(method, target, seed, accuracy, macs, params, speedup=2.0, ref_macs=1000,
            ref_params=500):
    return {"method": method, "target": target, "seed": seed, "accuracy": accuracy,
            "macs": macs, "params": params, "mac_reduction": ref_macs / macs,
            "param_reduction": ref_params / params, "speedup": speedup,
            "speedup_over_mac_reduction": speedup / (ref_macs / macs)}


def test_summary_and_targets_on_synthetic_records():
    records = [
        _record("reference", None, 0, 0.900, 1000, 500, speedup=1.0),
        _record("reference", None, 1, 0.910, 1000, 500, speedup=1.0),
        _record("gamma_ista", 0, 0, 0.904, 300, 90, speedup=2.7),
        _record("gamma_ista", 0, 1, 0.900, 300, 90, speedup=2.5),
        _record("slimming", 0, 0, 0.890, 310, 95),
        _record("slimming", 0, 1, 0.896, 310, 95),
        _record("l1_norm", 0, 0, 0.899, 290, 92),
        {"method": "l1_norm", "target": 0, "seed": 1, "accuracy": None,
         "unreachable": "closest 400"},
    ]
    doc = {"settings": {"match_tolerance": 0.05}, "records": records}
    summary = compression.summarize(doc)
    groups = {(g["method"], g["target"]): g for g in summary["groups"]}
    g = groups[("gamma_ista", 0)]
    assert g["n"] == 2 and g["accuracy"] == pytest.approx(np.mean([0.904, 0.900]))
    assert g["accuracy_std"] == pytest.approx(np.std([0.904, 0.900], ddof=1))
    assert groups[("l1_norm", 0)]["n"] == 1 and groups[("l1_norm", 0)]["unreachable"] == 1
    targets = {t["name"]: t for t in summary["targets"]}
    # (1) 3.33x fewer MACs, 5.56x fewer params, drop 0.905 - 0.902 = 0.3 point
    assert targets["compression_accuracy"]["value"] == pytest.approx(0.3)
    assert targets["compression_accuracy"]["met"]
    # (2) vs slimming +0.9, vs l1_norm +0.3 -> smallest 0.3, just met
    assert targets["beats_baselines"]["value"] == pytest.approx(0.3)
    # (3) speed-up 2.6 / MAC reduction 3.33 = 0.78 -> not met, margin -0.02
    assert targets["latency_follows_macs"]["value"] == pytest.approx(2.6 / (1000 / 300))
    assert not targets["latency_follows_macs"]["met"]
    assert targets["latency_follows_macs"]["margin"] == pytest.approx(2.6 * 0.3 - 0.8)
    # (4) all pruned models are tiny here; best is 0.902 < 0.93
    assert targets["small_and_accurate"]["value"] == pytest.approx(0.902)
    assert targets["small_and_accurate"]["margin"] == pytest.approx(0.902 - 0.93)


def test_target_one_reports_the_shortfall_when_not_compressed_enough():
    records = [_record("reference", None, 0, 0.9, 1000, 500, speedup=1.0),
               _record("gamma_ista", 0, 0, 0.9, 500, 200)]
    targets = compression.summarize({"settings": {"match_tolerance": 0.05},
                                     "records": records})["targets"]
    first = targets[0]
    assert first["value"] is None and not first["met"]
    assert first["compression_shortfall"] == {"mac_reduction": 2.0, "param_reduction": 2.5}
