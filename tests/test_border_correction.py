"""BorderCorrection keeps only the border ring of a zero-padded reader's correction (issue 15).

The correction of a 'same' convolution reading a removed constant is 0 in the
interior (that part is folded into the bias) and differs only in a ring of width
≈ kernel//2 · dilation; the layer stores that ring's blocks (corners and edge
profiles), O(k^n·C) numbers whatever the resolution, instead of an H×W×C map.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from test_surgery_helpers import assert_same_function, randomize_batchnorms, relative_error

from conftest import tensorflow_only
from tf_gamma_prune import BorderCorrection, model_cost, prune_model
from tf_gamma_prune.analysis.conv_response import linear_response, split_response
from tf_gamma_prune.layers import ring_layout

L = keras.layers
SAVED = os.path.join(os.path.dirname(__file__), os.pardir, "saved_models")


def border_of(layer, spatial, channels_in, seed=0):
    """The border map ``prune_model`` would fold for ``layer`` reading a uniform constant."""
    layer.build((None,) + spatial + (channels_in,))
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32"))
    value = rng.standard_normal((1,) * (len(spatial) + 1) + (channels_in,))
    response = linear_response(layer, value, spatial)
    _, border = split_response(response, response.shape[-1])
    assert border is not None
    return border[0].astype("float32")


CASES = {
    "conv2d_3x3": (lambda: L.Conv2D(5, 3, padding="same", use_bias=False), (40, 37), 3),
    "conv2d_5x5_dilated": (lambda: L.Conv2D(4, 5, padding="same", dilation_rate=2,
                                            use_bias=False), (48, 48), 2),
    "conv2d_strided_even": (lambda: L.Conv2D(4, 3, strides=2, padding="same",
                                             use_bias=False), (64, 64), 3),
    "conv2d_strided_odd": (lambda: L.Conv2D(4, 3, strides=2, padding="same",
                                            use_bias=False), (63, 65), 3),
    "conv2d_1x5": (lambda: L.Conv2D(4, (1, 5), padding="same", use_bias=False), (32, 32), 3),
    "depthwise": (lambda: L.DepthwiseConv2D(3, padding="same", use_bias=False), (33, 33), 4),
    "conv1d": (lambda: L.Conv1D(4, 5, padding="same", use_bias=False), (200,), 3),
    "conv1d_causal": (lambda: L.Conv1D(4, 3, padding="causal", use_bias=False), (200,), 3),
    "conv3d": (lambda: L.Conv3D(2, 3, padding="same", use_bias=False), (24, 20, 22), 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compact_map_is_the_ring_and_adds_exactly(case):
    make, spatial, channels_in = CASES[case]
    layer = make()
    border = border_of(layer, spatial, channels_in)
    assert BorderCorrection(border).segments is None, "small maps are added whole by default (faster)"
    correction = BorderCorrection(border, compact=True)
    assert correction.segments is not None, "the ring layout should apply"
    # bounded by the kernel's extent, not the resolution
    k = np.array(layer.kernel_size)
    d = np.array(getattr(layer, "dilation_rate", (1,) * len(k)))
    extent = int(np.prod((k - 1) * d + 1))
    assert correction.stored_size <= extent * border.shape[-1] < border.size / 4
    np.testing.assert_allclose(correction.full_map(), border, rtol=0, atol=1e-6 * np.abs(border).max())
    x = np.random.default_rng(1).standard_normal((2,) + border.shape).astype("float32")
    out = keras.ops.convert_to_numpy(correction(x))
    np.testing.assert_allclose(out, x + border, rtol=1e-6, atol=1e-6 * np.abs(border).max())
    # a uniform input (how prune_model propagates constants) is broadcast to the map's size
    uniform = np.ones((1,) * (len(spatial) + 1) + border.shape[-1:], "float32")
    out = keras.ops.convert_to_numpy(correction(uniform))
    np.testing.assert_allclose(out[0], 1.0 + border, rtol=1e-6, atol=1e-6 * np.abs(border).max())


def test_a_3x3_ring_stores_eight_blocks_of_c_numbers():
    border = border_of(L.Conv2D(6, 3, padding="same", use_bias=False), (512, 512), 4)
    correction = BorderCorrection(border)
    assert correction.segments == [[(0, 1, True), (1, 511, False), (511, 512, True)]] * 2
    assert len(correction.blocks) == 8  # 4 corners, 4 edges; the interior is 0
    assert correction.stored_size == 8 * 6  # instead of 512 * 512 * 6


def test_maps_without_a_ring_stay_whole():
    rng = np.random.default_rng(0)
    noisy = rng.standard_normal((16, 16, 3)).astype("float32")
    assert ring_layout(noisy) is None
    layer = BorderCorrection(noisy)
    assert layer.segments is None and [w.name for w in layer.weights] == ["correction"]
    small = np.zeros((4, 4, 2), "float32")
    small[0] = 1.0  # a ring, but too small for the blocks' op overhead to pay off
    assert BorderCorrection(small, compact=True).segments is None
    ring = border_of(L.Conv2D(3, 3, padding="same", use_bias=False), (64, 64), 2)
    assert BorderCorrection(ring, compact=False).segments is None


def test_compact_layer_serializes_and_saves(tmp_path):
    border = border_of(L.Conv2D(3, 3, padding="same", use_bias=False), (48, 40), 2)
    layer = BorderCorrection(border, compact=True, name="ring")
    config = keras.saving.serialize_keras_object(layer)
    assert config["config"]["segments"] and config["config"]["blocks"]
    clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(layer.get_weights())
    x = np.random.default_rng(0).standard_normal((1, 48, 40, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)),
                                  keras.ops.convert_to_numpy(layer(x)))
    inp = keras.Input((48, 40, 3))
    model = keras.Model(inp, BorderCorrection(border, compact=True, name="ring")(inp))
    model.save(tmp_path / "ring.keras")
    loaded = keras.models.load_model(tmp_path / "ring.keras")
    assert loaded.get_layer("ring").segments == model.get_layer("ring").segments
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)),
                                  keras.ops.convert_to_numpy(model(x)))


def test_auto_compacts_from_one_mebibyte_of_map_and_rejects_other_values():
    from tf_gamma_prune.errors import ArgumentError
    from tf_gamma_prune.layers import COMPACT_FROM

    side = int(np.ceil(np.sqrt(COMPACT_FROM / 4)))
    big = np.zeros((side, side, 4), "float32")
    big[0] = 1.0
    below = big[1:]  # one row fewer: under the threshold
    assert big.size >= COMPACT_FROM > below.size
    assert BorderCorrection(big).segments is not None
    assert BorderCorrection(below).segments is None
    assert BorderCorrection(below, compact=True).segments is not None
    with pytest.raises(ArgumentError, match="compact must be"):
        BorderCorrection(big, compact="yes")


def test_old_full_map_configs_still_load():
    """Models saved before the ring layout have ``{"shape": ...}`` and one ``correction`` weight."""
    old = {"name": "old", "trainable": True, "dtype": "float32", "shape": [3, 3, 2]}
    layer = BorderCorrection.from_config(old)
    assert layer.segments is None and layer.map_shape == (3, 3, 2)
    value = np.arange(18, dtype="float32").reshape(3, 3, 2)
    layer.set_weights([value])
    x = np.zeros((1, 3, 3, 2), "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x))[0], value)


def test_committed_full_map_model_loads_and_prunes_again_exactly():
    import tf_gamma_prune  # noqa: F401  registers the custom layers

    model = keras.models.load_model(os.path.join(SAVED, "fashion_vgg_pruned.keras"))
    olds = [l for l in model.layers if isinstance(l, BorderCorrection)]
    assert olds and all(l.segments is None for l in olds)  # saved as full maps
    bn = next(l for l in model.layers if isinstance(l, L.BatchNormalization))
    gamma = np.array(bn.gamma)
    gamma[0] = 0.0
    bn.gamma.assign(gamma)
    again = prune_model(model, fold="exact")
    x = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype("float32")
    assert_same_function(model, again, x)


def test_mixed_precision_compact_layer():
    border = border_of(L.Conv2D(2, 3, padding="same", use_bias=False), (64, 64), 2)
    layer = BorderCorrection(border, compact=True, dtype="mixed_float16")
    assert layer.segments is not None
    out = layer(np.zeros((1, 64, 64, 2), "float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert all(w.dtype == "float32" for w in layer.weights)


def conv_bn_net(size, width, name="net"):
    x = keras.Input((size, size, 3))
    h = x
    for i in range(3):
        h = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"c{i}")(h)
        h = L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(h))
    return keras.Model(x, L.Conv2D(2, 3, padding="same", name="out")(h), name=name)


@tensorflow_only
def test_exact_fold_at_512x512_adds_a_bounded_ring_and_a_smaller_tflite():
    """512×512, 3-channel input, 24-wide 3×3 convs: a full-map fold would add 512·512·C
    numbers per padded reader (millions); the ring adds 8·C each."""
    from tf_gamma_prune.export import assert_builtin_only, check_parity, to_tflite

    model = randomize_batchnorms(conv_bn_net(512, 24), seed=3, zero_fraction=0.5,
                                 positive_beta=True)
    pruned, report = prune_model(model, fold="exact", return_report=True)
    rings = [l for l in pruned.layers if isinstance(l, BorderCorrection)]
    assert len(rings) == len(report.border_corrections) >= 2
    assert all(l.segments is not None for l in rings)
    assert report.border_params == sum(8 * l.map_shape[-1] for l in rings)
    before, after = model_cost(model).params, model_cost(pruned).params
    assert report.border_params <= 0.025 * before  # measured: 208 of 11,738 (1.8 %)
    assert after < before
    x = np.random.default_rng(0).standard_normal((1, 512, 512, 3)).astype("float32")
    assert relative_error(model, pruned, x) <= 1e-5
    original, flatbuffer = to_tflite(model), to_tflite(pruned)
    assert_builtin_only(flatbuffer)
    assert len(flatbuffer) <= len(original)  # measured: 48,820 -> 31,044 bytes
    check_parity(model, flatbuffer, x).assert_within(1e-4)
