"""benchmarks/tflite_latency.py end to end at toy settings: both timing protocols, judged on steady."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tflite_latency_records_steady_and_interleaved(tmp_path):
    out = tmp_path / "latency.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "tflite_latency.py"), "--models=fashion_vgg",
         "--variants=carrier_tile8,bias", "--extra_fractions=", "--runs=7", "--block=3", "--rounds=1",
         "--warmup=1", "--threads=1", f"--output={out}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["settings"]["judged_timing"] == "steady" and doc["settings"]["block"] == 3
    entry = doc["models"]["fashion_vgg"]
    for variant in entry["variants"].values():
        for key in ("latency", "latency_interleaved"):
            one = variant[key]["1"]
            assert one["speedup"] > 0
            # the ratio is the speed-up over this variant's own MAC reduction
            assert abs(one["speedup_over_mac_reduction"] * variant["mac_reduction"] - one["speedup"]) < 1e-9
    judged = entry["variants"]["carrier_tile8"]
    assert entry["latency"] == judged["latency"] and entry["latency_interleaved"] == judged["latency_interleaved"]
    assert entry["meets_target_1_thread"] == (judged["latency"]["1"]["speedup_over_mac_reduction"] >= 0.8)
    assert judged["ops"].get("ADD", 0) == 5 and "ADD" not in entry["variants"]["bias"]["ops"]


def test_tflite_latency_refuses_a_set_of_timings_without_the_judged_one(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "tflite_latency.py"), "--models=fashion_vgg",
         "--timings=interleaved", f"--output={tmp_path / 'x.json'}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode != 0 and "must include 'steady'" in proc.stderr
    assert not (tmp_path / "x.json").exists()
