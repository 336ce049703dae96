"""The channel graph: tied channels, pinned channels, constants."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tf_gamma_prune import UnsupportedLayerError, channel_graph, coupled_groups, register_layer_kind
from tf_gamma_prune.analysis.channel_graph import _connected_components

L = keras.layers


def bn_with(name, gamma, beta):
    bn = L.BatchNormalization(name=name)

    def apply(x):
        y = bn(x)
        bn.gamma.assign(np.asarray(gamma, "float32"))
        bn.beta.assign(np.asarray(beta, "float32"))
        return y

    return apply


def test_connected_components():
    labels, n = _connected_components(6, [(np.array([0, 2]), np.array([1, 3])),
                                          (np.array([3]), np.array([5]))])
    assert n == 3
    assert labels[0] == labels[1] and labels[2] == labels[3] == labels[5]
    assert len({labels[0], labels[2], labels[4]}) == 3


def test_residual_add_ties_branches_and_sum():
    x = keras.Input((4, 4, 3))
    a = L.Conv2D(3, 1, name="a")(x)
    b = L.Conv2D(3, 1, name="b")(x)
    s = L.Add(name="add")([a, b])
    model = keras.Model(x, L.Conv2D(2, 1, name="head")(s))
    g = channel_graph(model)
    assert (g.layer_channels("a") == g.layer_channels("b")).all()
    assert (g.layer_channels("add") == g.layer_channels("a")).all()
    assert len(set(g.layer_channels("a").tolist())) == 3
    groups = coupled_groups(model)
    assert [("a", 1), ("b", 1), ("add", 1)] in groups


def test_depthwise_ties_input_to_output_channels():
    x = keras.Input((4, 4, 3))
    c = L.Conv2D(3, 1, name="c")(x)
    d = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(c)
    model = keras.Model(x, L.Conv2D(2, 1)(d))
    g = channel_graph(model)
    c_ids = g.layer_channels("c")
    assert g.layer_channels("dw").tolist() == np.repeat(c_ids, 2).tolist()


def test_concatenate_maps_offsets_and_flatten_repeats_per_position():
    x = keras.Input((2, 2, 3))
    a = L.Conv2D(2, 1, name="a")(x)
    b = L.Conv2D(3, 1, name="b")(x)
    cat = L.Concatenate(name="cat")([a, b])
    flat = L.Flatten(name="flat")(cat)
    model = keras.Model(x, L.Dense(2)(flat))
    g = channel_graph(model)
    assert g.layer_channels("cat").tolist() == (
        g.layer_channels("a").tolist() + g.layer_channels("b").tolist())
    assert g.layer_channels("flat").tolist() == g.layer_channels("cat").tolist() * 4


def test_pins_inputs_outputs_and_channels_read_by_softmax_not_by_groups():
    x = keras.Input((4, 4, 4))
    a = L.Conv2D(4, 1, name="a")(x)
    gconv = L.Conv2D(4, 3, groups=2, name="grouped")(a)
    s = L.Softmax(name="soft")(L.Conv2D(3, 1, name="b")(gconv))
    model = keras.Model(x, L.Dense(2, name="out")(L.Flatten()(s)))
    g = channel_graph(model)
    assert g.pinned[g.channels[g.graph.inputs[0]]].all()
    assert g.pinned[g.layer_channels("out")].all()
    # a grouped reader does not pin: it loses the same number of inputs in every group
    # (that coupling is tested in test_surgery_grouped.py)
    assert not g.pinned[g.layer_channels("a")].any()
    assert g.pinned[g.layer_channels("b")].all()  # read by softmax
    assert "soft" in g.pin_reasons[int(g.layer_channels("b")[0])]


def test_batchnorm_zero_gamma_gives_beta_then_the_activation_of_it():
    x = keras.Input((5, 5, 2))
    c = L.Conv2D(3, 1)(x)
    b = bn_with("bn", [0.0, 1.0, 0.0], [-0.5, 0.7, 0.4])(c)
    r = L.ReLU(name="relu")(b)
    p = L.MaxPooling2D(2, name="pool")(r)
    gp = L.GlobalAveragePooling2D(name="gap")(p)
    model = keras.Model(x, L.Dense(2)(gp))
    g = channel_graph(model)
    bn_c = g.constants[g.layer_outputs("bn")[0]]
    assert bn_c.mask.tolist() == [True, False, True]
    np.testing.assert_allclose(bn_c.value.reshape(-1), [-0.5, 0.0, 0.4], rtol=1e-6)
    relu_c = g.constants[g.layer_outputs("relu")[0]]
    np.testing.assert_allclose(relu_c.value.reshape(-1), [0.0, 0.0, 0.4], rtol=1e-6)
    gap_c = g.constants[g.layer_outputs("gap")[0]]
    assert gap_c.value.shape == (1, 3) and gap_c.mask.tolist() == [True, False, True]
    removable = g.removable_constant_groups()
    assert removable[g.layer_channels("bn")].tolist() == [True, False, True]


def test_zero_padding_makes_a_map_exactly_and_is_ignored_in_bias_mode():
    x = keras.Input((3, 3, 1))
    c = L.Conv2D(2, 1)(x)
    b = bn_with("bn", [0.0, 1.0], [2.0, 0.0])(c)
    p = L.ZeroPadding2D(1, name="pad")(b)
    model = keras.Model(x, L.Conv2D(1, 3)(p))
    exact = channel_graph(model).constants
    value = exact[channel_graph(model).layer_outputs("pad")[0]].value
    assert value.shape == (1, 5, 5, 2)
    assert value[0, 0, 0, 0] == 0.0 and value[0, 2, 2, 0] == 2.0
    bias_mode = channel_graph(model, fold="bias")
    assert bias_mode.constants[bias_mode.layer_outputs("pad")[0]].uniform


def test_same_depthwise_conv_of_a_constant_is_a_map():
    x = keras.Input((4, 4, 1))
    c = L.Conv2D(2, 1)(x)
    b = bn_with("bn", [0.0, 1.0], [1.0, 0.0])(c)
    d = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw",
                          depthwise_initializer="ones")(b)
    model = keras.Model(x, L.Conv2D(1, 1)(d))
    g = channel_graph(model)
    value = g.constants[g.layer_outputs("dw")[0]].value[0, ..., 0]
    assert value[0, 0] == 4.0 and value[0, 1] == 6.0 and value[1, 1] == 9.0


def test_multiply_by_a_zero_channel_is_constant_zero():
    x = keras.Input((4, 4, 2))
    c = L.Conv2D(2, 1)(x)
    z = L.ReLU()(bn_with("bn", [0.0, 1.0], [-1.0, 0.0])(L.Conv2D(2, 1)(x)))
    m = L.Multiply(name="mul")([c, z])
    model = keras.Model(x, L.Conv2D(1, 1)(m))
    g = channel_graph(model)
    const = g.constants[g.layer_outputs("mul")[0]]
    assert const.mask.tolist() == [True, False]
    assert g.removable_constant_groups()[g.layer_channels("mul")].tolist() == [True, False]


def test_tied_channel_constant_in_only_one_branch_is_not_removable():
    x = keras.Input((4, 4, 2))
    a = bn_with("bn_a", [0.0, 0.0], [1.0, 1.0])(L.Conv2D(2, 1)(x))
    b = bn_with("bn_b", [0.0, 1.0], [1.0, 1.0])(L.Conv2D(2, 1)(x))
    model = keras.Model(x, L.Conv2D(1, 1)(L.Add()([a, b])))
    g = channel_graph(model)
    assert g.removable_constant_groups()[g.layer_channels("bn_a")].tolist() == [True, False]


def test_layer_kind_errors_and_registration():
    class Odd(L.Layer):
        def call(self, x):
            return x

    x = keras.Input((4, 4, 2))
    model = keras.Model(x, Odd(name="odd")(x))
    with pytest.raises(UnsupportedLayerError, match="'odd' has type"):
        channel_graph(model)
    with pytest.raises(ValueError, match="kind must be"):
        register_layer_kind(Odd, "mixing")
    register_layer_kind(Odd, "opaque")
    g = channel_graph(model)
    assert g.pinned.all()


def test_undecidable_reshape_pins_channels():
    x = keras.Input((4, 4, 6))
    c = L.Conv2D(6, 1, name="c")(x)
    r = L.Reshape((4, 4, 3, 2), name="split")(c)  # splits the channel axis
    model = keras.Model(x, L.Dense(1)(r))
    g = channel_graph(model)
    assert g.pinned[g.layer_channels("c")].all()


@pytest.mark.parametrize(
    "layer, shape",
    [
        (L.Conv2D(3, 3, padding="same", use_bias=False), (7, 6, 4)),
        (L.Conv2D(3, (3, 5), strides=2, padding="same", use_bias=False), (8, 9, 2)),
        (L.Conv2D(2, 4, strides=3, padding="same", use_bias=False), (10, 7, 2)),
        (L.Conv2D(2, 3, dilation_rate=2, padding="same", use_bias=False), (9, 8, 3)),
        (L.Conv1D(2, 3, dilation_rate=2, padding="causal", use_bias=False), (11, 3)),
        (L.Conv1D(2, 4, strides=2, padding="same", use_bias=False), (9, 3)),
        (L.Conv3D(2, 3, padding="same", use_bias=False), (4, 5, 3, 2)),
        (L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False), (6, 5, 3)),
        (L.DepthwiseConv2D(5, strides=2, padding="same", use_bias=False), (9, 9, 2)),
        (L.SeparableConv2D(4, 3, depth_multiplier=2, padding="same", use_bias=False), (7, 7, 3)),
        (L.SeparableConv1D(3, 5, padding="same", use_bias=False), (8, 2)),
    ],
)
def test_uniform_response_map_matches_the_layer_itself(layer, shape):
    """The exact border map is computed without a convolution; check it
    against running the Keras layer on a constant image."""
    from tf_gamma_prune.analysis.channel_graph import linear_response

    layer.build((None,) + shape)
    rng = np.random.default_rng(0)
    for w in layer.weights:
        w.assign(rng.standard_normal(w.shape))
    c = rng.standard_normal(shape[-1])
    image = np.broadcast_to(c, (1,) + shape).astype("float32")
    expected = np.asarray(layer(image), np.float64)
    got = linear_response(layer, c.reshape((1,) * len(shape) + (-1,)), shape[:-1])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    interior = linear_response(layer, c.reshape((1,) * len(shape) + (-1,)))
    assert interior.shape == (1,) * len(shape) + (expected.shape[-1],)
