"""Receding neuron importances: the regulariser against NumPy, the recipe's optimizer,
the global-quantile selection, and bimodality on real Fashion-MNIST."""

import keras
import numpy as np
import pytest

from tf_gamma_prune import (
    BatchNormLRMultiplier,
    BoundedBatchNormalization,
    NetworkSlimming,
    RecedingImportanceRegularizer,
    count_macs,
    prune_model,
    receding_importance_selection,
    receding_importances,
    selection_for_macs,
    to_bounded_batchnorm,
    to_standard_batchnorm,
)
from tf_gamma_prune.errors import ArgumentError, CriterionError
from tf_gamma_prune.reference_models import fashion_vgg

W = np.array([-100.0, -30.0, -4.0, -1.0, -0.2, 0.0, 0.3, 1.5, 4.0, 30.0, 100.0], np.float32)


def _reference(w, strength, shift):
    """NumPy float64: value and d/dw of strength·Σ s(1 − ln s), s = sigmoid(w + shift)."""
    z = np.asarray(w, np.float64) + shift
    log_s = -np.logaddexp(0.0, -z)
    s = np.exp(log_s)
    value = strength * np.sum(s * (1.0 - log_s))
    grad = strength * (-log_s) * s * (1.0 - s)  # dR/ds = -ln s, ds/dw = s(1 - s)
    return value, grad


def _value_and_grad(fn, w):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(w)
        with tf.GradientTape() as tape:
            value = fn(x)
        return float(value), tape.gradient(value, x).numpy()
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(fn)(jax.numpy.asarray(w))
        return float(value), np.asarray(grad)
    pytest.skip(f"no gradient helper for the {backend} backend")


@pytest.mark.parametrize("shift", [-2.0, 0.0, 3.0])
def test_value_and_gradient_match_numpy(shift):
    reg = RecedingImportanceRegularizer(0.01, shift=shift)
    value, grad = _value_and_grad(reg, W)
    ref_value, ref_grad = _reference(W, 0.01, shift)
    assert value == pytest.approx(ref_value, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-9)
    assert np.all(np.isfinite(grad))  # log-sigmoid: no log(0) at w = -100


def test_push_on_s_is_larger_at_low_importance():
    reg = RecedingImportanceRegularizer(1.0)
    s = np.array([0.1, 0.9])
    w = np.log(s / (1 - s)).astype(np.float32)
    _, grad_w = _value_and_grad(reg, w)
    grad_s = grad_w / (s * (1 - s))  # chain rule back to s
    np.testing.assert_allclose(grad_s, -np.log(s), rtol=1e-4)  # 2.30 at 0.1, 0.105 at 0.9
    assert grad_s[0] > 20 * grad_s[1]
    assert grad_w[0] > 20 * grad_w[1]  # in w too: s(1 - s) is the same at 0.1 and 0.9


def test_regularizer_config_and_errors():
    reg = RecedingImportanceRegularizer(1e-3, shift=3.0)
    again = RecedingImportanceRegularizer.from_config(reg.get_config())
    assert (again.strength, again.shift) == (1e-3, 3.0)
    back = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
    assert isinstance(back, RecedingImportanceRegularizer) and back.shift == 3.0
    for bad in (-1.0, float("nan"), "a"):
        with pytest.raises(ArgumentError):
            RecedingImportanceRegularizer(bad)
    with pytest.raises(ArgumentError):
        RecedingImportanceRegularizer(1.0, shift=float("inf"))


# ------------------------------------------------------------- the 10x optimizer
def _tiny():
    x = keras.Input((3,))
    h = BoundedBatchNormalization(name="bbn", center=True)(keras.layers.Dense(4, name="d")(x))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4, name="d2")(h))
    return keras.Model(x, keras.layers.Dense(1, name="out")(h))


def test_multiplier_is_a_10x_sgd_rate_without_weight_decay_for_bn_parameters():
    model = _tiny()
    rng = np.random.default_rng(0)
    start = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    grads = [[rng.normal(size=v.shape).astype(np.float32) for v in model.trainable_variables]
             for _ in range(3)]
    lr, momentum, wd = 0.1, 0.9, 0.05
    opt = BatchNormLRMultiplier(keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd),
                                10.0).attach(model)
    for step in grads:
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in step],
                                model.trainable_variables))
    bn_paths = {"bbn/scale_logit", "bbn/beta", "bn/gamma", "bn/beta"}
    assert {v.path for v in opt.scaled_variables} == bn_paths
    for i, v in enumerate(model.trainable_variables):
        is_bn = v.path in bn_paths
        rate, decay = (10 * lr, 0.0) if is_bn else (lr, wd)
        w, velocity = start[v.path].astype(np.float64), 0.0
        for step in grads:  # Keras SGD: decoupled decay, then momentum
            w = w - rate * decay * w
            velocity = momentum * velocity - rate * step[i]
            w = w + velocity
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), w, rtol=1e-5, atol=1e-6,
                                   err_msg=v.path)


def test_multiplier_rejects_what_it_cannot_do_and_round_trips():
    with pytest.raises(ArgumentError, match="SGD"):
        BatchNormLRMultiplier(keras.optimizers.Adam())
    with pytest.raises(ArgumentError, match="clip"):
        BatchNormLRMultiplier(keras.optimizers.SGD(clipnorm=1.0))
    with pytest.raises(ArgumentError):
        BatchNormLRMultiplier(keras.optimizers.SGD(), 0.0)
    with pytest.raises(TypeError):
        BatchNormLRMultiplier("sgd")
    opt = BatchNormLRMultiplier(keras.optimizers.SGD(0.3, momentum=0.5), 4.0)
    again = BatchNormLRMultiplier.from_config(opt.get_config())
    assert again.multiplier == 4.0
    assert float(keras.ops.convert_to_numpy(again.learning_rate)) == pytest.approx(0.3)


def test_compiled_model_with_multiplier_saves_and_loads(tmp_path):
    model = _tiny()
    model.compile(BatchNormLRMultiplier(keras.optimizers.SGD(0.05, momentum=0.9)), loss="mse")
    x, y = np.random.default_rng(1).normal(size=(16, 3)), np.zeros((16, 1))
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, BatchNormLRMultiplier)
    loaded.fit(x, y, epochs=1, verbose=0)
    assert len(loaded.optimizer.scaled_variables) == 4


# ---------------------------------------------------------------- the selection
def _numpy_selection(importances, fraction, min_channels):
    """Independent reading: pool, cut floor(f·n) smallest, give each layer back its best."""
    names = list(importances)
    pooled = np.concatenate([importances[n] for n in names])
    owner = np.concatenate([[n] * len(importances[n]) for n in names])
    index = np.concatenate([np.arange(len(importances[n])) for n in names])
    cut = np.argsort(pooled, kind="stable")[: int(np.floor(fraction * len(pooled) + 1e-9))]
    removed = {n: set() for n in names}
    for i in cut:
        removed[owner[i]].add(int(index[i]))
    out = {}
    for n in names:
        kept = [i for i in range(len(importances[n])) if i not in removed[n]]
        order = [int(i) for i in np.argsort(-importances[n], kind="stable")]
        for i in order:
            if len(kept) >= min(min_channels, len(importances[n])):
                break
            if i not in kept:
                kept.append(i)
        out[n] = sorted(kept)
    return out


@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.95])
def test_selection_is_one_global_quantile_with_at_least_min_channels(fraction):
    model = to_bounded_batchnorm(fashion_vgg(widths=(8, 8, 16, 16, 32, 32)), seed=5)
    rng = np.random.default_rng(6)
    for layer in model.layers:  # make some layers nearly dead, as after RNI training
        if isinstance(layer, BoundedBatchNormalization):
            shift = -6.0 if layer.name in ("bn2", "bn5") else 0.0
            layer.scale_logit.assign(
                (rng.normal(size=layer.scale_logit.shape) * 2 + shift).astype(np.float32))
    importances = {n: 1 / (1 + np.exp(-keras.ops.convert_to_numpy(
        model.get_layer(n).scale_logit).astype(np.float64))) for n in ("bn1", "bn2", "bn3",
                                                                         "bn4", "bn5", "bn6")}
    expected = _numpy_selection(importances, fraction, 3)
    got = receding_importance_selection(model, fraction)
    assert {n: k.tolist() for n, k in got.items()} == expected
    assert min(len(k) for k in got.values()) >= 3
    # the same selection after the conversion (γ = sigmoid(w))
    standard = to_standard_batchnorm(model)
    again = receding_importance_selection(standard, fraction)
    assert {n: k.tolist() for n, k in again.items()} == expected
    assert set(receding_importances(model)) == set(importances)


def test_selection_for_macs_and_prune_model():
    model = to_bounded_batchnorm(fashion_vgg(widths=(8, 8, 16, 16, 32, 32)), seed=7)
    target = count_macs(model) // 2
    selection, macs = selection_for_macs(model, receding_importance_selection, target,
                                         min_channels=3)
    assert abs(macs - target) <= 0.05 * target
    small = prune_model(model, selection, probe=False)
    assert count_macs(small) == macs
    assert count_macs(prune_model(to_standard_batchnorm(model), selection, probe=False)) == macs


def test_selection_errors():
    model = to_bounded_batchnorm(fashion_vgg(widths=(4,) * 6), seed=0)
    with pytest.raises(CriterionError):
        receding_importance_selection(model, 1.0)
    with pytest.raises(CriterionError):
        receding_importance_selection(model, 0.5, min_channels=0)
    with pytest.raises(CriterionError, match="conv1"):
        receding_importance_selection(model, 0.5, layers=["conv1"])


# ------------------------------------------------------ real data: bimodality
def _tails(values):
    """The stated statistic: the mass below 0.1 plus the mass above 0.9."""
    values = np.asarray(values)
    return float(np.mean(values < 0.1)), float(np.mean(values > 0.9))


def test_rni_importances_are_more_bimodal_than_l1_on_gamma_on_fashion_mnist():
    """3 epochs on 4,096 real Fashion-MNIST images, the same net and SGD for both.

    RNI: RecedingImportanceRegularizer(0.01, shift=0), BN parameters at 10x the rate;
    importances sigmoid(w). L1 on γ: NetworkSlimming(l1=1e-4, the paper's VGG value);
    importances |γ| / max|γ|. Measured here (seed 0): RNI ≈ 0.29 below 0.1 and 0.05
    above 0.9 (tails ≈ 0.33); L1 on γ: 0.0 below 0.1, ≈ 0.2 above 0.9 (its γ stay near
    1). Asserted: RNI's mass near 0 + near 1 exceeds L1's by ≥ 0.08 and RNI has ≥ 15 %
    of its channels below 0.1, where L1 has none.
    """
    from tf_gamma_prune.data import load_fashion_mnist

    (x, y), _ = load_fashion_mnist(use_tfds=False)
    x, y = x[:4096], y[:4096]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    keras.utils.set_random_seed(0)
    rni = to_bounded_batchnorm(fashion_vgg(widths=(8, 8, 16, 16, 32, 32)),
                               regularizer=RecedingImportanceRegularizer(0.01))
    rni.compile(BatchNormLRMultiplier(keras.optimizers.SGD(0.05, momentum=0.9), 10.0), loss=loss)
    rni.fit(x, y, batch_size=64, epochs=3, verbose=0)
    rni_values = np.concatenate(list(receding_importances(rni).values()))

    keras.utils.set_random_seed(0)
    l1 = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    l1.compile(NetworkSlimming(keras.optimizers.SGD(0.05, momentum=0.9), l1=1e-4), loss=loss)
    l1.fit(x, y, batch_size=64, epochs=3, verbose=0)
    gammas = np.concatenate(list(receding_importances(l1).values()))
    l1_values = gammas / gammas.max()

    rni_low, rni_high = _tails(rni_values)
    l1_low, l1_high = _tails(l1_values)
    print(f"RNI below 0.1 {rni_low:.3f} above 0.9 {rni_high:.3f}; "
          f"L1 below 0.1 {l1_low:.3f} above 0.9 {l1_high:.3f}")
    assert rni_low + rni_high >= l1_low + l1_high + 0.08
    assert rni_low >= 0.15 and l1_low < 0.05
