"""Render the README's benchmark table from the committed JSON results.

    .venv/bin/python benchmarks/readme_figures.py            # print the table
    .venv/bin/python benchmarks/readme_figures.py --write    # replace it in README.md

The README keeps the table between ``<!-- figures:start -->`` and
``<!-- figures:end -->``; tests/test_readme_figures.py fails when the two disagree,
so a re-run benchmark must be followed by ``--write``.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _met(flag: bool) -> str:
    return "met" if flag else "**not met**"


def _variant_name(variant: dict) -> str:
    """A prune_model call's options, e.g. ``fold='carrier', carrier_tile=8``."""
    parts = [f"fold='{variant['fold']}'"]
    parts += [f"{k}={variant[k]}" for k in ("carrier_tile", "round_to") if variant.get(k, 1) != 1]
    return ", ".join(parts)


def _variant_cell(v: dict, original: dict, judged: dict | None = None) -> str:
    lat = v["latency"]["1"]
    same = judged is not None and v.get("tflite_sha256") and v["tflite_sha256"] == judged.get("tflite_sha256")
    adds = v["ops"].get("ADD", 0) - original["ops"].get("ADD", 0)  # border-correction ADDs
    return (f"{_variant_name(v)}: {lat['speedup_over_mac_reduction']:.2f} ({v['mac_reduction']:.2f}× fewer "
            f"MACs, {lat['speedup']:.2f}× faster{f', +{adds} ADD' if adds else ''}"
            f"{', not exact' if v['fold'] == 'bias' else ''}"
            f"{', the same .tflite as the judged one' if same else ''})")


def rows() -> list[str]:
    out = []
    d = _load("optimizer_overhead")
    if d:
        s = d["settings"]
        out.append(
            f"| GammaISTA step time / SGD step time (ResNet-20, batch {s['batch_size']}, "
            f"{s['image_size']}×{s['image_size']}) | {d['ratio_gamma_ista_over_sgd']:.3f} "
            f"| ≤ {d['target_ratio']} | {_met(d['target_met'])} |")
    d = _load("surgery_speed")
    if d:
        out.append(
            f"| `prune_model` time / `clone_model` time ({d['model']}, "
            f"{d['input_shape'][0]}×{d['input_shape'][1]}, {d['zero_fraction']:.0%} γ = 0) "
            f"| {d['median_ratio']:.2f} | ≤ {d['target_ratio']:g} "
            f"| {_met(d['median_ratio'] <= d['target_ratio'])} |")
    d = _load("surgery_memory")
    if d:
        out.append(
            f"| `prune_model` additional peak memory / weight memory ({d['model']}, "
            f"{d['weight_mib']} MiB of weights) | {d['median_cold_ratio']:.2f} "
            f"| ≤ {d['target_ratio']} | {_met(d['target_met'])} |")
    d = _load("tflite_latency")
    if d:
        target = d["settings"]["target_speedup_over_mac_reduction_1_thread"]
        for name, m in d["models"].items():
            lat = m["latency"]["1"]
            h, w = m["input_shape"][:2]
            variants = m.get("variants", {})
            judged = variants.get(m.get("recommended"))
            how = f", {_variant_name(judged)}" if judged else ""
            judged_model = m.get("judged", True)
            verdict = (f"| ≥ {target} | {_met(lat['speedup_over_mac_reduction'] >= target)} |"
                       if judged_model else "| | for comparison (not a judged network) |")
            cold = m.get("latency_interleaved", {}).get("1")
            cold_note = (f"; interleaved cold-cache timing: {cold['speedup_over_mac_reduction']:.3f}"
                         if cold else "")
            timing = d["settings"].get("judged_timing", "interleaved")
            out.append(
                f"| TFLite speed-up / MAC reduction, 1 thread, {timing} timing ({name} {h}×{w}{how}: "
                f"{m['mac_reduction']:.2f}× fewer MACs, {lat['speedup']:.2f}× faster, "
                f"{m['original']['tflite_bytes'] / 1e6:.2f} → {m['pruned']['tflite_bytes'] / 1e6:.2f} MB{cold_note}) "
                f"| {lat['speedup_over_mac_reduction']:.3f} {verdict}")
            others = [v for k, v in variants.items() if k != m.get("recommended")]
            if others:
                out.append(f"| same runs, other folds ({name}, {m.get('prune_fraction', d['settings']['prune_fraction']):.0%} pruned) | "
                           + "; ".join(_variant_cell(v, m["original"], judged) for v in others)
                           + " | | for comparison |")
            for fraction, e in m.get("other_fractions", {}).items():
                out.append(f"| {name}, {float(fraction):.0%} pruned instead (not judged) | "
                           + "; ".join(_variant_cell(v, e["original"]) for v in e["variants"].values())
                           + " | | for comparison |")
    d = _load("applications_exactness")
    if d:
        summary = d["summary"]
        others = "; ".join(f"{n} {k}" for k, n in summary.items() if k != "exact")
        out.append(f"| keras.applications models pruned exactly (random BN statistics, "
                   f"{d['zero_fraction']:.0%} of γ = 0, rel. error ≤ {d['tolerance']:g}) "
                   f"| {summary.get('exact', 0)} | every BN-based one | {others} |")
    return out


def table() -> str:
    header = ["| measured (committed JSON in `benchmarks/results/`) | value | target | |",
              "|---|---|---|---|"]
    return "\n".join(header + rows())


def write_readme() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"README.md lacks the {START} ... {END} markers")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{START}\n{table()}\n{END}{after}")


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_readme()
    print(table())
