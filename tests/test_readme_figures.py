"""The README's benchmark figures are the committed JSON results, rendered."""

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_table_matches_committed_results():
    figures = runpy.run_path(str(ROOT / "benchmarks" / "readme_figures.py"))
    readme = (ROOT / "README.md").read_text()
    table = figures["table"]()
    assert len(figures["rows"]()) >= 4, "benchmark results missing from benchmarks/results/"
    assert f"{figures['START']}\n{table}\n{figures['END']}" in readme, (
        "README figures are stale: run .venv/bin/python benchmarks/readme_figures.py --write")
