"""Pruned models save, load and fine-tune like any Keras model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import assert_same_function, random_inputs, randomize_batchnorms

from tf_gamma_prune import prune_model
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature

from conftest import tensorflow_only

L = keras.layers


def model_needing_corrections():
    x = keras.Input((8, 8, 3))
    s = L.Conv2D(6, 3, padding="same", name="stem")(x)
    s = L.ReLU()(L.BatchNormalization(name="bn0")(s))
    b = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(5, 3, padding="same")(s)))
    b = L.BatchNormalization(name="bn2")(L.Conv2D(6, 3, padding="same", name="last")(b))
    y = L.Add()([s, b])
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="reader")(y)
    y = L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(y))
    model = randomize_batchnorms(keras.Model(x, y), seed=0, positive_beta=True)
    model.get_layer("bn1").gamma.assign(np.zeros(5))  # branch becomes constant
    return model


def test_save_and_load_keeps_the_function(tmp_path):
    model = model_needing_corrections()
    pruned = prune_model(model, fold="exact")
    kinds = {type(l) for l in pruned.layers}
    assert BorderCorrection in kinds and ConstantFeature in kinds
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    x = random_inputs(model)
    assert_same_function(pruned, loaded, x, tol=0.0)
    assert_same_function(model, loaded, x)
    assert [l.name for l in loaded.layers] == [l.name for l in pruned.layers]


def test_border_correction_goes_before_a_fused_activation():
    model = model_needing_corrections()
    pruned = prune_model(model, fold="exact")
    names = [l.name for l in pruned.layers]
    i = names.index("reader_border")
    assert names[i - 1] == "reader" and names[i + 1] == "reader_activation"
    assert pruned.get_layer("reader").get_config()["activation"] == "linear"


def test_one_fine_tuning_step_runs_and_corrections_stay_fixed():
    model = model_needing_corrections()
    pruned = prune_model(model)
    pruned.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = random_inputs(model, batch=4)
    y = np.zeros((4, 3), "float32")
    before = {l.name: np.array(l.weights[0]) for l in pruned.layers
              if isinstance(l, (BorderCorrection, ConstantFeature))}
    kernel = np.array(pruned.get_layer("reader").kernel)
    history = pruned.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(kernel, np.array(pruned.get_layer("reader").kernel))
    for name, value in before.items():
        np.testing.assert_array_equal(value, np.array(pruned.get_layer(name).weights[0]))


@tensorflow_only
def test_tflite_sees_plain_adds_of_constants():
    export = pytest.importorskip("tf_gamma_prune.export")
    model = model_needing_corrections()
    pruned = prune_model(model)
    flatbuffer = export.to_tflite(pruned)
    counts = export.op_counts(flatbuffer)
    export.assert_builtin_only(flatbuffer)
    # the constant branch and the border correction become ADDs of constants
    assert set(counts) <= {"ADD", "CONV_2D", "FULLY_CONNECTED", "MEAN"}
    interpreter = export.make_interpreter(flatbuffer)
    interpreter.allocate_tensors()
    x = random_inputs(model, batch=1)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    ref = np.asarray(model(x, training=False))
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_pruning_a_pruned_model_again_keeps_it_exact():
    # iterative pruning: more γ reach zero during fine-tuning, prune again
    model = model_needing_corrections()
    pruned = prune_model(model, fold="exact")
    x = random_inputs(model)
    bn = pruned.get_layer("bn0")
    gamma = np.array(bn.gamma)
    assert gamma.shape[0] > 1
    gamma[0] = 0.0
    bn.gamma.assign(gamma)
    again, report = prune_model(pruned, return_report=True, fold="exact")
    assert report.removed_constant > 0
    assert again.get_layer("stem").filters == pruned.get_layer("stem").filters - 1
    assert_same_function(pruned, again, x)
