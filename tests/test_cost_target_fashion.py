"""CostTarget on real Fashion-MNIST: the pruned model meets its MAC budget within ±5 %.

A small ``fashion_vgg`` (8-8-16-16-32-32) and a ResNet-20 (8-16-32, 28×28×1 inputs)
are trained briefly on 6,400 images, then sparsified for 2 epochs with GammaISTA
(SGD, momentum 0.9, the paper's penalties) and ``CostTarget``; the model
``prune_model`` builds must cost the budget within 5 %, at learning rates 4× apart
(the first controller ended 85 % above a third of the MACs at 0.02), and the ρ
trajectory is logged (``History``'s ``rho`` per epoch, ``CostTarget.history`` per
window).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_gamma_prune import CostTarget, GammaISTA, count_macs, gamma_penalties, prune_model
from tf_gamma_prune.errors import DatasetNotFoundError

N, BATCH, EVERY = 6400, 128, 5
STEPS = 2 * N // BATCH  # two sparsify epochs


@pytest.fixture(scope="module")
def fashion():
    from tf_gamma_prune.data import load_fashion_mnist, stratified_indices

    try:
        (x, y), _ = load_fashion_mnist(use_tfds=False)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed here: {e}")
    chosen = stratified_indices(y, N, seed=0)
    return x[chosen], y[chosen]


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def pretrained(model, data, epochs):
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss=loss())
    model.fit(*data, batch_size=BATCH, epochs=epochs, verbose=0)
    return model.get_weights()


def sparsified(model, weights, data, macs, learning_rate):
    """GammaISTA + CostTarget for two epochs from ``weights``; the controller, its
    History and the pruned model's MACs."""
    model.set_weights(weights)
    keras.utils.set_random_seed(1)
    model.compile(GammaISTA(keras.optimizers.SGD(learning_rate, momentum=0.9), rho=1e-3,
                            penalties=gamma_penalties(model), min_channels=2), loss=loss())
    target = CostTarget(macs=macs, every=EVERY, reach_at=0.6)
    history = model.fit(*data, batch_size=BATCH, epochs=2, verbose=0, callbacks=[target])
    return target, history, count_macs(prune_model(model))


def check(target, history, pruned_macs):
    assert abs(pruned_macs - target.budget) <= 0.05 * target.budget, (
        f"{pruned_macs:,} MACs for a budget of {target.budget:,}: "
        f"{[(h['step'], round(h['macs_fraction'], 3), h['rho']) for h in target.history]}")
    assert len(history.history["rho"]) == 2  # per epoch, in History / TensorBoard
    assert [h["step"] for h in target.history] == list(range(0, STEPS + 1, EVERY))
    rhos = [h["rho"] for h in target.history]
    assert max(rhos) > 100 * target.rho_min and rhos[-1] == target.rho_min  # steered, then held
    assert target.history[-1]["macs"] == pruned_macs


@pytest.fixture(scope="module")
def vgg(fashion):
    from tf_gamma_prune.reference_models import fashion_vgg

    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    return model, pretrained(model, fashion, epochs=4)


@pytest.mark.parametrize("macs, learning_rate", [
    (1 / 3, 0.02),
    pytest.param(1 / 3, 0.005, marks=pytest.mark.slow),
    pytest.param(1 / 6, 0.01, marks=pytest.mark.slow),
])
def test_fashion_vgg_meets_the_budget(fashion, vgg, macs, learning_rate):
    check(*sparsified(*vgg, fashion, macs, learning_rate))


@pytest.mark.slow
def test_resnet20_meets_the_budget(fashion):
    from tf_gamma_prune.reference_models import resnet20

    model = resnet20(input_shape=(28, 28, 1), widths=(8, 16, 32))
    weights = pretrained(model, fashion, epochs=3)
    check(*sparsified(model, weights, fashion, 0.5, 0.01))
