"""Latency budgets: the per-layer LatencyTable, its prediction, CostTarget(latency_ms=...) and
gamma_penalties(cost="latency")."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tf_gamma_prune import (
    ArgumentError,
    CostTarget,
    GammaISTA,
    LatencyTable,
    channel_graph,
    gamma_penalties,
    planned_latency_ms,
    prune_model,
)
from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm
from tf_gamma_prune.errors import LatencyTableError
from tf_gamma_prune.reference_models import fashion_vgg

L = keras.layers


def small_vgg():
    keras.utils.set_random_seed(0)
    return fashion_vgg(widths=(4, 4, 8, 8, 8, 8), input_shape=(8, 8, 1))


def mixing_calls(model):
    graph = channel_graph(model)
    return graph, [c for c in graph.layer_graph.calls
                   if c in graph.kinds and graph.kinds[c].name == "mixing"]


def synthetic_table(model, tile=4, seed=0):
    """A table whose op latency is ``0.001 + 1e-3 · k_in · ceil_tile(k_out)`` ms for each conv/dense
    (a tile staircase on the outputs), measured at every width, and an affine model map."""
    graph, calls = mixing_calls(model)
    layers = {}
    for call in calls:
        c_in, c_out = graph.width(call.inputs[0]), graph.width(call.outputs[0])

        def ms(k_in, k_out):
            return 0.001 + 1e-3 * k_in * (-(-k_out // tile) * tile)

        out, ins = list(range(1, c_out + 1)), list(range(1, c_in + 1))
        layers[call.layer.name] = {"kind": "mixing", "out": out, "out_ms": [ms(c_in, k) for k in out],
                                   "in": ins, "in_ms": [ms(k, c_out) for k in ins], "min_ms": 0.001}
    full = sum(e["out_ms"][-1] for e in layers.values())
    return LatencyTable(layers, model_ms=1.2 * full + 0.005,
                        model_points=[(full, 1.2 * full + 0.005), (full / 2, 0.6 * full + 0.005)])


def test_lookup_is_a_staircase_and_the_model_map_is_affine():
    table = LatencyTable({"conv": {"kind": "mixing", "out": [8, 16, 24], "out_ms": [1.0, 2.0, 3.0],
                                   "in": [4, 8], "in_ms": [2.0, 3.0], "min_ms": 0.5}},
                         model_ms=4.0, model_points=[(3.0, 4.0), (1.0, 2.0)])
    assert table.layer_ms("conv", 8, 24) == 3.0
    assert table.layer_ms("conv", 8, 17) == table.layer_ms("conv", 8, 24)  # a tile costs whole
    assert table.layer_ms("conv", 8, 16) == 2.0
    assert table.layer_ms("conv", 0, 16) == table.layer_ms("conv", 8, 0) == 0.0
    # bilinear between the sweeps: o + (O - o)(I - o)/(F - o)
    assert table.layer_ms("conv", 4, 16) == pytest.approx(0.5 + 1.5 * 1.5 / 2.5)
    assert (table.scale, table.rest_ms) == pytest.approx((1.0, 1.0))
    assert table.model_ms_for({"conv": (4, 16)}) == pytest.approx(1.0 * (0.5 + 0.9) + 1.0)
    assert table.channel_ms("conv", "out") == pytest.approx(2.0 / 16)
    assert table.channel_ms("conv", "in") == pytest.approx(1.0 / 4)


def test_json_round_trip_and_typed_errors(tmp_path):
    table = synthetic_table(small_vgg())
    path = tmp_path / "table.json"
    table.save(str(path))
    again = LatencyTable.load(str(path))
    assert again.to_json() == json.loads(json.dumps(table.to_json()))
    assert again.model_ms_for({"conv2": (2, 3)}) == table.model_ms_for({"conv2": (2, 3)})
    path.write_text("{not json")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        LatencyTable.load(str(path))
    with pytest.raises(LatencyTableError, match="measure one"):
        LatencyTable.from_json({"format": 99})
    with pytest.raises(LatencyTableError, match="no layer 'nope'"):
        table.layer_ms("nope", 1, 1)
    with pytest.raises(ArgumentError, match="ascending"):
        LatencyTable({"c": {"kind": "mixing", "out": [8, 4], "out_ms": [1, 2], "in": [1], "in_ms": [1]}}, 1.0)
    other = fashion_vgg(widths=(4, 4, 8, 8, 8, 16), input_shape=(8, 8, 1))
    graph = channel_graph(other, fold="bias")
    with pytest.raises(LatencyTableError, match="another model"):
        planned_latency_ms(graph, graph.removable_constant_groups(), table)


@pytest.mark.parametrize("fraction, seed", [(0.0, 0), (0.3, 1), (0.6, 2)])
def test_planned_latency_is_the_table_at_the_pruned_models_widths(fraction, seed):
    """The plan (no rebuild) and the widths of the model prune_model builds give one prediction."""
    model = small_vgg()
    table = synthetic_table(model)
    randomize_batchnorm(model, seed=seed, zero_fraction=fraction)
    graph = channel_graph(model, fold="bias")
    planned = planned_latency_ms(graph, graph.removable_constant_groups(), table)
    pruned_graph, calls = mixing_calls(prune_model(model, fold="bias"))
    widths = {c.layer.name: (pruned_graph.width(c.inputs[0]), pruned_graph.width(c.outputs[0]))
              for c in calls}
    direct = table.scale * sum(
        0.001 + 1e-3 * k_in * (-(-k_out // 4) * 4) if name in widths else 0.0
        for name, (k_in, k_out) in ((n, widths.get(n, (0, 0))) for n in table.layers)) + table.rest_ms
    assert planned == pytest.approx(direct, rel=1e-9)
    if fraction == 0.0:
        assert planned == pytest.approx(table.model_ms)


def test_cost_target_meets_a_latency_budget_and_round_trips_with_its_table():
    model = small_vgg()
    table = synthetic_table(model)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.05, 1.5, layer.gamma.shape))
    model.compile(GammaISTA(keras.optimizers.SGD(0.02), min_channels=1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    budget_ms = 0.6 * table.model_ms
    target = CostTarget(latency_ms=budget_ms, table=table, every=4, fold="bias")
    x, y = rng.random((256, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 256)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    assert "pruned_latency_ns_fraction" in history.history and "rho" in history.history
    assert target.budget == round(budget_ms * 1e6)
    graph = channel_graph(model, fold="bias")
    predicted = planned_latency_ms(graph, graph.removable_constant_groups(), table)
    assert target.history[-1]["latency_ns"] == round(predicted * 1e6)
    assert abs(predicted - budget_ms) <= 0.05 * budget_ms
    clone = CostTarget.from_config(json.loads(json.dumps(target.get_config())))
    assert clone.get_state() == target.get_state() and clone.table.to_json() == table.to_json()
    fraction = CostTarget(latency=0.5, table=table)
    assert fraction.budget_argument == 0.5 and fraction.metric == "latency_ns"


@pytest.mark.parametrize("kwargs, match", [
    ({"latency_ms": 2.0}, "needs table"), ({"latency_ms": -1.0, "table": {}}, "positive number"),
    ({"latency": 1.5}, "fraction in"), ({"latency": 0.5, "macs": 0.5}, "exactly one budget"),
])
def test_bad_latency_budgets_are_refused(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        CostTarget(**kwargs)


def test_latency_penalties_weigh_channels_by_their_time():
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, padding="same", name="c1")(x)
    h = L.ReLU()(L.BatchNormalization(name="bn1")(h))
    h = L.Conv2D(6, 3, padding="same", name="c2")(h)
    h = L.BatchNormalization(name="bn2")(h)
    model = keras.Model(x, L.Dense(3, name="head")(L.Flatten()(h)))
    entry = lambda c_in, c_out, per_out, per_in: {  # noqa: E731  linear sweeps
        "kind": "mixing", "out": [1, c_out], "out_ms": [per_out, per_out * c_out],
        "in": [1, c_in], "in_ms": [per_in, per_in * c_in], "min_ms": min(per_out, per_in)}
    table = LatencyTable({"c1": entry(2, 4, 0.1, 0.2), "c2": entry(4, 6, 0.3, 0.5),
                          "head": entry(384, 3, 0.01, 0.001)}, model_ms=5.0)
    raw = {"bn1": 0.1 + 0.5,                   # c1's output share + c2's input share
           "bn2": 0.3 + 0.001 * 64}            # c2's output share + head's input share × area
    mean = np.mean(list(raw.values()))
    penalties = gamma_penalties(model, cost="latency", table=table)
    assert penalties == pytest.approx({k: v / mean for k, v in raw.items()})
    with pytest.raises(ArgumentError, match="needs table"):
        gamma_penalties(model, cost="latency")
    with pytest.raises(ArgumentError, match="'memory', 'latency' or 'uniform'"):
        gamma_penalties(model, cost="flops")


def test_measured_table_has_both_sweeps_and_a_calibrated_model_map():
    from tf_gamma_prune.export import measure_latency_table

    model = small_vgg()
    table = measure_latency_table(model, step=4, runs=10, warmup=1)
    graph, calls = mixing_calls(model)
    assert sorted(table.layers) == sorted(c.layer.name for c in calls)
    for call in calls:
        entry = table.layers[call.layer.name]
        c_in, c_out = graph.width(call.inputs[0]), graph.width(call.outputs[0])
        assert entry["out"][-1] == c_out and entry["in"][-1] == c_in
        assert entry["out"] == sorted({*range(4, c_out, 4), c_out})
        assert entry["in_ms"][-1] == entry["out_ms"][-1]  # the full layer, measured once
    assert len(table.model_points) == 2  # the model and its half-width twin
    assert table.model_ms > 0 and table.scale > 0 and table.rest_ms >= 0


@pytest.mark.slow
def test_measured_table_predicts_pruned_fashion_vgg_within_25_percent():
    """fashion_vgg (28×28, 32-…-128), random halves of the channels zeroed at 20-60 %: the
    table's prediction against the pruned .tflite measured side by side with the original
    (benchmarks/latency_table.py records the same at more fractions)."""
    from tf_gamma_prune.export import compare_latency, measure_latency_table, to_tflite

    model = fashion_vgg()
    table = measure_latency_table(model, step=4, runs=100)
    original = to_tflite(model)
    for fraction, seed in ((0.2, 0), (0.4, 1), (0.6, 2)):
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())
        randomize_batchnorm(twin, seed=seed, zero_fraction=fraction)
        graph = channel_graph(twin, fold="bias")
        predicted = planned_latency_ms(graph, graph.removable_constant_groups(), table)
        (c,) = compare_latency(original, to_tflite(prune_model(twin, fold="bias")), threads=[1],
                               runs=200, timing="steady", block=10)
        measured = table.model_ms * c.b.median_ms / c.a.median_ms
        assert abs(predicted / measured - 1) <= 0.25, (fraction, predicted, measured)
