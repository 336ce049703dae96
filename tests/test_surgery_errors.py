"""prune_model refuses what it cannot do exactly, with typed errors that say why."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import randomize_batchnorms

from tf_gamma_prune import (
    NonFiniteWeightError,
    SelectionError,
    SharedLayerError,
    UnsupportedLayerError,
    UnsupportedModelError,
    prune_model,
    register_layer_kind,
)

L = keras.layers


def _conv_bn(x, n, name):
    y = L.Conv2D(n, 1, name=f"{name}_conv")(x)
    return L.BatchNormalization(name=f"{name}_bn")(y)


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(2, 1)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 4, 4, 3), "float32"))
    with pytest.raises(UnsupportedModelError, match="subclassed.*functional API"):
        prune_model(net)


def test_lambda_layer():
    x = keras.Input((4, 4, 3))
    y = L.Lambda(lambda t: t * 2.0, name="double")(_conv_bn(x, 4, "a"))
    model = keras.Model(x, L.Conv2D(2, 1)(y))
    with pytest.raises(UnsupportedLayerError, match="'double' is a Lambda layer"):
        prune_model(model)


def test_unknown_layer_type_names_layer_and_type():
    class Mystery(L.Layer):
        def call(self, x):
            return x[..., ::-1]

    x = keras.Input((4, 4, 3))
    y = Mystery(name="mystery")(_conv_bn(x, 4, "a"))
    model = keras.Model(x, L.Conv2D(2, 1)(y))
    with pytest.raises(UnsupportedLayerError, match="'mystery' has type .*Mystery"):
        prune_model(model)


def test_registered_custom_pointwise_layer_is_supported():
    class Swish2(L.Layer):
        def call(self, x):
            return x * keras.ops.sigmoid(2.0 * x)

    register_layer_kind(Swish2, "pointwise")
    x = keras.Input((4, 4, 3))
    y = Swish2()(_conv_bn(x, 6, "a"))
    model = randomize_batchnorms(keras.Model(x, L.Conv2D(2, 1)(y)), seed=1)
    pruned = prune_model(model)
    assert pruned.count_params() < model.count_params()


def test_shared_layer_whose_uses_disagree():
    x = keras.Input((6, 6, 3))
    a = _conv_bn(x, 4, "a")
    b = _conv_bn(x, 4, "b")
    shared = L.Conv2D(3, 3, name="shared")
    model = keras.Model(x, L.Add()([shared(a), shared(b)]))
    randomize_batchnorms(model, zero_fraction=0.0)
    model.get_layer("a_bn").gamma.assign([0.0, 1.0, 1.0, 1.0])
    model.get_layer("b_bn").gamma.assign([0.0, 1.0, 1.0, 1.0])
    model.get_layer("a_bn").beta.assign([1.0, 0.0, 0.0, 0.0])
    model.get_layer("b_bn").beta.assign([-2.0, 0.0, 0.0, 0.0])
    with pytest.raises(SharedLayerError, match="'shared' is shared.*unshare"):
        prune_model(model)


def test_shared_layer_whose_uses_agree_is_pruned_exactly():
    from test_surgery_helpers import assert_same_function

    x = keras.Input((6, 6, 3))
    a = _conv_bn(x, 4, "a")
    b = _conv_bn(x, 4, "b")
    shared = L.Conv2D(3, 3, name="shared")
    model = keras.Model(x, L.Add()([shared(a), shared(b)]))
    randomize_batchnorms(model, zero_fraction=0.0)
    for name in ("a_bn", "b_bn"):
        model.get_layer(name).gamma.assign([0.0, 1.0, 1.0, 1.0])
        model.get_layer(name).beta.assign([1.5, 0.0, 0.0, 0.0])
    pruned = prune_model(model)
    assert pruned.get_layer("shared").kernel.shape[-2] == 3
    assert_same_function(model, pruned)


def test_nan_weights_name_the_layer():
    x = keras.Input((4, 4, 3))
    model = keras.Model(x, L.Conv2D(2, 1, name="head")(_conv_bn(x, 4, "a")))
    kernel = np.asarray(model.get_layer("head").kernel).copy()
    kernel[0, 0, 0, 0] = np.nan
    model.get_layer("head").kernel.assign(kernel)
    with pytest.raises(NonFiniteWeightError, match="'head'"):
        prune_model(model)


def test_inf_in_batchnorm_statistics():
    x = keras.Input((4, 4, 3))
    model = keras.Model(x, L.Conv2D(2, 1)(_conv_bn(x, 4, "a")))
    model.get_layer("a_bn").moving_variance.assign([1.0, np.inf, 1.0, 1.0])
    with pytest.raises(NonFiniteWeightError, match="'a_bn'.*moving_variance"):
        prune_model(model)


def _selection_model():
    x = keras.Input((6, 6, 3))
    y = L.ReLU()(_conv_bn(x, 6, "a"))
    y = L.ReLU()(_conv_bn(y, 4, "b"))
    return randomize_batchnorms(keras.Model(x, L.Conv2D(2, 1, name="head")(y)),
                                zero_fraction=0.0)


def test_unknown_layer_name_in_selection_lists_valid_names():
    with pytest.raises(SelectionError, match="Unknown layer 'nope'. Valid names:.*a_bn"):
        prune_model(_selection_model(), {"nope": [0]})


def test_selection_removing_every_channel_is_refused():
    with pytest.raises(SelectionError, match="every channel of 'a_bn'"):
        prune_model(_selection_model(), {"a_bn": []})


def test_selection_of_wrong_length():
    with pytest.raises(SelectionError, match="shape \\(6,\\)"):
        prune_model(_selection_model(), {"a_bn": np.ones(5, bool)})


def test_selection_removing_model_output_channels_is_refused():
    with pytest.raises(SelectionError, match="model output"):
        prune_model(_selection_model(), {"head": [0]})


def test_channels_first_is_refused():
    x = keras.Input((3, 6, 6))
    y = L.Conv2D(4, 1, data_format="channels_first", name="cf")(x)
    with pytest.raises(UnsupportedLayerError, match="'cf'.*channels_first"):
        prune_model(keras.Model(x, y))


def test_unbuilt_sequential():
    model = keras.Sequential([L.Conv2D(2, 1), L.BatchNormalization()])
    with pytest.raises(UnsupportedModelError, match="not built"):
        prune_model(model)
