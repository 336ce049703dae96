"""recalibrate_batchnorm against NumPy batch statistics."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_gamma_prune import NoBatchNormError, RecalibrationDataError, recalibrate_batchnorm

L = keras.layers


def conv_bn_model(frozen: bool = False) -> keras.Model:
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", name="conv")(x)
    bn = L.BatchNormalization(momentum=0.99, name="bn")
    bn.trainable = not frozen
    y = L.ReLU()(bn(h))
    return keras.Model(x, y)


def data(n: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(2.0, 3.0, (n, 6, 6, 2)).astype("float32")


def numpy_stats(model: keras.Model, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain average over batches of the conv output's per-channel mean and biased variance."""
    conv = model.get_layer("conv")
    kernel, bias = (w.numpy().astype(np.float64) for w in conv.weights)
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nhwc,co->nhwo", padded[:, i:i + 6, j:j + 6, :], kernel[i, j])
    out += bias
    means, variances = [], []
    for start in range(0, len(x), batch_size):
        b = out[start:start + batch_size]
        means.append(b.mean(axis=(0, 1, 2)))
        variances.append(b.var(axis=(0, 1, 2)))
    return np.mean(means, axis=0), np.mean(variances, axis=0)


@pytest.mark.parametrize("frozen", [False, True])
def test_matches_numpy_average_and_restores_layer_state(frozen):
    model = conv_bn_model(frozen)
    x = data()
    weights = [w.numpy().copy() for w in model.get_layer("conv").weights]
    bn = model.get_layer("bn")
    gamma, beta = bn.gamma.numpy().copy(), bn.beta.numpy().copy()
    assert recalibrate_batchnorm(model, x, batch_size=16) == 3
    mean, var = numpy_stats(model, x, 16)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.99 and bn.trainable == (not frozen)
    for old, new in zip(weights, model.get_layer("conv").weights):
        np.testing.assert_array_equal(old, new.numpy())
    np.testing.assert_array_equal(gamma, bn.gamma.numpy())
    np.testing.assert_array_equal(beta, bn.beta.numpy())


def test_dataset_of_pairs_and_max_batches():
    model = conv_bn_model()
    x = data(64, seed=1)
    y = np.zeros(len(x), "int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert recalibrate_batchnorm(model, ds, max_batches=2) == 2
    mean, var = numpy_stats(model, x[:32], 16)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=1e-4, atol=1e-4)


def test_nested_model_batchnorms_are_recalibrated():
    inner = conv_bn_model()
    outer = keras.Sequential([keras.Input((6, 6, 2)), inner, L.GlobalAveragePooling2D()])
    x = data()
    recalibrate_batchnorm(outer, x, batch_size=48)
    mean, _ = numpy_stats(inner, x, 48)
    np.testing.assert_allclose(inner.get_layer("bn").moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_typed_errors_and_leave_stats_alone():
    model = conv_bn_model()
    bn = model.get_layer("bn")
    before = bn.moving_mean.numpy().copy()
    bad = data()
    bad[20, 0, 0, 0] = np.nan
    with pytest.raises(RecalibrationDataError, match="NaN"):
        recalibrate_batchnorm(model, bad, batch_size=16)  # NaN in the second batch
    assert bn.momentum == 0.99  # restored after the error
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)  # all or nothing
    with pytest.raises(RecalibrationDataError, match="no batch"):
        recalibrate_batchnorm(model, [])
    with pytest.raises(RecalibrationDataError, match="no batch"):
        recalibrate_batchnorm(model, iter(()))
    fresh = conv_bn_model()
    with pytest.raises(RecalibrationDataError):
        recalibrate_batchnorm(fresh, data()[:0])
    np.testing.assert_array_equal(fresh.get_layer("bn").moving_mean.numpy(), np.zeros(4))
    with pytest.raises(NoBatchNormError):
        recalibrate_batchnorm(keras.Sequential([keras.Input((3,)), L.Dense(2)]), np.ones((4, 3)))
    with pytest.raises(RecalibrationDataError, match=r"\(4, 5, 5, 2\).*expects \(None, 6, 6, 2\)"):
        recalibrate_batchnorm(model, np.ones((4, 5, 5, 2), "float32"))
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batchnorm(model, data(), batch_size=0)


def test_an_x_y_pair_is_read_as_its_x():
    """(x, y) is one batch of x, as in every other function that takes data."""
    x = data()
    with_labels, plain = conv_bn_model(), conv_bn_model()
    plain.set_weights(with_labels.get_weights())
    assert recalibrate_batchnorm(with_labels, (x, np.zeros(len(x))), batch_size=24) == 2
    assert recalibrate_batchnorm(plain, x, batch_size=24) == 2
    np.testing.assert_array_equal(with_labels.get_layer("bn").moving_mean.numpy(),
                                  plain.get_layer("bn").moving_mean.numpy())


def test_list_of_batches():
    model = conv_bn_model()
    x = data()
    assert recalibrate_batchnorm(model, [x[:24], x[24:]]) == 2
    mean, var = numpy_stats(model, x, 24)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
