"""Tensor slicing ``x[key]`` of a functional KerasTensor (``keras.ops`` ``GetItem`` nodes).

Two keys are followed, both with static Python ints (or ``None``) as bounds
and the batch axis whole (``:`` or ``...``):

* a **channel slice** ``x[..., a:b]`` (step 1 on the last axis): output channel
  ``j`` is input channel ``a + j``, the same channel (GhostNet / CSP channel
  splits). Constants are sliced with it. The rebuilt slice's bounds are the
  numbers of kept input channels before ``a`` and before ``b``; a slice whose
  every channel was removed is left out of the rebuilt model like any tensor
  without channels (a conv reading it becomes a constant, a concatenation
  drops it);
* a **spatial slice** that keeps the last axis whole (``x[:, 1:-1, 1:-1, :]``,
  ``x[:, ::2]``, ``x[:, 0]``): channel ``k`` stays channel ``k``; a spatially
  uniform constant stays uniform, a constant map is sliced like the tensor.

Spatial entries may come with a channel slice (``x[:, 1:, :, 2:6]``). Any other
key (an integer or a step other than 1 on the channel axis, ``None`` /
``np.newaxis``, arrays, tensors, a sliced batch axis) makes the node opaque: its
channels are kept and it is rebuilt unchanged.

>>> import keras
>>> from tf_gamma_prune import channel_graph
>>> x = keras.Input((4, 4, 3))
>>> h = keras.layers.Conv2D(6, 1, name="c")(x)
>>> y = keras.layers.Conv2D(2, 1)(h[..., 2:5])
>>> graph = channel_graph(keras.Model(x, y))
>>> call = [c for c in graph.layer_graph.calls if c.name.startswith("get_item")][0]
>>> graph.kinds[call].name
'getitem'
>>> bool((graph.channels[call.outputs[0]] == graph.layer_channels("c")[2:5]).all())
True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tf_gamma_prune.analysis.constants import Constants, as_rank
from tf_gamma_prune.analysis.kinds.base import LayerKind
from tf_gamma_prune.analysis.layer_graph import LayerCall

_WHOLE = slice(None)


@dataclasses.dataclass(frozen=True)
class SliceKey:
    """A followed key: one entry per input axis (``...`` expanded, batch ``:``)
    and the channel range ``start:stop`` it keeps."""

    entries: tuple
    start: int
    stop: int
    width: int  # the input's channel count

    @property
    def whole_channels(self) -> bool:
        return (self.start, self.stop) == (0, self.width)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _static_slice(v: Any) -> bool:
    return isinstance(v, slice) and all(
        b is None or _is_int(b) for b in (v.start, v.stop, v.step))


def _key_argument(call: LayerCall) -> tuple[Any, bool]:
    """The node's ``key`` argument and whether it was passed by keyword."""
    args, kwargs = call.node.arguments.args, call.node.arguments.kwargs
    if len(args) > 1:
        return args[1], False
    return kwargs.get("key"), True


def _expand(key: Any, rank: int) -> list | None:
    """``key`` as one entry per axis (``None``: newaxis, several ``...``, too long)."""
    items = list(key) if isinstance(key, (tuple, list)) else [key]
    dots = [i for i, v in enumerate(items) if v is Ellipsis]  # by identity: no array ==
    if any(v is None for v in items) or len(dots) > 1:
        return None
    at = dots[0] if dots else len(items)
    rest = items[:at] + items[at + 1:]
    if len(rest) > rank:
        return None
    return rest[:at] + [_WHOLE] * (rank - len(rest)) + rest[at:]


def _whole_batch(v: Any) -> bool:
    return _static_slice(v) and v.start in (None, 0) and v.stop is None and v.step in (None, 1)


def slice_key(call: LayerCall) -> SliceKey | None:
    """The followed key of a ``GetItem`` call (``None``: the node is opaque)."""
    if len(call.node.arguments.keras_tensors) != 1 or len(call.outputs) != 1:
        return None
    shape = tuple(call.node.input_tensors[0].shape)
    width, rank = shape[-1] if shape else None, len(shape)
    key, _ = _key_argument(call)
    entries = _expand(key, rank) if rank >= 2 and width is not None else None
    if entries is None or not _whole_batch(entries[0]):
        return None
    channel, spatial = entries[-1], entries[1:-1]
    if not all((_static_slice(v) and v.step != 0) or _is_int(v) for v in spatial):
        return None
    if not _static_slice(channel) or channel.step not in (None, 1):
        return None
    start, stop, _ = channel.indices(int(width))
    out_width = call.node.outputs[0].shape[-1]
    if stop <= start or out_width != stop - start:
        return None
    return SliceKey((_WHOLE,) + tuple(entries[1:]), start, stop, int(width))


class GetItemKind(LayerKind):
    """``x[key]``: a channel slice or a spatial slice (see the module docstring)."""

    name = "getitem"

    def refine(self, call: LayerCall) -> LayerKind:
        from tf_gamma_prune.analysis.kinds.registry import OPAQUE_KIND

        return self if slice_key(call) is not None else OPAQUE_KIND

    def connect(self, b: Any, call: LayerCall) -> None:
        key = _key(call)
        b.raw[call.outputs[0]] = b.raw[call.inputs[0]][key.start:key.stop]

    def propagate(self, b: Any, call: LayerCall,
                  ins: list[Constants | None]) -> Constants | None:
        src = ins[0]
        if src is None:
            return None
        key = _key(call)
        mask = src.mask[key.start:key.stop].copy()
        if not mask.any():
            return None
        if src.uniform:
            value = src.value[..., key.start:key.stop]
            return Constants(mask, as_rank(value, b.rank(call.outputs[0])))
        x = b.as_map(src, call.inputs[0], f"Layer '{call.name}'")
        return Constants(mask, np.array(x[key.entries]))

    def rebuild(self, r: Any, call: LayerCall) -> None:
        key = _key(call)
        keep_in = r.keep[call.inputs[0]]
        args, kwargs = call.call_arguments(r.values)
        if len(keep_in) == key.width:
            r.rebuild_generic(call, args, kwargs)
            return
        entries = list(key.entries)
        if key.whole_channels:
            entries[-1] = _WHOLE
        else:
            start, stop = (int(np.count_nonzero(keep_in < v)) for v in (key.start, key.stop))
            if stop - start != len(r.keep[call.outputs[0]]):
                raise AssertionError(f"internal error: slice '{call.name}' kept widths differ")
            entries[-1] = slice(start, stop)
        _, by_keyword = _key_argument(call)
        if by_keyword:
            kwargs["key"] = tuple(entries)
        else:
            args[1] = tuple(entries)
        r.rebuild_generic(call, args, kwargs)


def _key(call: LayerCall) -> SliceKey:
    key = slice_key(call)
    if key is None:  # refine() makes such a node opaque
        raise AssertionError(f"internal error: '{call.name}' has no followed slice key")
    return key
