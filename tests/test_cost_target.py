"""CostTarget: ρ steered to a MAC budget; GammaISTA's min_channels floor."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_gamma_prune import ArgumentError, CostTarget, GammaISTA, channel_graph, prune_model
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.sparsify.cost_target import group_scores
from tf_gamma_prune.reference_models import fashion_vgg

L = keras.layers


def small_vgg():
    keras.utils.set_random_seed(0)
    return fashion_vgg(widths=(4, 4, 8, 8, 8, 8), input_shape=(8, 8, 1))


@pytest.mark.parametrize("kwargs, match", [
    ({"macs": 1.5}, "fraction"), ({"macs": 0}, "macs must be"), ({"macs": True}, "macs must be"),
    ({"macs": 0.5, "reach_at": 0}, "reach_at"), ({"macs": 0.5, "every": 0}, "every"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        CostTarget(**kwargs)


def test_schedule_is_linear_then_flat():
    target = CostTarget(macs=0.25, reach_at=0.5, total_steps=100)
    target.start_macs, target.budget = 1000, 250
    assert [target.scheduled_macs(s) for s in (0, 25, 50, 80)] == [1000, 625, 250, 250]


def test_controller_sets_rho_to_zero_exactly_the_channels_the_schedule_needs():
    model = small_vgg()
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.05, 1.5, layer.gamma.shape))
    model.compile(GammaISTA(keras.optimizers.SGD(0.01), min_channels=1), loss="mse")
    model.optimizer.attach(model).build(model.trainable_variables)
    target = CostTarget(macs=0.5, every=10, total_steps=100, reach_at=0.5, lookahead=1)
    target.set_model(model)
    graph = channel_graph(model, fold="bias")
    target.start_macs = planned_macs(graph, graph.removable_constant_groups())
    target.budget = target.start_macs // 2
    rho = target.adapt()  # step 0: the schedule one window ahead is 90% of the start
    wanted = target.start_macs - 0.2 * (target.start_macs - target.budget)  # 10 of 50 steps
    assert target.history[-1]["target"] == pytest.approx(wanted)
    learning_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    threshold = rho * target.every * learning_rate  # the shrink of the next window
    scores = group_scores(graph, model.optimizer)
    assert planned_macs(graph, scores <= threshold * (1 + 1e-9)) <= wanted
    smaller = scores[scores < threshold * (1 - 1e-9)]
    assert planned_macs(graph, scores <= smaller.max()) > wanted
    target.budget = target.start_macs  # nothing left to remove: hold
    assert target.adapt() == target.rho_min
    assert float(model.optimizer.rho) == pytest.approx(target.rho_min)


def test_group_scores_spare_the_largest_and_the_pinned():
    model = small_vgg()
    model.get_layer("bn6").gamma.assign(np.linspace(0.1, 0.8, 8))
    model.compile(GammaISTA(keras.optimizers.SGD(0.01), min_channels=2,
                            penalties={"bn6": 2.0}), loss="mse")
    model.optimizer.attach(model).build(model.trainable_variables)
    graph = channel_graph(model, fold="bias")
    scores = group_scores(graph, model.optimizer)[graph.layer_channels("bn6")]
    np.testing.assert_allclose(scores[:6], np.linspace(0.1, 0.8, 8)[:6] / 2.0)
    assert np.isinf(scores[6:]).all()


def test_needs_gamma_ista():
    model = small_vgg()
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x, y = np.zeros((8, 8, 8, 1), "float32"), np.zeros((8, 10), "float32")
    with pytest.raises(ArgumentError, match="GammaISTA"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[CostTarget(macs=0.5)])


def test_fit_logs_rho_and_the_measured_cost_equals_the_pruned_model():
    model = small_vgg()
    rng = np.random.default_rng(0)
    for layer in model.layers:  # spread |γ| as in a trained network
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.05, 1.5, layer.gamma.shape))
    model.compile(GammaISTA(keras.optimizers.SGD(0.02), min_channels=1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    target = CostTarget(macs=0.5, every=4)
    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 256)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    assert len(history.history["rho"]) == 3 and "pruned_macs_fraction" in history.history
    assert target.history[-1]["macs"] < target.start_macs
    graph = channel_graph(model, fold="bias")
    assert target.history[-1]["macs"] == planned_macs(graph, graph.removable_constant_groups())
    pruned = prune_model(model, fold="bias")
    from tf_gamma_prune import count_macs

    assert count_macs(pruned) == target.history[-1]["macs"]


def test_min_channels_spares_the_largest_gammas():
    x = keras.Input((4,))
    h = L.BatchNormalization(name="bn")(L.Dense(4, name="fc")(x))
    model = keras.Model(x, L.Dense(1)(h))
    model.get_layer("bn").gamma.assign([0.1, 0.5, -0.9, 0.3])
    model.compile(GammaISTA(keras.optimizers.SGD(1e-3), rho=1e6, min_channels=2), loss="mse")
    model.fit(np.ones((4, 4), "float32"), np.zeros((4, 1), "float32"), epochs=1, verbose=0)
    gamma = model.get_layer("bn").gamma.numpy()
    assert gamma[0] == 0 and gamma[3] == 0
    np.testing.assert_allclose(gamma[[1, 2]], [0.5, -0.9], atol=1e-2)  # spared: not shrunk


def test_min_channels_is_saved():
    optimizer = GammaISTA(keras.optimizers.SGD(0.1), min_channels=3)
    assert GammaISTA.from_config(optimizer.get_config()).min_channels == 3
    with pytest.raises(ArgumentError, match="min_channels"):
        GammaISTA(keras.optimizers.SGD(0.1), min_channels=-1)
