"""Render the compression benchmark's JSON: docs table, targets, Pareto plot.

    .venv/bin/python benchmarks/compression_report.py            # print the markdown
    .venv/bin/python benchmarks/compression_report.py --write    # + docs/benchmarks.md block + PNG

docs/benchmarks.md keeps the rendering between ``<!-- compression:start -->`` and
``<!-- compression:end -->``; tests/test_compression_report.py fails when the
block disagrees with the committed ``benchmarks/results/compression.json``
(the full-data run; ``--json`` renders another, e.g. the short ``compression_cpu_short.json``),
so a rerun of ``benchmarks/compression.py`` must be followed by ``--write``.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # for importers by file path

from compression_presets import FROM_REFERENCE, migrate_settings, protocol_of  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_JSON = HERE / "results" / "compression.json"  # the full-data run
README = ROOT / "docs" / "benchmarks.md"  # the page with the marked block
START, END = "<!-- compression:start -->", "<!-- compression:end -->"

METHOD_LABELS = {
    "reference": "reference (unpruned)",
    "gamma_ista": "GammaISTA (ours)",
    "slimming": "Network Slimming",
    "l1_norm": "L1-norm filters",
    "random": "random (GammaISTA widths)",
    "scratch": "scratch (GammaISTA widths)",
    "structural_redundancy": "structural redundancy",
    "redundancy_random": "redundancy-allocated random",
    "prunenet": "PruneNet",
    "receding_importance": "receding importances",
    "admm": "single-shot ADMM",
    "coarse_ranking": "Taylor (coarse ranking)",
    "gamma_ista_tiled": "GammaISTA, widths in tiles of 16",
    "l1_norm_tiled": "L1-norm filters, widths in tiles of 16",
}
TARGET_LABELS = {
    "compression_accuracy": "(1) ≥ 3× fewer MACs and ≥ 5× fewer params, accuracy drop (points)",
    "beats_baselines": "(2) GammaISTA − best of Slimming / L1-norm at matched MACs (points)",
    "latency_follows_macs": "(3) TFLite speed-up / MAC reduction, 1 thread",
    "small_and_accurate": "(4) best accuracy of a pruned model with ≤ 100k params",
}
REFERENCE_TARGET_LABELS = {
    **TARGET_LABELS,
    "beats_baselines": "(2) GammaISTA's binding lead at matched MACs, every target (points; "
                       "≥ 0.3 over Slimming, L1-norm; ≥ 0 over scratch)",
    "latency_follows_macs": "(3) TFLite speed-up / MAC reduction, 1 thread, steady: smallest over "
                            "every GammaISTA model",
    "latency_follows_macs_tiled": "(3) the same for GammaISTA with widths in tiles "
                                  "(`gamma_ista_tiled`)",
}


def load(path: str | pathlib.Path = DEFAULT_JSON) -> dict:
    """The benchmark document written by ``benchmarks/compression.py``.

    Settings written before presets had a protocol are read in today's names
    (``compression_presets.migrate_settings``: from_scratch; preset ``cpu`` →
    ``cpu_short``), so the command shown is the one that reproduces the file.
    """
    doc = json.loads(pathlib.Path(path).read_text())
    doc["settings"] = migrate_settings(doc.get("settings"))
    return doc


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


def _short(reason: str, length: int = 70) -> str:
    """A table cell's version of a long reason (the JSON keeps it whole)."""
    return reason if len(reason) <= length else reason[: length - 1] + "…"


def _epochs(row: dict) -> str:
    """The epochs column: phase 1 + phase 2, or the epochs of a model trained on its own."""
    if "sparsify_epochs" in row:
        return f"{row['sparsify_epochs']} + {row['finetune_epochs']}"
    if row.get("scratch_epochs"):
        return f"{row['scratch_epochs']} (fresh init.)"
    if row.get("reference_epochs"):
        return f"{row['reference_epochs']} (reference)"
    return "–"


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
        if row.get("mac_target"):
            target += f" ({row['mac_target']:g}× fewer MACs)"
        epochs = _epochs(row)
        if not row["n"]:
            reasons = "; ".join(_short(r) for r in row.get("unreachable_reasons", []))
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
    labels = (REFERENCE_TARGET_LABELS if protocol_of(doc["settings"]) == FROM_REFERENCE
              else TARGET_LABELS)
    lines = ["| target | value | threshold | verdict |", "|---|---|---|---|"]
    for t in doc["summary"]["targets"]:
        label = labels.get(t["name"], t["name"])
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
    if protocol_of(doc["settings"]) == FROM_REFERENCE:
        return markdown_reference(doc, png)
    s, net = doc["settings"], doc["network"]
    train = f"{s['train_examples']:,}" if s["train_examples"] else "60,000"
    parts = [
        "(rendered from `benchmarks/results/compression_cpu_short.json` by "
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


def tuning_table(doc: dict) -> str:
    """Every tuning trial (first seed, validation accuracy); the chosen ones in bold."""
    chosen = {(c["method"], c["target"], c["trial"]) for c in doc["summary"].get("tuning", [])}
    lines = ["| method | target | trial | overrides | validation accuracy % | seconds |",
             "|---|---|---|---|---|---|"]
    for t in doc.get("tuning", {}).get("trials", []):
        acc = ("unreachable" if t.get("validation_accuracy") is None
               else f"{100 * t['validation_accuracy']:.2f}")
        if (t["method"], t["target"], t["trial"]) in chosen:
            acc = f"**{acc}** (chosen)"
        overrides = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in t["overrides"].items()) or "–"
        lines.append(f"| {METHOD_LABELS.get(t['method'], t['method'])} | {t['target'] + 1} | "
                     f"{t['trial'] + 1} | {overrides} | {acc} | {t['seconds']:.0f} |")
    return "\n".join(lines)


def markdown_reference(doc: dict, png: str) -> str:
    """The block for a from_reference run: protocol, results, targets, tuning, public rows."""
    s, net, ref = doc["settings"], doc["network"], doc.get("reference", {})
    budget = doc["summary"].get("budget", {})
    train = f"{s['train_examples']:,} (stratified subset)" if s["train_examples"] else "55,000"
    within = ("all within" if budget.get("all_within") else "**not all within**")
    parts = [
        "(rendered from the compression JSON by `benchmarks/compression_report.py --write`)",
        "",
        f"`benchmarks/compression.py --preset {s['preset']}`: every method starts from the trained "
        f"reference `fashion_vgg` (widths {'-'.join(map(str, net['widths']))}, "
        f"{net['params']:,} parameters, {net['macs']:,} MACs; {ref.get('source', '?')}, seed "
        f"{ref.get('seed')}, {ref.get('epochs')} epochs). Fashion-MNIST: {train} training "
        f"images, {s['validation_examples']:,} held out for tuning, test accuracy on "
        f"{s['test_examples'] or 10000:,} test images. After the reference every method gets "
        f"{s['sparsify_epochs']} + {s['finetune_epochs']} epochs: GammaISTA (α {s['alpha']:g}, "
        f"ρ steered by `CostTarget` to the MAC budget, then `prune_model({_fold_args(s)})`) and "
        f"Network Slimming sparsify for {s['sparsify_epochs']} and fine-tune for "
        f"{s['finetune_epochs']}; L1-norm and random fine-tune for "
        f"{s['sparsify_epochs'] + s['finetune_epochs']}; fine-tuning is SGD (momentum "
        f"{s['momentum']}) with a cosine decay to 0, augmentation `{s['augment']}`. Slimming and "
        f"L1-norm are matched to GammaISTA's MACs (±{s['match_tolerance']:.0%}); random and "
        "scratch use its widths; scratch trains from a fresh initialisation with the "
        f"reference's recipe for {ref.get('scratch_epochs')} epochs. GammaISTA's MACs against "
        f"the budget: {within} ±{s['match_tolerance']:.0%}. Seeds {s['seeds']}; latency: LiteRT "
        f"at 1 thread, batch 1, {s['latency_timing']} timing, against the reference "
        f"(machine: {doc['machine']['cpu_count']} CPUs, shared).",
        "",
        results_table(doc),
        "",
        targets_table(doc),
        "",
        f"Tuning (seed {doc['tuning']['seed']}, on the validation split; the chosen trial of each "
        "method and target is used for every seed):",
        "",
        tuning_table(doc),
        "",
        f"Public results ({doc['public_benchmarks']['source']}):",
        "",
        public_table(doc),
        "",
        f"![Accuracy vs MACs per method, mean ± std over seeds]({png})",
    ]
    if s["train_examples"]:
        parts += ["", "A training subset: the accuracy targets are not expected to be met."]
    return "\n".join(parts)


def plot(doc: dict, path: str | pathlib.Path) -> None:
    """Pareto plot: test accuracy vs MACs, one series per method, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tf_gamma_prune.atomic_io import write_atomic

    fig, ax = plt.subplots(figsize=(9.5, 5.0))
    colors = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors  # one per method
    markers = {"reference": "*", "gamma_ista": "o", "slimming": "s", "l1_norm": "^",
               "random": "v", "scratch": "D", "structural_redundancy": "x",
               "redundancy_random": "+", "prunenet": "P", "receding_importance": "<",
               "admm": ">", "coarse_ranking": "h", "gamma_ista_tiled": "X",
               "l1_norm_tiled": "d"}
    groups = [g for g in doc["summary"]["groups"] if g["n"]]
    for method, label in METHOD_LABELS.items():
        rows = sorted((g for g in groups if g["method"] == method), key=lambda g: g["macs"])
        if not rows:
            continue
        ax.errorbar([g["macs"] / 1e6 for g in rows], [100 * g["accuracy"] for g in rows],
                    yerr=[100 * (g["accuracy_std"] or 0.0) for g in rows],
                    marker=markers[method], markersize=11 if method == "reference" else 6,
                    color=colors[list(METHOD_LABELS).index(method) % len(colors)],
                    capsize=3, linewidth=1.8 if method == "gamma_ista" else 1.0, label=label)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("multiply-adds per image (millions, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(plot_title(doc["settings"]), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def plot_title(s: dict) -> str:
    """The Pareto plot's title: data, budget, seeds."""
    if protocol_of(s) == FROM_REFERENCE:
        train = f"{s['train_examples']:,}" if s["train_examples"] else "55,000"
        return (f"Fashion-MNIST, fashion_vgg from a trained reference: {train} training images, "
                f"{s['sparsify_epochs']} + {s['finetune_epochs']} epochs after it, "
                f"{len(s['seeds'])} seeds")
    train = f"{s['train_examples']:,}" if s["train_examples"] else "60,000"
    return (f"Fashion-MNIST, fashion_vgg: {train} training images, E = {s['epochs']} "
            f"epochs, {len(s['seeds'])} seeds")


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
