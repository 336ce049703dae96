"""How much memory does prune_model need on top of the model it prunes?

Each measurement runs in a fresh subprocess: build ``--model`` (``weights=None``) at
``--size``×``--size``, give every BatchNormalization random statistics and set a random
``--zero_fraction`` of the γ to exactly 0, ``gc.collect()``, then

* ``baseline_rss``: VmRSS just before ``prune_model(model)``;
* reset the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``; this resets
  VmHWM and ``getrusage().ru_maxrss`` alike) and call ``prune_model(model)``
  (defaults: ``fold="exact"``, no report);
* ``peak_rss``: VmHWM right after it returns, cross-checked by a thread that samples
  VmRSS every 2 ms during the call;
* ``additional_peak = peak_rss − baseline_rss``: everything ``prune_model`` held at
  its worst moment, the returned pruned model included.

The reference is the model's own weight memory, ``Σ nbytes`` over ``model.weights``
(float32, BN moving statistics included). Target: ``additional_peak ≤ 2.5 × weights``.
The first call in a process (``cold``: first eager kernels, imports of the surgery
modules) and a second call in the same process (``warm``, peak mark reset again) are
both reported; the target applies to the cold call, the one a CLI run pays. With
``--report`` a further child measures ``prune_model(model, return_report=True)``,
whose probe batch runs both models.

Writes benchmarks/results/surgery_memory.json atomically.

    python benchmarks/surgery_memory.py --repeats=3

Duration and output: ``benchmarks/README.md``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app, flags

import common

FLAGS = flags.FLAGS
common.define_application_flags(size=64, zero_fraction=0.3)
flags.DEFINE_integer("repeats", 3, "Fresh subprocesses measuring the default prune_model call.")
flags.DEFINE_boolean("report", True, "Also measure prune_model(..., return_report=True) once.")
flags.DEFINE_float("target", 2.5, "Target: additional peak RSS / weight bytes.")
flags.DEFINE_integer("timeout", 900, "Seconds per child process.")
flags.DEFINE_string("child", None, "Internal: run one measurement ('plain' or 'report') and print JSON.")
common.define_output_flag("surgery_memory")

MIB = 1024 * 1024


# ----------------------------------------------------------------------------
# child: one measurement
# ----------------------------------------------------------------------------


def _status_kib(*keys: str) -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0])
    return values


def _rss_bytes() -> int:
    return _status_kib("VmRSS")["VmRSS"] * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler:
    """Polls VmRSS from a thread; the maximum is a lower bound on the true peak."""

    def __init__(self, interval_s: float = 0.002):
        import threading

        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with open("/proc/self/statm") as f:
            page = os.sysconf("SC_PAGE_SIZE")
            while not self._stop.is_set():
                f.seek(0)
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
                time.sleep(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _measure_call(fn) -> dict:
    import gc
    import resource

    gc.collect()
    baseline = _rss_bytes()
    reset = _reset_peak()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with _Sampler() as sampler:
        result = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")["VmHWM"] * 1024
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    after = _rss_bytes()
    return result, {
        "seconds": round(seconds, 3),
        "peak_mark_reset": reset,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "sampled_peak_rss_bytes": sampler.peak,
        "ru_maxrss_before_bytes": maxrss_before,
        "ru_maxrss_after_bytes": maxrss_after,
        "rss_after_bytes": after,
        "additional_peak_bytes": peak - baseline,
        "retained_after_bytes": after - baseline,
    }


def child(kind: str) -> dict:
    """One measurement (``plain`` or ``report``), cold then warm, in this process."""
    import numpy as np

    from tf_gamma_prune import prune_model

    t0 = time.perf_counter()
    model, (zeros, channels) = common.random_application(FLAGS.model, FLAGS.size, FLAGS.seed,
                                                         FLAGS.zero_fraction)
    build_s = time.perf_counter() - t0
    weight_bytes = int(sum(np.asarray(w.numpy()).nbytes for w in model.weights))
    kwargs = {"return_report": True} if kind == "report" else {}

    out = {"kind": kind, "build_s": round(build_s, 1), "weight_bytes": weight_bytes,
           "params": int(model.count_params()), "bn_channels": channels, "zero_gammas": zeros}
    pruned, out["cold"] = _measure_call(lambda: prune_model(model, **kwargs))
    if kind == "report":
        pruned = pruned[0]
    out["params_after"] = int(pruned.count_params())
    del pruned
    pruned, out["warm"] = _measure_call(lambda: prune_model(model, **kwargs))
    del pruned
    for phase in ("cold", "warm"):
        out[phase]["ratio_to_weights"] = round(out[phase]["additional_peak_bytes"] / weight_bytes, 3)
    return out


# ----------------------------------------------------------------------------
# parent: fresh subprocess per measurement
# ----------------------------------------------------------------------------


def _run_child(kind: str) -> dict:
    args = [sys.executable, os.path.abspath(__file__), f"--child={kind}", f"--model={FLAGS.model}",
            f"--size={FLAGS.size}", f"--zero_fraction={FLAGS.zero_fraction}", f"--seed={FLAGS.seed}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=FLAGS.timeout,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    if proc.returncode != 0:
        raise RuntimeError(f"measurement child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(child(FLAGS.child)), flush=True)
        return
    from tf_gamma_prune.atomic_io import write_json_atomic

    runs = []
    for i in range(FLAGS.repeats):
        runs.append(_run_child("plain"))
        r = runs[-1]["cold"]
        print(f"[{i + 1}/{FLAGS.repeats}] cold: +{r['additional_peak_bytes'] / MIB:.0f} MiB "
              f"({r['ratio_to_weights']:.2f}x weights), warm: +{runs[-1]['warm']['additional_peak_bytes'] / MIB:.0f} MiB",
              file=sys.stderr, flush=True)
    report_run = _run_child("report") if FLAGS.report else None
    weight_bytes = runs[0]["weight_bytes"]
    cold = [r["cold"]["ratio_to_weights"] for r in runs]
    warm = [r["warm"]["ratio_to_weights"] for r in runs]
    result = {
        "benchmark": "surgery_memory",
        "what": (
            "additional_peak = peak RSS during prune_model(model) (VmHWM, its mark reset right "
            "before the call) minus RSS just before the call, in a fresh process per run; the "
            "returned pruned model is alive at the end of the call and counted. weight_bytes = "
            "sum of nbytes of model.weights (float32, BN moving statistics included). 'cold' is "
            "the first prune_model call in the process (what one CLI run pays), 'warm' a second "
            "call in the same process."
        ),
        "model": FLAGS.model,
        "input_shape": [FLAGS.size, FLAGS.size, 3],
        "zero_fraction": FLAGS.zero_fraction,
        "call": "prune_model(model)  # fold='exact', no report",
        "repeats": FLAGS.repeats,
        "weight_bytes": weight_bytes,
        "weight_mib": round(weight_bytes / MIB, 1),
        "params_before": runs[0]["params"],
        "params_after": runs[0]["params_after"],
        "zero_gammas": runs[0]["zero_gammas"],
        "bn_channels": runs[0]["bn_channels"],
        "median_cold_additional_peak_mib": round(statistics.median(
            r["cold"]["additional_peak_bytes"] for r in runs) / MIB, 1),
        "median_cold_ratio": statistics.median(cold),
        "max_cold_ratio": max(cold),
        "median_warm_ratio": statistics.median(warm),
        "target_ratio": FLAGS.target,
        "target_met": max(cold) <= FLAGS.target,
        "runs": runs,
        "with_report": report_run,
        **common.machine_info("tensorflow", "keras", "python"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json_atomic(FLAGS.output, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "with_report", "what")}, indent=2))


if __name__ == "__main__":
    app.run(main)
