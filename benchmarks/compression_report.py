"""Render the compression benchmark's JSON: docs table, targets, Pareto plot.

    .venv/bin/python benchmarks/compression_report.py            # print the markdown
    .venv/bin/python benchmarks/compression_report.py --write    # + docs/benchmarks.md block + PNG

docs/benchmarks.md keeps the rendering between ``<!-- compression:start -->`` and
``<!-- compression:end -->``; tests/test_compression_report.py fails when the
block disagrees with the committed ``benchmarks/results/compression.json``, so a
rerun of ``benchmarks/compression.py`` must be followed by ``--write``.
Only the JSON is read: everything shown, the targets' verdicts included, was
computed by ``benchmarks/compression.py`` (rendering the markdown imports no
TensorFlow; ``--write`` writes through ``tf_gamma_prune.atomic_io``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_JSON = HERE / "results" / "compression.json"
README = ROOT / "docs" / "benchmarks.md"  # the page with the marked block
START, END = "<!-- compression:start -->", "<!-- compression:end -->"

METHOD_LABELS = {
    "reference": "reference (unpruned)",
    "gamma_ista": "GammaISTA (ours)",
    "slimming": "Network Slimming",
    "l1_norm": "L1-norm filters",
    "random": "random (GammaISTA widths)",
    "scratch": "scratch (GammaISTA widths)",
}
TARGET_LABELS = {
    "compression_accuracy": "(1) ≥ 3× fewer MACs and ≥ 5× fewer params, accuracy drop (points)",
    "beats_baselines": "(2) GammaISTA − best of Slimming / L1-norm at matched MACs (points)",
    "latency_follows_macs": "(3) TFLite speed-up / MAC reduction, 1 thread",
    "small_and_accurate": "(4) best accuracy of a pruned model with ≤ 100k params",
}


def load(path: str | pathlib.Path = DEFAULT_JSON) -> dict:
    """The benchmark document written by ``benchmarks/compression.py``."""
    return json.loads(pathlib.Path(path).read_text())


def _si(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.{digits}f} M"
    if value >= 1e3:
        return f"{value / 1e3:.{max(digits - 1, 0)}f} k"
    return f"{value:.0f}"


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _accuracy(row: dict) -> str:
    if not row["n"]:
        return "unreachable"
    std = row.get("accuracy_std")
    text = f"{100 * row['accuracy']:.2f}"
    if std is not None and row["n"] > 1:
        text += f" ± {100 * std:.2f}"
    return text + f" ({row['n']})"


def results_table(doc: dict) -> str:
    """One line per (method, target): cost, accuracy mean ± std (n seeds), size, speed."""
    lines = [
        "| method | target | epochs (train + fine-tune) | MACs | params | test accuracy % "
        "(mean ± std, n) | int8 accuracy % | .tflite float / int8 KB | speed-up, 1 thread "
        "| speed-up / MAC reduction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["summary"]["groups"]:
        target = "–" if row["target"] is None else str(row["target"] + 1)
        epochs = (f"{row['sparsify_epochs']} + {row['finetune_epochs']}"
                  if "sparsify_epochs" in row else "–")
        if not row["n"]:
            reasons = "; ".join(row.get("unreachable_reasons", []))
            lines.append(f"| {METHOD_LABELS.get(row['method'], row['method'])} | {target} | "
                         f"{epochs} | – | – | unreachable ({row['unreachable']}): {reasons} "
                         "| – | – | – | – |")
            continue
        int8 = _num(None if row["int8_accuracy"] is None else 100 * row["int8_accuracy"], ".2f")
        if row.get("tflite_float_bytes") is None:  # trained without TensorFlow, not measured yet
            size, speedup, ratio = "pending", "pending", "pending"
        else:
            size = f"{row['tflite_float_bytes'] / 1024:.0f} / {row['tflite_int8_bytes'] / 1024:.0f}"
            speedup = "1.00×" if row["method"] == "reference" else f"{row['speedup']:.2f}×"
            ratio = ("–" if row["method"] == "reference"
                     else f"{row['speedup_over_mac_reduction']:.2f} ({row['mac_reduction']:.2f}× "
                          "fewer MACs)")
        unreachable = f" (+{row['unreachable']} unreachable)" if row["unreachable"] else ""
        lines.append(
            f"| {METHOD_LABELS.get(row['method'], row['method'])} | {target} | {epochs} | "
            f"{_si(row['macs'])} | {_si(row['params'], 2)} | {_accuracy(row)}{unreachable} | "
            f"{int8} | {size} | {speedup} | {ratio} |")
    return "\n".join(lines)


def targets_table(doc: dict) -> str:
    """The issue's four targets: value, threshold, met / not met with the margin."""
    lines = ["| target | value | threshold | verdict |", "|---|---|---|---|"]
    for t in doc["summary"]["targets"]:
        label = TARGET_LABELS.get(t["name"], t["name"])
        percent = t["name"] == "small_and_accurate"
        scale, unit = (100, " %") if percent else (1, "")

        def fmt(v, signed=False):
            return "n/a" if v is None else f"{scale * v:{'+' if signed else ''}.2f}{unit}"

        verdict = "met" if t["met"] else "**not met**"
        verdict += (f" (margin {fmt(t['margin'], signed=True)})" if t["margin"] is not None
                    else f" ({t['detail']})")
        lines.append(f"| {label} | {fmt(t['value'])} | {t['comparison']} "
                     f"{fmt(t['threshold'])} | {verdict} |")
    return "\n".join(lines)


def public_table(doc: dict) -> str:
    """The dataset's public rows next to our best results."""
    lines = ["| model | parameters | Fashion-MNIST test accuracy % |", "|---|---|---|"]
    for row in doc["public_benchmarks"]["rows"]:
        lines.append(f"| {row['classifier']} (public table) | {row['params'] or '–'} | "
                     f"{100 * row['accuracy']:.1f} |")
    groups = [g for g in doc["summary"]["groups"] if g["n"]]
    ref = next((g for g in groups if g["method"] == "reference"), None)
    if ref is not None:
        lines.append(f"| fashion_vgg reference (ours) | {_si(ref['params'], 2)} | "
                     f"{100 * ref['accuracy']:.2f} |")
    family = [g for g in groups if g["method"] == "gamma_ista"]
    if family:
        best = max(family, key=lambda g: g["accuracy"])
        smallest = min(family, key=lambda g: g["params"])
        for g, what in ((best, "most accurate"), (smallest, "smallest")):
            lines.append(f"| GammaISTA pruned, {what} (ours, target {g['target'] + 1}) | "
                         f"{_si(g['params'], 2)} | {100 * g['accuracy']:.2f} |")
            if best is smallest:
                break
    return "\n".join(lines)


def _fold_args(s: dict) -> str:
    args = f'fold="{s["fold"]}"'
    if s["fold"] == "carrier" and s.get("carrier_tile", 1) != 1:
        args += f", carrier_tile={s['carrier_tile']}"
    return args


def markdown(doc: dict, png: str = "benchmarks/results/compression.png") -> str:
    """The README block's content (between the markers), deterministic for one JSON."""
    s, net = doc["settings"], doc["network"]
    train = f"{s['train_examples']:,}" if s["train_examples"] else "60,000"
    parts = [
        "(rendered from `benchmarks/results/compression.json` by "
        "`benchmarks/compression_report.py --write`)",
        "",
        f"`benchmarks/compression.py --preset {s['preset']}`: Fashion-MNIST ({train} training "
        f"images, test accuracy on "
        f"{s['test_examples'] if s['test_examples'] else '10,000'} test images), reference "
        f"network `fashion_vgg` (widths {'-'.join(map(str, net['widths']))}, "
        f"{net['params']:,} parameters, {net['macs']:,} MACs). Every model gets E = "
        f"{s['epochs']} epochs: target k spends s_k = {s['stage_epochs']} epochs in "
        f"phase 1 (SGD momentum {s['momentum']}, constant learning rate {s['learning_rate']}; "
        f"GammaISTA ρ = {s['rho_stages']} per stage, paper λ; Network Slimming L1 "
        f"{s['slimming_l1']:g}) and E − s_k in phase 2 (cosine from "
        f"{s['finetune_learning_rate']} to 0, no penalty); augmentation `{s['augment']}`, "
        f"batch {s['batch_size']}, seeds {s['seeds']}, `prune_model({_fold_args(s)})`. "
        "Slimming and L1-norm are matched to GammaISTA's MACs (±"
        f"{s['match_tolerance']:.0%}); random and scratch use its per-layer widths. Latency: "
        f"LiteRT at 1 thread, batch 1, timed alternately ({s.get('latency_timing', 'interleaved')} "
        "timing) with the same seed's reference "
        f"(machine: {doc['machine']['cpu_count']} CPUs, shared).",
        "",
        results_table(doc),
        "",
        targets_table(doc),
        "",
        f"Public results ({doc['public_benchmarks']['source']}):",
        "",
        public_table(doc),
        "",
        f"![Accuracy vs MACs per method, mean ± std over seeds]({png})",
    ]
    if any("subset" in n for n in doc.get("notes", [])):
        parts += ["", "This is the CPU preset: a training subset and few epochs, far from the "
                      "accuracy the protocol is made for; the targets above are reported as "
                      "measured. `--preset gpu` is the full protocol."]
    return "\n".join(parts)


def plot(doc: dict, path: str | pathlib.Path) -> None:
    """Pareto plot: test accuracy vs MACs, one series per method, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tf_gamma_prune.atomic_io import write_atomic

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"reference": "*", "gamma_ista": "o", "slimming": "s", "l1_norm": "^",
               "random": "v", "scratch": "D"}
    groups = [g for g in doc["summary"]["groups"] if g["n"]]
    for method, label in METHOD_LABELS.items():
        rows = sorted((g for g in groups if g["method"] == method), key=lambda g: g["macs"])
        if not rows:
            continue
        ax.errorbar([g["macs"] / 1e6 for g in rows], [100 * g["accuracy"] for g in rows],
                    yerr=[100 * (g["accuracy_std"] or 0.0) for g in rows],
                    marker=markers[method], markersize=11 if method == "reference" else 6,
                    capsize=3, linewidth=1.8 if method == "gamma_ista" else 1.0, label=label)
    s = doc["settings"]
    train = f"{s['train_examples']:,}" if s["train_examples"] else "60,000"
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("multiply-adds per image (millions, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, fashion_vgg: {train} training images, E = {s['epochs']} "
                 f"epochs, {len(s['seeds'])} seeds", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def replace_block(readme_text: str, block: str) -> str:
    """``readme_text`` with the text between the markers replaced by ``block``."""
    if START not in readme_text or END not in readme_text:
        raise ValueError(f"README has no {START} … {END} block.")
    head, rest = readme_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="benchmark results")
    parser.add_argument("--png", default=None, help="Pareto plot (default: --json with .png)")
    parser.add_argument("--readme", default=str(README), help="markdown page with the marked block")
    parser.add_argument("--write", action="store_true", help="write the block and the PNG")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    doc = load(args.json)
    png = pathlib.Path(args.png) if args.png else pathlib.Path(args.json).with_suffix(".png")
    # the image link is relative to the page that shows it
    text = markdown(doc, png=pathlib.Path(os.path.relpath(png.resolve(), pathlib.Path(args.readme)
                                                          .resolve().parent)).as_posix())
    print(text)
    if args.write:
        plot(doc, png)
        readme = pathlib.Path(args.readme)
        from tf_gamma_prune.atomic_io import write_atomic

        write_atomic(readme, replace_block(readme.read_text(), text).encode())
        print(f"\nwrote {png} and the block in {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
