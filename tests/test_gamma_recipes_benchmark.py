"""benchmarks/gamma_recipes.py end to end at toy settings: records, paired differences, resume."""

import json
import os
import subprocess
import sys

import keras
import pytest
from test_compression_benchmark import require_real_fashion_mnist

from tf_gamma_prune import count_macs
from tf_gamma_prune.reference_models import fashion_vgg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = (8, 8, 16, 16, 16, 16)


def run(tmp_path, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gamma_recipes.py"),
         f"--reference={tmp_path / 'reference.keras'}", "--train_examples=256",
         "--validation_examples=200", "--batch_size=64", "--every=2", "--targets=2", "--seeds=0",
         f"--output={tmp_path / 'recipes.json'}", *extra],
        capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_recipes_are_recorded_paired_and_resumed(tmp_path):
    require_real_fashion_mnist()
    keras.utils.set_random_seed(0)
    reference = fashion_vgg(widths=WIDTHS)
    reference.save(tmp_path / "reference.keras")
    recipes = "--recipes=gamma_scale_s2,l1_norm,gamma_scale_rewind_s1,one_fit"
    proc = run(tmp_path, recipes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "recipes.json").read_text())
    records = doc["records"]
    assert list(records) == ["l1_norm/2x/seed0", "gamma_scale_s2/2x/seed0",  # the baseline first
                             "gamma_scale_rewind_s1/2x/seed0", "one_fit/2x/seed0"]
    base = records["l1_norm/2x/seed0"]
    budget = round(count_macs(reference) / 2)
    for key, r in records.items():
        assert r["macs_budget"] == budget and 0.0 <= r["validation_accuracy"] <= 1.0
        widths = [r["widths"][f"bn{i}"] for i in range(1, 7)]
        assert all(1 <= w <= full for w, full in zip(widths, WIDTHS))
        # independent: the MACs of a fresh fashion_vgg at the recorded widths
        assert r["macs"] == count_macs(fashion_vgg(widths=widths)), key
        if r["recipe"] != "l1_norm":
            assert r["minus_l1_norm"] == pytest.approx(
                round(100 * (r["validation_accuracy"] - base["validation_accuracy"]), 2))
    assert abs(base["macs"] - budget) <= 0.05 * budget  # L1-norm is matched to the budget
    assert "minus_l1_norm" not in base

    again = run(tmp_path, recipes)  # nothing left to run: same file
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "recipes.json").read_text())["records"] == records
    # a recipe added later extends the file; a changed one is refused
    for later in ("mean_gamma_one_fit", "l1_norm_kd", "paper_s2_kd"):
        doc["settings"]["recipes"].pop(later)
    (tmp_path / "recipes.json").write_text(json.dumps(doc))
    extended = run(tmp_path, "--recipes=l1_norm,mean_gamma_one_fit,l1_norm_kd,paper_s2_kd")
    assert extended.returncode == 0, extended.stderr[-3000:]
    grown = json.loads((tmp_path / "recipes.json").read_text())
    assert {k: grown["records"][k] for k in records} == records
    new = grown["records"]["mean_gamma_one_fit/2x/seed0"]
    assert new["minus_l1_norm"] == pytest.approx(
        round(100 * (new["validation_accuracy"] - base["validation_accuracy"]), 2))
    base_kd, gamma_kd = (grown["records"][f"{r}/2x/seed0"] for r in ("l1_norm_kd", "paper_s2_kd"))
    assert "minus_l1_norm_kd" not in base_kd and "minus_l1_norm_kd" not in new  # not distilled
    assert base_kd["widths"] == base["widths"]  # the same L1-norm cut, fine-tuned distilled
    assert gamma_kd["minus_l1_norm_kd"] == pytest.approx(
        round(100 * (gamma_kd["validation_accuracy"] - base_kd["validation_accuracy"]), 2))
    changed = {**grown, "settings": {**grown["settings"], "recipes": {
        **grown["settings"]["recipes"], "one_fit": {"sparsify_epochs": 4}}}}
    (tmp_path / "recipes.json").write_text(json.dumps(changed))
    refused = run(tmp_path, recipes)
    assert refused.returncode != 0 and "other settings" in refused.stderr
    (tmp_path / "recipes.json").write_text(json.dumps(grown))
    other = run(tmp_path, recipes, "--every=3")
    assert other.returncode != 0 and "other settings" in other.stderr
    longer = run(tmp_path, recipes, "--epochs=12")  # another budget: another file
    assert longer.returncode != 0 and "other settings" in longer.stderr
    unknown = run(tmp_path, "--recipes=l1_norm,magic")
    assert unknown.returncode != 0 and "unknown ['magic']" in unknown.stderr


PHASES = """
import runpy, sys
script = runpy.run_path(sys.argv[1], run_name="recipes")  # defines absl flags: its own process
phase_epochs, recipes = script["phase_epochs"], script["RECIPES"]
for epochs in (5, 12):
    for name, knobs in recipes.items():
        sparsify, finetune = phase_epochs(knobs, epochs)
        assert sparsify + finetune == epochs, name
        assert sparsify == (epochs if knobs.get("cosine") else knobs["sparsify_epochs"]), name
assert phase_epochs(recipes["paper_s2"], 12) == (2, 10)
try:
    phase_epochs(recipes["paper_s2"], 1)
except ValueError as e:
    assert "larger --epochs" in str(e)
else:
    raise AssertionError("a budget shorter than the sparsify phase was accepted")
print("ok")
"""


def test_phase_epochs_split_every_budget():
    script = os.path.join(ROOT, "benchmarks", "gamma_recipes.py")
    proc = subprocess.run([sys.executable, "-c", PHASES, script],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
