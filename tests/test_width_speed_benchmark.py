"""benchmarks/width_speed.py: every distinct width vector timed in one loop, on a tiny source."""

import json
import os
import subprocess
import sys

import pytest

from tf_gamma_prune import count_macs
from tf_gamma_prune.reference_models import fashion_vgg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(method, target, seed, widths):
    return {"method": method, "target": target, "seed": seed,
            "widths": {f"bn{i + 1}": w for i, w in enumerate(widths)}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("width_speed")
    source = {"settings": {"widths": [16, 16, 32, 32, 32, 32]}, "records": [
        _record("l1_norm", 0, 0, [8, 8, 16, 16, 16, 16]),
        _record("l1_norm", 0, 1, [8, 8, 16, 16, 16, 16]),      # the same widths: one row
        _record("gamma_ista", 0, 0, [4, 8, 16, 8, 8, 32]),
        _record("random", 0, 0, [4, 4, 4, 4, 4, 4]),            # not a timed method
        {"method": "reference", "target": None, "seed": 0, "widths": None}]}
    (d / "compression.json").write_text(json.dumps(source))
    out = d / "width_speed.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/width_speed.py", f"--source={d / 'compression.json'}",
         f"--output={out}", "--methods=l1_norm,gamma_ista", "--runs=12", "--block=4", "--warmup=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_one_row_per_distinct_width_vector_reference_first(run):
    rows = run["rows"]
    assert [r["widths"] for r in rows] == [[16, 16, 32, 32, 32, 32], [8, 8, 16, 16, 16, 16],
                                           [4, 8, 16, 8, 8, 32]]
    assert rows[0]["records"] == ["reference"] and rows[0]["speedup"] == 1.0
    assert rows[1]["records"] == ["l1_norm target 0 seed 0", "l1_norm target 0 seed 1"]
    assert run["settings"]["runs"] == 12 and run["settings"]["threads"] == 1


def test_macs_and_ratios_agree_with_independent_counts(run):
    reference = count_macs(fashion_vgg(widths=(16, 16, 32, 32, 32, 32)))
    for r in run["rows"]:
        macs = count_macs(fashion_vgg(widths=tuple(r["widths"])))
        assert r["macs"] == macs
        assert r["mac_reduction"] == pytest.approx(reference / macs, abs=1e-3)
        assert r["speedup"] == pytest.approx(run["rows"][0]["median_ms"] / r["median_ms"], rel=1e-3)
        assert r["speedup_over_mac_reduction"] == pytest.approx(
            r["speedup"] / r["mac_reduction"], abs=2e-3)
        assert r["median_ms"] > 0
