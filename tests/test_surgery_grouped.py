"""Grouped convolutions (groups > 1): exact, each group keeps the same width."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import outputs64, randomize_batchnorms

from tf_gamma_prune import channel_graph, prune_model

L = keras.layers


def grouped_model(conv, shape, groups=4, filters=8):
    x = keras.Input(shape)
    h = L.BatchNormalization(name="bn1")(conv(8, 3, padding="same", name="conv1")(x))
    h = conv(filters, 3, padding="same", groups=groups, name="grouped")(h)
    h = L.ReLU()(L.BatchNormalization(name="bn2")(h))
    y = conv(3, 3, padding="same", name="head")(h)
    return keras.Model(x, y)


@pytest.mark.parametrize("conv, shape", [(L.Conv2D, (8, 8, 3)), (L.Conv1D, (10, 3))])
def test_output_position_of_every_group_is_removed_together_exactly(conv, shape):
    model = randomize_batchnorms(grouped_model(conv, shape), seed=4, zero_fraction=0.0)
    gamma = model.get_layer("bn2").gamma.numpy()
    gamma[[1, 3, 5, 7]] = 0.0  # output 1 of each of the 4 groups (2 outputs per group)
    gamma[2] = 0.0  # output 0 of group 1 only: the group's twins are not constant, kept
    model.get_layer("bn2").gamma.assign(gamma)
    model.get_layer("bn1").gamma.assign(np.where(np.arange(8) < 2, 0.0, 1.0))  # read by grouped
    pruned, report = prune_model(model, return_report=True)
    assert pruned.get_layer("grouped").filters == 4 and pruned.get_layer("grouped").groups == 4
    assert pruned.get_layer("conv1").filters == 8  # inputs of a grouped conv are kept
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype("float32")
    np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(model, x)[0], rtol=1e-5, atol=1e-5)
    assert report.max_rel_deviation < 1e-5


def test_grouped_channels_are_coupled_across_groups():
    graph = channel_graph(grouped_model(L.Conv2D, (8, 8, 3)))
    groups = graph.layer_channels("grouped")
    assert groups[:2].tolist() == groups[2:4].tolist() == groups[6:8].tolist()
    assert len(set(groups.tolist())) == 2
    assert graph.pinned[graph.layer_channels("bn1")].all()


@pytest.mark.parametrize("fold", ["exact", "carrier"])
def test_random_zeros_never_crash_and_stay_exact(fold):
    model = randomize_batchnorms(grouped_model(L.Conv2D, (8, 8, 3), groups=2), seed=9)
    gamma = model.get_layer("bn2").gamma.numpy()
    gamma[[0, 4]] = 0.0  # output 0 of both groups, on top of the random zeros
    model.get_layer("bn2").gamma.assign(gamma)
    pruned, report = prune_model(model, fold=fold, return_report=True)
    assert report.removed_constant > 0
    assert report.max_rel_deviation < 1e-5
