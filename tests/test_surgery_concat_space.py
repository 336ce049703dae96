"""Concatenate along a spatial axis (issue 15 item 2): tied channels, exact, callable."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import outputs64, randomize_batchnorms

from tf_gamma_prune import channel_graph, prune_model

L = keras.layers


def stacked(reader):
    x = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(4, 3, padding="same", name="a")(x))
    b = L.BatchNormalization(name="bn_b")(L.Conv2D(4, 3, padding="same", name="b")(x))
    h = L.Concatenate(axis=1, name="stack")([a, b])  # (16, 8, 4)
    return keras.Model(x, reader(h))


READERS = {
    "same": lambda h: L.Conv2D(2, 3, padding="same", name="reader")(h),
    "valid": lambda h: L.Conv2D(2, 3, padding="valid", name="reader")(h),
    "flatten_dense": lambda h: L.Dense(2, name="reader")(L.Flatten()(h)),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("fold", ["auto", "exact", "carrier"])
def test_exact_and_callable(reader, fold):
    model = randomize_batchnorms(stacked(READERS[reader]), seed=2, zero_fraction=0.0)
    for name in ("bn_a", "bn_b"):  # channel 1 constant in both inputs, channel 2 only in one
        gamma = model.get_layer(name).gamma.numpy()
        gamma[1] = 0.0
        model.get_layer(name).gamma.assign(gamma)
    gamma = model.get_layer("bn_a").gamma.numpy()
    gamma[2] = 0.0
    model.get_layer("bn_a").gamma.assign(gamma)
    pruned, report = prune_model(model, fold=fold, return_report=True)
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(model, x)[0], rtol=1e-5, atol=1e-5)
    assert pruned.get_layer("a").filters == pruned.get_layer("b").filters  # tied
    assert pruned.get_layer("a").filters >= 3  # channel 2 is constant in one input only


def test_channels_are_tied_across_the_stacked_inputs():
    graph = channel_graph(stacked(READERS["valid"]))
    assert graph.layer_channels("bn_a").tolist() == graph.layer_channels("bn_b").tolist()
