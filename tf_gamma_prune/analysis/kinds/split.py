"""``keras.ops.split(x, indices_or_sections, axis)`` nodes (``Split``, several outputs).

Two splits are followed, both with static Python ints (an int section count or
a list of split points):

* along the **channel axis** (``axis=-1`` or ``rank - 1``; the CSP / YOLO
  ``a, b = keras.ops.split(h, 2, axis=-1)``): output ``i`` holds input channels
  ``[p_i, p_i+1)``, the same channels; constants are split with them. The
  rebuilt split takes explicit split points, the numbers of kept input channels
  before each original point. An output whose every channel was removed is
  left out of the rebuilt model like any tensor without channels (a conv reading
  it becomes a constant, a concatenation drops it); the other outputs come from
  a split without that part (no empty parts), or are the input itself when only
  one part is left;
* along a **spatial axis**: channel ``k`` of every output is channel ``k`` of the
  input; a uniform constant stays uniform, a constant map is split like the
  tensor.

Any other split (the batch axis, points that are not sorted static ints within
the channel count, an empty original part) makes the node opaque: its channels
are kept and it is rebuilt unchanged.

>>> import keras
>>> from tf_gamma_prune import channel_graph
>>> x = keras.Input((4, 4, 3))
>>> h = keras.layers.Conv2D(6, 1, name="c")(x)
>>> a, b = keras.ops.split(h, [2], axis=-1)
>>> y = keras.layers.Concatenate()([keras.layers.Conv2D(2, 1)(a), b])
>>> graph = channel_graph(keras.Model(x, y))
>>> call = [c for c in graph.layer_graph.calls if c.name.startswith("split")][0]
>>> graph.kinds[call].name
'split'
>>> [graph.channels[t].tolist() == graph.layer_channels("c")[s].tolist()
...  for t, s in zip(call.outputs, (slice(0, 2), slice(2, 6)))]
[True, True]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """A followed split: its axis (non-negative) and, along the channel axis,
    the bounds ``0 = p_0 < p_1 < ... < p_n = width`` of its ``n`` outputs."""

    axis: int
    rank: int
    bounds: tuple[int, ...] | None  # None: a spatial split

    @property
    def on_channels(self) -> bool:
        return self.axis == self.rank - 1


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _channel_bounds(sections: Any, width: int) -> tuple[int, ...] | None:
    """``(0, p_1, ..., width)`` for a static int or list of points (``None``:
    not static, unsorted, out of range, or an empty part)."""
    if _is_int(sections):
        n = int(sections)
        if n < 1 or width % n:
            return None
        return tuple(range(0, width + 1, width // n))
    if not isinstance(sections, (tuple, list)) or not all(_is_int(p) for p in sections):
        return None
    bounds = (0,) + tuple(int(p) for p in sections) + (width,)
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        return None
    return bounds


def _spatial_sections(sections: Any, size: int | None) -> bool:
    """A static int, or sorted static points within the axis (numpy's and the
    backends' splits agree on those)."""
    if _is_int(sections):
        return int(sections) >= 1
    if not isinstance(sections, (tuple, list)) or not all(_is_int(p) for p in sections):
        return False
    points = [0] + [int(p) for p in sections] + ([size] if size is not None else [])
    return all(a <= b for a, b in zip(points, points[1:]))


def split_plan(call: LayerCall) -> SplitPlan | None:
    """The followed split of a ``Split`` call (``None``: the node is opaque)."""
    op = call.layer
    if len(call.node.arguments.keras_tensors) != 1 or len(call.inputs) != 1:
        return None
    shape = tuple(call.node.input_tensors[0].shape)
    rank, axis = len(shape), getattr(op, "axis", None)
    if rank < 2 or shape[-1] is None or not _is_int(axis) or not -rank <= axis < rank:
        return None
    axis = int(axis) % rank
    outs = [tuple(t.shape) for t in call.node.outputs]
    if axis == 0 or len(outs) != len(call.outputs):
        return None
    width = int(shape[-1])
    if axis < rank - 1:
        if not _spatial_sections(op.indices_or_sections, shape[axis]):
            return None
        if any(len(s) != rank or s[-1] != width for s in outs):
            return None
        return SplitPlan(axis, rank, None)
    bounds = _channel_bounds(op.indices_or_sections, width)
    if bounds is None or len(bounds) - 1 != len(outs):
        return None
    if [s[-1] for s in outs] != [b - a for a, b in zip(bounds, bounds[1:])]:
        return None
    return SplitPlan(axis, rank, bounds)


class SplitKind(LayerKind):
    """``keras.ops.split``: along the channel axis or a spatial axis (see the
    module docstring)."""

    name = "split"
    single_io = False

    def refine(self, call: LayerCall) -> LayerKind:
        from tf_gamma_prune.analysis.kinds.registry import OPAQUE_KIND

        return self if split_plan(call) is not None else OPAQUE_KIND

    def connect(self, b: Any, call: LayerCall) -> None:
        plan, src = _plan(call), b.raw[call.inputs[0]]
        for i, t in enumerate(call.outputs):
            b.raw[t] = src[plan.bounds[i]:plan.bounds[i + 1]] if plan.on_channels else src

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> list[Constants | None] | None:
        """One :class:`Constants` (or ``None``) per output."""
        src = ins[0]
        if src is None:
            return None
        plan = _plan(call)
        if plan.on_channels:
            return [_part(src.mask[a:z], src.value[..., a:z])
                    for a, z in zip(plan.bounds, plan.bounds[1:])]
        if src.uniform:
            return [Constants(src.mask.copy(), src.value) for _ in call.outputs]
        x = b.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        maps = np.split(x, _sections(call.layer.indices_or_sections), axis=plan.axis)
        return [Constants(src.mask.copy(), np.array(m)) for m in maps]

    def rebuild(self, r: Any, call: LayerCall) -> None:
        plan = _plan(call)
        keep_in = r.keep[call.inputs[0]]
        if not plan.on_channels or len(keep_in) == plan.bounds[-1]:
            r.rebuild_generic(call)
            return
        bounds = [int(np.count_nonzero(keep_in < p)) for p in plan.bounds]
        widths = np.diff(bounds)
        if widths.tolist() != [len(r.keep[t]) for t in call.outputs]:
            raise AssertionError(f"internal error: split '{call.name}' kept widths differ")
        live = [t for t, w in zip(call.outputs, widths) if w > 0]
        for t in call.outputs:
            r.values[t] = r.EMPTY
        x = r.values[call.inputs[0]]
        if len(live) == 1:
            r.values[live[0]] = x
            return
        points = np.cumsum(widths[widths > 0])[:-1].tolist()
        config = call.layer.get_config()
        config["indices_or_sections"] = [int(p) for p in points]
        parts = type(call.layer).from_config(config)(x)
        for t, v in zip(live, parts):
            r.values[t] = v


def _part(mask: np.ndarray, value: np.ndarray) -> Constants | None:
    return Constants(mask.copy(), np.array(value)) if mask.any() else None


def _sections(sections: Any) -> int | list[int]:
    return int(sections) if _is_int(sections) else [int(p) for p in sections]


def _plan(call: LayerCall) -> SplitPlan:
    plan = split_plan(call)
    if plan is None:  # refine() makes such a node opaque
        raise AssertionError(f"internal error: '{call.name}' has no followed split")
    return plan
