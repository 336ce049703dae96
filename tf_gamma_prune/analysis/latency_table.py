"""A per-layer latency table: what a pruned model would cost in milliseconds, without converting it.

Latency is not proportional to MACs: XNNPACK computes a convolution's output
channels in tiles (8 on ARM NEON phones; on this AVX-512 machine a 14×14×64
3×3 conv takes 33.7 µs for 1-16 output channels, 66.7 µs for 17-32 and
135.5 µs for 33-64: ``benchmarks/results/latency_table.json``), and every op
has a fixed overhead. A
:class:`LatencyTable` holds, for each conv/dense layer of one model, latencies
measured through LiteRT (:func:`tf_gamma_prune.export.measure_latency_table`)
along two sweeps at the layer's own spatial size:

* ``out``: the number of output channels at the full input width, every
  ``step`` channels (tile effects included);
* ``in``: the number of input channels at the full output width;

plus ``min_ms`` (the smallest widths: the op's overhead). A layer keeping
``k_in`` of ``c_in`` input and ``k_out`` of ``c_out`` output channels is
predicted as ``o + (O(k_out) − o)·(I(k_in) − o) / (F − o)`` (``O``/``I`` the
sweeps, looked up at the next measured width up, ``F`` the full layer, ``o``
the overhead): exact on both sweeps, bilinear in between. A depthwise layer
has one sweep (its channels in = out).

The whole model is predicted as ``scale × Σ predicted layers + rest``, an
affine map fitted to the measured unpruned model and one measured pruned
variant (``model_points``: pairs of (Σ layers, model) milliseconds): ops alone
with their input in cache run faster than inside the model, and the rest
(pooling, the head, the copies between ops) does not shrink with the layers.
On fashion_vgg at this machine (1 thread, ``benchmarks/latency_table.py``),
with 20, 40, 60 and 75 % of the channels removed at random, the table
predicted the measured ``.tflite`` latency within +1 to +22 % (the error grows
as the layers shrink to a few channels), where scaling the model's latency by
its MACs was 19-34 % low. :func:`planned_latency_ms` does that for the removal plan of a
channel graph, like :func:`~tf_gamma_prune.analysis.flops.planned_macs` does
for MACs, so :class:`~tf_gamma_prune.CostTarget` can steer to ``latency_ms=``
and :func:`~tf_gamma_prune.gamma_penalties` can weigh channels by the time
they cost. The table is plain JSON (:meth:`LatencyTable.to_json`); measure it
on the device you ship to (the tiles and overheads are the device's).

Example:

>>> table = LatencyTable({
...     "conv": {"kind": "mixing", "in": [8, 16], "in_ms": [0.06, 0.1],
...              "out": [16, 32], "out_ms": [0.05, 0.1], "min_ms": 0.02},
... }, model_ms=0.2, model_points=[(0.1, 0.2), (0.05, 0.12)])
>>> table.layer_ms("conv", 16, 32)       # the full layer
0.1
>>> table.layer_ms("conv", 16, 17)       # 17 output channels cost what 32 cost
0.1
>>> round(table.layer_ms("conv", 8, 16), 4)  # 0.02 + 0.03 * 0.04 / 0.08
0.035
>>> round(table.model_ms_for({"conv": (8, 16)}), 4)  # 1.6 · 0.035 + 0.04
0.096
"""

from __future__ import annotations

import bisect
import json
import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from tf_gamma_prune.analysis.kinds import DEPTHWISE, MIXING
from tf_gamma_prune.errors import ArgumentError, LatencyTableError

if TYPE_CHECKING:
    from tf_gamma_prune.analysis.channel_graph import ChannelGraph

TABLE_FORMAT = 1


class LatencyTable:
    """Measured per-layer latencies of one model and the prediction built on them.

    Args:
        layers: per layer name, ``{"kind": "mixing" | "depthwise", "out": widths,
            "out_ms": latencies, "in": widths, "in_ms": latencies, "min_ms": overhead}``
            (a depthwise layer has ``out``/``out_ms`` only: its channels in = out).
            Widths ascend and end at the layer's full width.
        model_ms: the unpruned model's measured latency.
        model_points: measured ``(Σ layers ms, model ms)`` pairs of the model and
            of pruned variants, for the affine map from the layers to the model
            (least squares; the rest clipped at 0). Default: the unpruned model
            alone, a proportional map.
        info: free-form facts about the measurement (threads, machine, runs).
    """

    def __init__(self, layers: Mapping[str, Mapping[str, Any]], model_ms: float,
                 info: Mapping[str, Any] | None = None,
                 model_points: Iterable[tuple[float, float]] | None = None):
        self.layers = {name: _checked_entry(name, entry) for name, entry in layers.items()}
        if not self.layers:
            raise ArgumentError("A LatencyTable needs at least one layer.")
        if not model_ms > 0:
            raise ArgumentError(f"model_ms must be a positive latency, got {model_ms!r}.")
        self.model_ms = float(model_ms)
        self.info = dict(info or {})
        self.full_layers_ms = sum(self.full_ms(name) for name in self.layers)
        points = [(float(a), float(b)) for a, b in (model_points or [])]
        self.model_points = points or [(self.full_layers_ms, self.model_ms)]
        self.scale, self.rest_ms = _affine(self.model_points)

    # ------------------------------------------------------------------ lookups
    def full_ms(self, name: str) -> float:
        """The layer's latency at its full widths."""
        return float(self.layers[name]["out_ms"][-1])

    def widths(self, name: str) -> tuple[int, int]:
        """The layer's full ``(c_in, c_out)`` as measured."""
        entry = self.layers[name]
        c_out = int(entry["out"][-1])
        return (c_out if entry["kind"] == DEPTHWISE else int(entry["in"][-1])), c_out

    def layer_ms(self, name: str, k_in: int, k_out: int) -> float:
        """The predicted latency of layer ``name`` keeping ``k_in`` inputs and ``k_out`` outputs
        (0 when either is 0: the layer is gone or a constant)."""
        if name not in self.layers:
            raise LatencyTableError(f"The latency table has no layer '{name}' (it has "
                                f"{sorted(self.layers)}); measure it for this model.")
        if k_in <= 0 or k_out <= 0:
            return 0.0
        entry = self.layers[name]
        out_ms = _step_lookup(entry["out"], entry["out_ms"], k_out)
        if entry["kind"] == DEPTHWISE:
            return out_ms
        full, overhead = self.full_ms(name), float(entry["min_ms"])
        in_ms = _step_lookup(entry["in"], entry["in_ms"], k_in)
        if full <= overhead:
            return full
        return overhead + (out_ms - overhead) * (in_ms - overhead) / (full - overhead)

    def model_ms_for(self, kept: Mapping[str, tuple[int, int]]) -> float:
        """The predicted latency of the model whose layers keep ``kept[name] = (k_in, k_out)``
        channels (layers not named keep their full widths)."""
        unknown = sorted(set(kept) - set(self.layers))
        if unknown:
            raise LatencyTableError(f"The latency table has no layers {unknown}; measure it for this model.")
        total = sum(self.layer_ms(name, *kept[name]) if name in kept else self.full_ms(name)
                    for name in self.layers)
        return self.scale * total + self.rest_ms

    def channel_ms(self, name: str, side: str) -> float:
        """Average time one channel of layer ``name`` costs on ``side`` ("in" or "out"):
        the full layer minus the layer at the smallest measured width, per channel."""
        entry = self.layers[name]
        key = "out" if side == "out" or entry["kind"] == DEPTHWISE else "in"
        widths, ms = entry[key], entry[f"{key}_ms"]
        if len(widths) < 2:
            return float(ms[-1]) / max(1, int(widths[-1]))
        return max(0.0, float(ms[-1] - ms[0])) / (int(widths[-1]) - int(widths[0]))

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The table as a JSON-ready dict (:meth:`from_json` reads it back)."""
        return {"format": TABLE_FORMAT, "model_ms": self.model_ms, "info": self.info,
                "model_points": [list(p) for p in self.model_points],
                "layers": {name: dict(entry) for name, entry in self.layers.items()}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "LatencyTable":
        """A table from :meth:`to_json`'s dict."""
        found = doc.get("format") if isinstance(doc, Mapping) else type(doc).__name__
        if found != TABLE_FORMAT or not {"layers", "model_ms"} <= set(doc):
            raise LatencyTableError(f"Not a latency table of format {TABLE_FORMAT} (found {found!r}); "
                                    "measure one with tf_gamma_prune.export.measure_latency_table.")
        return cls(doc["layers"], doc["model_ms"], doc.get("info"), doc.get("model_points"))

    def save(self, path: str) -> None:
        """Write the table as JSON (atomically)."""
        from tf_gamma_prune.atomic_io import write_json_atomic

        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "LatencyTable":
        """Read a table :meth:`save` wrote."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except json.JSONDecodeError as e:
            raise LatencyTableError(f"{path} is not valid JSON ({e}); measure the table again.") from e
        return cls.from_json(doc)


def _checked_entry(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    kind = entry.get("kind")
    if kind not in (MIXING, DEPTHWISE):
        raise ArgumentError(f"Latency table entry '{name}': kind must be '{MIXING}' or '{DEPTHWISE}', got {kind!r}.")
    out = {"kind": kind}
    for side in ("out",) if kind == DEPTHWISE else ("out", "in"):
        widths = [int(w) for w in entry[side]]
        ms = [float(v) for v in entry[f"{side}_ms"]]
        if not widths or len(widths) != len(ms) or widths != sorted(set(widths)) or widths[0] < 1:
            raise ArgumentError(f"Latency table entry '{name}': '{side}' must be ascending positive "
                                f"widths with one latency each, got {widths} and {ms}.")
        if not all(math.isfinite(v) and v > 0 for v in ms):
            raise ArgumentError(f"Latency table entry '{name}': '{side}_ms' must be positive, got {ms}.")
        out[side], out[f"{side}_ms"] = widths, ms
    if kind == MIXING:
        out["min_ms"] = float(entry.get("min_ms", min(out["out_ms"] + out["in_ms"])))
    return out


def _affine(points: list[tuple[float, float]]) -> tuple[float, float]:
    """``(scale, rest)`` with ``model ≈ scale · layers + rest`` (least squares, rest ≥ 0)."""
    layers, model = np.array(points, np.float64).T
    if len(points) > 1 and np.ptp(layers) > 0:
        scale, rest = np.polyfit(layers, model, 1)
        if rest >= 0 and scale > 0:
            return float(scale), float(rest)
    return float(model.sum() / layers.sum()), 0.0  # proportional


def _step_lookup(widths: list[int], ms: list[float], k: int) -> float:
    """The latency at the smallest measured width ≥ ``k`` (a tile's worth costs the whole tile)."""
    i = bisect.bisect_left(widths, k)
    return float(ms[min(i, len(ms) - 1)])


def planned_latency_ms(graph: "ChannelGraph", removed: np.ndarray, table: LatencyTable) -> float:
    """The predicted latency of the model ``prune_model`` builds when it removes ``removed``.

    Every conv/dense call whose layer is in ``table`` is looked up at its kept
    input and output widths (as :func:`~tf_gamma_prune.analysis.flops.planned_macs`
    counts them); the model's latency scales with the sum (see the module
    docstring).
    """
    kept: dict[str, tuple[int, int]] = {}
    for call in graph.layer_graph.calls:
        name = call.layer.name
        if name not in table.layers or call not in graph.kinds:
            continue
        if graph.kinds[call].name not in (MIXING, DEPTHWISE):
            continue
        in_t, out_t = call.inputs[0], call.outputs[0]
        k_in = int(np.count_nonzero(~removed[graph.channels[in_t]]))
        k_out = int(np.count_nonzero(~removed[graph.channels[out_t]]))
        full = table.widths(name)
        if (graph.width(in_t), graph.width(out_t)) != full:
            raise LatencyTableError(f"The latency table's layer '{name}' has widths {full}, the model's "
                                f"{(graph.width(in_t), graph.width(out_t))}: it was measured for "
                                "another model; measure it for this one.")
        kept[name] = (k_in, k_out)
    return table.model_ms_for(kept)
