"""Distiller: the KD loss against NumPy, GammaISTA/CostTarget see the student, save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_gamma_prune import ArgumentError, CostTarget, Distiller, GammaISTA, prune_model
from tf_gamma_prune.analysis.flops import count_macs
from tf_gamma_prune.reference_models import fashion_vgg

L = keras.layers


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def small_vgg(seed):
    keras.utils.set_random_seed(seed)
    return fashion_vgg(widths=(4, 4, 8, 8, 8, 8), input_shape=(8, 8, 1))


def test_distillation_loss_matches_numpy_kl():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(5, 7)).astype("float32"), rng.normal(size=(5, 7)).astype("float32")
    distiller = Distiller(small_vgg(0), small_vgg(1), temperature=3.0)
    got = float(keras.ops.convert_to_numpy(distiller.distillation_loss(t, s)))
    lt, ls = log_softmax(t / 3.0), log_softmax(s / 3.0)
    want = 9.0 * np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1))
    assert got == pytest.approx(want, rel=1e-5)
    assert float(keras.ops.convert_to_numpy(distiller.distillation_loss(t, t))) == \
        pytest.approx(0.0, abs=1e-6)


def test_total_loss_is_task_plus_weighted_distillation():
    student, teacher = small_vgg(0), small_vgg(1)
    distiller = Distiller(student, teacher, temperature=2.0, weight=0.5)
    task = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    distiller.compile("sgd", loss=task)
    x = np.random.default_rng(1).random((6, 8, 8, 1)).astype("float32")
    y = np.arange(6) % 10
    s = distiller(x)
    got = float(keras.ops.convert_to_numpy(distiller.compute_loss(x, y, s, training=False)))
    t = keras.ops.convert_to_numpy(teacher(x))
    lt, ls = log_softmax(t / 2.0), log_softmax(keras.ops.convert_to_numpy(s) / 2.0)
    kd = 4.0 * np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1))
    assert got == pytest.approx(float(task(y, s)) + 0.5 * kd, rel=1e-4)


def test_gamma_ista_and_cost_target_train_and_count_the_student():
    student, teacher = small_vgg(0), small_vgg(1)
    rng = np.random.default_rng(0)
    for layer in student.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.05, 1.5, layer.gamma.shape))
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    distiller = Distiller(student, teacher)
    distiller.compile(GammaISTA(keras.optimizers.SGD(0.02), min_channels=1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    target = CostTarget(macs=0.5, every=4)
    x, y = rng.random((256, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 256)
    distiller.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    assert {name for name, _, _ in distiller.optimizer.targets} == {f"bn{i}" for i in range(1, 7)}
    assert target.history[-1]["macs"] < target.start_macs
    pruned = prune_model(student)  # CostTarget counts what prune_model's default fold builds
    assert count_macs(pruned) == target.history[-1]["macs"]
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)  # the teacher never moves


def test_save_and_load_round_trip(tmp_path):
    distiller = Distiller(small_vgg(0), small_vgg(1), temperature=5.0, weight=2.0)
    x = np.random.default_rng(2).random((3, 8, 8, 1)).astype("float32")
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert (loaded.temperature, loaded.weight) == (5.0, 2.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(distiller(x)), rtol=1e-5, atol=1e-6)
    assert not loaded.teacher.trainable


@pytest.mark.parametrize("kwargs, error, match", [
    ({"temperature": 0}, ArgumentError, "temperature"),
    ({"weight": -1}, ArgumentError, "weight"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Distiller(small_vgg(0), small_vgg(1), **kwargs)
    model = small_vgg(0)
    with pytest.raises(ArgumentError, match="copy"):
        Distiller(model, model)
    with pytest.raises(TypeError, match="keras.Model"):
        Distiller(model, "teacher")
