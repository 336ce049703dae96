"""keras.ops nodes in functional models (issue 15 item 5): each op is a kind decision.

Every case puts one op between Conv/BN layers: random weights, randomised BN
statistics with a random half of the γ exactly 0, and on top of that three
channels of the producer's BN ("p_bn") set to γ = 0 with β > 0, so that after
the ReLU they are nonzero constants (zero padding then really makes border
maps). The pruned model is compared with the ORIGINAL in float64 (≤ 1e-5
relative) for every fold; with ``fold="exact"`` (which removes every removable
constant) the producer "p" must shrink where the op's rule follows channels,
and keep all 8 channels where the op's arguments pin them.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops
from test_surgery_helpers import assert_same_function, random_inputs, randomize_batchnorms

from tf_gamma_prune import channel_graph, prune_model

L = keras.layers

ZEROED = [1, 4, 6]


def producer(x, filters=8, kernel=3, conv=L.Conv2D, relu=True):
    """The pruned unit "p" -> "p_bn" (-> ReLU)."""
    x = conv(filters, kernel, padding="same", name="p")(x)
    x = L.BatchNormalization(name="p_bn")(x)
    return L.ReLU()(x) if relu else x


def cbr(x, filters, kernel=3, conv=L.Conv2D, **kw):
    x = conv(filters, kernel, **kw)(x)
    return L.ReLU()(L.BatchNormalization()(x))


def head(x, classes=3):
    if len(x.shape) == 4:
        x = L.GlobalAveragePooling2D()(L.Conv2D(5, 3, padding="same")(x))
    elif len(x.shape) == 3:
        x = L.GlobalAveragePooling1D()(L.Conv1D(5, 3, padding="same")(x))
    return L.Dense(classes)(x)


def img(h=10, w=10, c=3):
    return keras.Input((h, w, c))


# --- followed exactly: the producer shrinks ----------------------------------------
def pad_zero_valid():
    x = img()
    y = ops.pad(producer(x), [[0, 0], [1, 1], [1, 1], [0, 0]])
    return keras.Model(x, head(cbr(y, 6, padding="valid")))


def pad_uneven_constant():
    x = img()
    y = ops.pad(producer(x), [[0, 0], [1, 2], [0, 1], [0, 0]], constant_values=0.5)
    return keras.Model(x, head(cbr(y, 6, padding="valid")))


def pad_reflect():
    x = img()
    y = ops.pad(producer(x), [[0, 0], [1, 1], [2, 2], [0, 0]], mode="reflect")
    return keras.Model(x, head(cbr(y, 6, padding="valid")))


def pad_symmetric_1d():
    x = keras.Input((12, 3))
    y = ops.pad(producer(x, conv=L.Conv1D), [[0, 0], [2, 1], [0, 0]], mode="symmetric")
    return keras.Model(x, head(cbr(y, 6, conv=L.Conv1D, padding="valid")))


def concatenate_channels():
    x = img()
    a = producer(x)
    b = cbr(a, 4, padding="same")
    return keras.Model(x, head(cbr(ops.concatenate([a, b], axis=-1), 6, padding="same")))


def concatenate_space():
    # over rows: channel k of both inputs is one channel (like Concatenate(axis=1))
    x = img()
    a = producer(x)
    y = ops.concatenate([a, a * 2.0], axis=1)
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling2D()(y)))


def reshape_rows():
    x = img(6, 6)
    y = ops.reshape(producer(x), (-1, 36, 8))
    return keras.Model(x, head(cbr(y, 6, conv=L.Conv1D, padding="valid")))


def reshape_flatten():
    x = img(6, 6)
    y = ops.reshape(producer(x), (-1, 6 * 6 * 8))
    return keras.Model(x, L.Dense(3)(y))


def reshape_pairs():
    x = img(6, 6)
    y = ops.reshape(producer(x), (-1, 6, 3, 16))  # pairs of positions: 16 = 2 x 8 channels
    return keras.Model(x, head(cbr(y, 6, padding="same")))


def transpose_space():
    x = img(6, 7)
    y = ops.transpose(producer(x), (0, 2, 1, 3))
    return keras.Model(x, head(cbr(y, 6, padding="same")))


def mean_squeeze_excite():
    x = img(8, 8)
    a = producer(x)
    s = ops.mean(a, axis=(1, 2), keepdims=True)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = ops.sigmoid(L.Conv2D(8, 1)(s))
    return keras.Model(x, head(cbr(ops.multiply(a, s), 6, padding="same")))


def mean_pooled_dense():
    x = img(8, 8)
    y = ops.mean(producer(x), axis=(-3, -2))
    return keras.Model(x, L.Dense(3)(y))


def max_min_pooled():
    x = img(8, 8)
    a = producer(x)
    y = ops.add(ops.max(a, axis=(1, 2)), ops.min(a, axis=[1, 2]))
    return keras.Model(x, L.Dense(3)(y))


def clip_maximum_minimum():
    x = img(8, 8)
    y = producer(x, relu=False)
    y = ops.minimum(ops.maximum(ops.clip(y, 0.0, 6.0), 0.5), 5.0)
    return keras.Model(x, head(cbr(y, 6, padding="same")))


def expand_squeeze_1d():
    x = keras.Input((12, 3))
    y = ops.expand_dims(producer(x, conv=L.Conv1D), 1)
    y = ops.squeeze(cbr(y, 6, (1, 3), padding="same"), 1)
    return keras.Model(x, head(y))


def squeeze_without_axis():
    # after pruning, squeeze(x) must not squeeze a channel axis that became 1 wide
    x = keras.Input((12, 3))
    y = ops.expand_dims(producer(x, filters=4, conv=L.Conv1D), 1)
    y = ops.squeeze(L.MaxPooling2D((1, 2))(y))
    return keras.Model(x, head(y))


def sum_pooled_dense():
    x = img(8, 8)
    return keras.Model(x, L.Dense(3)(ops.sum(producer(x), axis=(1, 2))))  # c·H·W: computed


def cast_round_trip():
    x = img()
    return keras.Model(x, head(ops.cast(ops.cast(producer(x), "float16"), "float32")))


FOLLOWED = [sum_pooled_dense, cast_round_trip, pad_zero_valid, pad_uneven_constant, pad_reflect,
            pad_symmetric_1d, concatenate_channels, concatenate_space, reshape_rows, reshape_flatten,
            reshape_pairs, transpose_space, mean_squeeze_excite, mean_pooled_dense,
            max_min_pooled, clip_maximum_minimum, expand_squeeze_1d, squeeze_without_axis]


# --- arguments that would make the rule wrong: pinned, still exact --------------------
def pad_channels():
    x = img()
    y = ops.pad(producer(x), [[0, 0], [1, 1], [1, 1], [0, 2]])
    return keras.Model(x, head(cbr(y, 6, padding="valid")))


def pad_batch():
    x = img()
    return keras.Model(x, head(ops.pad(producer(x), [[1, 0], [0, 0], [0, 0], [0, 0]])))


def mean_channels():
    x = img(8, 8)
    return keras.Model(x, head(ops.mean(producer(x), axis=-1, keepdims=True)))


def mean_everything():
    x = img(8, 8)
    y = ops.mean(producer(x))
    return keras.Model(x, L.Dense(3)(ops.reshape(y, (1, 1))))


def clip_per_channel():
    x = img(8, 8)
    hi = np.linspace(1.0, 6.0, 8).astype("float32")
    y = ops.clip(producer(x, relu=False), np.zeros(8, "float32"), hi)
    return keras.Model(x, head(y))


def transpose_channels_first():
    x = img(8, 8, 3)
    return keras.Model(x, head(ops.transpose(producer(x), (0, 3, 1, 2))))


def reshape_splits_channels():
    x = img(8, 8)
    return keras.Model(x, head(ops.reshape(producer(x), (-1, 8, 16, 4))))


def reshape_merges_batch():
    x = keras.Input((None, None, 3))
    y = ops.reshape(producer(x), (-1, 8))  # batch and space flattened together
    return keras.Model(x, L.Dense(3)(y))


def expand_last_axis():
    x = img(8, 8)
    y = ops.expand_dims(producer(x), -1)
    y = L.Conv3D(4, 3, padding="same")(y)
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling3D()(y)))


def stack_branches():  # an op without a rule: kept whole
    x = img(8, 8)
    h = producer(x)
    return keras.Model(x, head(ops.mean(ops.stack([h, 2.0 * h], axis=0), axis=0)))


def einsum_channel_weights():
    x = img(8, 8)
    w = np.linspace(-1.0, 1.0, 8 * 4).reshape(8, 4).astype("float32")
    return keras.Model(x, head(ops.einsum("bhwc,cd->bhwd", producer(x), w)))


def matmul_channel_weights():
    x = img(8, 8)
    w = np.linspace(-1.0, 1.0, 8 * 4).reshape(8, 4).astype("float32")
    return keras.Model(x, head(ops.matmul(producer(x), w)))


PINNED = [stack_branches, einsum_channel_weights, matmul_channel_weights, pad_channels, pad_batch, mean_channels, mean_everything, clip_per_channel,
          transpose_channels_first, reshape_splits_channels, reshape_merges_batch,
          expand_last_axis]


def prepared(builder):
    model = builder()
    randomize_batchnorms(model, seed=7)
    bn = model.get_layer("p_bn")
    gamma = np.asarray(bn.gamma).copy()
    beta = np.asarray(bn.beta).copy()
    zeroed = [i for i in ZEROED if i < len(gamma)]
    gamma[zeroed] = 0.0
    beta[zeroed] = np.linspace(0.4, 1.3, len(zeroed))
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    return model


def p_width(pruned):
    return pruned.get_layer("p").filters


@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
@pytest.mark.parametrize("builder", FOLLOWED, ids=lambda b: b.__name__)
def test_op_is_followed_exactly(builder, fold):
    model = prepared(builder)
    kwargs = {} if fold is None else {"fold": fold}
    pruned = prune_model(model, **kwargs)
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    if fold == "exact":
        assert p_width(pruned) < model.get_layer("p").filters


@pytest.mark.parametrize("builder", PINNED, ids=lambda b: b.__name__)
def test_op_with_unfollowable_arguments_pins_its_channels(builder):
    model = prepared(builder)
    graph = channel_graph(model)
    op_calls = [c for c in graph.layer_graph.calls if not isinstance(c.layer, L.Layer)]
    p_groups = graph.layer_channels("p_bn")
    assert graph.pinned[p_groups].all(), [graph.pin_reasons.get(int(g)) for g in p_groups]
    assert op_calls
    pruned = prune_model(model, fold="exact")
    assert p_width(pruned) == 8
    assert_same_function(model, pruned, random_inputs(model, batch=3))


def test_each_op_is_a_kind_decision():
    expected = {
        pad_zero_valid: ("Pad", "spatial"), pad_reflect: ("Pad", "spatial"),
        pad_channels: ("Pad", "opaque"), pad_batch: ("Pad", "opaque"),
        concatenate_channels: ("Concatenate", "concat"),
        concatenate_space: ("Concatenate", "concat_space"), reshape_rows: ("Reshape", "reshape"),
        transpose_space: ("Transpose", "reshape"), mean_pooled_dense: ("Mean", "spatial"),
        mean_channels: ("Mean", "opaque"), mean_everything: ("Mean", "opaque"),
        max_min_pooled: ("Max", "spatial"), clip_maximum_minimum: ("Clip", "pointwise"),
        clip_per_channel: ("Clip", "opaque"), expand_squeeze_1d: ("ExpandDims", "reshape"),
        sum_pooled_dense: ("Sum", "spatial"), cast_round_trip: ("Cast", "pointwise"),
        stack_branches: ("Stack", "opaque"), einsum_channel_weights: ("Einsum", "opaque"),
    }
    for builder, (op, kind) in expected.items():
        graph = channel_graph(builder())
        kinds = {type(c.layer).__name__: graph.kinds[c].name for c in graph.layer_graph.calls
                 if not isinstance(c.layer, L.Layer)}
        assert kinds[op] == kind, (builder.__name__, kinds)


def test_concatenate_over_the_batch_axis_is_opaque():
    x = img()
    a = producer(x)
    y = ops.concatenate([a, a], axis=0)
    model = keras.Model(x, head(y))
    graph = channel_graph(model)
    assert [graph.kinds[c].name for c in graph.layer_graph.calls if c.name.startswith("concat")] == [
        "opaque"]


def test_squeeze_without_axis_keeps_a_single_remaining_channel():
    model = squeeze_without_axis()
    randomize_batchnorms(model, seed=3)
    bn = model.get_layer("p_bn")
    bn.gamma.assign([0.0, 1.5, 0.0, 0.0])
    bn.beta.assign([0.3, 0.1, 0.8, 1.1])
    pruned = prune_model(model, fold="exact")
    assert p_width(pruned) == 1
    assert_same_function(model, pruned)


def resnet_v2_block():
    """A pre-activation bottleneck with stride 2 as in ResNetV2: keras.ops.pad, then a
    'valid' 3x3 conv; 1x1 strided shortcut; residual keras.ops.add."""
    x = img(16, 16)
    h = L.Conv2D(12, 3, padding="same", name="stem")(x)
    pre = L.ReLU()(L.BatchNormalization(name="preact_bn")(h))
    shortcut = L.Conv2D(16, 1, strides=2, name="shortcut")(pre)
    r = L.Conv2D(8, 1, use_bias=False, name="p")(pre)
    r = L.ReLU()(L.BatchNormalization(name="p_bn")(r))
    r = ops.pad(r, ((0, 0), (1, 1), (1, 1), (0, 0)))
    r = L.Conv2D(8, 3, strides=2, padding="valid", use_bias=False, name="c2")(r)
    r = L.ReLU()(L.BatchNormalization(name="c2_bn")(r))
    r = L.Conv2D(16, 1, name="c3")(r)
    y = ops.add(shortcut, r)
    y = L.ReLU()(L.BatchNormalization(name="post_bn")(y))
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling2D()(y)))


@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
def test_resnet_v2_block_with_ops_pad(fold):
    model = prepared(resnet_v2_block)
    kwargs = {} if fold is None else {"fold": fold}
    pruned, report = prune_model(model, return_report=True, **kwargs)
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    assert report.max_rel_deviation <= 1e-5
    if fold == "exact":
        assert report.widths["p"][1] < 8
        assert report.widths["c2"][1] < 8  # its own random zeros


def test_pruned_ops_model_saves_loads_and_exports(tmp_path):
    from tf_gamma_prune import builtin_op_names, to_tflite

    model = prepared(resnet_v2_block)
    pruned = prune_model(model, fold="exact")
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    x = random_inputs(model, batch=3)
    assert_same_function(model, loaded, x)
    if keras.backend.backend() == "tensorflow":
        ops_used = builtin_op_names(to_tflite(pruned))
        assert "PAD" in ops_used


@pytest.mark.parametrize("builder", [reshape_rows, squeeze_without_axis, reshape_pairs],
                         ids=lambda b: b.__name__)
def test_rebuilt_op_nodes_save_and_load(builder, tmp_path):
    model = prepared(builder)
    pruned = prune_model(model, fold="exact")
    assert p_width(pruned) < model.get_layer("p").filters
    path = tmp_path / "m.keras"
    pruned.save(path)
    assert_same_function(model, keras.models.load_model(path))
