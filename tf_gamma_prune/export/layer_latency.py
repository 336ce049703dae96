"""Measure a model's :class:`~tf_gamma_prune.analysis.latency_table.LatencyTable` through LiteRT.

Each conv/dense layer is rebuilt alone (its own config, at its own input
size, with other channel counts), converted to a float32 ``.tflite`` of that
one op, and timed with :func:`~tf_gamma_prune.export.benchmark_latency` on
the XNNPACK CPU interpreter: along the output widths at the full input width,
along the input widths at the full output width, and once at the smallest
widths (the op's overhead). The whole model is timed once. Converting a
one-op model takes about 0.1 s here, so a table of ``fashion_vgg`` (six convs
up to 128 wide, ``step=4``) takes a minute or two on this 2-core machine.

Run it on the device the model ships to (``python -m tf_gamma_prune`` is not
needed there: the table is plain JSON; measure on the phone with the same
op-by-op recipe and load it with ``LatencyTable.load``).

Example:

>>> import keras
>>> x = keras.Input((8, 8, 3))
>>> h = keras.layers.Conv2D(8, 3, padding="same", name="conv")(x)
>>> h = keras.layers.BatchNormalization(name="bn")(h)
>>> model = keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h)))
>>> table = measure_latency_table(model, step=4, runs=20, warmup=2)
>>> sorted(table.layers), table.layers["conv"]["out"]
(['conv', 'head'], [4, 8])
>>> table.model_ms > 0
True
"""

from __future__ import annotations

import platform
import time
from typing import Any, Callable, Iterable

import keras
import numpy as np

from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.analysis.kinds import DEPTHWISE, MIXING
from tf_gamma_prune.analysis.latency_table import LatencyTable
from tf_gamma_prune.errors import DynamicShapeError

L = keras.layers

_MEASURED = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
             L.DepthwiseConv1D, L.DepthwiseConv2D, L.Dense)
"""Layers the table measures (separable convs are left to the rest of the model)."""


def measure_latency_table(model: keras.Model, *, step: int = 4, num_threads: int = 1,
                          runs: int = 100, warmup: int = 5,
                          progress: Callable[[str], None] | None = None) -> LatencyTable:
    """The latency table of ``model`` (see :mod:`tf_gamma_prune.analysis.latency_table`).

    Args:
        model: a built functional or Sequential model with static spatial sizes.
        step: sweep the widths in steps of this many channels (plus the full
            width); a width between two measured ones costs the larger one's
            latency. Use a divisor of the device's tile (4 divides 8 and 16).
        num_threads: interpreter threads (as the app will run it).
        runs / warmup: timed and untimed invocations per measured op.
        progress: called with one line per measured layer.

    Raises:
        DynamicShapeError: a measured layer's input has a dynamic spatial size.
    """
    from tf_gamma_prune.export.convert import to_tflite
    from tf_gamma_prune.export.latency import benchmark_latency

    def timed(flatbuffer: bytes) -> float:
        return benchmark_latency(flatbuffer, num_threads=num_threads, warmup=warmup, runs=runs).median_ms

    started = time.perf_counter()
    graph = channel_graph(model)
    layers: dict[str, dict[str, Any]] = {}
    for call in graph.layer_graph.calls:
        kind = graph.kinds[call].name if call in graph.kinds else None
        if kind not in (MIXING, DEPTHWISE) or not isinstance(call.layer, _MEASURED):
            continue
        if call.layer.name in layers or getattr(call.layer, "groups", 1) not in (1, None):
            continue  # shared layers once; grouped convs stay in the rest
        shape = tuple(graph.layer_graph.shape(call.inputs[0]))
        if any(d is None for d in shape[1:]):
            raise DynamicShapeError(f"Layer '{call.layer.name}' has input shape {shape}: the latency "
                                    "table needs static sizes. Build the model with a fixed input size.")
        c_in, c_out = int(shape[-1]), int(graph.layer_graph.shape(call.outputs[0])[-1])
        entry: dict[str, Any] = {"kind": kind}

        def op_ms(k_in: int, k_out: int) -> float:
            return timed(_one_op_tflite(call.layer, shape[1:-1], k_in, k_out))

        out_widths = _sweep(c_out if kind == MIXING else c_in, step)
        if kind == DEPTHWISE:
            entry["out"] = out_widths
            entry["out_ms"] = [op_ms(k, k) for k in out_widths]
        else:
            entry["out"], entry["out_ms"] = out_widths, [op_ms(c_in, k) for k in out_widths]
            entry["in"] = _sweep(c_in, step)
            entry["in_ms"] = [op_ms(k, c_out) for k in entry["in"][:-1]] + [entry["out_ms"][-1]]
            entry["min_ms"] = op_ms(entry["in"][0], entry["out"][0])
        layers[call.layer.name] = entry
        if progress:
            progress(f"{call.layer.name}: {entry['out_ms'][-1]:.4f} ms at full width "
                     f"({len(entry['out']) + len(entry.get('in', ()))} widths)")
    model_ms = timed(to_tflite(model))
    table = LatencyTable(layers, model_ms)
    points = [(table.full_layers_ms, model_ms)]
    half = _half_width_twin(model)
    if half is not None:
        points.append((_layers_ms(table, half), timed(to_tflite(half))))
    info = {"step": step, "num_threads": num_threads, "runs": runs, "warmup": warmup,
            "machine": platform.machine(), "processor": platform.processor() or None,
            "seconds": round(time.perf_counter() - started, 1)}
    return LatencyTable(layers, model_ms, info, model_points=points)


def _half_width_twin(model: keras.Model) -> keras.Model | None:
    """``model`` with half of each conv's removable filters gone (L1-norm), for the calibration;
    ``None`` where the model has no such conv."""
    from tf_gamma_prune.prune.criteria import l1_norm_selection
    from tf_gamma_prune.prune.prune_model import prune_model

    try:
        selection = l1_norm_selection(model, 0.5)
    except Exception:  # noqa: BLE001  no removable conv: a proportional map
        return None
    return prune_model(model, selection, fold="bias", probe=False) if selection else None


def _layers_ms(table: LatencyTable, model: keras.Model) -> float:
    """The table's Σ layers at the widths ``model`` (a pruned twin, same layer names) has."""
    graph = channel_graph(model)
    kept = {}
    for call in graph.layer_graph.calls:
        if call.layer.name in table.layers:
            kept[call.layer.name] = (graph.width(call.inputs[0]), graph.width(call.outputs[0]))
    return sum(table.layer_ms(name, *kept.get(name, table.widths(name))) for name in table.layers)


def _sweep(full: int, step: int) -> list[int]:
    """``step, 2·step, …`` below ``full``, then ``full``."""
    return sorted({*range(step, full, step), full})


def _one_op_tflite(layer: Any, spatial: Iterable[int], k_in: int, k_out: int) -> bytes:
    """A float32 ``.tflite`` holding ``layer`` alone with ``k_in`` inputs and ``k_out`` outputs."""
    import tensorflow as tf

    config = layer.get_config()
    config.pop("name", None)
    if "filters" in config:
        config["filters"] = k_out
    elif "units" in config:
        config["units"] = k_out
    config["dtype"] = "float32"
    clone = type(layer).from_config(config)
    input_shape = (1, *spatial, k_in)
    clone.build(input_shape)
    rng = np.random.default_rng(0)

    def constants(weights: list) -> list:
        return [tf.constant(rng.standard_normal(w.shape).astype("float32") * 0.1) for w in weights]

    # constants, not variables: a traced variable stays a VAR_HANDLE/READ_VARIABLE in the
    # .tflite, which XNNPACK does not take (the op then runs 2-3x slower, without tiles)
    trainable, non_trainable = constants(clone.trainable_weights), constants(clone.non_trainable_weights)

    @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32)])
    def run(x):
        return clone.stateless_call(trainable, non_trainable, x)[0]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([run.get_concrete_function()], clone)
    return converter.convert()
