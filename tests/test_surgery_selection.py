"""Explicit channel selections, mean compensation and width rounding."""

from __future__ import annotations

import keras
import numpy as np
from test_surgery_helpers import assert_same_function, outputs64, randomize_batchnorms

from tf_gamma_prune import prune_model
from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.prune.plan import plan_removal

L = keras.layers


def mlp():
    x = keras.Input((5,))
    h = L.Dense(6, name="fc1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="relu1")(h)
    return keras.Model(x, L.Dense(2, name="fc2")(h))


def test_keep_indices_and_masks_give_the_requested_widths():
    model = randomize_batchnorms(mlp(), zero_fraction=0.0)
    pruned = prune_model(model, {"bn1": [0, 2, 5]})
    assert pruned.get_layer("fc1").units == 3
    pruned = prune_model(model, {"fc1": np.array([1, 1, 0, 0, 1, 1], bool)})
    assert pruned.get_layer("fc1").units == 4


def test_dropped_channels_without_calibration_act_as_zero():
    model = randomize_batchnorms(mlp(), zero_fraction=0.0)
    keep = [0, 2, 5]
    pruned = prune_model(model, {"bn1": keep})
    x = np.random.default_rng(0).standard_normal((8, 5)).astype("float32")
    hidden = keras.Model(model.input, model.get_layer("relu1").output)
    h = np.asarray(hidden(x, training=False), np.float64)
    mask = np.zeros(6, bool)
    mask[keep] = True
    h[:, ~mask] = 0.0
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("fc2").weights)
    np.testing.assert_allclose(outputs64(pruned, x)[0], h @ w + b, rtol=1e-5, atol=1e-5)


def test_calibration_replaces_dropped_channels_by_their_mean_activation():
    model = randomize_batchnorms(mlp(), zero_fraction=0.0)
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((64, 5)).astype("float32")
    keep = [1, 3]
    pruned = prune_model(model, {"bn1": keep}, calibration_data=calibration)
    hidden = keras.Model(model.input, model.get_layer("relu1").output)
    mean = np.asarray(hidden(calibration, training=False), np.float64).mean(axis=0)
    x = rng.standard_normal((8, 5)).astype("float32")
    h = np.asarray(hidden(x, training=False), np.float64)
    dropped = np.setdiff1d(np.arange(6), keep)
    h[:, dropped] = mean[dropped]
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("fc2").weights)
    np.testing.assert_allclose(outputs64(pruned, x)[0], h @ w + b, rtol=1e-5, atol=1e-5)


def test_calibration_data_may_be_a_dataset_or_an_iterator_of_batches():
    import tensorflow as tf

    from tf_gamma_prune.prune.calibration import CALIBRATION_EXAMPLES

    model = randomize_batchnorms(mlp(), zero_fraction=0.0)
    rng = np.random.default_rng(2)
    calibration = rng.standard_normal((64, 5)).astype("float32")
    reference = prune_model(model, {"bn1": [1, 3]}, calibration_data=calibration)
    x = rng.standard_normal((8, 5)).astype("float32")
    sources = {
        "(x, y)": (calibration, np.zeros(64)),
        "batched (x, y) dataset": tf.data.Dataset.from_tensor_slices((calibration, np.zeros(64))).batch(10),
        "unbatched dataset": tf.data.Dataset.from_tensor_slices(calibration),
        "generator": (b for b in np.split(calibration, 4)),
    }
    for what, data in sources.items():
        pruned = prune_model(model, {"bn1": [1, 3]}, calibration_data=data)
        np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(reference, x)[0],
                                   rtol=1e-5, atol=1e-5, err_msg=what)
    # an endless stream: the first ~CALIBRATION_EXAMPLES examples are used
    endless = tf.data.Dataset.from_tensor_slices(calibration).repeat().batch(16)
    pulled = []
    stream = (pulled.append(b) or b for b in endless)
    pruned = prune_model(model, {"bn1": [1, 3]}, calibration_data=stream)
    assert len(pulled) == -(-CALIBRATION_EXAMPLES // 16)
    np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(reference, x)[0], rtol=1e-5, atol=1e-5)


def test_selection_and_constants_combine():
    model = randomize_batchnorms(mlp(), zero_fraction=0.0)
    model.get_layer("bn1").gamma.assign([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    pruned, report = prune_model(model, {"bn1": [0, 1, 2, 3]}, return_report=True)
    assert pruned.get_layer("fc1").units == 3  # 4, 5 selected away, 2 constant
    assert report.removed_constant == 1 and report.removed_selected == 2


def test_tied_layers_keep_a_channel_when_any_selected_member_keeps_it():
    x = keras.Input((4, 4, 3))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(4, 1)(x))
    b = L.BatchNormalization(name="bn_b")(L.Conv2D(4, 1)(x))
    y = L.Conv2D(2, 1)(L.Add()([a, b]))
    model = randomize_batchnorms(keras.Model(x, y), zero_fraction=0.0)
    graph = channel_graph(model)
    plan = plan_removal(graph, {"bn_a": [0, 1], "bn_b": [1, 2]})
    assert plan.removed[graph.layer_channels("bn_a")].tolist() == [False, False, False, True]


def test_round_to_keeps_multiples_and_the_largest_gammas():
    x = keras.Input((6, 6, 3))
    y = L.Conv2D(12, 3, padding="same", name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.ReLU()(y)
    model = randomize_batchnorms(keras.Model(x, L.Conv2D(2, 1)(y)), zero_fraction=0.0)
    gamma = np.array([1, 0, 0, 0, 0, 0.5, 0.9, 1, 1, 0.2, 1, 0.1], "float32")
    model.get_layer("bn").gamma.assign(gamma)
    # 5 constant channels -> 7 kept; round_to=4 keeps 8: the best removed one
    # by |γ| is... all removed have γ = 0, so the lowest index (1) comes back.
    pruned = prune_model(model, round_to=4)
    assert pruned.get_layer("conv").filters == 8
    assert_same_function(model, pruned)
    # with a selection, the extra channel is the dropped one with the largest |γ|
    keep = [0, 7, 8, 10, 6]  # drop 5 (0.5), 9 (0.2), 11 (0.1) and the γ=0 ones
    pruned = prune_model(model, {"bn": keep}, round_to=3)
    graph = channel_graph(model)
    plan = plan_removal(graph, {"bn": keep}, round_to=3)
    kept = np.flatnonzero(~plan.removed[graph.layer_channels("bn")]).tolist()
    assert kept == [0, 5, 6, 7, 8, 10]
    assert pruned.get_layer("conv").filters == 6
