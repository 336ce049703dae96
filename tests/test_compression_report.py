"""The compression block of docs/benchmarks.md is the committed JSON, rendered; rendering checks."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
COMMITTED = BENCHMARKS / "results" / "compression_cpu_short.json"  # the short from-scratch run (cpu_short)
FULL_DATA = BENCHMARKS / "results" / "compression.json"  # the run docs/benchmarks.md shows


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = _load("compression_report")
compression = _load("compression")


def test_docs_block_matches_committed_results():
    assert report.DEFAULT_JSON == FULL_DATA and FULL_DATA.exists()
    doc = report.load(FULL_DATA)
    page = ROOT / "docs" / "benchmarks.md"
    assert report.README == page, "compression_report.py writes its block elsewhere"
    # the image link is relative to docs/, where the page is
    png = "../benchmarks/results/compression.png"
    block = f"{report.START}\n{report.markdown(doc, png=png)}\n{report.END}"
    assert block in page.read_text(), (
        "docs/benchmarks.md compression block is stale: run "
        ".venv/bin/python benchmarks/compression_report.py --write")
    assert (BENCHMARKS / "results" / "compression.png").exists()
    labelled = {r["method"] for r in doc["records"]} | {t["name"] for t in doc["summary"]["targets"]}
    assert labelled <= set(report.METHOD_LABELS) | set(report.REFERENCE_TARGET_LABELS)


def test_committed_results_are_complete_and_consistent():
    doc = report.load(COMMITTED)
    settings = doc["settings"]
    expected = {("reference", None, seed) for seed in settings["seeds"]} | {
        (m, k, seed) for seed in settings["seeds"] for m in compression.METHODS
        for k in range(len(settings["stage_epochs"]))}
    done = {(r["method"], r["target"], r["seed"]) for r in doc["records"]}
    assert done <= expected
    # the stored summary is what the records give
    assert compression.summarize(doc) == doc["summary"]


def test_full_data_results_follow_the_protocol():
    """compression.json: all training and test images, >= 2 seeds for every method and
    target it ran, and target verdicts that are the verdict code's on its records."""
    doc = report.load(FULL_DATA)
    s = doc["settings"]
    assert s["preset"] == "cpu" and s["protocol"] == "from_reference"
    assert s["train_examples"] == 0 and s["test_examples"] == 0  # 0: every image
    seeds: dict[tuple, set] = {}
    for r in doc["records"]:
        if r["method"] != "reference":
            seeds.setdefault((r["method"], r["target"]), set()).add(r["seed"])
    assert {k for k, v in seeds.items() if len(v) < 2} == set()
    assert {m for m, _ in seeds} >= {"gamma_ista", "slimming", "l1_norm", "random", "scratch"}
    assert compression.summarize(doc) == doc["summary"]  # verdicts recomputed from the records
    assert {t["name"] for t in doc["summary"]["targets"]} >= {
        "compression_accuracy", "beats_baselines", "latency_follows_macs", "small_and_accurate"}


def _synthetic_doc() -> dict:
    settings = dict(compression.PRESETS["cpu_short"], preset="cpu_short", stage_epochs=[2, 3],
                    fold="carrier", seeds=[0, 1])
    rng = np.random.default_rng(0)
    records = []
    for seed in (0, 1):
        records.append({"method": "reference", "target": None, "seed": seed})
        for k in (0, 1):
            for method in compression.METHODS:
                records.append({"method": method, "target": k, "seed": seed})
    for r in records:
        macs = 29_000_000 if r["target"] is None else [12_000_000, 6_000_000][r["target"]]
        params = 289_000 if r["target"] is None else [120_000, 60_000][r["target"]]
        speedup = 1.0 if r["target"] is None else 29 / (macs / 1e6) * 0.9
        r.update(accuracy=float(0.85 + 0.05 * rng.random()), params=params, macs=macs,
                 int8_accuracy=0.85, tflite_float_bytes=params * 4 + 3000,
                 tflite_int8_bytes=params + 9000, mac_reduction=29_000_000 / macs,
                 param_reduction=289_000 / params, speedup=speedup,
                 speedup_over_mac_reduction=speedup / (29_000_000 / macs),
                 sparsify_epochs=3 if r["target"] is None else [2, 3][r["target"]])
        r["finetune_epochs"] = 4 - r["sparsify_epochs"]
    # one unreachable matched baseline
    bad = next(r for r in records if r["method"] == "l1_norm" and r["target"] == 1
               and r["seed"] == 1)
    for key in list(bad):
        if key not in ("method", "target", "seed"):
            del bad[key]
    bad.update(accuracy=None, unreachable="closest 7,000,000 MACs")
    doc = {"settings": settings, "records": records,
           "network": {"widths": settings["widths"], "params": 289_066, "macs": 29_128_448},
           "machine": {"cpu_count": 2},
           "public_benchmarks": {"source": compression.PUBLIC_SOURCE,
                                 "rows": compression.PUBLIC_BENCHMARKS},
           "notes": ["training on a stratified subset of 8000"]}
    doc["summary"] = compression.summarize(doc)
    return doc


def test_rendering_of_a_synthetic_result():
    doc = _synthetic_doc()
    text = report.markdown(doc)
    lines = text.splitlines()
    # one table row per (method, target) group, mean ± std computed independently
    for method, label in report.METHOD_LABELS.items():
        if method in ("reference", *compression.METHODS):  # this protocol's rows
            assert any(line.startswith(f"| {label} |") for line in lines), label
    accs = [r["accuracy"] for r in doc["records"]
            if r["method"] == "gamma_ista" and r["target"] == 0]
    expected = f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f} (2)"
    row = next(line for line in lines if line.startswith("| GammaISTA (ours) | 1 |"))
    assert expected in row and "2 + 2" in row and "12.00 M" in row
    # the partly unreachable group shows n = 1 and says so
    row = next(line for line in lines if line.startswith("| L1-norm filters | 2 |"))
    assert "(1) (+1 unreachable)" in row
    # every target line with its verdict, the public rows, the plot
    for name, label in report.TARGET_LABELS.items():
        target = next(t for t in doc["summary"]["targets"] if t["name"] == name)
        line = next(line for line in lines if line.startswith(f"| {label} |"))
        assert ("**not met**" in line) == (not target["met"])
    for public in ("| 2 Conv <100K parameters (public table) | <100k | 92.5 |",
                   "| 2 Conv+pooling+BN (public table) | – | 93.4 |",
                   "| DenseNet-BC 768K params (public table) | 768k | 95.4 |"):
        assert public in lines
    assert "![Accuracy vs MACs" in text and "CPU preset" in text
    assert report.markdown(json.loads(json.dumps(doc))) == text  # deterministic


def test_plot_and_block_replacement(tmp_path):
    doc = _synthetic_doc()
    png = tmp_path / "pareto.png"
    report.plot(doc, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    readme = f"intro\n{report.START}\nold\n{report.END}\noutro\n"
    assert report.replace_block(readme, "new") == f"intro\n{report.START}\nnew\n{report.END}\noutro\n"
    with pytest.raises(ValueError, match="block"):
        report.replace_block("no markers", "new")
