"""prune_model: per layer type, the pruned model computes the original function.

Every case: a small model with random weights, random BN statistics and β
(so the constants act(β) are nonzero) and a random half of the γ set to 0.
The pruned model's outputs are compared with the ORIGINAL model's outputs on
random inputs (inference mode, float64 comparison): relative max error ≤ 1e-5.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import (
    assert_same_function,
    random_inputs,
    randomize_batchnorms,
    relative_error,
)

from tf_gamma_prune import prune_model
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature

L = keras.layers


def cbr(x, filters, kernel=3, act="relu", conv=L.Conv2D, **kw):
    """conv -> BN -> activation (the pruned unit)."""
    x = conv(filters, kernel, **kw)(x)
    x = L.BatchNormalization()(x)
    return L.Activation(act)(x) if isinstance(act, str) else act(x)


def head(x, classes=3):
    """A reader of the tested layer's channels that ends in pinned logits."""
    if len(x.shape) == 4:
        x = L.Conv2D(5, 3, padding="same")(x)
        x = L.GlobalAveragePooling2D()(x)
    elif len(x.shape) == 3:
        x = L.Conv1D(5, 3, padding="same")(x)
        x = L.GlobalAveragePooling1D()(x)
    elif len(x.shape) == 5:
        x = L.Conv3D(5, 3, padding="same")(x)
        x = L.GlobalAveragePooling3D()(x)
    return L.Dense(classes)(x)


def img(h=10, w=10, c=3):
    return keras.Input((h, w, c))


# --- model builders, one per layer type / configuration ---------------------------
def conv2d_same():
    x = img()
    return keras.Model(x, head(cbr(cbr(x, 8, padding="same"), 6, padding="same")))


def conv2d_valid_strided():
    x = img(11, 11)
    y = cbr(x, 8, padding="valid", strides=2)
    return keras.Model(x, head(cbr(y, 6, padding="valid", strides=2)))


def conv2d_same_strided():
    x = img(11, 9)
    y = cbr(x, 8, padding="same")
    return keras.Model(x, head(cbr(y, 6, kernel=(3, 5), padding="same", strides=2)))


def conv2d_dilated():
    x = img(12, 12)
    y = cbr(x, 8, padding="same")
    y = cbr(y, 6, padding="same", dilation_rate=2)
    return keras.Model(x, head(cbr(y, 6, padding="valid", dilation_rate=(2, 1))))


def conv2d_no_bias():
    # bias-free readers followed by BN: the constant goes into the BN moving mean
    x = img()
    y = cbr(x, 8, padding="same", use_bias=False)
    y = cbr(y, 6, padding="same", use_bias=False)
    return keras.Model(x, head(cbr(y, 6, kernel=1, use_bias=False)))


def conv1d():
    x = keras.Input((20, 3))
    y = cbr(x, 8, conv=L.Conv1D, padding="same")
    y = cbr(y, 6, conv=L.Conv1D, padding="causal", dilation_rate=2)
    y = cbr(y, 6, conv=L.Conv1D, padding="valid", strides=2)
    return keras.Model(x, head(y))


def conv3d():
    x = keras.Input((4, 6, 6, 2))
    y = cbr(x, 6, conv=L.Conv3D, padding="same")
    return keras.Model(x, head(cbr(y, 4, conv=L.Conv3D, padding="valid")))


def conv_transpose():
    x = img(6, 6)
    y = cbr(x, 8, padding="same")
    y = cbr(y, 6, conv=L.Conv2DTranspose, strides=2, padding="same")
    y = cbr(y, 6, conv=L.Conv2DTranspose, kernel=(3, 2), strides=(1, 2), padding="valid")
    return keras.Model(x, head(y))


def conv1d_transpose():
    x = keras.Input((9, 3))
    y = cbr(x, 6, conv=L.Conv1D, padding="same")
    y = cbr(y, 5, conv=L.Conv1DTranspose, kernel=4, strides=3, padding="same")
    return keras.Model(x, head(y))


def depthwise():
    x = img()
    y = cbr(x, 8, kernel=1)
    y = cbr(y, None, conv=lambda _, k, **kw: L.DepthwiseConv2D(k, **kw), padding="same")
    y = cbr(y, None, conv=lambda _, k, **kw: L.DepthwiseConv2D(k, **kw),
            padding="valid", strides=2, depth_multiplier=2)
    return keras.Model(x, head(y))


def depthwise1d():
    x = keras.Input((16, 3))
    y = cbr(x, 6, kernel=1, conv=L.Conv1D)
    y = cbr(y, None, conv=lambda _, k, **kw: L.DepthwiseConv1D(k, **kw), padding="same")
    return keras.Model(x, head(y))


def separable():
    x = img()
    y = cbr(x, 8, padding="same")
    y = cbr(y, 6, conv=L.SeparableConv2D, padding="same", depth_multiplier=2)
    return keras.Model(x, head(cbr(y, 6, conv=L.SeparableConv2D, strides=2)))


def separable1d():
    x = keras.Input((16, 3))
    y = cbr(x, 8, conv=L.Conv1D, padding="same")
    return keras.Model(x, head(cbr(y, 6, conv=L.SeparableConv1D, padding="same")))


def dense():
    x = keras.Input((7,))
    y = L.Dense(8)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    y = L.Dense(6, use_bias=False)(y)
    y = L.BatchNormalization()(y)
    y = L.Activation("tanh")(y)
    return keras.Model(x, L.Dense(3)(y))


def dense_on_sequence():
    x = keras.Input((5, 4))
    y = L.Dense(8)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    return keras.Model(x, L.Dense(3)(y))


def activations():
    x = img()
    y = x
    for act in ["relu", L.ReLU(max_value=6.0), "swish", "sigmoid", L.LeakyReLU(0.2),
                L.PReLU(), L.PReLU(shared_axes=[1, 2]), L.ELU(), "hard_sigmoid",
                "tanh", "gelu"]:
        y = cbr(y, 6, padding="same", act=act)
    return keras.Model(x, head(y))


def pooling():
    x = img(12, 12)
    y = cbr(x, 8, padding="same")
    y = L.MaxPooling2D(3, strides=2, padding="same")(y)
    y = cbr(y, 8, padding="same")
    y = L.AveragePooling2D(3, strides=1, padding="same")(y)
    y = cbr(y, 8, padding="same")
    y = L.AveragePooling2D(2)(y)
    y = cbr(y, 6, kernel=1)
    y = L.MaxPooling2D(2, padding="valid")(y)
    return keras.Model(x, head(y))


def global_pooling():
    x = img()
    a = cbr(x, 8, padding="same")
    g1 = L.GlobalAveragePooling2D()(a)
    g2 = L.GlobalMaxPooling2D()(cbr(a, 6, padding="same"))
    g3 = L.GlobalAveragePooling2D(keepdims=True)(cbr(a, 4, padding="same"))
    g3 = L.Conv2D(5, 1)(g3)
    y = L.Concatenate()([L.Dense(4)(g1), L.Dense(4)(g2), L.Flatten()(g3)])
    return keras.Model(x, L.Dense(3)(y))


def dropout():
    x = img()
    y = cbr(x, 8, padding="same")
    y = L.Dropout(0.5)(y)
    y = cbr(y, 6, padding="same")
    y = L.SpatialDropout2D(0.3)(y)
    return keras.Model(x, head(y))


def zero_padding():
    x = img()
    y = cbr(x, 8, padding="same")
    y = L.ZeroPadding2D(((1, 2), (0, 1)))(y)
    y = cbr(y, 6, padding="valid", strides=2)
    y = L.ZeroPadding2D(1)(y)
    y = cbr(y, None, conv=lambda _, k, **kw: L.DepthwiseConv2D(k, **kw))
    return keras.Model(x, head(y))


def residual_add():
    x = img()
    y = cbr(x, 8, padding="same")
    for _ in range(2):
        b = cbr(y, 6, padding="same")
        b = L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(b))
        y = L.ReLU()(L.Add()([y, b]))
    return keras.Model(x, head(y))


def merges():
    x = img()
    a = cbr(x, 6, padding="same")
    b = cbr(x, 6, padding="same")
    c = cbr(x, 6, padding="same")
    y = L.Concatenate()([L.Subtract()([a, b]), L.Average()([a, c]),
                         L.Maximum()([b, c]), L.Minimum()([a, b])])
    return keras.Model(x, head(y))


merges.zero_fraction = 0.8  # a channel goes only if zero in all three branches


def concatenate():
    x = img()
    a = cbr(x, 6, padding="same")
    b = cbr(a, 4, padding="same")
    c = cbr(L.Concatenate()([a, b]), 5, padding="same")
    y = L.Concatenate()([x, a, c])
    return keras.Model(x, head(cbr(y, 6, kernel=1)))


def squeeze_excite():
    x = img()
    y = cbr(x, 8, padding="same", act="swish")
    s = L.GlobalAveragePooling2D(keepdims=True)(y)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = L.Conv2D(8, 1, activation="sigmoid")(s)
    y = L.Multiply()([y, s])
    return keras.Model(x, head(cbr(y, 6, kernel=1)))


def squeeze_excite_dense_reshape():
    x = img()
    y = cbr(x, 8, padding="same")
    s = L.GlobalAveragePooling2D()(y)
    s = L.ReLU()(L.BatchNormalization()(L.Dense(4)(s)))
    s = L.Dense(8, activation="hard_sigmoid")(s)
    s = L.Reshape((1, 1, 8))(s)
    y = L.Multiply()([y, s])
    return keras.Model(x, head(y))


def flatten_dense():
    x = img(6, 6)
    y = cbr(x, 8, padding="same")
    y = cbr(y, 6, padding="same", strides=2)
    y = L.Flatten()(y)
    y = L.Dense(10)(y)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    return keras.Model(x, L.Dense(3)(y))


def reshape_and_permute():
    x = img(6, 6)
    y = cbr(x, 8, padding="same")
    r = L.Reshape((36, 8))(y)  # channel axis kept
    r = L.Conv1D(4, 3, padding="same")(r)
    p = L.Permute((2, 1, 3))(y)  # channel axis stays last
    p = L.Conv2D(4, 3)(p)
    m = L.Reshape((6, 24))(cbr(y, 4, padding="same"))  # (W, C) merged
    m = L.Dense(5)(m)
    y = L.Concatenate()([L.GlobalAveragePooling1D()(r), L.GlobalAveragePooling2D()(p),
                         L.GlobalAveragePooling1D()(m)])
    return keras.Model(x, L.Dense(3)(y))


def spatial_resampling():
    x = img(8, 8)
    y = cbr(x, 8, padding="same")
    y = L.UpSampling2D(2)(y)
    y = cbr(y, 6, padding="same")
    y = L.Cropping2D(((1, 2), (2, 1)))(y)
    y = cbr(y, 6, padding="same")
    y = L.UpSampling2D(2, interpolation="bilinear")(y)
    return keras.Model(x, head(y))


def keras_ops_nodes():
    # hard-swish written with keras ops, as in keras.applications.MobileNetV3
    x = img()
    y = cbr(x, 8, padding="same", act="linear")
    hs = L.ReLU(6.0)(y + 3.0) * (1.0 / 6.0)
    y = L.Multiply()([y, hs])
    y = cbr(y, 6, padding="same", act=lambda t: keras.ops.relu(t) - 0.5)
    return keras.Model(x, head(y))


def rescaling_normalization():
    x = img()
    y = L.Rescaling(1 / 255.0)(x)
    y = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 3.0])(y)
    y = cbr(y, 8, padding="same")
    y = L.Rescaling(2.0, offset=-1.0)(y)
    return keras.Model(x, head(y))


CASES = [conv2d_same, conv2d_valid_strided, conv2d_same_strided, conv2d_dilated,
         conv2d_no_bias, conv1d, conv3d, conv_transpose, conv1d_transpose, depthwise, depthwise1d, separable,
         separable1d, dense, dense_on_sequence, activations, pooling,
         global_pooling, dropout, zero_padding, residual_add, merges, concatenate,
         squeeze_excite, squeeze_excite_dense_reshape, flatten_dense,
         reshape_and_permute, spatial_resampling, keras_ops_nodes,
         rescaling_normalization]


@pytest.mark.parametrize("build", CASES, ids=[c.__name__ for c in CASES])
def test_pruned_model_computes_the_original_function(build):
    model = randomize_batchnorms(build(), seed=3,
                                 zero_fraction=getattr(build, "zero_fraction", 0.5))
    x = random_inputs(model)
    before = relative_error(model, model, x)
    assert before == 0.0
    pruned, report = prune_model(model, return_report=True, fold="exact")
    assert report.removed_constant > 0
    assert any(b < a for a, b in report.widths.values())
    assert_same_function(model, pruned, x)
    assert report.max_rel_deviation <= 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_across_seeds_on_padding_heavy_model(seed):
    model = randomize_batchnorms(zero_padding(), seed=seed, zero_fraction=0.6)
    assert_same_function(model, prune_model(model))


def test_bias_fold_is_the_papers_approximation_and_reports_it():
    model = randomize_batchnorms(conv2d_same(), seed=3, positive_beta=True)
    x = random_inputs(model)
    exact = prune_model(model, fold="exact")
    approx, report = prune_model(model, fold="bias", return_report=True)
    assert relative_error(model, exact, x) <= 1e-5
    err = relative_error(model, approx, x)
    assert err > 1e-4  # border positions miss the padded taps
    assert report.max_rel_deviation > 1e-4
    assert report.fold == "bias"
    assert any("bias" in note for note in report.notes)
    assert not any(isinstance(l, BorderCorrection) for l in approx.layers)
    assert any(isinstance(l, BorderCorrection) for l in exact.layers)


def test_valid_padding_needs_no_border_correction():
    model = randomize_batchnorms(conv2d_valid_strided(), seed=3)
    pruned, report = prune_model(model, return_report=True)
    assert report.border_corrections == []
    assert_same_function(model, pruned)


def test_constant_goes_into_moving_mean_of_the_following_bn_with_the_right_sign():
    x = keras.Input((5, 5, 2))
    y = L.Conv2D(3, 1, name="c1")(x)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.Conv2D(2, 1, use_bias=False, name="c2")(y)
    y = L.BatchNormalization(name="bn2")(y)
    model = keras.Model(x, y)
    randomize_batchnorms(model, seed=0, zero_fraction=0.0)
    model.get_layer("bn1").gamma.assign([1.0, 0.0, 1.0])
    model.get_layer("bn1").beta.assign([0.5, 2.0, -0.3])
    pruned = prune_model(model)
    c2 = pruned.get_layer("c2")
    assert not c2.use_bias  # folded into bn2, not into a new bias
    w = np.asarray(model.get_layer("c2").kernel)[0, 0, 1, :]  # weights of channel 1
    expected = np.asarray(model.get_layer("bn2").moving_mean) - 2.0 * w
    np.testing.assert_allclose(np.asarray(pruned.get_layer("bn2").moving_mean), expected,
                               rtol=1e-6)
    assert_same_function(model, pruned)


def test_reader_without_bias_and_without_bn_gets_a_bias():
    x = keras.Input((6, 6, 2))
    y = L.Conv2D(4, 3, padding="same", name="c1")(x)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.Conv2D(3, 1, use_bias=False, name="c2")(y)
    y = L.ReLU()(y)
    model = randomize_batchnorms(keras.Model(x, y), seed=1)
    model.get_layer("bn1").gamma.assign([0.0, 1.0, 0.0, 1.0])
    pruned = prune_model(model)
    assert pruned.get_layer("c2").use_bias
    assert pruned.get_layer("c1").filters == 2
    assert_same_function(model, pruned)


def test_residual_channels_go_only_where_constant_in_every_branch():
    x = keras.Input((6, 6, 3))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(4, 1, name="ca")(x))
    b = L.BatchNormalization(name="bn_b")(L.Conv2D(4, 1, name="cb")(x))
    y = L.Add(name="add")([a, b])
    y = L.Conv2D(2, 1, name="head")(y)
    model = randomize_batchnorms(keras.Model(x, y), zero_fraction=0.0)
    model.get_layer("bn_a").gamma.assign([0.0, 0.0, 1.0, 1.0])
    model.get_layer("bn_b").gamma.assign([0.0, 1.0, 0.0, 1.0])
    pruned, report = prune_model(model, return_report=True)
    assert report.widths["ca"] == (4, 3) and report.widths["cb"] == (4, 3)
    assert_same_function(model, pruned)


def test_whole_constant_branch_is_replaced_by_its_constant():
    x = keras.Input((6, 6, 3))
    s = L.Conv2D(4, 3, padding="same", name="stem")(x)
    b = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(5, 3, padding="same")(s)))
    b = L.Conv2D(4, 3, padding="same", name="last")(b)
    b = L.BatchNormalization(name="bn2")(b)
    y = L.Add()([s, b])
    y = L.Conv2D(2, 1)(y)
    model = randomize_batchnorms(keras.Model(x, y), zero_fraction=0.0, positive_beta=True)
    model.get_layer("bn1").gamma.assign(np.zeros(5))
    pruned, report = prune_model(model, return_report=True)
    assert report.constant_layers == ["last"]
    assert isinstance(pruned.get_layer("last"), ConstantFeature)
    assert_same_function(model, pruned)
    assert report.params_after < report.params_before


def test_model_with_dynamic_spatial_shape():
    from tf_gamma_prune import DynamicShapeError

    x = keras.Input((None, None, 3))
    y = cbr(cbr(x, 6, padding="same"), 4, padding="valid")
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=2, positive_beta=True)
    with pytest.raises(DynamicShapeError, match="fold='bias'"):
        prune_model(model, fold="exact")
    pruned = prune_model(model, fold="bias")
    assert pruned.count_params() < model.count_params()
    # valid padding only: exact folding works without static shapes
    x = keras.Input((None, None, 3))
    y = cbr(cbr(x, 6, kernel=1), 4, padding="valid")
    model = randomize_batchnorms(keras.Model(x, L.Conv2D(2, 1)(y)), seed=2)
    assert_same_function(model, prune_model(model, fold="exact"), np.random.rand(2, 9, 7, 3))


def test_input_model_is_not_modified():
    model = randomize_batchnorms(residual_add(), seed=4)
    before = [np.array(w) for w in model.weights]
    names = [l.name for l in model.layers]
    prune_model(model)
    assert [l.name for l in model.layers] == names
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_names_dtypes_and_trainability_are_preserved():
    model = randomize_batchnorms(conv2d_same(), seed=3)
    model.layers[1].trainable = False
    pruned = prune_model(model)
    new_names = {l.name for l in pruned.layers}
    for layer in model.layers:
        if layer.name in new_names:
            other = pruned.get_layer(layer.name)
            assert other.trainable == layer.trainable
            assert other.dtype_policy.name == layer.dtype_policy.name
    assert {l.name for l in model.layers} <= new_names | {model.layers[0].name}


def test_mixed_precision_policy_is_preserved():
    policy = keras.mixed_precision.DTypePolicy("mixed_float16")
    x = img()
    y = L.Conv2D(8, 3, padding="same", dtype=policy)(x)
    y = L.BatchNormalization(dtype=policy)(y)
    y = L.ReLU(dtype=policy)(y)
    y = L.Conv2D(4, 3, padding="same", dtype=policy)(y)
    y = L.Activation("linear", dtype="float32")(y)
    model = randomize_batchnorms(keras.Model(x, y), seed=5)
    pruned = prune_model(model)
    for layer in pruned.layers[1:-1]:
        assert layer.dtype_policy.name == "mixed_float16"
    assert_same_function(model, pruned, tol=5e-3)  # float16 arithmetic


def test_nested_backbone_and_sequential_models():
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, cbr(cbr(inner_in, 6, padding="same"), 6, padding="same"),
                        name="backbone")
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, head(inner(x)))
    randomize_batchnorms(model, seed=6)
    pruned, report = prune_model(model, return_report=True)
    assert report.removed_constant > 0
    assert_same_function(model, pruned)

    seq = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(6, 3, padding="same"),
                            L.BatchNormalization(), L.ReLU(), L.Conv2D(4, 3),
                            L.BatchNormalization(), L.ReLU(), L.Flatten(), L.Dense(3)])
    randomize_batchnorms(seq, seed=6)
    assert_same_function(seq, prune_model(seq))


def test_report_counts_params_and_widths():
    model = randomize_batchnorms(conv2d_same(), seed=3)
    pruned, report = prune_model(model, return_report=True)
    assert report.params_before == model.count_params()
    assert report.params_after == pruned.count_params()
    assert report.macs_after < report.macs_before
    conv_names = [l.name for l in model.layers if isinstance(l, L.Conv2D)]
    for name in conv_names:
        before, after = report.widths[name]
        assert before == model.get_layer(name).filters
        assert after == pruned.get_layer(name).filters
    assert "params" in report.summary()


def test_nothing_constant_means_nothing_removed():
    model = randomize_batchnorms(residual_add(), seed=1, zero_fraction=0.0)
    pruned, report = prune_model(model, return_report=True)
    assert report.params_after == report.params_before
    assert report.removed_constant == 0
    assert_same_function(model, pruned, tol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_pooling_keeps_positive_constants_exact(seed):
    # β > 0 so every constant survives the ReLU: 'same' max/avg pooling of a
    # constant must give the constant (TF pads max pooling with -inf and
    # leaves the padding out of the average)
    model = randomize_batchnorms(pooling(), seed=seed, positive_beta=True)
    pruned, report = prune_model(model, return_report=True)
    assert report.removed_constant > 0
    assert_same_function(model, pruned)


def test_dynamic_shape_whole_constant_input_keeps_one_channel():
    x = keras.Input((None, None, 3))
    s = L.Conv2D(4, 1, name="stem")(x)
    b = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(3, 1, name="c1")(s)))
    b = L.BatchNormalization(name="bn2")(L.Conv2D(4, 1, name="c2")(b))
    y = L.Conv2D(2, 1)(L.Add()([s, b]))
    model = randomize_batchnorms(keras.Model(x, y), zero_fraction=0.0, positive_beta=True)
    model.get_layer("bn1").gamma.assign(np.zeros(3))
    pruned, report = prune_model(model, return_report=True,
                                 probe_inputs=np.random.rand(2, 7, 5, 3).astype("float32"))
    assert pruned.get_layer("c1").filters == 1
    assert any("kept one input channel" in n for n in report.notes)
    assert_same_function(model, pruned, np.random.rand(2, 9, 6, 3).astype("float32"))
