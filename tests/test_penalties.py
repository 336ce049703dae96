"""gamma_penalties against hand computation; rescale_gamma keeps the function."""

import keras
import numpy as np
import pytest

from conftest import randomize_batchnorm
from tf_gamma_prune import (
    GammaISTA, InexactRescaleError, NoBatchNormError, gamma_penalties, rescale_gamma,
)


def three_layer_net(head="gap"):
    x = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(4, 5, strides=2, padding="same", name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.ReLU()(h)
    h = (keras.layers.GlobalAveragePooling2D() if head == "gap" else keras.layers.Flatten())(h)
    h = keras.layers.Dense(10, name="logits")(h)
    y = keras.layers.BatchNormalization(name="bn3")(h)
    return keras.Model(x, y)


def test_penalties_equal_hand_computation():
    got = gamma_penalties(three_layer_net("gap"))
    # bn1: area 16·16, producer 3·3·3 per filter, consumer conv2 5·5·4 per input channel.
    # bn2: area 8·8, producer 5·5·8, consumer Dense(10) after global pooling: 10.
    # bn3 feeds no weight layer (logit layer): 0.
    assert got == pytest.approx({"bn1": (256 + 27 + 100) / 256,
                                 "bn2": (64 + 200 + 10) / 256,
                                 "bn3": 0.0})


def test_flatten_consumer_counts_every_spatial_position():
    got = gamma_penalties(three_layer_net("flatten"))
    assert got["bn2"] == pytest.approx((64 + 200 + 8 * 8 * 10) / 256)


def test_residual_add_and_depthwise_consumers():
    x = keras.Input((8, 8, 4))
    a = keras.layers.BatchNormalization(name="bn_a")(keras.layers.Conv2D(4, 1, name="ca")(x))
    b = keras.layers.BatchNormalization(name="bn_b")(keras.layers.Conv2D(4, 3, padding="same",
                                                                          name="cb")(x))
    s = keras.layers.Add()([a, b])
    d = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(s)
    d = keras.layers.BatchNormalization(name="bn_d")(d)
    p = keras.layers.Conv2D(6, 1, name="pw")(s)
    y = keras.layers.Concatenate()([d, p])
    y = keras.layers.Conv2D(3, 1, name="head")(y)
    got = gamma_penalties(keras.Model(x, y))
    consumers = 3 * 3 * 2 + 1 * 1 * 6  # depthwise (k·multiplier) + pointwise conv (k·c_out)
    assert got["bn_a"] == pytest.approx((64 + 1 * 4 + consumers) / 64)
    assert got["bn_b"] == pytest.approx((64 + 9 * 4 + consumers) / 64)
    # depthwise producer: 3·3 weights per output channel; consumer: 1·1·3.
    assert got["bn_d"] == pytest.approx((64 + 9 + 3) / 64)


def test_penalties_feed_gamma_ista_and_nested_names():
    inner = three_layer_net()
    x = keras.Input((16, 16, 3))
    model = keras.Model(x, inner(x))
    penalties = gamma_penalties(model)
    assert set(penalties) == {f"{inner.name}/bn{i}" for i in (1, 2, 3)}
    opt = GammaISTA(keras.optimizers.SGD(0.1), penalties=penalties).attach(model)
    opt.build(model.trainable_variables)
    assert {n for n, _, _ in opt.targets} == {f"{inner.name}/bn1", f"{inner.name}/bn2"}


def test_gamma_scale_multiplies_each_lambda_by_its_layers_mean_abs_gamma():
    inner = three_layer_net()
    x = keras.Input((16, 16, 3))
    model = keras.Model(x, inner(x))  # nested: qualified names
    rng = np.random.default_rng(0)
    gammas = {"bn1": rng.uniform(-0.5, 0.5, 8), "bn2": rng.uniform(1.0, 2.0, 4), "bn3": np.zeros(10)}
    for name, value in gammas.items():
        inner.get_layer(name).gamma.assign(value)
    plain = gamma_penalties(model)
    scaled = gamma_penalties(model, gamma_scale=True)
    for name, value in gammas.items():
        key = f"{inner.name}/{name}"
        factor = np.mean(np.abs(value)) or 1.0  # all-zero γ: λ unchanged
        assert scaled[key] == pytest.approx(plain[key] * factor)
    assert gamma_penalties(model, gamma_scale=False) == plain
    uniform = gamma_penalties(model, "uniform", gamma_scale=True)  # λ = the mean |γ| alone
    for name, value in gammas.items():
        assert uniform[f"{inner.name}/{name}"] == pytest.approx(np.mean(np.abs(value)) or 1.0)
    assert set(gamma_penalties(model, "uniform").values()) == {1.0}


def test_penalties_errors():
    with pytest.raises(NoBatchNormError):
        gamma_penalties(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    x = keras.Input((None, None, 3))
    y = keras.layers.BatchNormalization()(keras.layers.Conv2D(2, 3)(x))
    with pytest.raises(ValueError, match="static input size"):
        gamma_penalties(keras.Model(x, keras.layers.Conv2D(2, 1)(y)))


def residual_relu_net():
    x = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    h = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(h))
    r = keras.layers.Conv2D(8, 3, padding="same")(h)
    r = keras.layers.LeakyReLU(0.1)(keras.layers.BatchNormalization()(r))
    r = keras.layers.Conv2D(8, 3, padding="same")(r)
    r = keras.layers.BatchNormalization()(r)
    h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.SeparableConv2D(6, 3, padding="same")(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.Flatten()(h)
    return keras.Model(x, keras.layers.Dense(5)(h))


def test_rescale_keeps_outputs_and_undo_restores_weights():
    model = residual_relu_net()
    randomize_batchnorm(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(4, 12, 12, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x, training=False))
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    rescale_gamma(model, 0.01)
    bn = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)][0]
    gamma_index = [w.path for w in model.weights].index(bn.gamma.path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.gamma), weights[gamma_index] * 0.01, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), before, rtol=1e-4, atol=1e-4)
    rescale_gamma(model, 100.0)
    for w, w0 in zip(model.weights, weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(w), w0, rtol=1e-5, atol=1e-6)


def test_rescale_real_resnet50_is_exact():
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=7)
    randomize_batchnorm(model, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x, training=False))
    rescale_gamma(model, 0.05)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), before, rtol=1e-4, atol=1e-5)


def test_rescale_refuses_relu6_and_warns_when_not_strict():
    x = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3)(x))
    h = keras.layers.ReLU(max_value=6.0, name="relu6")(h)
    model = keras.Model(x, keras.layers.Dense(2)(h))
    with pytest.raises(InexactRescaleError, match=r"'relu6' \(ReLU\(max_value=6.0\)\)"):
        rescale_gamma(model, 0.1)
    with pytest.warns(UserWarning, match="not exact"):
        rescale_gamma(model, 0.1, strict=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("bn").gamma), 0.1)


def test_rescale_refuses_scaled_model_output_but_allows_excluding_that_layer():
    x = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="inner_bn")(keras.layers.Dense(3)(x))
    h = keras.layers.Dense(2)(keras.layers.ReLU()(h))
    y = keras.layers.BatchNormalization(name="out_bn")(h)
    model = keras.Model(x, y)
    with pytest.raises(InexactRescaleError, match="model output"):
        rescale_gamma(model, 0.1)
    before = keras.ops.convert_to_numpy(model(np.ones((1, 4)), training=False))
    rescale_gamma(model, 0.1, layers=["inner_bn"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(np.ones((1, 4)), training=False)), before, rtol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        rescale_gamma(model, -1.0)


def test_rescaling_a_model_with_border_corrections_is_exact():
    """rescale_gamma scales BorderCorrection maps too (exact-fold pruned models)."""
    from test_surgery_helpers import outputs64, randomize_batchnorms

    from tf_gamma_prune import BorderCorrection, prune_model

    x = keras.Input((8, 8, 3))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(
        keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(x)))
    h = keras.layers.BatchNormalization(name="bn2")(
        keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c2")(h))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(
        keras.layers.ReLU()(h))))
    randomize_batchnorms(model, seed=2, zero_fraction=0.0)
    model.get_layer("bn1").gamma.assign(np.array([1.0, 0.0, 0.5, 0.0, -0.7, 1.2], "float32"))
    pruned = prune_model(model, fold="exact")
    assert any(isinstance(layer, BorderCorrection) for layer in pruned.layers)
    inputs = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    before = outputs64(pruned, inputs)[0]
    rescale_gamma(pruned, 0.1)
    np.testing.assert_allclose(outputs64(pruned, inputs)[0], before, rtol=1e-5, atol=1e-5)
    rescale_gamma(pruned, 10.0)
    np.testing.assert_allclose(outputs64(pruned, inputs)[0], before, rtol=1e-5, atol=1e-5)
