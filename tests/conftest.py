"""Shared test setup: quiet TensorFlow, seed everything, small model builders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow-only feature (tf.distribute, synchronized BN, tf.summary, TFLite)")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


def small_bn_convnet(input_shape=(28, 28, 1), widths=(8, 16), classes=10, name="small"):
    """Conv-BN-ReLU blocks, global pooling and a dense classifier."""
    x = keras.Input(input_shape)
    h = x
    for i, w in enumerate(widths):
        h = keras.layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        if i < len(widths) - 1:
            h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    y = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(x, y, name=name)


def randomize_batchnorm(model, rng):
    """Random γ, β and moving statistics, so BN is far from the identity (no γ zeroed)."""
    from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm as randomize

    randomize(model, seed=int(rng.integers(2**31)))
