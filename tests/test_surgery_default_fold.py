"""The default fold ("auto"): exact, never larger than the input model, works with dynamic shapes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import outputs64, randomize_batchnorms

from tf_gamma_prune import BorderCorrection, model_cost, prune_model, to_tflite

L = keras.layers


def unet(shape=(64, 64, 3)):
    x = keras.Input(shape)

    def block(h, n, name):
        h = L.Conv2D(n, 3, padding="same", name=name)(h)
        return L.ReLU()(L.BatchNormalization(name=f"{name}_bn")(h))

    e1 = block(x, 8, "e1")
    e2 = block(L.MaxPooling2D()(e1), 16, "e2")
    b = block(L.MaxPooling2D()(e2), 32, "b")
    d2 = block(L.Concatenate()([L.UpSampling2D()(b), e2]), 16, "d2")
    d1 = block(L.Concatenate()([L.UpSampling2D()(d2), e1]), 8, "d1")
    return keras.Model(x, L.Conv2D(2, 1, name="out")(d1))


def depthwise_net(shape=(32, 32, 3)):
    x = keras.Input(shape)
    h = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same")(x)))
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)  # constants become maps
    h = L.ReLU()(L.BatchNormalization(name="bn2")(h))
    return keras.Model(x, L.Conv2D(4, 3, padding="same", name="reader")(h))


@pytest.mark.parametrize("build", [unet, depthwise_net])
def test_default_is_exact_and_never_larger(build):
    model = randomize_batchnorms(build(), seed=3, zero_fraction=0.5)
    pruned, report = prune_model(model, return_report=True)
    x = np.random.default_rng(0).standard_normal((2,) + model.input_shape[1:]).astype("float32")
    np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(model, x)[0], rtol=1e-5, atol=1e-5)
    assert not any(isinstance(layer, BorderCorrection) for layer in pruned.layers)
    assert model_cost(pruned).params <= model_cost(model).params
    assert len(to_tflite(pruned)) <= len(to_tflite(model))
    exact, exact_report = prune_model(model, fold="exact", return_report=True)
    assert exact_report.border_corrections  # border maps, which the default avoids
    # maps this small are added whole (one ADD is faster than a ring's split/add/concat)
    rings = [layer for layer in exact.layers if isinstance(layer, BorderCorrection)]
    assert rings and all(r.segments is None for r in rings)
    assert exact_report.border_params == sum(np.prod(r.map_shape) for r in rings)


def test_depthwise_fallback_keeps_the_constants_and_says_so():
    model = randomize_batchnorms(depthwise_net(), seed=3, zero_fraction=0.5)
    _, report = prune_model(model, return_report=True)
    assert any("fold='auto'" in note and "'reader'" in note for note in report.notes)


def test_dynamic_spatial_shape_just_works_exactly():
    model = randomize_batchnorms(unet((None, None, 3)), seed=5, zero_fraction=0.5)
    pruned, report = prune_model(model, return_report=True)
    assert report.removed_constant > 0
    for size in (16, 40):
        x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype("float32")
        np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(model, x)[0],
                                   rtol=1e-5, atol=1e-5)
