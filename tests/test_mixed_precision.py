"""Mixed precision (issue 15 item 7): a mixed_float16 model trains, prunes and exports.

The model is built with per-layer ``dtype="mixed_float16"``, so the global
policy is never touched (each test checks it is unchanged). ``to_tflite``
converts a float32 copy: the flatbuffer is float32 (float16 weights with
``quantization="float16"``) and uses builtin ops only.

Tolerances: the Keras model itself computes in float16 (10-bit mantissa,
relative rounding ~5e-4 per op), so the float32 TFLite file is compared with
it within 1e-2 relative to the largest output; with the float32 copy (same
arithmetic as the file) within 1e-4 for the float32 export and 1e-2 for
float16 weights. Pruning exactness is checked on float32 copies of the
original and the pruned model (≤ 1e-5), free of float16 rounding.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import tensorflow_only
from test_surgery_helpers import assert_same_function, randomize_batchnorms

from tf_gamma_prune import ExportError, GammaISTA, builtin_op_names, check_parity, prune_model
from tf_gamma_prune.export.convert import float32_copy, half_precision_layers, to_tflite

L = keras.layers
MIXED = "mixed_float16"
FLOAT16_RTOL = 1e-2


@pytest.fixture(autouse=True)
def _global_policy_untouched():
    before = keras.mixed_precision.global_policy().name
    yield
    assert keras.mixed_precision.global_policy().name == before == "float32"


def mixed_model():
    x = keras.Input((8, 8, 3))
    h = x
    for i, width in enumerate((8, 12)):
        h = L.Conv2D(width, 3, padding="same", use_bias=False, dtype=MIXED, name=f"conv{i}")(h)
        h = L.BatchNormalization(dtype=MIXED, name=f"bn{i}")(h)
        h = L.ReLU(dtype=MIXED, name=f"relu{i}")(h)
    h = L.GlobalAveragePooling2D(dtype=MIXED)(h)
    h = L.Dense(4, dtype=MIXED, name="logits")(h)
    y = L.Activation("linear", dtype="float32", name="out")(h)  # float32 outputs, as Keras advises
    return keras.Model(x, y)


def trained_and_pruned():
    model = mixed_model()
    model.compile(optimizer=GammaISTA(keras.optimizers.SGD(0.01), rho=1e-3), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 8, 3)).astype("float32")
    y = rng.standard_normal((16, 4)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # one step
    randomize_batchnorms(model, seed=4)  # a random half of the γ exactly 0
    pruned, report = prune_model(model, return_report=True)
    return model, pruned, report, x


@tensorflow_only
def test_mixed_float16_model_trains_prunes_and_exports_float32():
    model, pruned, report, x = trained_and_pruned()
    assert half_precision_layers(pruned)  # the pruned model keeps the policy
    assert report.params_after < report.params_before
    assert report.max_rel_deviation < FLOAT16_RTOL
    # exact: the same function in float32 arithmetic
    assert_same_function(float32_copy(model), float32_copy(pruned), x)

    flatbuffer = to_tflite(pruned)
    ops_used = builtin_op_names(flatbuffer)
    assert "CONV_2D" in ops_used and "FULLY_CONNECTED" in ops_used
    assert "DEQUANTIZE" not in ops_used and "CAST" not in ops_used  # float32 throughout
    check_parity(pruned, flatbuffer, x).assert_within(FLOAT16_RTOL)
    check_parity(float32_copy(pruned), flatbuffer, x).assert_within(1e-4)


@tensorflow_only
def test_mixed_float16_model_exports_float16_weights():
    _, pruned, _, x = trained_and_pruned()
    flatbuffer = to_tflite(pruned, quantization="float16")
    assert "DEQUANTIZE" in builtin_op_names(flatbuffer)  # float16 weights, float32 compute
    check_parity(pruned, flatbuffer, x).assert_within(FLOAT16_RTOL)
    check_parity(float32_copy(pruned), flatbuffer, x).assert_within(FLOAT16_RTOL)


def test_float32_copy_leaves_the_model_alone():
    model = mixed_model()
    copy = float32_copy(model)
    assert half_precision_layers(copy) == []
    assert [layer.dtype_policy.name for layer in model.layers[1:-1]] == [MIXED] * 8
    assert all(w.dtype == "float32" for w in copy.weights)
    for a, b in zip(model.weights, copy.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@keras.saving.register_keras_serializable(package="tf_gamma_prune_tests")
class HardcodedHalf(L.Layer):
    """A custom layer that ignores its own dtype: its inner Dense is always mixed_float16."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = L.Dense(units, dtype=MIXED)

    def build(self, shape):
        self.dense.build(tuple(shape))

    def call(self, x):
        return self.dense(x)

    def compute_output_shape(self, shape):
        return tuple(shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@tensorflow_only
def test_a_model_that_cannot_be_copied_names_mixed_precision():
    x = keras.Input((6,))
    y = HardcodedHalf(name="half")(x)
    model = keras.Model(x, y)
    with pytest.raises(ExportError, match="mixed_float16.*Rebuild the model under float32"):
        to_tflite(model)
