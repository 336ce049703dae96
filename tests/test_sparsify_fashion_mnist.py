"""On real Fashion-MNIST, GammaISTA yields exact zeros in γ; plain SGD yields none."""

import keras
import numpy as np
import pytest

from conftest import small_bn_convnet
from test_data import needs_fashion_mnist
from tf_gamma_prune import GammaISTA, gamma_penalties, gamma_sparsity
from tf_gamma_prune.data import load_fashion_mnist

STEPS, BATCH = 300, 64


@pytest.fixture(scope="module")
def fashion_subset():
    (x, y), _ = load_fashion_mnist()
    return x[: STEPS * BATCH], y[: STEPS * BATCH]


def train_zero_count(x, y, rho):
    keras.utils.set_random_seed(0)
    model = small_bn_convnet(widths=(8, 16, 32))
    inner = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer = inner if rho is None else GammaISTA(inner, rho=rho)
    model.compile(optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return sum(s.zeros for s in gamma_sparsity(model)), history.history["accuracy"][-1]


@needs_fashion_mnist
def test_zero_count_grows_with_rho_and_plain_sgd_has_none(fashion_subset):
    x, y = fashion_subset
    plain, plain_acc = train_zero_count(x, y, None)
    weak, _ = train_zero_count(x, y, 0.1)
    strong, strong_acc = train_zero_count(x, y, 0.3)
    assert plain == 0
    assert 0 < weak < strong
    assert plain_acc > 0.6 and strong_acc > 0.3, "the networks must actually learn"


@needs_fashion_mnist
def test_paper_penalties_train_on_real_data(fashion_subset):
    x, y = fashion_subset
    keras.utils.set_random_seed(0)
    model = small_bn_convnet(widths=(8, 16, 32))
    penalties = gamma_penalties(model)
    assert penalties["bn0"] > penalties["bn2"] > 0  # the big early maps cost most
    model.compile(GammaISTA(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.3,
                            penalties=penalties),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    zeros = {s.name: s.zeros for s in gamma_sparsity(model)}
    assert zeros["bn0"] > 0, zeros
