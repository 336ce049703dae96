"""The from_reference compression protocol: the smoke preset end to end, verdicts, settings.

The end-to-end run (``--preset smoke``: a reference trained here for 3 epochs
on 1,000 images, 1 + 1 epochs after it, two MAC targets, two seeds, two tuning
trials per pruning method and one of the seed papers' criteria, PruneNet: the
three share the benchmark's ``_train_criterion`` and each is tested on its own;
≈ 3 minutes on 2 cores) checks the JSON's invariants against independent computations; a second
call must train nothing. The seed papers' training-time sparsifiers (the
preset's ``training_methods``) are added to a copy of that run by the slow
``smoke_training`` continuation (≈ 2 more minutes), which also checks that
adding them keeps every earlier record. The verdict code
is checked on hand-made records, and the continuation of a results file made
before the training methods on a copy of the committed ``compression.json``.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import types

import pytest

from test_compression_benchmark import _cache_files, compression, require_real_fashion_mnist

import compression_reference_protocol as protocol  # noqa: E402  (benchmarks/ is on sys.path)
from compression_presets import FINETUNE_ONLY, TUNED_LIKE  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# the criteria rows of the end-to-end run: one (the one with calibration data) of the preset's three
SMOKE_CRITERIA = ["prunenet"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("ai_edge_litert", reason="LiteRT interpreter needed for latency")
    require_real_fashion_mnist()
    tmp = tmp_path_factory.mktemp("smoke")
    # the training rows (two sparsifiers x 2 targets x 2 seeds) are the slow continuation below
    settings = compression.make_settings("smoke", training_methods=[], criteria_methods=SMOKE_CRITERIA)
    out, work_dir = tmp / "smoke.json", tmp / "work"
    first = compression.run_benchmark(settings, out, work_dir, log=lambda line: None,
                                      png=tmp / "smoke.png")
    text, files = out.read_text(), _cache_files(first.work_dir)
    second = compression.run_benchmark(settings, out, work_dir, log=lambda line: None)
    return dict(settings=settings, out=out, first=first, second=second, text=text, files=files,
                png=tmp / "smoke.png", work_dir=work_dir)


@pytest.fixture(scope="module")
def smoke_training(smoke, tmp_path_factory):
    """A copy of the smoke run continued with the preset's training methods (additive rows)."""
    tmp = tmp_path_factory.mktemp("smoke_training")
    out, work_dir = tmp / "smoke.json", tmp / "work"
    shutil.copy(smoke["out"], out)
    shutil.copytree(smoke["work_dir"], work_dir)
    settings = compression.make_settings("smoke", criteria_methods=SMOKE_CRITERIA)
    outcome = compression.run_benchmark(settings, out, work_dir, log=lambda line: None)
    return dict(settings=settings, out=out, outcome=outcome, before=json.loads(smoke["text"]))


def _by_key(doc) -> dict[tuple, dict]:
    return {(r["method"], r["target"], r["seed"]): r for r in doc["records"]}


def test_every_method_target_and_seed_has_a_record(smoke):
    s = smoke["settings"]
    assert s["criteria_methods"], "the smoke run covers the seed papers' criteria too"
    assert s["training_methods"] == []  # they are the slow continuation's
    expected = _check_records(json.loads(smoke["out"].read_text()), s)
    assert smoke["first"].finished and smoke["first"].records_added == expected + 1


@pytest.mark.slow
def test_training_rows_continue_the_smoke_run(smoke_training):
    s, outcome, before = smoke_training["settings"], smoke_training["outcome"], smoke_training["before"]
    assert s["training_methods"] == list(protocol.TRAINING_METHODS)
    doc = json.loads(smoke_training["out"].read_text())
    _check_records(doc, s)
    added = len(s["training_methods"]) * len(s["mac_targets"]) * len(s["seeds"])
    assert outcome.finished and outcome.records_added == added and outcome.epochs_trained > 0
    assert doc["records"][:len(before["records"])] == before["records"]  # nothing redone
    assert doc["tuning"] == before["tuning"]  # the training rows have no trials of their own
    assert doc["settings_extended"] == [{"training_methods_added": s["training_methods"],
                                         "records_before": len(before["records"])}]
    _check_budgets(doc, s)


def _check_records(doc: dict, s: dict) -> int:
    """Every (method, target, seed) of ``s`` has one sane record; returns their count."""
    records = _by_key(doc)
    methods = (*compression.METHODS, *s["criteria_methods"], *s["training_methods"])
    expected = {(m, k, seed) for seed in s["seeds"] for k in range(len(s["mac_targets"]))
                for m in methods}
    references = [key for key in records if key[0] == "reference"]
    assert references == [("reference", None, 0)]  # one shared reference, its own seed
    assert set(records) - set(references) == expected and len(doc["records"]) == len(records)
    for r in doc["records"]:
        if r.get("accuracy") is None:  # only what depends on a match may be unreachable
            assert r["method"] not in ("reference", "gamma_ista") and r["unreachable"]
            continue
        if r["method"] in (*s["criteria_methods"], *s["training_methods"]):
            tuned = TUNED_LIKE.get(r["method"], "l1_norm")  # l1_norm's tuned fine-tuning
            assert r["overrides"] == records[(tuned, r["target"], r["seed"])].get("overrides", {})
        if r["method"] in s["criteria_methods"]:  # same budget, all of it fine-tuning
            assert (r["sparsify_epochs"], r["finetune_epochs"]) == (
                0, s["sparsify_epochs"] + s["finetune_epochs"])
        if r["method"] in FINETUNE_ONLY:  # like l1_norm: all of it fine-tuning
            assert (r["sparsify_epochs"], r["finetune_epochs"]) == (
                0, s["sparsify_epochs"] + s["finetune_epochs"])
        elif r["method"] in s["training_methods"]:  # shaped like slimming
            assert (r["sparsify_epochs"], r["finetune_epochs"]) == (
                s["sparsify_epochs"], s["finetune_epochs"])
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["validation_accuracy"] <= 1.0
        assert 0 < r["tflite_int8_bytes"] < r["tflite_float_bytes"] and r["speedup"] > 0
        assert r["measure_seconds"] > 0 and r["train_seconds"] > 0
    assert records[("reference", None, 0)]["accuracy"] > 0.2  # the reference learnt something
    assert doc["reference"]["source"].startswith("trained here")
    return len(expected)


def test_budgets_epochs_and_matching(smoke):
    _check_budgets(json.loads(smoke["out"].read_text()), smoke["settings"])


def _check_budgets(doc: dict, s: dict) -> None:
    """Budgets, epoch splits and MAC matching of every record against ``s``."""
    from tf_gamma_prune import model_cost
    from tf_gamma_prune.reference_models import fashion_vgg

    ref_macs = model_cost(fashion_vgg(widths=s["widths"])).macs
    budget = s["sparsify_epochs"] + s["finetune_epochs"]
    for (method, k, seed), r in _by_key(doc).items():
        if method == "reference" or r.get("accuracy") is None:
            continue
        gamma = _by_key(doc)[("gamma_ista", k, seed)]
        assert r["mac_target"] == s["mac_targets"][k]
        if method in ("gamma_ista", *TUNED_LIKE):  # its own budget
            assert r["macs_budget"] == round(ref_macs / s["mac_targets"][k])
            assert r["macs_relative_difference"] == pytest.approx(
                (r["macs"] - r["macs_budget"]) / r["macs_budget"])
            if method in FINETUNE_ONLY:  # the tiled l1_norm: its cut meets the budget
                assert abs(r["macs_relative_difference"]) <= s["match_tolerance"]
            else:
                assert len(r["cost_target"]["history"]) <= 50
        elif method in ("slimming", "l1_norm", *s["criteria_methods"],
                        *s["training_methods"]):  # matched MACs
            assert r["macs_target"] == gamma["macs"]
            assert abs(r["macs"] - gamma["macs"]) <= s["match_tolerance"] * gamma["macs"]
        else:  # random and scratch: exactly gamma_ista's widths
            assert r["widths"] == gamma["widths"] and r["macs"] == gamma["macs"]
        if method == "scratch":
            assert r["scratch_epochs"] == s["reference_epochs"]  # the reference's epoch count
        else:
            assert r["sparsify_epochs"] + r["finetune_epochs"] == budget


@pytest.mark.slow
def test_training_rows_record_their_sparsify_phase(smoke_training):
    doc = json.loads(smoke_training["out"].read_text())
    rows = [r for r in doc["records"] if r["method"] in protocol.TRAINING_METHODS
            and r.get("accuracy") is not None]
    assert {r["method"] for r in rows} == set(protocol.TRAINING_METHODS)
    s = smoke_training["settings"]
    for r in rows:
        if r["method"] in TUNED_LIKE:  # every width a multiple of the tile
            assert all(w % s["tile_round_to"] == 0 for w in r["widths"].values()), r["widths"]
            if r["method"] == "gamma_ista_tiled":
                assert r["cost_target"]["history"][-1]["rho"] == pytest.approx(1e-6)  # held
            continue
        info = r[r["method"]]
        assert len(json.dumps(info)) < 600  # a few numbers, no arrays
        for key in ("validation_accuracy_sparsified", "validation_accuracy_pruned"):
            assert 0.0 <= info[key] <= 1.0
        if r["method"] == "receding_importance":
            # it starts at the reference's γ scaled to <= rni_start_scale: nothing near 1
            assert info["start_above_0_9"] == 0.0
            assert 0.0 < info["start_median"] <= s["rni_start_scale"] + 1e-6
            for key in ("start_below_0_1", "below_0_1", "above_0_9", "median"):
                assert 0.0 <= info[key] <= 1.0
            assert 0 <= info["layers_receded"] <= 6
        elif r["method"] == "coarse_ranking":  # every step of the S epochs was ranked
            steps = s["sparsify_epochs"] * -(-s["train_examples"] // s["batch_size"])
            assert info["batches"] == steps
        else:  # ADMM: admm_updates updates over the phase, ρ grew at each
            steps = s["sparsify_epochs"] * -(-s["train_examples"] // s["batch_size"])
            assert info["update_every"] == max(1, round(steps / s["admm_updates"]))
            assert info["updates"] == steps // info["update_every"]
            assert info["final_rho"] == pytest.approx(
                s["admm_rho"] * s["admm_rho_growth"] ** info["updates"], rel=1e-5)
            for what in ("filter", "gamma"):  # 1 epoch of 20 steps: far from 0 in the smoke run
                assert 0.0 < info[f"pruned_{what}_norm_ratio_median"] \
                    <= info[f"pruned_{what}_norm_ratio_max"]


def test_tuning_uses_validation_only_and_equal_effort(smoke):
    doc, s = json.loads(smoke["out"].read_text()), smoke["settings"]
    trials = doc["tuning"]["trials"]
    counts = {}
    for t in trials:
        assert t["seed"] == s["seeds"][0]
        assert "accuracy" not in t and "test_accuracy" not in t  # never the test set
        assert t["validation_accuracy"] is None or 0.0 <= t["validation_accuracy"] <= 1.0
        assert t["seconds"] >= 0 and t["overrides"] == s["tuning"][t["method"]][t["trial"]]
        counts.setdefault(t["method"], set()).add((t["target"], t["trial"]))
    n_targets = len(s["mac_targets"])
    assert {m: len(v) for m, v in counts.items()} == {
        m: n_targets * len(s["tuning"][m]) for m in protocol.PRUNING_METHODS}
    # the first seed's record is the best trial's model; later seeds use its overrides
    for (method, k, seed), r in _by_key(doc).items():
        if method not in protocol.PRUNING_METHODS or r.get("accuracy") is None:
            continue
        best = protocol.chosen_trial(doc, method, k)
        reachable = [t for t in trials if (t["method"], t["target"]) == (method, k)
                     and t["validation_accuracy"] is not None]
        if method == "gamma_ista":  # only trials closest to / within the MAC budget compete
            budget = doc["records"][0]["macs"] / s["mac_targets"][k]
            errors = [abs(t["macs"] - budget) / budget for t in reachable]
            limit = max(s["match_tolerance"], min(errors))
            reachable = [t for t, e in zip(reachable, errors) if e <= limit]
        assert best["validation_accuracy"] == max(t["validation_accuracy"] for t in reachable)
        assert r["overrides"] == best["overrides"] and r["tuning_trial"] == best["trial"]
        if seed == s["seeds"][0]:
            assert r["from_trial"] == best["trial"]
            assert r["validation_accuracy"] == pytest.approx(best["validation_accuracy"])
            assert r["macs"] == best["macs"]
    assert {(c["method"], c["target"]) for c in doc["summary"]["tuning"]} <= {
        (t["method"], t["target"]) for t in trials}


def test_rerun_trains_nothing_and_changes_nothing(smoke):
    second = smoke["second"]
    assert smoke["first"].epochs_trained > 0 and smoke["first"].trials_added > 0
    assert second.epochs_trained == 0 and second.records_added == 0
    assert second.trials_added == 0 and second.tflite_conversions == 0 and second.finished
    before, after = json.loads(smoke["text"]), json.loads(smoke["out"].read_text())
    assert after["records"] == before["records"] and after["tuning"] == before["tuning"]
    assert _cache_files(second.work_dir) == smoke["files"]


def _without_last_record(smoke, path: pathlib.Path, **changes) -> dict:
    doc = json.loads(smoke["text"])
    lost = doc["records"].pop()
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return lost


def test_a_lost_record_is_measured_again_from_the_cache(smoke, tmp_path):
    out = tmp_path / "partial.json"
    lost = _without_last_record(smoke, out)
    outcome = compression.run_benchmark(smoke["settings"], out, smoke["work_dir"],
                                        log=lambda line: None)
    assert outcome.records_added == 1 and outcome.epochs_trained == 0 and outcome.finished
    again = _by_key(outcome.doc)[(lost["method"], lost["target"], lost["seed"])]
    # the last record is a criteria row's, which may be an unreachable one (accuracy None, no "macs",
    # the reason and the closest MACs instead)
    for key in ("accuracy", "macs", "params", "unreachable", "closest_macs"):
        assert again.get(key) == lost.get(key), key
    assert lost["accuracy"] is not None or lost["unreachable"]


def test_remeasure_drops_named_records_and_measures_them_again_without_training(smoke, tmp_path):
    out = tmp_path / "remeasure.json"
    out.write_text(smoke["text"])
    doc = json.loads(smoke["text"])
    first = next(r for r in doc["records"] if r["method"] == "l1_norm" and r.get("accuracy"))
    key = f"l1_norm:{first['target']}:{first['seed']}"
    with pytest.raises(compression.SettingsError, match="no such record"):
        compression.drop_records(out, [key, "l1_norm:9:0"])
    assert out.read_text() == smoke["text"]  # nothing dropped when one key is wrong
    (dropped,) = compression.drop_records(out, [key])
    assert dropped == first and len(json.loads(out.read_text())["records"]) == len(doc["records"]) - 1
    outcome = compression.run_benchmark(smoke["settings"], out, smoke["work_dir"],
                                        log=lambda line: None)
    assert outcome.records_added == 1 and outcome.epochs_trained == 0 and outcome.finished
    again = _by_key(outcome.doc)[(first["method"], first["target"], first["seed"])]
    for field in ("accuracy", "macs", "params", "widths", "train_seconds"):
        assert again[field] == first[field], field
    assert again["speedup"] > 0 and again["latency_ms"] > 0  # timed anew


def test_results_of_another_reference_are_refused(smoke, tmp_path):
    out = tmp_path / "other.json"
    doc = json.loads(smoke["text"])
    _without_last_record(smoke, out, reference={**doc["reference"], "sha256": "0" * 64})
    before = out.read_text()
    with pytest.raises(compression.SettingsMismatchError, match="another reference"):
        compression.run_benchmark(smoke["settings"], out, smoke["work_dir"],
                                  log=lambda line: None)
    assert out.read_text() == before


def test_summary_report_and_plot(smoke):
    import compression_report as report

    doc = json.loads(smoke["out"].read_text())
    assert compression.summarize(doc) == doc["summary"]
    assert [t["name"] for t in doc["summary"]["targets"]] == [
        "compression_accuracy", "beats_baselines", "latency_follows_macs", "small_and_accurate"]
    text = report.markdown(doc)
    assert "--preset smoke" in text and "(chosen)" in text and "validation accuracy" in text
    assert smoke["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deadline_stops_before_training(tmp_path):
    require_real_fashion_mnist()
    settings = compression.make_settings("smoke")
    outcome = compression.run_benchmark(settings, tmp_path / "r.json", tmp_path / "w",
                                        log=lambda line: None, deadline_minutes=0)
    assert outcome.finished is False and outcome.epochs_trained == 0
    assert outcome.doc["records"] == [] and not list((tmp_path / "w").rglob("*.keras"))


# --- settings and verdicts, no training ---------------------------------------------


def test_presets_and_settings_checks():
    cpu = compression.make_settings("cpu")
    assert cpu["protocol"] == "from_reference" and cpu["train_examples"] == 0
    assert cpu["mac_targets"] == [3.0, 6.0] and cpu["seeds"] == [0, 1]
    assert (cpu["sparsify_epochs"], cpu["finetune_epochs"]) == (2, 3)
    assert cpu["reference"] == "saved_models/fashion_vgg_reference.keras"
    long = compression.make_settings("cpu_long")
    assert (long["sparsify_epochs"], long["finetune_epochs"]) == (2, 10)
    assert {m: len(t) for m, t in long["tuning"].items()} == {
        "gamma_ista": 1, "slimming": 1, "l1_norm": 1, "random": 1, "scratch": 0}
    assert compression.settings_hash(long) != compression.settings_hash(cpu)  # its own cache
    assert compression.make_settings("smoke")["reference"] is None
    assert compression.make_settings("cpu_short")["protocol"] == "from_scratch"
    assert compression.settings_hash(compression.make_settings("gpu")) == "e58b4d0dc110"
    with pytest.raises(compression.SettingsError, match="same number of trials"):
        compression.make_settings("cpu", tuning={"gamma_ista": [{}, {}], "slimming": [{}]})
    with pytest.raises(compression.SettingsError, match="tunable"):
        compression.make_settings("cpu", tuning={m: [{"seeds": [3]}] for m in
                                                 protocol.PRUNING_METHODS})
    with pytest.raises(compression.SettingsError, match="exactly one reference"):
        compression.make_settings("cpu", reference_epochs=3)
    with pytest.raises(compression.SettingsError, match="mac_targets"):
        compression.make_settings("cpu", mac_targets=[0.5])
    with pytest.raises(compression.SettingsError, match="Unknown settings"):
        compression.make_settings("cpu", rho_stages=[0.1])


def test_results_before_the_training_methods_are_continued(tmp_path):
    """A copy of the committed compression.json as written before ``training_methods``
    existed (today's cpu settings) is accepted with the cpu preset, which lists them: its
    records are kept, the missing rows are the rest plus every training row, and the
    settings hash (the cache folder) is the same."""
    from compression_presets import ADDITIVE_SETTINGS

    doc = json.loads((ROOT / "benchmarks/results/compression.json").read_text())
    doc["settings"] = {k: v for k, v in doc["settings"].items() if k not in ADDITIVE_SETTINGS}
    doc["records"] = [r for r in doc["records"] if r["method"] not in protocol.TRAINING_METHODS]
    doc.pop("settings_extended", None)  # the committed file was continued so already
    path = tmp_path / "compression.json"
    path.write_text(json.dumps(doc))
    cpu = compression.make_settings("cpu")
    assert cpu["training_methods"] == ["receding_importance", "admm", "coarse_ranking",
                                       "gamma_ista_tiled", "l1_norm_tiled"]
    assert compression.settings_hash(doc["settings"]) == compression.settings_hash(cpu) \
        == "449185f106f0"  # the folder the background run caches its models in

    results = protocol.ReferenceResults(path, cpu)
    assert results.doc["settings"] == cpu and results.doc["records"] == doc["records"]
    assert results.doc["settings_extended"] == [
        {"training_methods_added": cpu["training_methods"], "records_before": len(doc["records"])}]
    missing = results.missing()
    done = {compression.record_key(r) for r in doc["records"]}
    assert done and not done & set(missing)
    training = {(m, k, seed) for m in cpu["training_methods"] for seed in cpu["seeds"]
                for k in range(len(cpu["mac_targets"]))}
    assert training <= set(missing) and missing[-len(training):] == [  # the last rows to run
        key for key in protocol.expected_keys(cpu) if key[0] in protocol.TRAINING_METHODS]
    assert set(missing) == set(protocol.expected_keys(cpu)) - done  # the reference's is done

    # one method listed already: another appended goes on; its knobs must not have changed
    first = {**cpu, "training_methods": ["receding_importance"]}
    assert protocol.continued_settings(first, cpu) == cpu
    for other in ({**first, "rni_strength": 0.1}, {**first, "seeds": [0]},
                  {**cpu, "training_methods": ["admm"]}):
        assert protocol.continued_settings(other, cpu) is other
        path.write_text(json.dumps({**doc, "settings": other}))
        with pytest.raises(compression.SettingsMismatchError):
            protocol.ReferenceResults(path, cpu)
    changed_admm = {**first, "admm_rho": 9.0}  # not yet listed: its knobs are free to change
    assert protocol.continued_settings(changed_admm, cpu) == cpu
    with pytest.raises(compression.SettingsError, match="training_methods"):
        compression.make_settings("cpu", training_methods=["admm", "admm"])
    with pytest.raises(compression.SettingsError, match="admm_rho"):
        compression.make_settings("cpu", admm_rho_growth=0.5)


def test_old_results_read_as_cpu_short():
    from compression_presets import migrate_settings

    committed = json.loads((ROOT / "benchmarks/results/compression_cpu_short.json").read_text())
    assert "protocol" not in committed["settings"] and committed["settings"]["preset"] == "cpu"
    migrated = migrate_settings(committed["settings"])
    assert migrated == compression.make_settings("cpu_short")
    assert migrate_settings(migrated) == migrated


def _rec(method, target, seed, accuracy, macs, params, speedup=3.0, ref_macs=1200, ref_params=600):
    return {"method": method, "target": target, "seed": seed, "accuracy": accuracy,
            "macs": macs, "params": params, "mac_reduction": ref_macs / macs,
            "param_reduction": ref_params / params, "speedup": speedup,
            "speedup_over_mac_reduction": speedup / (ref_macs / macs)}


def _verdicts(records, mac_targets=(3.0, 6.0)):
    settings = {"mac_targets": list(mac_targets), "match_tolerance": 0.05,
                "latency_timing": "steady"}
    doc = {"settings": settings, "records": records, "tuning": {"trials": []}}
    return {t["name"]: t for t in protocol.summarize_reference(doc)["targets"]}


def _family(gamma=(0.916, 0.905), slim=(0.910, 0.900), l1=(0.911, 0.901), scratch=(0.914, 0.903)):
    records = [_rec("reference", None, 0, 0.920, 1200, 600, speedup=1.0)]
    for seed in (0, 1):
        for k, macs, params in ((0, 400, 110), (1, 200, 60)):
            for method, accs in (("gamma_ista", gamma), ("slimming", slim), ("l1_norm", l1),
                                 ("scratch", scratch), ("random", (0.8, 0.8))):
                records.append(_rec(method, k, seed, accs[k], macs + (8 if method == "slimming"
                                                                      else 0), params,
                                    speedup=3.0 if k == 0 else 4.5))
    return records


def test_gamma_ista_trials_compete_only_within_the_mac_budget():
    doc = {"settings": {"mac_targets": [3.0], "match_tolerance": 0.05},
           "records": [{"method": "reference", "macs": 300}],
           "tuning": {"trials": [
               {"method": "gamma_ista", "target": 0, "trial": 0, "validation_accuracy": 0.92, "macs": 101},
               {"method": "gamma_ista", "target": 0, "trial": 1, "validation_accuracy": 0.95, "macs": 140},
               {"method": "slimming", "target": 0, "trial": 0, "validation_accuracy": 0.9, "macs": 140},
               {"method": "slimming", "target": 0, "trial": 1, "validation_accuracy": 0.91, "macs": 150},
           ]}}
    assert protocol.chosen_trial(doc, "gamma_ista", 0)["trial"] == 0  # 0.95 missed the budget
    assert protocol.chosen_trial(doc, "slimming", 0)["trial"] == 1  # matched methods: accuracy only
    doc["tuning"]["trials"][0]["macs"] = 30  # none within 5%: the closest (70 % off vs 40 %)
    assert protocol.chosen_trial(doc, "gamma_ista", 0)["trial"] == 1


def test_verdicts_met_with_their_margins():
    v = _verdicts(_family())
    # (1) target 1: 3x fewer MACs, 5.45x fewer params, drop 92.0 - 91.6 = 0.4 point: met by 0.1
    assert v["compression_accuracy"]["value"] == pytest.approx(0.4)
    assert v["compression_accuracy"]["met"]
    assert v["compression_accuracy"]["margin"] == pytest.approx(0.1)
    # (2) leads at target 2: slimming +0.5, l1_norm +0.4, scratch +0.2 (target 1: more);
    # binding: l1_norm at target 2, 0.1 point beyond the 0.3 it needs
    lead = v["beats_baselines"]
    assert lead["met"] and lead["value"] == pytest.approx(0.4) and lead["threshold"] == 0.3
    assert lead["margin"] == pytest.approx(0.1) and len(lead["comparisons"]) == 6
    assert "binding: target 2 vs l1_norm" in lead["detail"]
    # (3) every model: 3.0 / 3 = 1.0 and 4.5 / 6 = 0.75 < 0.8: not met by 0.05
    fast = v["latency_follows_macs"]
    assert not fast["met"] and fast["value"] == pytest.approx(0.75)
    assert fast["margin"] == pytest.approx(-0.05) and fast["target"] == 1
    # (4) <= 100k params (every pruned model here): best is gamma_ista target 1, 91.6%
    small = v["small_and_accurate"]
    assert small["value"] == pytest.approx(0.916) and small["margin"] == pytest.approx(-0.014)
    assert not small["met"]


def test_verdict_two_binds_on_scratch_and_on_missing_comparisons():
    behind = _verdicts(_family(scratch=(0.918, 0.903)))["beats_baselines"]
    # gamma 91.6 vs scratch 91.8 at target 1: -0.2 where >= 0 is needed
    assert not behind["met"] and behind["value"] == pytest.approx(-0.2)
    assert behind["threshold"] == 0.0 and behind["margin"] == pytest.approx(-0.2)
    assert "target 1 vs scratch" in behind["detail"]
    records = [r for r in _family() if not (r["method"] == "l1_norm" and r["target"] == 1)]
    missing = _verdicts(records)["beats_baselines"]
    assert not missing["met"] and missing["missing"] == ["target 2 l1_norm"]
    assert missing["margin"] == pytest.approx(0.2)  # the margin of what was compared


def test_verdict_one_reports_the_compression_shortfall():
    records = [r for r in _family() if r["params"] != 110]  # only target 2 models left
    for r in records:
        if r["method"] == "gamma_ista":
            r["param_reduction"] = 4.0  # not 5x fewer parameters
    first = _verdicts(records)["compression_accuracy"]
    assert first["value"] is None and not first["met"]
    assert first["compression_shortfall"]["param_reduction"] == 4.0


@pytest.mark.slow
def test_compression_qat_adds_ptq_and_qat_figures_for_gamma_records(smoke, tmp_path):
    """benchmarks/compression_qat.py on the smoke run: one entry per gamma_ista record, from the
    cached models; a rerun measures nothing again."""
    import subprocess
    import sys

    from tf_gamma_prune.qat import isolate

    if isolate.missing_dependencies():
        pytest.skip('needs the tfmot extra: pip install "tf-gamma-prune[tfmot]"')
    out = tmp_path / "qat.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "compression_qat.py"),
               f"--results={smoke['out']}", f"--work_dir={smoke['work_dir']}", f"--output={out}",
               "--train_examples=256", "--test_examples=128", "--runs=3", "--calibration_examples=64"]
    subprocess.run(command, check=True, capture_output=True, timeout=1200, cwd=ROOT)
    doc = json.loads(out.read_text())
    records = json.loads(smoke["out"].read_text())["records"]
    gamma = {f"gamma_ista/target{r['target']}/seed{r['seed']}": r for r in records
             if r["method"] == "gamma_ista"}
    assert set(doc["records"]) == set(gamma) and not doc["missing"]
    for key, entry in doc["records"].items():
        assert entry["record_int8_accuracy"] == gamma[key]["int8_accuracy"]
        for kind in ("ptq", "qat"):
            assert 0.0 <= entry[kind]["accuracy"] <= 1.0 and entry[kind]["tflite_bytes"] > 0
            assert entry[kind]["latency_ms"] > 0
        assert entry["qat_minus_ptq_points"] == pytest.approx(
            100 * (entry["qat"]["accuracy"] - entry["ptq"]["accuracy"]))
    before = out.read_text()
    subprocess.run(command, check=True, capture_output=True, timeout=600, cwd=ROOT)
    assert json.loads(out.read_text())["records"] == json.loads(before)["records"]


def test_measure_seconds_leave_out_the_training_of_the_final_model(monkeypatch):
    """A record whose final model is trained inside ``record`` (no trial cached it, e.g. scratch)
    counts that training in ``train_seconds`` only, not in ``measure_seconds`` as well."""
    import time

    import compression_reference as runs

    run = object.__new__(runs.ReferenceRun)
    run.s = {"mac_targets": [3.0]}
    run.data = types.SimpleNamespace(x_val=None, y_val=None)

    def final_model(method, k):
        time.sleep(0.3)  # training
        return "model", {"seconds": 0.3, "extra": {}}

    run.final_model = final_model
    run.measure = lambda model, method, k, train_seconds, _, extra: {
        "method": method, "macs": 100, "train_seconds": train_seconds, **extra}
    monkeypatch.setattr(runs, "accuracy", lambda model, x, y: 0.9)
    record = run.record("scratch", 0, {"macs_target": 100})
    assert record["train_seconds"] == 0.3 and record["measure_seconds"] < 0.2
    assert record["macs_relative_difference"] == 0.0
