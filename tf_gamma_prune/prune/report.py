"""What :func:`prune_model` did: :class:`PruneReport`, and the output check it runs.

The report gives per-layer widths before/after, parameter and MAC counts, what
was removed and why, the fold's extra layers (border maps, carriers, constant
layers), notes on approximations, and the largest output deviation from the
original model on a probe batch (inference mode).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph
from tf_gamma_prune.analysis.flops import model_cost
from tf_gamma_prune.analysis.kinds import DEPTHWISE, MIXING
from tf_gamma_prune.analysis.layer_graph import functional_core
from tf_gamma_prune.layers import BorderCorrection
from tf_gamma_prune.prune.plan import RemovalPlan
from tf_gamma_prune.prune.rebuild import Rebuilder

L = keras.layers


@dataclasses.dataclass
class PruneReport:
    """What :func:`prune_model` did.

    Attributes:
        widths: per conv/dense/depthwise/BatchNormalization layer, output
            channels ``(before, after)``.
        params_before / params_after: parameter counts.
        macs_before / macs_after: multiply-accumulates per example (``None``
            for dynamic input shapes).
        removed_constant: channel groups removed because they were constant.
        removed_selected: channel groups removed because the selection asked.
        border_corrections: layers that got a BorderCorrection (exact fold).
        border_params: numbers stored in those correction maps (included in
            ``params_after``; each map has its conv's output size).
        constant_layers: layers replaced by their constant output.
        fold: ``"exact"``, ``"carrier"`` or ``"bias"``.
        carriers: ``fold="carrier"``: each conv reader whose removed constants
            are carried, and the index (in its input's original channels) of
            the constant channel that carries them.
        carrier_channels: per conv/dense/depthwise/BatchNormalization layer,
            the original output channels kept only as carriers (included in
            ``widths``, ``params_after`` and ``macs_after``).
        max_abs_deviation / max_rel_deviation: largest output difference from
            the original on the probe batch (relative to the largest |output|);
            ``None`` without a probe.
        notes: other decisions and approximations.
    """

    widths: dict[str, tuple[int, int]]
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    removed_constant: int
    removed_selected: int
    border_corrections: list[str]
    constant_layers: list[str]
    fold: str
    border_params: int = 0
    carriers: dict[str, int] = dataclasses.field(default_factory=dict)
    carrier_channels: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    max_abs_deviation: float | None = None
    max_rel_deviation: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """A short human-readable summary."""
        lines = [
            f"params {self.params_before:,} -> {self.params_after:,}"
            f" ({self.params_after / max(self.params_before, 1):.1%})"
            + (f", of which {self.border_params:,} in border corrections"
               if self.border_params else ""),
        ]
        if self.macs_before is not None and self.macs_after is not None:
            lines.append(
                f"MACs {self.macs_before:,} -> {self.macs_after:,}"
                f" ({self.macs_after / max(self.macs_before, 1):.1%})"
            )
        lines.append(
            f"removed {self.removed_constant} constant and {self.removed_selected} "
            f"selected channel groups; fold={self.fold}"
        )
        if self.carriers:
            kept = ", ".join(f"{n} +{len(c)}" for n, c in self.carrier_channels.items())
            lines.append(
                f"carriers: {len(self.carriers)} reader(s) carry their removed constants "
                f"through a kept constant channel (kept for it: {kept or 'none extra'})"
            )
        if self.max_abs_deviation is not None:
            lines.append(
                f"probe deviation: max abs {self.max_abs_deviation:.3g}, "
                f"max rel {self.max_rel_deviation:.3g}"
            )
        changed = [f"  {n}: {a} -> {b}" for n, (a, b) in self.widths.items() if a != b]
        if changed:
            lines.append("widths:")
            lines.extend(changed)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# --- report ----------------------------------------------------------------------
def build_report(model: keras.Model, pruned: keras.Model, graph: ChannelGraph,
            plan: RemovalPlan, rebuilder: Rebuilder) -> PruneReport:
    widths: dict[str, tuple[int, int]] = {}
    carrier_channels: dict[str, list[int]] = {}
    for call in graph.layer_graph.calls:
        layer = call.layer
        if graph.kinds[call].name in (MIXING, DEPTHWISE) or isinstance(layer, L.BatchNormalization):
            t = call.outputs[0]
            widths.setdefault(call.name, (graph.width(t), len(rebuilder.keep[t])))
            if plan.carrier is not None:
                kept = np.flatnonzero(plan.carrier[graph.channels[t]])
                if kept.size:
                    carrier_channels.setdefault(call.name, kept.tolist())
    before, after = model_cost(model), model_cost(pruned)
    notes = list(rebuilder.notes)
    if rebuilder.bias_deviation:
        notes.append(
            f"fold='bias': border effects ignored, largest per-position bias error "
            f"{rebuilder.bias_deviation:.3g} (pre-activation)"
        )
    return PruneReport(
        widths=widths,
        params_before=before.params,
        params_after=after.params,
        macs_before=before.macs,
        macs_after=after.macs,
        removed_constant=int(plan.constant.sum()),
        removed_selected=int(plan.selected.sum()),
        border_corrections=rebuilder.border_corrections,
        border_params=sum(l.stored_size for l in pruned.layers
                          if isinstance(l, BorderCorrection)),
        constant_layers=rebuilder.constant_layers,
        fold=graph.fold,
        carriers={call.name: int(pos) for call, pos in plan.carriers.items()},
        carrier_channels=carrier_channels,
        notes=notes,
    )


def probe_batch(model: keras.Model, batch_size: int = 2, seed: int = 0,
                default_size: int = 32) -> list[np.ndarray]:
    """Random normal inputs for ``model`` (unknown sizes become ``default_size``)."""
    rng = np.random.default_rng(seed)
    batch = []
    for kt in functional_core(model).inputs:
        shape = (batch_size,) + tuple(d if d is not None else default_size
                                      for d in kt.shape[1:])
        batch.append(rng.standard_normal(shape).astype(kt.dtype))
    return batch


def output_deviation(original: keras.Model, pruned: keras.Model,
                     inputs: Any) -> tuple[float, float]:
    """Largest absolute and relative output difference (inference mode).

    The relative value divides by the largest |output| of ``original``.
    """
    a = [np.asarray(keras.ops.convert_to_numpy(v), np.float64)
         for v in keras.tree.flatten(original(inputs, training=False))]
    b = [np.asarray(keras.ops.convert_to_numpy(v), np.float64)
         for v in keras.tree.flatten(pruned(inputs, training=False))]
    abs_dev = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    scale = max(float(np.abs(x).max()) for x in a)
    return abs_dev, abs_dev / max(scale, 1e-30)


def probe_deviation(model: keras.Model, pruned: keras.Model, report: PruneReport,
           probe_inputs: Any) -> None:
    inputs = probe_inputs
    if inputs is None:
        batch = probe_batch(model)
        inputs = batch[0] if len(batch) == 1 else batch
    report.max_abs_deviation, report.max_rel_deviation = output_deviation(
        model, pruned, inputs
    )
