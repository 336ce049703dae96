"""No silent no-ops or collapses (issue 15 item 8)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import outputs64

from tf_gamma_prune import NoBatchNormError, prune_model

L = keras.layers


def norm_model(norm):
    x = keras.Input((6, 6, 3))
    h = L.ReLU()(norm(L.Conv2D(8, 3, padding="same", name="conv")(x)))
    h = L.Conv2D(8, 1, name="conv2")(h)
    return keras.Model(x, L.Conv2D(2, 1, name="head")(h))


@pytest.mark.parametrize("norm", [lambda: L.LayerNormalization(name="norm"),
                                  lambda: L.GroupNormalization(2, name="norm")])
def test_a_model_without_batchnorm_is_refused_not_returned_unchanged(norm):
    model = norm_model(norm())
    model.get_layer("norm").gamma.assign(np.zeros(8))
    with pytest.raises(NoBatchNormError, match="selection"):
        prune_model(model)
    pruned = prune_model(model, {"conv2": [0, 1, 2, 3]})  # a selection still works
    assert pruned.get_layer("conv2").filters == 4


def test_a_layer_whose_every_gamma_is_zero_warns_loudly():
    x = keras.Input((5,))
    h = L.ReLU()(L.BatchNormalization(name="bn")(L.Dense(4, name="fc")(x)))
    model = keras.Model(x, L.Dense(2, name="head")(h))
    model.get_layer("bn").gamma.assign(np.zeros(4))
    with pytest.warns(UserWarning, match=r"\['bn'\].*every γ is 0.*min_channels"):
        pruned = prune_model(model)
    inputs = np.random.default_rng(0).standard_normal((3, 5)).astype("float32")
    np.testing.assert_allclose(outputs64(pruned, inputs)[0], outputs64(model, inputs)[0], atol=1e-6)
