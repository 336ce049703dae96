"""SparsityMonitor and the sparsity summary."""

import glob

import keras
import numpy as np
import pytest

from tf_gamma_prune import GammaISTA, NonFiniteGammaError, SparsityMonitor, gamma_sparsity
from tf_gamma_prune.sparsify.callbacks import gamma_penalty_value, sparsity_summary


def model_with_two_bns():
    x = keras.Input((6,))
    a = keras.layers.BatchNormalization(name="bn_a")(keras.layers.Dense(8)(x))
    b = keras.layers.BatchNormalization(name="bn_b")(keras.layers.Dense(4)(a))
    return keras.Model(x, keras.layers.Dense(1)(b))


def test_history_gets_per_layer_zero_counts_and_penalty(tmp_path):
    model = model_with_two_bns()
    model.compile(GammaISTA(keras.optimizers.SGD(0.1), rho=0.3, penalties={"bn_a": 2.0}),
                  loss="mse")
    history = model.fit(np.ones((8, 6)), np.zeros((8, 1)), epochs=3, verbose=0,
                        callbacks=[SparsityMonitor(log_dir=str(tmp_path))])
    zeros_a = np.sum(model.get_layer("bn_a").gamma.numpy() == 0)
    assert history.history["zero_gamma/bn_a"][-1] == zeros_a
    total = sum(s.channels for s in gamma_sparsity(model))
    zeros = sum(s.zeros for s in gamma_sparsity(model))
    assert history.history["zero_gamma_fraction"][-1] == pytest.approx(zeros / total)
    gamma_a = np.abs(model.get_layer("bn_a").gamma.numpy()).sum()
    gamma_b = np.abs(model.get_layer("bn_b").gamma.numpy()).sum()
    assert history.history["gamma_penalty"][-1] == pytest.approx(0.3 * (2 * gamma_a + gamma_b),
                                                                 rel=1e-5)
    assert glob.glob(str(tmp_path / "events.out.tfevents.*")), "no TensorBoard event file"


def test_nan_gamma_stops_training_with_layer_name():
    model = model_with_two_bns()
    model.get_layer("bn_b").gamma.assign(np.array([1, 1, np.inf, 1], np.float32))
    monitor = SparsityMonitor()
    monitor.set_model(model)
    with pytest.raises(NonFiniteGammaError, match="'bn_b' has 1 non-finite"):
        monitor.on_epoch_end(0, {})


def test_summary_line_and_plain_optimizer_has_no_penalty():
    model = model_with_two_bns()
    model.get_layer("bn_a").gamma.assign(np.array([0, 0, 0, 1, 1, 1, 1, 1], np.float32))
    line = sparsity_summary(model)
    assert line.startswith("γ = 0: 3/12 channels (25.0%)")
    assert "bn_a 3/8" in line
    assert gamma_penalty_value(keras.optimizers.SGD(0.1)) is None
