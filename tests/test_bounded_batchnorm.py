"""BoundedBatchNormalization (scale = sigmoid(w)) and the conversions to and from standard BN."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import run_mirrored, tensorflow_only
from tf_gamma_prune import (
    BoundedBatchNormalization,
    RecedingImportanceRegularizer,
    UnsupportedLayerError,
    UnsupportedModelError,
    count_macs,
    prune_model,
    to_bounded_batchnorm,
    to_standard_batchnorm,
)
from tf_gamma_prune.errors import ArgumentError
from tf_gamma_prune.reference_models import fashion_vgg


def _sigmoid(w):
    return 1.0 / (1.0 + np.exp(-np.asarray(w, np.float64)))


def _small(widths=(8, 8, 16, 16, 32, 32)):
    return fashion_vgg(widths=widths, dropout=0.0)


def _images(n=4, seed=0):
    return np.random.default_rng(seed).random((n, 28, 28, 1), dtype=np.float32)


def test_inference_and_training_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    layer = BoundedBatchNormalization(center=True, momentum=0.8, epsilon=1e-3)
    x = rng.normal(1.0, 2.0, (16, 5, 5, 6)).astype(np.float32)
    layer.build(x.shape)
    w = rng.normal(size=6).astype(np.float32)
    shift = rng.normal(size=6).astype(np.float32)
    mean, var = rng.normal(size=6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(np.float32)
    layer.scale_logit.assign(w)
    layer.beta.assign(shift)
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(var)
    xd = x.astype(np.float64)
    expected = _sigmoid(w) * (xd - mean) / np.sqrt(var + 1e-3) + shift
    np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-5, atol=1e-5)

    batch_mean, batch_var = xd.mean(axis=(0, 1, 2)), xd.var(axis=(0, 1, 2))
    expected = _sigmoid(w) * (xd - batch_mean) / np.sqrt(batch_var + 1e-3) + shift
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean),
                               0.8 * mean + 0.2 * batch_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance),
                               0.8 * var + 0.2 * batch_var, rtol=1e-4, atol=1e-5)


def test_defaults_no_shift_and_standard_normal_logits():
    layer = BoundedBatchNormalization()
    layer.build((None, 4000))
    assert layer.beta is None and [w.name for w in layer.weights] == [
        "scale_logit", "moving_mean", "moving_variance"]
    w = keras.ops.convert_to_numpy(layer.scale_logit)
    assert abs(w.mean()) < 0.1 and abs(w.std() - 1.0) < 0.1  # N(0, 1)
    s = layer.importance()
    assert np.all((s > 0) & (s < 1))


def test_to_standard_is_exact_in_inference_mode_and_keeps_names():
    bounded = to_bounded_batchnorm(_small(), center=True, seed=1)
    rng = np.random.default_rng(2)
    for layer in bounded.layers:
        if isinstance(layer, BoundedBatchNormalization):
            c = layer.scale_logit.shape[0]
            layer.beta.assign(rng.normal(size=c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(size=c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2, c).astype(np.float32))
    standard = to_standard_batchnorm(bounded)
    assert [layer.name for layer in standard.layers] == [layer.name for layer in bounded.layers]
    for name in ("bn1", "bn6"):
        bn = standard.get_layer(name)
        assert type(bn) is keras.layers.BatchNormalization
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.gamma),
                                      bounded.get_layer(name).importance())
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.beta),
                                      keras.ops.convert_to_numpy(bounded.get_layer(name).beta))
    x = _images(8)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bounded(x, training=False)),
                                  keras.ops.convert_to_numpy(standard(x, training=False)))
    np.testing.assert_allclose(bounded.predict(x, verbose=0), standard.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_standard_to_bounded_to_standard_round_trip():
    model = _small()
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.05, 0.95, c).astype(np.float32))
            layer.beta.assign(rng.normal(size=c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(size=c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2, c).astype(np.float32))
    bounded = to_bounded_batchnorm(model, init="gamma", center=True)
    back = to_standard_batchnorm(bounded)
    x = _images(8)
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bounded(x, training=False)), ref,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x, training=False)), ref,
                               rtol=1e-4, atol=1e-5)
    assert model.get_layer("bn1").__class__ is keras.layers.BatchNormalization  # input untouched


def test_conversion_of_nested_and_sequential_models():
    inner = _small((4, 4, 4, 4, 4, 4))
    x = keras.Input((28, 28, 1))
    outer = keras.Model(x, keras.layers.Dense(3, name="head")(inner(x)))
    bounded = to_bounded_batchnorm(outer)
    kinds = {type(layer).__name__ for layer in bounded.get_layer(inner.name).layers}
    assert "BoundedBatchNormalization" in kinds and "BatchNormalization" not in kinds
    seq = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4),
                            keras.layers.BatchNormalization(name="bn")])
    assert isinstance(to_bounded_batchnorm(seq).get_layer("bn"), BoundedBatchNormalization)


def test_save_and_load_keep_the_layer_and_its_regularizer(tmp_path):
    model = to_bounded_batchnorm(_small(), regularizer=RecedingImportanceRegularizer(0.02, 3.0))
    model.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _images(8)
    model.fit(x, np.arange(8), epochs=1, verbose=0)
    path = tmp_path / "bounded.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("bn3")
    assert isinstance(layer, BoundedBatchNormalization)
    reg = layer.scale_logit_regularizer
    assert isinstance(reg, RecedingImportanceRegularizer)
    assert (reg.strength, reg.shift) == (0.02, 3.0)
    np.testing.assert_array_equal(layer.importance(), model.get_layer("bn3").importance())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_prune_model_accepts_the_bounded_layer_like_its_standard_twin():
    bounded = to_bounded_batchnorm(_small(), seed=4)
    selection = {"bn1": [0, 3, 5], "bn4": [1, 2, 3, 7, 9, 15], "bn6": list(range(0, 32, 2))}
    a = prune_model(bounded, selection, probe=False)
    b = prune_model(to_standard_batchnorm(bounded), selection, probe=False)
    assert isinstance(a.get_layer("bn1"), BoundedBatchNormalization)
    assert a.get_layer("conv1").filters == 3 and a.get_layer("conv6").filters == 16
    assert count_macs(a) == count_macs(b)
    x = _images(6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a(x, training=False)),
                               keras.ops.convert_to_numpy(b(x, training=False)),
                               rtol=1e-5, atol=1e-5)


@tensorflow_only
def test_pruned_bounded_model_exports_to_tflite_after_conversion():
    from tf_gamma_prune import check_parity, receding_importance_selection, to_tflite

    bounded = to_bounded_batchnorm(_small((4, 4, 8, 8, 8, 8)), seed=8)
    small = prune_model(bounded, receding_importance_selection(bounded, 0.4), probe=False)
    standard = to_standard_batchnorm(small)
    assert not any(isinstance(layer, BoundedBatchNormalization) for layer in standard.layers)
    report = check_parity(standard, to_tflite(standard), _images(4))
    assert report.max_rel < 1e-4
    np.testing.assert_allclose(keras.ops.convert_to_numpy(small(_images(4), training=False)),
                               keras.ops.convert_to_numpy(standard(_images(4), training=False)),
                               rtol=1e-6, atol=1e-6)


def test_errors():
    with pytest.raises(ArgumentError, match="init"):
        to_bounded_batchnorm(_small(), init="ones")
    x = keras.Input((4,))
    renorm = keras.Model(x, keras.layers.BatchNormalization(renorm=True)(x))
    with pytest.raises(UnsupportedLayerError, match="renorm"):
        to_bounded_batchnorm(renorm)
    no_scale = keras.Model(x, keras.layers.BatchNormalization(scale=False)(x))
    with pytest.raises(UnsupportedLayerError, match="scale=False"):
        to_bounded_batchnorm(no_scale)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    with pytest.raises(UnsupportedModelError):
        to_bounded_batchnorm(Sub())
    with pytest.raises(ArgumentError, match="momentum"):
        BoundedBatchNormalization(momentum=1.0)


@tensorflow_only
def test_mirrored_strategy_two_cpu_replicas_match_single_device():
    out = run_mirrored(
        """
        from tf_gamma_prune import (BatchNormLRMultiplier, BoundedBatchNormalization,
                                    RecedingImportanceRegularizer)
        """,
        """
        h = BoundedBatchNormalization(name="bbn", synchronized=True, center=True,
                                      scale_logit_regularizer=RecedingImportanceRegularizer(0.05))(
            keras.layers.Dense(16)(x))
        """,
        """
        with strategy.scope():
            model = build()
            model.compile(BatchNormLRMultiplier(keras.optimizers.SGD(0.02, momentum=0.9), 10.0),
                          loss="mse")
        if mode == "mirrored":
            assert strategy.num_replicas_in_sync == 2
        model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
        layer = model.get_layer("bbn")
        out[mode] = {"w": layer.scale_logit.numpy().tolist(),
                     "mean": layer.moving_mean.numpy().tolist()}
        """)
    single, mirrored = out["single"], out["mirrored"]
    start = np.asarray(single["w"])
    assert np.ptp(start) > 0
    np.testing.assert_allclose(mirrored["w"], single["w"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(mirrored["mean"], single["mean"], rtol=1e-3, atol=1e-4)


JAX_SCRIPT = textwrap.dedent(
    """
    import os, json, tempfile
    import keras, numpy as np
    assert keras.backend.backend() == "jax"
    from tf_gamma_prune import (BatchNormLRMultiplier, BoundedBatchNormalization,
                                RecedingImportanceRegularizer, receding_importance_selection,
                                to_bounded_batchnorm, to_standard_batchnorm, prune_model)
    from tf_gamma_prune.reference_models import fashion_vgg
    keras.utils.set_random_seed(0)
    model = to_bounded_batchnorm(fashion_vgg(widths=(4, 4, 8, 8, 8, 8)),
                                 regularizer=RecedingImportanceRegularizer(0.05))
    model.compile(BatchNormLRMultiplier(keras.optimizers.SGD(0.05, momentum=0.9)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
    before = model.get_layer("bn2").importance()
    model.fit(x, np.arange(32) % 10, batch_size=8, epochs=2, verbose=0)
    after = model.get_layer("bn2").importance()
    path = os.path.join(tempfile.mkdtemp(), "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    standard = to_standard_batchnorm(loaded)
    diff = float(np.abs(np.asarray(loaded(x, training=False))
                        - np.asarray(standard(x, training=False))).max())
    small = prune_model(loaded, receding_importance_selection(loaded, 0.3), probe=False)
    print(json.dumps({"moved": float(np.abs(after - before).max()), "diff": diff,
                      "kind": type(loaded.get_layer("bn2")).__name__,
                      "pruned": int(small.get_layer("conv5").filters)}))
    """
)


def test_jax_backend_smoke():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["kind"] == "BoundedBatchNormalization"
    assert out["moved"] > 1e-3  # w trained
    assert out["diff"] <= 1e-5  # to_standard_batchnorm exact on JAX too
    assert 3 <= out["pruned"] < 8
