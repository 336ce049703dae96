"""The custom layers of pruned models: behaviour and serialization."""

from __future__ import annotations

import keras
import numpy as np

from tf_gamma_prune.layers import BorderCorrection, ConstantFeature


def test_border_correction_adds_its_map_and_is_not_trainable():
    correction = np.arange(12, dtype="float32").reshape(2, 2, 3)
    layer = BorderCorrection(correction)
    x = np.ones((4, 2, 2, 3), "float32")
    np.testing.assert_array_equal(np.asarray(layer(x)), x + correction)
    assert layer.trainable_weights == []
    assert len(layer.non_trainable_weights) == 1


def test_border_correction_round_trips_through_serialization():
    layer = BorderCorrection(np.full((3, 3, 2), 0.5, "float32"), name="fix")
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "tf_gamma_prune>BorderCorrection"
    clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(layer.get_weights())
    assert clone.name == "fix" and clone.map_shape == (3, 3, 2)
    x = np.zeros((1, 3, 3, 2), "float32")
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(layer(x)))


def test_border_correction_follows_a_mixed_precision_policy():
    layer = BorderCorrection(np.ones((2, 2, 1), "float32"), dtype="mixed_float16")
    out = layer(np.zeros((1, 2, 2, 1), "float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert layer.correction.dtype == "float32"


def test_constant_feature_broadcasts_over_the_batch(tmp_path):
    value = np.random.default_rng(0).standard_normal((2, 3, 4)).astype("float32")
    x = keras.Input((5,))
    y = ConstantFeature(value, name="const")(x)
    model = keras.Model(x, y)
    out = np.asarray(model(np.zeros((3, 5), "float32")))
    assert out.shape == (3, 2, 3, 4)
    np.testing.assert_array_equal(out[2], value)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(loaded(np.zeros((1, 5), "float32")))[0], value)
