"""NetworkSlimming: the L1 subgradient step against a NumPy reference, exclusions, saving."""

import doctest

import keras
import numpy as np
import pytest

import tf_gamma_prune.sparsify.slimming
from conftest import run_mirrored
from tf_gamma_prune import GammaISTA, NetworkSlimming, NoBatchNormError, SparsityMonitor

GAMMA0 = np.array([1.0, -0.8, 0.003, -0.003, 0.0, 0.5], np.float32)
GRAD = np.array([0.5, -0.5, 0.01, -0.02, 0.002, -2.0], np.float32)


def six_channel_model():
    x = keras.Input((3,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(6, name="dense")(x))
    model = keras.Model(x, keras.layers.Dense(1, name="out")(h))
    model.get_layer("bn").gamma.assign(GAMMA0)
    return model


def two_bn_model():
    x = keras.Input((5,))
    h = keras.layers.BatchNormalization(name="bn1")(keras.layers.Dense(4, name="d1")(x))
    h = keras.layers.ReLU()(h)
    h = keras.layers.BatchNormalization(name="bn2")(keras.layers.Dense(4, name="d2")(h))
    y = keras.layers.Dense(2, name="out")(keras.layers.ReLU()(h))
    return keras.Model(x, y)


def random_grads(model, seed=0):
    rng = np.random.default_rng(seed)
    return {v.path: rng.normal(size=v.shape).astype(np.float32) for v in model.trainable_variables}


def apply(model, optimizer, grads_by_path, scale=1.0):
    grads = [keras.ops.convert_to_tensor(grads_by_path[v.path] * scale)
             for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))


def values(model):
    return {v.path: np.array(v.numpy()) for v in model.trainable_variables}


def test_one_sgd_step_adds_l1_sign_to_gamma_gradient_only():
    model = six_channel_model()
    lr, l1 = 0.1, 0.05
    grads = random_grads(model)
    grads["bn/gamma"] = GRAD
    before = values(model)
    opt = NetworkSlimming(keras.optimizers.SGD(lr), l1=l1).attach(model)
    apply(model, opt, grads)
    after = values(model)
    # γ: plain SGD on g + l1·sign(γ); sign(0) = 0, so a zero γ gets no push.
    expected = GAMMA0 - lr * (GRAD + l1 * np.sign(GAMMA0))
    np.testing.assert_allclose(after["bn/gamma"], expected, rtol=1e-6, atol=1e-7)
    assert after["bn/gamma"][4] == pytest.approx(-lr * GRAD[4])
    # every other variable: plain SGD, untouched by the penalty
    for path in before:
        if path != "bn/gamma":
            np.testing.assert_allclose(after[path], before[path] - lr * grads[path],
                                       rtol=1e-6, atol=1e-7)
    assert [name for name, _ in opt.penalised_gammas] == ["bn"]
    assert int(opt.iterations.numpy()) == 1


def test_momentum_steps_match_numpy_reference_and_gamma_never_hits_zero():
    model = six_channel_model()
    lr, l1, mu = 0.1, 0.05, 0.9
    opt = NetworkSlimming(keras.optimizers.SGD(lr, momentum=mu), l1=l1).attach(model)
    grads = random_grads(model, seed=1)
    grads["bn/gamma"] = GRAD
    kernel0 = model.get_layer("dense").kernel.numpy().copy()
    gamma, velocity = GAMMA0.astype(np.float64), np.zeros(6)
    kernel, kernel_velocity = kernel0.astype(np.float64), np.zeros_like(kernel0, np.float64)
    for _ in range(4):
        apply(model, opt, grads)
        velocity = mu * velocity - lr * (GRAD + l1 * np.sign(gamma))
        gamma = gamma + velocity
        kernel_velocity = mu * kernel_velocity - lr * grads["dense/kernel"]
        kernel = kernel + kernel_velocity
    np.testing.assert_allclose(model.get_layer("bn").gamma.numpy(), gamma, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.get_layer("dense").kernel.numpy(), kernel, rtol=1e-5,
                               atol=1e-6)


def test_penalty_shrinks_gammas_in_fit_but_never_to_exact_zero_unlike_gamma_ista():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 2)).astype("float32")
    results = {}
    for name, make in {
        "sgd": lambda: keras.optimizers.SGD(0.05),
        "slimming": lambda: NetworkSlimming(keras.optimizers.SGD(0.05), l1=0.5),
        "ista": lambda: GammaISTA(keras.optimizers.SGD(0.05), rho=0.5),
    }.items():
        keras.utils.set_random_seed(5)
        model = two_bn_model()
        model.compile(make(), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=10, shuffle=False, verbose=0,
                            callbacks=[SparsityMonitor()])
        assert np.all(np.isfinite(history.history["loss"]))
        assert "zero_gamma_fraction" in history.history
        results[name] = np.concatenate([model.get_layer(b).gamma.numpy() for b in ("bn1", "bn2")])
    l1_norm = {k: np.abs(v).sum() for k, v in results.items()}
    assert l1_norm["slimming"] < 0.5 * l1_norm["sgd"]
    assert np.all(results["slimming"] != 0), "a subgradient step gives no exact zeros"
    zero = results["ista"] == 0
    assert 0 < np.sum(zero) < zero.size, "the proximal step does (same strength)"
    # where ISTA reaches 0, the subgradient only oscillates around it, within ~η·l1
    assert np.abs(results["slimming"][zero]).max() < 2 * 0.05 * 0.5


def test_exclude_leaves_a_layer_to_the_plain_optimizer():
    lr, l1 = 0.1, 0.2
    grads = random_grads(two_bn_model(), seed=2)
    keras.utils.set_random_seed(3)
    model = two_bn_model()
    gamma2_before = model.get_layer("bn2").gamma.numpy().copy()
    gamma1_before = model.get_layer("bn1").gamma.numpy().copy()
    opt = NetworkSlimming(keras.optimizers.SGD(lr), l1=l1, exclude=["bn2"]).attach(model)
    apply(model, opt, grads)
    np.testing.assert_allclose(model.get_layer("bn2").gamma.numpy(),
                               gamma2_before - lr * grads["bn2/gamma"], rtol=1e-6)
    np.testing.assert_allclose(
        model.get_layer("bn1").gamma.numpy(),
        gamma1_before - lr * (grads["bn1/gamma"] + l1 * np.sign(gamma1_before)), rtol=1e-6)
    assert [name for name, _ in opt.penalised_gammas] == ["bn1"]


def test_gamma_variables_by_path_loss_scale_factor_and_l1_setter():
    model = six_channel_model()
    lr = 0.1
    opt = NetworkSlimming(keras.optimizers.SGD(lr, loss_scale_factor=64.0), l1=0.0,
                          gamma_variables=["bn/gamma"])
    opt.l1 = 0.05
    assert float(opt.l1.numpy()) == pytest.approx(0.05)
    grads = random_grads(model)
    grads["bn/gamma"] = GRAD
    before = values(model)
    apply(model, opt, grads, scale=64.0)  # gradients of the scaled loss
    expected = GAMMA0 - lr * (GRAD + 0.05 * np.sign(GAMMA0))
    np.testing.assert_allclose(model.get_layer("bn").gamma.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(model.get_layer("out").kernel.numpy(),
                               before["out/kernel"] - lr * grads["out/kernel"], rtol=1e-5)


def test_bad_inputs_get_clear_errors():
    with pytest.raises(TypeError, match="Keras 3 optimizer"):
        NetworkSlimming("sgd")
    with pytest.raises(ValueError, match="l1"):
        NetworkSlimming(keras.optimizers.SGD(0.1), l1=-1.0)
    with pytest.raises(TypeError, match="l1"):
        NetworkSlimming(keras.optimizers.SGD(0.1), l1="big")
    with pytest.raises(ValueError, match="does not take"):
        NetworkSlimming(keras.optimizers.SGD(0.1), rho=1.0)
    model = two_bn_model()
    with pytest.raises(ValueError, match="Unknown layer 'nope'.*bn1, bn2"):
        NetworkSlimming(keras.optimizers.SGD(0.1), exclude=["nope"]).attach(model).build(
            model.trainable_variables)
    with pytest.raises(RuntimeError, match="attach"):
        NetworkSlimming(keras.optimizers.SGD(0.1)).build(model.trainable_variables)
    x = keras.Input((3,))
    plain = keras.Model(x, keras.layers.Dense(2)(x))
    with pytest.raises(NoBatchNormError, match="NetworkSlimming"):
        NetworkSlimming(keras.optimizers.SGD(0.1)).attach(plain).build(plain.trainable_variables)


def test_config_round_trip():
    opt = NetworkSlimming(keras.optimizers.SGD(0.05, momentum=0.9), l1=1e-5, exclude=["bn2"],
                          name="ns")
    config = opt.get_config()
    assert config["l1"] == pytest.approx(1e-5) and config["exclude"] == ["bn2"]
    assert NetworkSlimming.from_config(config).get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, NetworkSlimming)
    assert restored.get_config() == config
    assert isinstance(restored.inner_optimizer, keras.optimizers.SGD)


def test_save_load_restores_state_and_training_resumes_identically(tmp_path):
    model = two_bn_model()
    model.compile(NetworkSlimming(keras.optimizers.SGD(0.1, momentum=0.9), l1=0.3,
                                  exclude=["bn2"]), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, NetworkSlimming)
    assert int(loaded.optimizer.iterations.numpy()) == 8
    assert float(loaded.optimizer.l1.numpy()) == pytest.approx(0.3)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert [n for n, _ in loaded.optimizer.penalised_gammas] == ["bn1"]


def test_jit_compile_matches_eager():
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(7)
        model = two_bn_model()
        model.compile(NetworkSlimming(keras.optimizers.SGD(0.1), l1=0.5), loss="mse",
                      jit_compile=jit)
        rng = np.random.default_rng(1)
        model.fit(rng.normal(size=(16, 5)), rng.normal(size=(16, 2)), batch_size=8,
                  epochs=3, shuffle=False, verbose=0)
        results.append(model.get_layer("bn1").gamma.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_docstring_examples_run():
    result = doctest.testmod(tf_gamma_prune.sparsify.slimming, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_mirrored_strategy_adds_the_penalty_once():
    out = run_mirrored(
        "from tf_gamma_prune import NetworkSlimming",
        """
        h = keras.layers.BatchNormalization(name="bn", synchronized=True)(
            keras.layers.Dense(16)(x))
        """,
        """
        with strategy.scope():
            model = build()
            inner = keras.optimizers.SGD(0.05, momentum=0.9)
            model.compile(inner if mode == "plain" else NetworkSlimming(inner, l1=0.05),
                          loss="mse")
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
        out[mode] = model.get_layer("bn").gamma.numpy().tolist()
        """,
        modes=("single", "mirrored", "plain"))
    out = {k: np.array(v) for k, v in out.items()}
    np.testing.assert_allclose(out["single"], out["mirrored"], rtol=1e-4, atol=1e-5)
    # the penalty matters at this strength, so doubling it would show
    assert np.abs(out["single"] - out["plain"]).max() > 1e-2
