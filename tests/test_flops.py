"""MAC and parameter counts against hand counts."""

from __future__ import annotations

import keras
import pytest

from tf_gamma_prune.analysis.flops import count_macs, model_cost

L = keras.layers


def single(layer, shape):
    x = keras.Input(shape)
    return keras.Model(x, layer(x))


@pytest.mark.parametrize(
    "layer, shape, macs",
    [
        # 8x8 outputs * 3x3 taps * 3 in * 4 out
        (L.Conv2D(4, 3, padding="same"), (8, 8, 3), 8 * 8 * 9 * 3 * 4),
        # valid, stride 2: out 4x4 (from 9x9: (9-3)//2+1 = 4)
        (L.Conv2D(5, 3, strides=2), (9, 9, 2), 4 * 4 * 9 * 2 * 5),
        # dilation does not change the tap count: out 8-4 = 4 -> 4x4
        (L.Conv2D(2, 3, dilation_rate=2), (8, 8, 1), 4 * 4 * 9 * 1 * 2),
        # grouped: each output sees C_in / groups inputs
        (L.Conv2D(6, 3, padding="same", groups=2), (5, 5, 4), 5 * 5 * 9 * 2 * 6),
        (L.Conv1D(4, 5, padding="valid"), (20, 3), 16 * 5 * 3 * 4),
        (L.Conv3D(2, 3, padding="same"), (4, 4, 4, 2), 64 * 27 * 2 * 2),
        # depthwise: 8x8 * 3x3 * 3 channels * multiplier 2
        (L.DepthwiseConv2D(3, padding="same", depth_multiplier=2), (8, 8, 3), 8 * 8 * 9 * 3 * 2),
        # separable: depthwise 6x6*9*4*1 + pointwise 6x6*4*7
        (L.SeparableConv2D(7, 3), (8, 8, 4), 6 * 6 * 9 * 4 + 6 * 6 * 4 * 7),
        (L.Dense(10), (20,), 200),
        (L.Dense(3), (5, 4), 5 * 4 * 3),  # applied at each of 5 positions
        # transpose: every input position scatters k*k*C_in*C_out
        (L.Conv2DTranspose(3, 3, strides=2), (4, 4, 2), 16 * 9 * 2 * 3),
        (L.BatchNormalization(), (4, 4, 3), 0),
        (L.MaxPooling2D(), (4, 4, 3), 0),
    ],
)
def test_layer_macs(layer, shape, macs):
    model = single(layer, shape)
    assert count_macs(model) == macs
    assert model_cost(model).params == model.count_params()


def test_nested_and_shared_layers():
    inner_x = keras.Input((6, 6, 3))
    inner = keras.Model(inner_x, L.Conv2D(4, 1, name="c")(inner_x), name="inner")
    x = keras.Input((6, 6, 3))
    shared = L.Conv2D(2, 1, name="shared")
    y = L.Add()([shared(inner(x)), shared(inner(x))])
    model = keras.Model(x, y)
    cost = model_cost(model)
    conv = 36 * 3 * 4
    head = 36 * 4 * 2
    assert cost.macs == 2 * conv + 2 * head
    assert cost.params == model.count_params() == (3 * 4 + 4) + (4 * 2 + 2)
    assert cost.per_layer["inner/c"].macs == 2 * conv
    assert cost.per_layer["shared"].macs == 2 * head


def test_dynamic_shapes_give_unknown_macs():
    x = keras.Input((None, None, 3))
    model = keras.Model(x, L.Conv2D(2, 3)(x))
    cost = model_cost(model)
    assert cost.macs is None
    assert cost.params == 3 * 3 * 3 * 2 + 2
