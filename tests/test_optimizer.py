"""GammaISTA: the proximal step against a NumPy reference, slots, schedules, serialization."""

import keras
import numpy as np
import pytest

from tf_gamma_prune import GammaISTA, NoBatchNormError, NonFiniteGammaError
from tf_gamma_prune.analysis.batchnorm import batchnorm_layers

from conftest import run_mirrored, tensorflow_only


def dense_bn_model():
    x = keras.Input((5,))
    h = keras.layers.Dense(4, name="dense")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    y = keras.layers.Dense(2, name="out")(keras.layers.ReLU()(h))
    return keras.Model(x, y)


def soft_threshold(v, t):
    """Reference prox of t·|·|: sign taken *before* the shrink."""
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def step_with_gradients(model, optimizer, grads_by_path):
    """One optimizer step with hand-made gradients (zeros for unnamed variables)."""
    grads = [
        grads_by_path.get(v.path, np.zeros(v.shape, np.float32)) for v in model.trainable_variables
    ]
    optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads],
                                  model.trainable_variables))


GAMMA0 = np.array([1.0, -0.8, 0.003, -0.003, 0.0, 0.5], np.float32)
GRAD = np.array([0.5, -0.5, 0.01, 0.01, 0.002, -2.0], np.float32)


def six_channel_model():
    x = keras.Input((3,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(6)(x))
    model = keras.Model(x, keras.layers.Dense(1)(h))
    model.get_layer("bn").gamma.assign(GAMMA0)
    return model


def test_one_sgd_step_matches_numpy_soft_threshold():
    model = six_channel_model()
    lr, rho, lam = 0.1, 0.05, 2.0
    opt = GammaISTA(keras.optimizers.SGD(lr), rho=rho, penalties={"bn": lam}).attach(model)
    step_with_gradients(model, opt, {"bn/gamma": GRAD})
    expected = soft_threshold(GAMMA0 - lr * GRAD, lr * rho * lam)
    got = model.get_layer("bn").gamma.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # Sign preserved, tiny entries exactly zero (the sign-after-shrink bug flips them).
    assert got[1] < 0 and got[0] > 0
    assert got[2] == 0.0 and got[3] == 0.0 and got[4] == 0.0
    assert not np.signbit(got[2:5]).any(), "zeros should be +0.0"


def test_momentum_step_and_slot_reset_match_reference():
    model = six_channel_model()
    lr, rho, mu = 0.1, 0.05, 0.9
    opt = GammaISTA(keras.optimizers.SGD(lr, momentum=mu), rho=rho).attach(model)
    gamma, velocity = GAMMA0.copy(), np.zeros(6, np.float32)
    for _ in range(3):
        step_with_gradients(model, opt, {"bn/gamma": GRAD})
        velocity = mu * velocity - lr * GRAD
        gamma = soft_threshold(gamma + velocity, lr * rho)
        velocity = np.where(gamma == 0, 0.0, velocity)
    np.testing.assert_allclose(model.get_layer("bn").gamma.numpy(), gamma, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reset_slots", [True, False])
def test_zero_gamma_stays_zero_while_gradient_is_below_threshold(reset_slots):
    """With slot reset a zeroed γ obeys the prox fixed point |g| ≤ ρλ despite momentum."""
    model = six_channel_model()
    lr, rho = 0.1, 0.5
    bn = model.get_layer("bn")
    opt = GammaISTA(keras.optimizers.SGD(lr, momentum=0.9), rho=rho,
                    reset_slots=reset_slots).attach(model)
    # Phase 1: γ[0] arrives at exactly zero by the prox step while carrying a large
    # momentum towards the negative side (as after a fast descent).
    step_with_gradients(model, opt, {})  # builds the slots
    velocity = [v for v in opt.inner_optimizer.variables if "bn_gamma_momentum" in v.path][0]
    bn.gamma.assign(np.array([0.5, 1, 1, 1, 1, 1], np.float32))
    velocity.assign(np.array([-0.55, 0, 0, 0, 0, 0], np.float32))
    step_with_gradients(model, opt, {})  # γ + v = 0.5 − 0.495 = 0.005 ≤ threshold 0.05
    assert bn.gamma.numpy()[0] == 0.0
    # Phase 2: the data gradient (0.4) stays below the threshold ρλ = 0.5.
    trace = []
    for _ in range(20):
        step_with_gradients(model, opt, {"bn/gamma": np.array([0.4, 0, 0, 0, 0, 0], np.float32)})
        trace.append(bn.gamma.numpy()[0])
    if not reset_slots:  # stale momentum pushes it off zero: the property needs the reset
        assert any(v != 0.0 for v in trace)
        return
    assert all(v == 0.0 for v in trace)
    # Phase 3: a gradient above the threshold moves it away from zero again.
    step_with_gradients(model, opt, {"bn/gamma": np.array([-0.9, 0, 0, 0, 0, 0], np.float32)})
    assert bn.gamma.numpy()[0] > 0


def test_threshold_follows_learning_rate_schedule():
    model = six_channel_model()
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2, 4], [0.1, 0.01, 0.001])
    rho = 0.5
    opt = GammaISTA(keras.optimizers.SGD(schedule), rho=rho).attach(model)
    bn = model.get_layer("bn")
    bn.gamma.assign(np.full(6, 10.0, np.float32))
    expected = 10.0
    for step in range(6):
        step_with_gradients(model, opt, {})
        expected -= float(schedule(step)) * rho
        np.testing.assert_allclose(bn.gamma.numpy(), expected, rtol=1e-6)
    # PiecewiseConstantDecay: steps 0-2 at 0.1, 3-4 at 0.01, 5 at 0.001.
    assert expected == pytest.approx(10.0 - 0.5 * (3 * 0.1 + 2 * 0.01 + 0.001))


def test_rho_schedule_and_rho_setter():
    model = six_channel_model()
    bn = model.get_layer("bn")
    bn.gamma.assign(np.full(6, 10.0, np.float32))
    rho = keras.optimizers.schedules.PiecewiseConstantDecay([0], [1.0, 3.0])  # step 0: 1, then 3
    opt = GammaISTA(keras.optimizers.SGD(0.1), rho=rho).attach(model)
    step_with_gradients(model, opt, {})
    step_with_gradients(model, opt, {})
    np.testing.assert_allclose(bn.gamma.numpy(), 10.0 - 0.1 * 1.0 - 0.1 * 3.0, rtol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        opt.rho = 2.0
    fixed = GammaISTA(keras.optimizers.SGD(0.1), rho=1.0)
    fixed.rho = 0.25
    assert float(fixed.rho.numpy()) == 0.25


def test_sgd_gamma_step_with_adam_is_exact_ista_and_other_weights_use_adam():
    model = six_channel_model()
    lr, rho = 0.05, 0.2
    opt = GammaISTA(keras.optimizers.Adam(lr), rho=rho, gamma_step="sgd").attach(model)
    kernel_path = model.layers[1].kernel.path
    before = model.layers[1].kernel.numpy()
    kernel_grad = np.full(before.shape, 1.0, np.float32)
    step_with_gradients(model, opt, {"bn/gamma": GRAD, kernel_path: kernel_grad})
    np.testing.assert_allclose(model.get_layer("bn").gamma.numpy(),
                               soft_threshold(GAMMA0 - lr * GRAD, lr * rho), rtol=1e-6, atol=1e-7)
    # Adam's first step moves every weight by ≈ lr regardless of the gradient's size.
    np.testing.assert_allclose(before - model.layers[1].kernel.numpy(), lr, rtol=1e-3)
    # γ has no Adam slots in this mode.
    assert not any("bn_gamma" in v.path for v in opt.inner_optimizer.variables)


def test_inner_weight_decay_never_touches_gamma():
    model = six_channel_model()
    opt = GammaISTA(keras.optimizers.AdamW(0.1, weight_decay=0.5), rho=0.0).attach(model)
    kernel = model.layers[1].kernel
    k0 = kernel.numpy()
    step_with_gradients(model, opt, {})
    np.testing.assert_array_equal(model.get_layer("bn").gamma.numpy(), GAMMA0)
    np.testing.assert_allclose(kernel.numpy(), k0 * (1 - 0.1 * 0.5), rtol=1e-6)


def test_excluded_layers_and_zero_penalties_are_left_alone():
    x = keras.Input((3,))
    a = keras.layers.BatchNormalization(name="bn_a")(keras.layers.Dense(4)(x))
    b = keras.layers.BatchNormalization(name="bn_b")(keras.layers.Dense(4)(a))
    c = keras.layers.BatchNormalization(name="bn_c")(keras.layers.Dense(4)(b))
    model = keras.Model(x, c)
    opt = GammaISTA(keras.optimizers.SGD(1.0), rho=0.5, exclude=["bn_a"],
                    penalties={"bn_b": 0.0}).attach(model)
    step_with_gradients(model, opt, {})
    assert [name for name, _, _ in opt.targets] == ["bn_c"]
    assert np.all(model.get_layer("bn_a").gamma.numpy() == 1.0)
    assert np.all(model.get_layer("bn_b").gamma.numpy() == 1.0)
    np.testing.assert_allclose(model.get_layer("bn_c").gamma.numpy(), 0.5)


@tensorflow_only
def test_nested_model_and_synchronized_batchnorm_are_found():
    inner_in = keras.Input((3,))
    inner_out = keras.layers.BatchNormalization(name="bn", synchronized=True)(
        keras.layers.Dense(4)(inner_in))
    backbone = keras.Model(inner_in, inner_out, name="backbone")
    x = keras.Input((3,))
    y = keras.layers.BatchNormalization(name="head_bn")(keras.layers.Dense(2)(backbone(x)))
    model = keras.Model(x, y)
    model.compile(GammaISTA(keras.optimizers.SGD(0.1), rho=0.1,
                            penalties={"backbone/bn": 2.0}), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    targets = {name: lam for name, _, lam in model.optimizer.targets}
    assert targets == {"backbone/bn": 2.0, "head_bn": 1.0}


def test_custom_layer_gamma_variables_by_path():
    model = dense_bn_model()
    gamma = model.get_layer("bn").gamma
    gamma.assign(np.full(4, 1.0, np.float32))
    opt = GammaISTA(keras.optimizers.SGD(1.0), rho=0.25, gamma_variables=[gamma.path],
                    penalties={gamma.path: 2.0})
    step_with_gradients(model, opt, {})  # no attach needed: variables are explicit
    np.testing.assert_allclose(gamma.numpy(), 0.5)
    with pytest.raises(ValueError, match="not among the trainable variables"):
        other = GammaISTA(keras.optimizers.SGD(1.0), gamma_variables=["nope/gamma"])
        step_with_gradients(model, other, {})


def test_bad_inputs_get_clear_errors():
    no_bn = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    no_bn.compile(GammaISTA(keras.optimizers.SGD(0.1)), loss="mse")
    with pytest.raises(NoBatchNormError, match="no trainable BatchNormalization"):
        no_bn.fit(np.ones((2, 3)), np.zeros((2, 2)), verbose=0)

    model = dense_bn_model()
    model.get_layer("bn").gamma.assign(np.array([1, np.nan, 1, 1], np.float32))
    with pytest.raises(NonFiniteGammaError, match="'bn'"):
        GammaISTA(keras.optimizers.SGD(0.1)).attach(model).build(model.trainable_variables)

    model = dense_bn_model()
    with pytest.raises(ValueError, match=r"Unknown layer 'bnn'\. Valid names: bn"):
        GammaISTA(keras.optimizers.SGD(0.1), penalties={"bnn": 1.0}).attach(model).build(
            model.trainable_variables)
    with pytest.raises(ValueError, match="finite"):
        GammaISTA(keras.optimizers.SGD(0.1), rho=float("nan"))
    with pytest.raises(TypeError, match="Keras 3 optimizer"):
        GammaISTA("sgd")
    with pytest.raises(RuntimeError, match="attach"):
        GammaISTA(keras.optimizers.SGD(0.1)).build(model.trainable_variables)


def test_config_round_trip():
    rho = keras.optimizers.schedules.PiecewiseConstantDecay([100], [1e-3, 5e-3])
    opt = GammaISTA(keras.optimizers.SGD(0.05, momentum=0.9), rho=rho,
                    penalties={"bn": 0.5}, exclude=["x"], gamma_step="sgd", reset_slots=False)
    config = opt.get_config()
    clone = GammaISTA.from_config(config)
    assert clone.get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, GammaISTA)
    assert restored.get_config() == config
    assert isinstance(restored.inner_optimizer, keras.optimizers.SGD)


def test_save_load_restores_state_and_training_resumes_identically(tmp_path):
    model = dense_bn_model()
    model.compile(GammaISTA(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.3), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, GammaISTA)
    assert int(loaded.optimizer.iterations.numpy()) == 8
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert [n for n, _, _ in loaded.optimizer.targets] == ["bn"]


def test_jit_compile_matches_eager_graph():
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(7)
        model = dense_bn_model()
        model.compile(GammaISTA(keras.optimizers.SGD(0.1), rho=2.0), loss="mse",
                      jit_compile=jit)
        rng = np.random.default_rng(1)
        model.fit(rng.normal(size=(16, 5)), rng.normal(size=(16, 2)), batch_size=8,
                  epochs=3, shuffle=False, verbose=0)
        results.append(model.get_layer("bn").gamma.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert np.any(results[1] == 0)


def test_mixed_precision_wraps_gamma_ista_in_loss_scale_optimizer():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = dense_bn_model()
        model.compile(GammaISTA(keras.optimizers.SGD(0.1), rho=5.0), loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(model.optimizer.inner_optimizer, GammaISTA)
        model.fit(np.ones((8, 5)), np.zeros((8, 2)), epochs=2, verbose=0)
        gamma = model.get_layer("bn").gamma.numpy()
        assert gamma.dtype == np.float32 and np.all(gamma == 0)
    finally:
        keras.mixed_precision.set_global_policy(previous)


@tensorflow_only
def test_mirrored_strategy_two_cpu_replicas_match_single_device():
    out = run_mirrored(
        "from tf_gamma_prune import GammaISTA",
        """
        # synchronized: BN statistics over the global batch, as on one device
        h = keras.layers.BatchNormalization(name="bn", synchronized=True)(
            keras.layers.Dense(16)(x))
        """,
        """
        with strategy.scope():
            model = build()
            model.compile(GammaISTA(keras.optimizers.SGD(0.05, momentum=0.9), rho=0.2),
                          loss="mse")
        if mode == "mirrored":
            assert strategy.num_replicas_in_sync == 2
        model.fit(x, y, batch_size=16, epochs=8, shuffle=False, verbose=0)
        out[mode] = model.get_layer("bn").gamma.numpy().tolist()
        """)
    single, mirrored = np.array(out["single"]), np.array(out["mirrored"])
    np.testing.assert_array_equal(single == 0, mirrored == 0)
    assert 0 < np.sum(single == 0) < single.size, "the test needs a partial zero pattern"
    np.testing.assert_allclose(single, mirrored, rtol=1e-3, atol=1e-4)


def test_batchnorm_layers_lists_qualified_names():
    model = dense_bn_model()
    assert [n for n, _ in batchnorm_layers(model)] == ["bn"]


@pytest.mark.parametrize("inner", ["adam", "rmsprop"])
def test_wrapped_adaptive_optimizers_reach_zeros_and_reset_their_moments(inner):
    model = dense_bn_model()
    optimizer = {"adam": keras.optimizers.Adam(0.05),
                 "rmsprop": keras.optimizers.RMSprop(0.05, momentum=0.5)}[inner]
    model.compile(GammaISTA(optimizer, rho=2.0), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 5)), rng.normal(size=(32, 2)), batch_size=8, epochs=3,
              verbose=0)
    gamma = model.get_layer("bn").gamma.numpy()
    assert np.any(gamma == 0)
    slots = [v for v in optimizer.variables if "bn_gamma" in v.path]
    assert slots, "the inner optimizer should keep slots for γ in inner mode"
    for slot in slots:
        assert np.all(slot.numpy()[gamma == 0] == 0), slot.path


def test_scale_beta_scales_beta_by_the_gamma_shrink_factor():
    model = six_channel_model()
    beta0 = np.array([0.4, -0.3, 0.2, 0.1, 0.7, -0.6], np.float32)
    model.get_layer("bn").beta.assign(beta0)
    lr, rho, lam = 0.1, 0.05, 2.0
    opt = GammaISTA(keras.optimizers.SGD(lr), rho=rho, penalties={"bn": lam},
                    scale_beta=True).attach(model)
    step_with_gradients(model, opt, {"bn/gamma": GRAD})
    before = GAMMA0 - lr * GRAD  # γ after the gradient step, before the shrink
    gamma = soft_threshold(before, lr * rho * lam)
    factor = np.where(before != 0, gamma / np.where(before != 0, before, 1), 1.0)
    got = model.get_layer("bn")
    np.testing.assert_allclose(got.gamma.numpy(), gamma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.beta.numpy(), beta0 * factor, rtol=1e-5, atol=1e-7)
    # the ReLU threshold -β/γ of a surviving channel is unchanged (β had no gradient)
    alive = gamma != 0
    np.testing.assert_allclose((got.beta.numpy() / got.gamma.numpy())[alive],
                               (beta0 / before)[alive], rtol=1e-5)
    assert np.all(got.beta.numpy()[~alive & (before != 0)] == 0)


def test_scale_beta_off_leaves_beta_and_is_in_the_config():
    model = six_channel_model()
    opt = GammaISTA(keras.optimizers.SGD(0.1), rho=0.05).attach(model)
    step_with_gradients(model, opt, {"bn/gamma": GRAD})
    np.testing.assert_array_equal(model.get_layer("bn").beta.numpy(), np.zeros(6))
    config = GammaISTA(keras.optimizers.SGD(0.1), scale_beta=True).get_config()
    assert GammaISTA.from_config(config).scale_beta is True
    with pytest.raises(ValueError, match="scale_beta"):
        GammaISTA(keras.optimizers.SGD(0.1), scale_beta=True, gamma_variables=["bn/gamma"])


def test_reweighted_step_matches_numpy_weighted_soft_threshold():
    model = six_channel_model()
    lr, rho, lam, eps = 0.1, 0.05, 2.0, 0.1
    opt = GammaISTA(keras.optimizers.SGD(lr), rho=rho, penalties={"bn": lam},
                    reweight_epsilon=eps).attach(model)
    step_with_gradients(model, opt, {"bn/gamma": GRAD})
    before = GAMMA0 - lr * GRAD
    relative = np.abs(before) / np.mean(np.abs(before))
    expected = soft_threshold(before, lr * rho * lam / (relative + eps))
    got = model.get_layer("bn").gamma.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # the survivors lose less than the paper's uniform threshold would take
    uniform = soft_threshold(before, lr * rho * lam)
    large = np.abs(before) > np.mean(np.abs(before))
    assert np.all(np.abs(got[large]) > np.abs(uniform[large]))


def test_reweighted_thresholds_depend_on_gamma_relative_to_its_layer():
    from tf_gamma_prune.sparsify.gamma_ista import reweighted_thresholds

    gamma = np.array([0.2, 1.0, 3.0, 0.0], np.float32)
    one = np.asarray(reweighted_thresholds(gamma, 0.01, 0.1))
    scaled = np.asarray(reweighted_thresholds(7.0 * gamma, 0.01, 0.1))
    np.testing.assert_allclose(one, scaled, rtol=1e-6)
    np.testing.assert_allclose(one, 0.01 / (np.abs(gamma) / np.mean(np.abs(gamma)) + 0.1),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(reweighted_thresholds(np.zeros(3), 0.01, 0.1)),
                               np.full(3, 0.1))


def test_reweight_epsilon_is_in_the_config_and_checked():
    config = GammaISTA(keras.optimizers.SGD(0.1), reweight_epsilon=0.2).get_config()
    assert GammaISTA.from_config(config).reweight_epsilon == 0.2
    assert GammaISTA(keras.optimizers.SGD(0.1)).get_config()["reweight_epsilon"] is None
    for bad in (0.0, -1.0, True, "0.1"):
        with pytest.raises(ValueError, match="reweight_epsilon"):
            GammaISTA(keras.optimizers.SGD(0.1), reweight_epsilon=bad)


def test_reweighted_gamma_ista_survives_save_and_load(tmp_path):
    model = dense_bn_model()
    model.compile(GammaISTA(keras.optimizers.SGD(0.05), rho=0.5, reweight_epsilon=0.1), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(16, 5)), rng.normal(size=(16, 2)), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.reweight_epsilon == 0.1
    np.testing.assert_array_equal(loaded.get_layer("bn").gamma.numpy(),
                                  model.get_layer("bn").gamma.numpy())
