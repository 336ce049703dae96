"""Calibration data for ``prune_model``: mean activations of removed channels.

With ``calibration_data``, a removed channel that is not constant is replaced
by its mean activation over those inputs (folded like a constant) instead of 0.
"""

from __future__ import annotations

from typing import Any, Iterator

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import ChannelGraph
from tf_gamma_prune.analysis.constants import accepts_training
from tf_gamma_prune.analysis.layer_graph import TensorId
from tf_gamma_prune.errors import CalibrationDataError
from tf_gamma_prune.inputs import InputSpec, input_name, model_input_batches

L = keras.layers


CALIBRATION_EXAMPLES = 1024
"""Batches are taken from a streamed ``calibration_data`` (dataset, iterator)
until at least this many examples are collected; one in-memory batch is used
whole."""


def calibration_batches(graph: ChannelGraph, data: Any) -> list[list[np.ndarray]]:
    """``calibration_data`` as validated batches, one array per model input
    (read by :func:`tf_gamma_prune.inputs.model_input_batches`).

    Raises:
        CalibrationDataError: wrong structure or shape, no example, NaN/Inf.
    """
    lg = graph.layer_graph
    specs = [InputSpec(input_name(lg.specs[t], i), tuple(lg.shape(t)))
             for i, t in enumerate(lg.inputs)]
    batches = list(model_input_batches(data, specs, what="calibration_data",
                                       error=CalibrationDataError,
                                       max_examples=CALIBRATION_EXAMPLES))
    if not batches:
        shapes = [s.shape for s in specs]
        raise CalibrationDataError(
            "calibration_data holds no examples; at least one example is needed "
            f"(model input shape {shapes[0] if len(shapes) == 1 else shapes})."
        )
    return batches


def mean_activations(graph: ChannelGraph,
                      batches: list[list[np.ndarray]]) -> dict[TensorId, np.ndarray]:
    """Per-channel mean (over examples and space) of every tensor a mixing
    layer reads, on ``batches``, computed by running the original layers eagerly."""
    sums: dict[TensorId, np.ndarray] = {}
    counts: dict[TensorId, int] = {}
    for batch in batches:
        for t, arr in _activations(graph, batch):
            flat = arr.reshape(-1, arr.shape[-1])
            sums[t] = sums.get(t, 0.0) + flat.sum(axis=0)
            counts[t] = counts.get(t, 0) + flat.shape[0]
    return {t: sums[t] / max(counts[t], 1) for t in sums}


def _activations(graph: ChannelGraph,
                 inputs: list[np.ndarray]) -> Iterator[tuple[TensorId, np.ndarray]]:
    """``(tensor, float64 value)`` of every fold-site tensor on one batch."""
    lg = graph.layer_graph
    wanted = {t for _, t in graph.fold_sites()}
    values: dict[TensorId, Any] = {
        t: keras.ops.convert_to_tensor(v) for t, v in zip(lg.inputs, inputs)
    }
    remaining = {t: len(lg.consumers(t)) for t in values}
    for call in lg.calls:
        args, kwargs = call.call_arguments(values)
        if accepts_training(call.layer):
            kwargs["training"] = False
        outs = keras.tree.flatten(call.layer(*args, **kwargs))
        for t, v in zip(call.outputs, outs):
            values[t] = v
            remaining[t] = len(lg.consumers(t))
            if t in wanted:
                yield t, np.asarray(keras.ops.convert_to_numpy(v), np.float64)
        for t in dict.fromkeys(call.inputs):
            remaining[t] -= 1
            if remaining[t] <= 0 and t not in lg.outputs:
                values.pop(t, None)
