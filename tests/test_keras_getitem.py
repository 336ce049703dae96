"""``x[key]`` slicing of functional KerasTensors (``GetItem`` nodes): channel splits,
spatial crops, and keys that are kept whole.

The models and their γ come from :mod:`channel_op_helpers`; each pruned model is
compared with the original on random inputs (≤ 1e-5 relative), and the expected widths
are counted from the γ array, not written down.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops
from channel_op_helpers import assert_kept_whole, head, kept, prepared, producer, reloaded
from test_surgery_helpers import assert_same_function, random_inputs

from tf_gamma_prune import channel_graph, prune_model

L = keras.layers


def split_model():
    """A GhostNet / CSP split: two halves, a 1x1 conv each, concatenated."""
    x = keras.Input((8, 8, 3))
    h = producer(x)
    a, b = h[..., :4], h[..., 4:]
    h = L.Concatenate()([L.Conv2D(4, 1, name="ca")(a), L.Conv2D(4, 1, name="cb")(b)])
    return keras.Model(x, head(L.BatchNormalization(name="bn2")(h)))


def getitem_calls(graph):
    return [c for c in graph.layer_graph.calls if type(c.layer).__name__ == "GetItem"]


def getitem_widths(model):
    """Output widths of the GetItem nodes of a (pruned) model, in creation order."""
    nodes = [n for op in model._operations if type(op).__name__ == "GetItem"
             for n in op._inbound_nodes]
    return sorted(int(n.outputs[0].shape[-1]) for n in nodes)


# --- (a) the channel split ------------------------------------------------------------
@pytest.mark.parametrize("fold", [None, "exact"])
def test_channel_split_prunes_both_halves(fold):
    model = prepared(split_model, [1, 5])
    graph = channel_graph(model)
    first, second = getitem_calls(graph)
    groups = graph.layer_channels("p_bn")
    assert {graph.kinds[c].name for c in (first, second)} == {"getitem"}
    assert sorted([graph.channels[first.outputs[0]].tolist(),
                   graph.channels[second.outputs[0]].tolist()]) == sorted(
        [groups[:4].tolist(), groups[4:].tolist()])
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    if fold == "exact":
        assert pruned.get_layer("p").filters == kept(model, slice(None)) == 6
        assert getitem_widths(pruned) == sorted([kept(model, slice(None, 4)),
                                                 kept(model, slice(4, None))]) == [3, 3]
        assert pruned.get_layer("ca").kernel.shape[2] == 3
        assert pruned.get_layer("cb").kernel.shape[2] == 3


# --- (b) negative and open bounds -------------------------------------------------------
def bounds_model():
    x = keras.Input((8, 8, 3))
    h = producer(x)
    a = L.Conv2D(4, 1, name="ca")(h[..., -3:])
    b = L.Conv2D(4, 1, name="cb")(h[..., :5])
    c = L.Conv2D(4, 1, name="cc")(h[:, :, :, 2:-2])
    return keras.Model(x, head(L.Concatenate()([a, b, c])))


def test_negative_and_open_bounds():
    zeroed = [0, 3, 6]
    model = prepared(bounds_model, zeroed)
    pruned = prune_model(model, fold="exact")
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    assert pruned.get_layer("p").filters == 8 - len(zeroed)
    for name, key in (("ca", slice(-3, None)), ("cb", slice(None, 5)), ("cc", slice(2, -2))):
        assert pruned.get_layer(name).kernel.shape[2] == kept(model, key), name


# --- (c) spatial slices --------------------------------------------------------------------
def crop():
    x = keras.Input((10, 10, 3))
    h = producer(x)[:, 1:-1, 1:-1, :]
    return keras.Model(x, head(L.Conv2D(5, 3, name="c2")(h)))


def crop_of_a_padded_map():
    # zero padding turns the constants into maps; the uneven crop keeps part of the border
    x = keras.Input((10, 10, 3))
    h = L.ZeroPadding2D(2)(producer(x))[:, 1:, 3:-1]
    return keras.Model(x, head(L.Conv2D(5, 3, name="c2")(h)))


def strided_rows():
    x = keras.Input((10, 10, 3))
    h = producer(x)[:, ::2]
    return keras.Model(x, head(L.Conv2D(5, 3, padding="same", name="c2")(h)))


def one_row():
    x = keras.Input((10, 10, 3))
    h = producer(x)[:, 2]  # (batch, 10, 8): a 1-D feature map
    h = L.Conv1D(5, 3, padding="same", name="c2")(h)
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling1D()(h)))


def crop_and_channel_slice():
    x = keras.Input((10, 10, 3))
    h = producer(x)[:, 1:, :-2, 2:7]
    return keras.Model(x, head(L.Conv2D(5, 3, padding="same", name="c2")(h)))


@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
@pytest.mark.parametrize("builder", [crop, crop_of_a_padded_map, strided_rows, one_row,
                                     crop_and_channel_slice], ids=lambda b: b.__name__)
def test_spatial_slices_are_followed(builder, fold):
    zeroed = [1, 2, 6]
    model = prepared(builder, zeroed)
    graph = channel_graph(model)
    (call,) = getitem_calls(graph)
    assert graph.kinds[call].name == "getitem"
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    if fold == "exact":
        channels = slice(2, 7) if builder is crop_and_channel_slice else slice(None)
        assert pruned.get_layer("p").filters == kept(model, channels)  # others unread: dead
        assert pruned.get_layer("c2").kernel.shape[-2] == kept(model, channels)


# --- (d) keys that are kept whole -----------------------------------------------------------
def integer_channel():
    x = keras.Input((8, 8, 3))
    h = producer(x)[..., 0]  # (batch, 8, 8): the last axis is now a spatial one
    return keras.Model(x, L.Dense(3)(L.Flatten()(h)))


def strided_channels():
    x = keras.Input((8, 8, 3))
    h = producer(x)[..., ::2]
    h = L.ReLU()(L.BatchNormalization(name="q_bn")(L.Conv2D(6, 1, name="q")(h)))
    return keras.Model(x, head(h))


def new_axis():
    x = keras.Input((8, 8, 3))
    h = producer(x)[:, :, :, None, :]
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling3D()(h)))


def batch_sliced():
    x = keras.Input((8, 8, 3))
    h = producer(x)[1:, :, :, :4]
    return keras.Model(x, head(h))


def test_each_key_is_a_kind_decision():
    def kind(key):
        x = keras.Input((6, 6, 8))
        y = x[key]
        graph = channel_graph(keras.Model(x, y))
        return graph.kinds[getitem_calls(graph)[0]].name

    followed = [np.s_[..., :4], np.s_[..., 4:], np.s_[:, :, :, -3:], np.s_[:, 1:-1, 1:-1, :],
                np.s_[:, ::2], np.s_[:, 2], np.s_[:, 1:, :, 2:6], np.s_[0:, ..., 1:3],
                np.s_[:, ::-1]]
    opaque = [np.s_[..., 0], np.s_[..., ::2], np.s_[..., ::-1], np.s_[..., None],
              np.s_[1:, :], np.s_[0], np.s_[:, None], np.s_[:, 0, 0, 0], np.s_[..., 2:2]]
    assert [kind(k) for k in followed] == ["getitem"] * len(followed)
    assert [kind(k) for k in opaque] == ["opaque"] * len(opaque)


@pytest.mark.parametrize("builder", [integer_channel, strided_channels, new_axis, batch_sliced],
                         ids=lambda b: b.__name__)
def test_unfollowable_keys_pin_their_channels(builder):
    assert_kept_whole(builder, "GetItem")


def test_the_rest_of_the_model_still_prunes_behind_an_opaque_slice():
    model = prepared(strided_channels, [1, 4, 6])
    q_bn = model.get_layer("q_bn")
    gamma = np.asarray(q_bn.gamma).copy()
    gamma[[0, 3]] = 0.0
    q_bn.gamma.assign(gamma)
    pruned = prune_model(model, fold="exact")
    assert pruned.get_layer("p").filters == 8
    assert pruned.get_layer("q").filters == 6 - 2
    assert_same_function(model, pruned, random_inputs(model, batch=3))


# --- (f) a slice whose every channel is removed -------------------------------------------------
def split_concatenated():
    """Both halves go straight into a concatenation (no conv of their own)."""
    x = keras.Input((8, 8, 3))
    h = producer(x)
    a, b = h[..., :4], h[..., 4:]
    h = L.Concatenate()([ops.multiply(a, 2.0), L.ReLU(max_value=0.9)(b)])
    return keras.Model(x, head(L.Conv2D(5, 3, padding="same", name="c2")(h)))


@pytest.mark.parametrize("builder", [split_model, split_concatenated], ids=lambda b: b.__name__)
@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
def test_slice_with_every_channel_removed(builder, fold):
    model = prepared(builder, [4, 5, 6, 7])
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    if fold == "exact":
        assert pruned.get_layer("p").filters == 4
        assert getitem_widths(pruned) == [kept(model, slice(None, 4))]


# --- (e) save and load ----------------------------------------------------------------------------
@pytest.mark.parametrize("builder, zeroed", [
    (split_model, [1, 5]), (split_model, [4, 5, 6, 7]), (split_concatenated, [4, 5, 6, 7]),
    (crop_and_channel_slice, [1, 2, 6])],
    ids=["split", "split_half_removed", "concatenated_half_removed", "crop_and_channel_slice"])
def test_pruned_slices_save_and_load(builder, zeroed, tmp_path):
    model = prepared(builder, zeroed)
    pruned = prune_model(model, fold="exact")
    assert pruned.get_layer("p").filters < 8
    loaded = reloaded(model, pruned, tmp_path / "sliced.keras")
    assert getitem_widths(loaded) == getitem_widths(pruned)
