"""Unknown and composite custom layers (issue 15 item 6): ``unknown_layers="opaque"``.

A composite layer holding its own Conv2D + BatchNormalization branches (like
keras-hub's DeepLabV3 SpatialPyramidPooling) stops ``prune_model`` by default
with a typed error that says how to opt in; with ``unknown_layers="opaque"``
it is kept whole (its channels pinned, its weights copied unchanged, a note in
the report) and the rest of the model is pruned exactly (random weights,
randomised BN statistics, a random half of the γ exactly 0, float64 comparison
with the original, ≤ 1e-5 relative).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops
from test_surgery_helpers import assert_same_function, random_inputs, randomize_batchnorms

from tf_gamma_prune import ArgumentError, UnsupportedLayerError, channel_graph, prune_model

L = keras.layers


@keras.saving.register_keras_serializable(package="tf_gamma_prune_tests")
class PyramidPooling(L.Layer):
    """Dilated Conv2D + BN + ReLU branches, concatenated, projected by a 1x1 Conv2D + BN."""

    def __init__(self, filters, rates=(1, 2), **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.rates = tuple(rates)
        self.branches = [
            (L.Conv2D(filters, 3, padding="same", dilation_rate=r, use_bias=False,
                      dtype=self.dtype_policy),
             L.BatchNormalization(dtype=self.dtype_policy))
            for r in self.rates
        ]
        self.project = L.Conv2D(filters, 1, use_bias=False, dtype=self.dtype_policy)
        self.project_bn = L.BatchNormalization(dtype=self.dtype_policy)

    def build(self, shape):
        shape = tuple(shape)
        out = shape[:-1] + (self.filters,)
        for conv, bn in self.branches:
            conv.build(shape)
            bn.build(out)
        self.project.build(shape[:-1] + (self.filters * len(self.rates),))
        self.project_bn.build(out)

    def call(self, x, training=None):
        ys = [ops.relu(bn(conv(x), training=training)) for conv, bn in self.branches]
        y = self.project(ops.concatenate(ys, axis=-1))
        return ops.relu(self.project_bn(y, training=training))

    def compute_output_shape(self, shape):
        return tuple(shape[:-1]) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "rates": self.rates}


def cbr(x, filters, name, kernel=3):
    x = L.Conv2D(filters, kernel, padding="same", name=name)(x)
    return L.ReLU()(L.BatchNormalization(name=f"{name}_bn")(x))


def pyramid_model():
    x = keras.Input((10, 10, 3))
    h = cbr(x, 8, "a")
    h = cbr(h, 8, "b")  # read by the composite: pinned
    h = PyramidPooling(6, name="pyramid")(h)
    h = cbr(h, 8, "c")
    h = cbr(h, 8, "d")
    y = L.Dense(3)(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y)


def prepared(builder, seed=11):
    model = builder()
    randomize_batchnorms(model, seed=seed)  # the composite's inner BNs too
    for name in ("a_bn", "c_bn"):  # removable channels on both sides, whatever the seed
        bn = model.get_layer(name)
        gamma = np.asarray(bn.gamma).copy()
        gamma[[0, 3]] = 0.0
        bn.gamma.assign(gamma)
    return model


def test_default_error_says_how_to_opt_in():
    model = prepared(pyramid_model)
    with pytest.raises(UnsupportedLayerError,
                       match=r"'pyramid' has type .*PyramidPooling.*unknown_layers=\"opaque\""):
        prune_model(model)
    with pytest.raises(UnsupportedLayerError, match="unknown_layers"):
        channel_graph(model)


def test_unknown_layers_argument_is_checked():
    with pytest.raises(ArgumentError, match="unknown_layers"):
        prune_model(prepared(pyramid_model), unknown_layers="ignore")


@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
def test_opaque_composite_is_kept_whole_and_the_rest_pruned_exactly(fold):
    model = prepared(pyramid_model)
    kwargs = {} if fold is None else {"fold": fold}
    pruned, report = prune_model(model, unknown_layers="opaque", return_report=True, **kwargs)
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    assert report.max_rel_deviation <= 1e-5
    assert "kept whole: layer 'pyramid' (type PyramidPooling)" in report.notes
    old, new = model.get_layer("pyramid"), pruned.get_layer("pyramid")
    assert new is not old
    assert len(new.weights) == len(old.weights) == 15
    for a, b in zip(old.weights, new.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert pruned.get_layer("b").filters == 8  # read by the composite: kept
    assert pruned.get_layer("pyramid").filters == 6
    if fold == "exact":
        assert pruned.get_layer("a").filters < 8
        assert pruned.get_layer("c").filters < 8


def test_opaque_composite_pins_its_channels_in_the_graph():
    model = prepared(pyramid_model)
    graph = channel_graph(model, unknown_layers="opaque")
    assert graph.pinned[graph.layer_channels("b_bn")].all()
    assert graph.pinned[graph.layer_channels("pyramid")].all()
    assert not graph.pinned[graph.layer_channels("a_bn")].any()
    assert graph.notes == ["kept whole: layer 'pyramid' (type PyramidPooling)"]


def test_pruned_model_with_composite_saves_and_loads(tmp_path):
    model = prepared(pyramid_model)
    pruned = prune_model(model, unknown_layers="opaque", fold="exact")
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert_same_function(model, loaded, random_inputs(model, batch=3))


def test_pruning_the_input_model_leaves_the_composite_alone():
    model = prepared(pyramid_model)
    before = [np.asarray(w).copy() for w in model.get_layer("pyramid").weights]
    pruned = prune_model(model, unknown_layers="opaque")
    for w in pruned.get_layer("pyramid").weights:  # changing the copy ...
        w.assign(np.zeros(w.shape, w.dtype))
    for a, b in zip(before, model.get_layer("pyramid").weights):  # ... not the original
        np.testing.assert_array_equal(a, np.asarray(b))


def lambda_model():
    x = keras.Input((8, 8, 3))
    h = cbr(x, 8, "a")
    h = cbr(h, 8, "c")
    h = L.Lambda(lambda t: t[..., ::-1] * 2.0, name="flip")(h)  # reverses channels: mixes them
    h = cbr(h, 6, "d")
    y = L.Dense(3)(L.GlobalAveragePooling2D()(h))
    return keras.Model(x, y)


def test_lambda_is_an_error_by_default_and_kept_whole_when_opaque():
    model = prepared(lambda_model)
    with pytest.raises(UnsupportedLayerError, match="'flip' is a Lambda layer.*unknown_layers"):
        prune_model(model)
    pruned, report = prune_model(model, unknown_layers="opaque", fold="exact",
                                 return_report=True)
    assert_same_function(model, pruned)
    assert "kept whole: layer 'flip' (type Lambda)" in report.notes
    assert pruned.get_layer("c").filters == 8  # read by the Lambda
    assert pruned.get_layer("a").filters < 8


def test_unknown_keras_op_is_kept_whole():
    x = keras.Input((8, 8, 3))
    h = cbr(x, 8, "a")
    h = cbr(h, 8, "c")
    h = ops.sort(h, axis=-1)  # mixes channels; no rule for it
    y = L.Dense(3)(L.GlobalAveragePooling2D()(cbr(h, 6, "d")))
    model = prepared(lambda: keras.Model(x, y))
    for unknown_layers in ("error", "opaque"):  # an op has no state: kept whole either way
        pruned, report = prune_model(model, unknown_layers=unknown_layers, fold="exact",
                                     return_report=True)
        assert_same_function(model, pruned)
        assert any(n.startswith("kept whole: layer 'sort") for n in report.notes)
    assert pruned.get_layer("c").filters == 8
    assert pruned.get_layer("a").filters < 8
