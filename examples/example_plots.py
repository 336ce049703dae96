"""Plots for the examples: γ over training, channel widths, accuracy vs MACs.

Every plot is a PNG written atomically (``tf_gamma_prune.export.write_atomic``)
with matplotlib's non-interactive Agg backend, so the examples run headless.

    recorder = GammaRecorder()                 # a Keras callback: γ per BN layer per epoch
    model.fit(..., callbacks=[recorder])
    plot_gamma_distributions(recorder.history, "gamma.png")
    plot_channel_widths(report.widths, "widths.png", layers=conv_names)
    plot_accuracy_vs_macs([("dense", 0.91, 29e6), ("pruned", 0.90, 9e6)], "acc_macs.png")
"""

from __future__ import annotations

import io
import math
from typing import Iterable, Mapping, Sequence

import keras
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class GammaRecorder(keras.callbacks.Callback):
    """Records every BatchNormalization γ at the start of training and after each epoch.

    ``history`` maps the BN's qualified name to a list of arrays (one per record;
    the first is the γ before training). ``epochs`` holds the matching epoch
    numbers (0 = before training).

        recorder = GammaRecorder()
        model.fit(train, epochs=3, callbacks=[recorder])
        recorder.history["bn1"][-1]   # γ of bn1 after the last epoch
    """

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[np.ndarray]] = {}
        self.epochs: list[int] = []

    def _record(self, epoch: int) -> None:
        from tf_gamma_prune import batchnorm_layers

        for name, layer in batchnorm_layers(self.model):
            if getattr(layer, "gamma", None) is not None:
                value = np.array(keras.ops.convert_to_numpy(layer.gamma), dtype=np.float32)
                self.history.setdefault(name, []).append(value)
        self.epochs.append(epoch)

    def on_train_begin(self, logs=None):
        if not self.epochs:  # a second fit() continues the same record
            self._record(0)

    def on_epoch_end(self, epoch, logs=None):
        self._record(self.epochs[-1] + 1 if self.epochs else epoch + 1)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str) -> str:
    """Render ``figure`` to PNG bytes, write them atomically to ``path``, close it."""
    from tf_gamma_prune.export import write_atomic

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    write_atomic(path, buffer.getvalue())
    return path


def is_png(path: str) -> bool:
    """Whether ``path`` starts with the PNG signature (a quick validity check)."""
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIGNATURE


def plot_gamma_distributions(history: Mapping[str, Sequence[np.ndarray]], path: str,
                             epochs: Sequence[int] | None = None, title: str | None = None) -> str:
    """One panel per BN layer: sorted |γ| of its channels, one curve per epoch.

    Channels at exactly zero form the flat run at the left of a curve; the
    panel title gives their count at the last epoch.
    """
    plt = _pyplot()
    names = list(history)
    if not names:
        raise ValueError("No γ recorded: was GammaRecorder passed to model.fit(callbacks=...)?")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    n_records = len(history[names[0]])
    epochs = list(epochs) if epochs is not None else list(range(n_records))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, n_records))
    for ax, name in zip(axes.flat, names):
        for record, (gamma, color) in enumerate(zip(history[name], colors)):
            ranked = np.sort(np.abs(gamma))
            label = f"epoch {epochs[record]}" if record < len(epochs) else None
            ax.plot(np.arange(ranked.size), ranked, color=color, linewidth=1.4, label=label)
        last = history[name][-1]
        ax.set_title(f"{name}: {int(np.sum(last == 0))}/{last.size} γ = 0", fontsize=10)
        ax.set_xlabel("channel (sorted by |γ|)", fontsize=8)
        ax.set_ylabel("|γ|", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    figure.suptitle(title or "BatchNorm |γ| per layer over training", fontsize=12)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_channel_widths(widths: Mapping[str, tuple[int, int]], path: str,
                        layers: Iterable[str] | None = None, title: str | None = None) -> str:
    """Grouped bars: output channels of each layer before and after pruning.

    ``widths`` is ``PruneReport.widths``; ``layers`` picks and orders the layers
    to show (default: all).
    """
    plt = _pyplot()
    names = [n for n in (layers if layers is not None else widths) if n in widths]
    if not names:
        raise ValueError(f"None of the requested layers are in the report; it has {sorted(widths)}.")
    before = np.array([widths[n][0] for n in names])
    after = np.array([widths[n][1] for n in names])
    x = np.arange(len(names))
    figure, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(names) + 2), 3.6))
    ax.bar(x - 0.2, before, 0.4, label="before", color="#b0b0b0")
    ax.bar(x + 0.2, after, 0.4, label="after prune_model", color="#2a7ab9")
    for xi, value in zip(x, after):
        ax.text(xi + 0.2, value, str(value), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center",
                  fontsize=8)
    ax.set_ylabel("output channels")
    ax.set_title(title or f"Channel widths: {before.sum():,} → {after.sum():,}", fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_accuracy_vs_macs(points: Sequence[tuple[str, float, float]], path: str,
                          title: str | None = None) -> str:
    """Scatter of test accuracy against multiply-adds, one labelled point per stage.

    ``points`` are ``(stage, accuracy, macs)``.
    """
    plt = _pyplot()
    if not points:
        raise ValueError("plot_accuracy_vs_macs needs at least one (stage, accuracy, macs) point.")
    figure, ax = plt.subplots(figsize=(7.5, 3.8))
    markers = "osD^v<>ph"
    for i, (stage, accuracy, macs) in enumerate(points):
        ax.scatter(macs / 1e6, accuracy, s=50, marker=markers[i % len(markers)], label=stage, zorder=3)
    ax.set_xlabel("multiply-adds per image (millions)")
    ax.set_ylabel("test accuracy")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(title or "Accuracy vs compute per stage", fontsize=11)
    figure.tight_layout()
    return save_figure(figure, path)
