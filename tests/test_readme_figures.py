"""The rendered blocks of README.md and docs/benchmarks.md are the committed results."""

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parent.parent
figures = runpy.run_path(str(ROOT / "benchmarks" / "readme_figures.py"))
STALE = "stale: run .venv/bin/python benchmarks/readme_figures.py --write"


def test_benchmarks_doc_figures_match_committed_results():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    table = figures["table"]()
    assert len(figures["rows"]()) >= 4, "benchmark results missing from benchmarks/results/"
    assert f"{figures['START']}\n{table}\n{figures['END']}" in page, f"docs/benchmarks.md figures are {STALE}"


def test_readme_results_match_committed_results():
    readme = (ROOT / "README.md").read_text()
    block = figures["readme_results"]()
    assert f"{figures['RESULTS_START']}\n{block}\n{figures['RESULTS_END']}" in readme, (
        f"README results are {STALE}")


def test_readme_results_come_from_the_demo_transcript():
    run = figures["demo_run"]()
    text = figures["DEMO_TRANSCRIPT"].read_text()
    stages = [row["stage"] for row in run["rows"]]
    assert stages[:5] == ["reference", "reference, int8", "pruned (exact, no tuning)",
                          "pruned + fine-tuned", "pruned + fine-tuned, int8"]
    assert stages[5:] in ([], ["pruned + tuned, int8 QAT"])  # the QAT row, when tfmot ran
    for row in run["rows"]:  # every rendered row is a line of the transcript
        assert any(line.strip().startswith(row["stage"]) and row["params"] in line and row["ms"] in line
                   for line in text.splitlines()), row
    table = figures["results_table"]()
    for row in run["rows"]:
        assert f"{100 * row['accuracy']:.2f}" in table
    assert "compression benchmark" in figures["comparison_line"]()


def test_full_data_line_reports_progress_and_the_verdict():
    def group(method, target, accuracy):
        return {"method": method, "target": target, "n": 1, "accuracy": accuracy,
                "params": 70_000.0, "speedup": 2.4}

    doc = {"settings": {"seeds": [0, 1], "mac_targets": [3.0, 6.0], "criteria_methods": [],
                        "sparsify_epochs": 2, "finetune_epochs": 3},
           "records": [{"method": "reference"}, {"method": "gamma_ista"}, {"method": "l1_norm"}],
           "summary": {"groups": [group("reference", None, 0.9393), group("gamma_ista", 0, 0.9216),
                                  group("l1_norm", 0, 0.9307)],
                       "targets": [{"name": "beats_baselines", "met": False}]}}
    line = figures["full_data_line"](doc)
    assert "in progress: 2 of 20 records" in line and "does **not** win" in line
    assert "5 epochs after the 93.93 % reference" in line
    bullets = [b for b in line.splitlines() if b.startswith("* ")]
    assert bullets == ["* 3× fewer MACs: GammaISTA 92.16 % (2.40×, 1 seed); "
                       "L1-norm filters 93.07 % (2.40×, 1 seed)."]  # no 6× record yet: no bullet
    doc["summary"]["groups"].pop()  # no baseline yet: no verdict
    assert "still running" in figures["full_data_line"](doc)


def test_full_data_line_adds_the_longer_budget_once_it_has_gamma_records():
    def doc(preset, finetune_epochs, groups, records):
        return {"settings": {"preset": preset, "seeds": [0, 1], "mac_targets": [3.0, 6.0],
                             "criteria_methods": [], "training_methods": ["gamma_ista_tiled"],
                             "sparsify_epochs": 2, "finetune_epochs": finetune_epochs},
                "records": [{"method": m} for m in records],
                "summary": {"groups": [{"method": m, "target": k, "n": 1, "accuracy": a, "speedup": 2.0}
                                       for m, k, a in groups],
                            "targets": [{"name": "beats_baselines", "met": False}]}}

    short = doc("cpu", 3, [("reference", None, 0.9393), ("gamma_ista", 0, 0.92), ("l1_norm", 0, 0.93)],
                ["reference", "gamma_ista", "l1_norm"])
    longer = doc("cpu_long", 10, [("reference", None, 0.9393), ("l1_norm", 0, 0.934)],
                 ["reference", "l1_norm"])
    assert "12 epochs" not in figures["full_data_line"](short, longer)  # no GammaISTA record yet
    longer["summary"]["groups"].append({"method": "gamma_ista", "target": 0, "n": 1, "accuracy": 0.9313,
                                        "speedup": 2.36})
    longer["records"].append({"method": "gamma_ista"})
    line = figures["full_data_line"](short, longer)
    head, tail = line.split("With 12 epochs after the reference instead of 5")
    assert "* 3× fewer MACs: GammaISTA 92.00 %" in head and "93.13" not in head
    assert "`--preset cpu_long`, in progress: 2 of 24 records" in tail
    assert "* 3× fewer MACs: GammaISTA 93.13 % (2.36×, 1 seed); L1-norm filters 93.40 % (2.00×, 1 seed)." in tail
