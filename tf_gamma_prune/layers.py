"""Custom Keras layers used by pruned models (all serializable).

:class:`BorderCorrection` adds a fixed map to its input. ``prune_model`` inserts
it after a convolution whose folded constant input is not uniform over space —
with zero padding the border positions of a ``'same'`` convolution see fewer
constant taps than the interior ones, so a plain bias fold is off at the
borders. The layer holds the exact per-position difference (compactly: the
border ring's values, not a full-resolution map, see :func:`ring_layout`) and is
never trained.

Example:

>>> import numpy as np
>>> layer = BorderCorrection(np.ones((2, 2, 3), "float32"))
>>> out = layer(np.zeros((1, 2, 2, 3), "float32"))
>>> float(np.asarray(out).sum())
12.0
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.errors import ArgumentError


def _initializer(value: np.ndarray | None) -> Any:
    """``"zeros"`` (values come from saved weights) or the given array."""
    if value is None:
        return "zeros"

    def initializer(shape: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(value, dtype=keras.backend.standardize_dtype(dtype)).reshape(shape)

    return initializer


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class BorderCorrection(keras.layers.Layer):
    """Adds a fixed (non-trainable) map to its input: ``y = x + correction``.

    The map of a zero-padded convolution is constant away from the borders (0
    there: the interior response went into the bias), so by default it is
    stored compactly (:func:`ring_layout`): each spatial axis is cut into
    *segments*, either ``literal`` (every position stored: the border rows /
    columns) or ``constant`` (a run of identical slices, stored once: the
    interior); a *block* is one segment per axis, and only the nonzero blocks
    are stored. For a ``3×3`` 'same' conv that is the 4 corners, the 4 edge
    profiles and no interior: ``8·C`` numbers instead of ``H·W·C``, whatever the
    resolution. ``call`` splits the input into the blocks, adds each block's
    (broadcast) values and concatenates the pieces back; in TFLite that is
    ``SPLIT_V``, ``ADD`` and ``CONCATENATION`` with small constants, and no
    full-resolution constant (a map built from constants alone would be folded
    into one by the converter). A map that does not compact (to at most half its
    size) is stored whole and added in one ``ADD``.

    The ring trades speed for size: the splits and concatenations copy the
    feature map, so on XNNPACK the rings of a pruned fashion_vgg make it
    1.2-2× slower than one ``ADD`` of each whole map (1 thread, 28×28 to
    224×224, ``benchmarks/results/border_layout.json``), while the whole maps
    make its ``.tflite`` file 1.3× (28×28) to 25× (224×224) larger. ``compact="auto"`` (default)
    therefore stores a map whole unless it holds at least
    :data:`COMPACT_FROM` numbers (1 MiB of float32), where its size is what
    hurts (a 512×512 segmentation input).

    Args:
        correction: the map to add, shape ``(H, W, C)`` for a 2-D feature map
            (any shape that broadcasts against the input without its batch axis).
            Can be omitted when ``shape`` is given (the values then come from a
            saved model's weights).
        shape: the map's shape, used when ``correction`` is omitted.
        compact: ``"auto"`` (default): the ring layout for maps of at least
            :data:`COMPACT_FROM` numbers, when it at least halves them;
            ``True``: the ring layout whenever it at least halves the map;
            ``False``: always the whole map.
        segments: the compact layout's segments (from a saved config): per
            spatial axis, ``[start, stop, literal]`` triples covering the axis.
        blocks: the compact layout's stored blocks (from a saved config): one
            segment index per spatial axis each.
    """

    def __init__(
        self,
        correction: Any = None,
        shape: tuple[int, ...] | None = None,
        compact: bool | str = "auto",
        segments: list | None = None,
        blocks: list | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if correction is None and shape is None:
            raise ArgumentError("BorderCorrection needs `correction` or `shape`.")
        initial = None if correction is None else np.asarray(correction)
        self.map_shape = tuple(int(d) for d in (
            shape if shape is not None else initial.shape
        ))
        values: dict[tuple[int, ...], np.ndarray | None] = {}
        if compact not in (True, False, "auto"):
            raise ArgumentError(f"BorderCorrection: compact must be True, False or 'auto', got {compact!r}.")
        if compact == "auto":
            compact = initial is not None and initial.size >= COMPACT_FROM
        if segments is None and initial is not None and compact:
            layout = ring_layout(initial)
            if layout is not None:
                segments, values = layout
        elif segments is not None:
            values = {tuple(int(i) for i in key): None for key in (blocks or [])}
        self.segments = None if segments is None else [
            [(int(a), int(b), bool(lit)) for a, b, lit in axis] for axis in segments
        ]
        self.correction = None
        self.block_keys: list[tuple[int, ...]] = []
        self.blocks: list[Any] = []
        if self.segments is None:
            self.correction = self.add_weight(
                name="correction", shape=self.map_shape,
                initializer=_initializer(initial), trainable=False,
            )
        else:
            for key in sorted(values):
                self.block_keys.append(key)
                self.blocks.append(self.add_weight(
                    name="block_" + "_".join(str(i) for i in key),
                    shape=self._block_shape(key),
                    initializer=_initializer(values[key]), trainable=False,
                ))
        self.built = True

    def _block_shape(self, key: tuple[int, ...]) -> tuple[int, ...]:
        dims = []
        for axis, s in enumerate(key):
            start, stop, literal = self.segments[axis][s]
            dims.append(stop - start if literal else 1)
        return tuple(dims) + self.map_shape[-1:]

    @property
    def stored_size(self) -> int:
        """How many numbers the layer stores (``H·W·C`` for a whole map)."""
        return int(sum(math.prod(w.shape) for w in self.weights))

    def full_map(self) -> np.ndarray:
        """The whole correction map as a float64 array (shape ``map_shape``)."""
        if self.segments is None:
            return np.asarray(keras.ops.convert_to_numpy(self.correction), np.float64)
        out = np.zeros(self.map_shape)
        for key, weight in zip(self.block_keys, self.blocks):
            index = tuple(slice(*self.segments[axis][s][:2]) for axis, s in enumerate(key))
            out[index] = np.asarray(keras.ops.convert_to_numpy(weight), np.float64)
        return out

    def call(self, inputs: Any) -> Any:
        if self.segments is None:
            return keras.ops.add(inputs, keras.ops.cast(self.correction, inputs.dtype))
        x = inputs
        spatial = self.map_shape[:-1]
        if tuple(x.shape[1:-1]) != spatial and all(d == 1 for d in x.shape[1:-1]):
            # a uniform input (constant propagation): give it the map's size
            x = keras.ops.broadcast_to(
                x, (keras.ops.shape(x)[0],) + spatial + (x.shape[-1],))
        return self._add_blocks(x, 0, ())

    def _add_blocks(self, x: Any, axis: int, prefix: tuple[int, ...]) -> Any:
        if not any(tuple(key[:axis]) == prefix for key in self.block_keys):
            return x  # nothing to add in this part
        if axis == len(self.segments):
            weight = self.blocks[[tuple(k) for k in self.block_keys].index(prefix)]
            return keras.ops.add(x, keras.ops.cast(weight, x.dtype))
        segments = self.segments[axis]
        if len(segments) == 1:
            return self._add_blocks(x, axis + 1, prefix + (0,))
        pieces = keras.ops.split(x, [start for start, _, _ in segments[1:]], axis=axis + 1)
        parts = [self._add_blocks(piece, axis + 1, prefix + (s,))
                 for s, piece in enumerate(pieces)]
        return keras.ops.concatenate(parts, axis=axis + 1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config["shape"] = list(self.map_shape)
        if self.segments is not None:
            config["segments"] = [[list(seg) for seg in axis] for axis in self.segments]
            config["blocks"] = [list(key) for key in self.block_keys]
        return config


# compact="auto": maps of at least this many numbers (1 MiB of float32) use the ring layout;
# smaller ones are added whole, which is faster (see BorderCorrection).
COMPACT_FROM = 1 << 18

# What one stored block costs in a .tflite file besides its numbers (an ADD, its
# constant and output tensors, a share of the SPLIT_V / CONCATENATION ops around
# it), in float32 numbers: measured about 0.45 KB a block.
BLOCK_COST = 128


def _runs(m: np.ndarray, axis: int, tol: float) -> list[tuple[int, int]]:
    """Maximal runs of consecutive slices along ``axis`` equal (within ``tol``)
    to the run's first slice."""
    slices = np.moveaxis(m, axis, 0)  # a view: slices[i] is slice i
    runs = []
    start, size = 0, len(slices)
    for i in range(1, size + 1):
        if i < size and np.max(np.abs(slices[i] - slices[start]), initial=0.0) <= tol:
            continue
        runs.append((start, i))
        start = i
    return runs


def ring_layout(correction: np.ndarray, min_run: int = 3, max_blocks: int = 256,
                block_cost: int = BLOCK_COST) -> tuple[list, dict[tuple[int, ...], np.ndarray]] | None:
    """The compact layout of a map (``(*spatial, C)``) used by :class:`BorderCorrection`.

    Per spatial axis, runs of at least ``min_run`` identical slices become
    ``constant`` segments (stored once), the positions between them
    ``literal`` segments. Returns ``(segments, blocks)`` with the nonzero
    blocks' values, or ``None`` when the layout would not at least halve the
    map, counting ``block_cost`` numbers for each block (the ops and tensors
    that a block costs in a ``.tflite`` file), or needs more than
    ``max_blocks`` blocks. Slices equal within ``1e-9·max|map|`` count as
    identical.

    >>> m = np.zeros((6, 5, 1)); m[0] = 1.0; m[:, -1] += 2.0
    >>> segments, blocks = ring_layout(m, block_cost=0)
    >>> segments
    [[(0, 1, True), (1, 6, False)], [(0, 4, False), (4, 5, True)]]
    >>> sorted((k, v.reshape(-1).tolist()) for k, v in blocks.items())
    [((0, 0), [1.0]), ((0, 1), [3.0]), ((1, 1), [2.0])]
    """
    m = np.asarray(correction, np.float64)
    if m.ndim < 2:
        return None
    tol = 1e-9 * max(float(np.abs(m).max(initial=0.0)), 1e-30)
    segments: list[list[tuple[int, int, bool]]] = []
    for axis in range(m.ndim - 1):
        axis_segments: list[tuple[int, int, bool]] = []
        for start, stop in _runs(m, axis, tol):
            if stop - start >= min_run:
                axis_segments.append((start, stop, False))
            elif axis_segments and axis_segments[-1][2]:
                axis_segments[-1] = (axis_segments[-1][0], stop, True)
            else:
                axis_segments.append((start, stop, True))
        segments.append(axis_segments)
    if math.prod(len(s) for s in segments) > max_blocks:
        return None
    blocks: dict[tuple[int, ...], np.ndarray] = {}
    for key in itertools.product(*(range(len(s)) for s in segments)):
        index = tuple(slice(a, b) if literal else slice(a, a + 1)
                      for a, b, literal in (segments[axis][s] for axis, s in enumerate(key)))
        block = m[index]
        if np.max(np.abs(block), initial=0.0) > tol:
            blocks[key] = block
    if 2 * (sum(b.size for b in blocks.values()) + block_cost * len(blocks)) > m.size:
        return None
    return segments, blocks


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class ConstantFeature(keras.layers.Layer):
    """Outputs a fixed feature map for every example: ``y[i] = value``.

    ``prune_model`` puts it where a whole conv/dense layer became constant (all
    of its input channels were constant and removed) but its output is still
    needed, e.g. a residual branch whose every channel is constant. It reads a
    model input only for the batch size.

    Args:
        value: the map, shape ``(H, W, C)`` (the output shape without batch).
        shape: the map's shape, used when ``value`` is omitted (loading).

    Example:

    >>> import numpy as np
    >>> layer = ConstantFeature(np.full((2, 2, 1), 3.0, "float32"))
    >>> np.asarray(layer(np.zeros((4, 5), "float32"))).shape
    (4, 2, 2, 1)
    """

    def __init__(
        self,
        value: Any = None,
        shape: tuple[int, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if value is None and shape is None:
            raise ArgumentError("ConstantFeature needs `value` or `shape`.")
        initial = None if value is None else np.asarray(value)
        self.map_shape = tuple(int(d) for d in (
            shape if shape is not None else initial.shape
        ))
        self.value = self.add_weight(
            name="value", shape=self.map_shape, initializer=_initializer(initial),
            trainable=False,
        )
        self.built = True

    def call(self, inputs: Any) -> Any:
        batch = keras.ops.shape(inputs)[0]
        value = keras.ops.cast(self.value, self.compute_dtype)
        return keras.ops.broadcast_to(
            keras.ops.expand_dims(value, 0), (batch,) + self.map_shape
        )

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0],) + self.map_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config["shape"] = list(self.map_shape)
        return config
