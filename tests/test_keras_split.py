"""``keras.ops.split`` nodes (``Split``, several outputs): CSP / YOLO channel splits,
spatial splits, and splits that are kept whole.

Checked as in test_keras_getitem.py: against the original model's outputs, with widths
counted from the γ array and the split points.
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


def halves():
    """The CSP split: two halves, a 1x1 conv each, concatenated."""
    x = keras.Input((8, 8, 3))
    a, b = ops.split(producer(x), 2, axis=-1)
    h = L.Concatenate()([L.Conv2D(4, 1, name="c0")(a), L.Conv2D(4, 1, name="c1")(b)])
    return keras.Model(x, head(L.BatchNormalization(name="bn2")(h)))


def three_parts():
    """Split points [2, 5]: parts of 2, 3 and 3 channels, a conv each."""
    x = keras.Input((8, 8, 3))
    parts = ops.split(producer(x), [2, 5], axis=-1)
    convs = [L.Conv2D(4, 1, name=f"c{i}")(p) for i, p in enumerate(parts)]
    return keras.Model(x, head(L.Concatenate()(convs)))


def halves_concatenated():
    """Both halves go straight into a concatenation (no conv of their own)."""
    x = keras.Input((8, 8, 3))
    a, b = ops.split(producer(x), 2, axis=3)
    h = L.Concatenate()([ops.multiply(a, 2.0), L.ReLU(max_value=0.9)(b)])
    return keras.Model(x, head(L.Conv2D(5, 3, padding="same", name="c2")(h)))


POINTS = {halves: [0, 4, 8], three_parts: [0, 2, 5, 8], halves_concatenated: [0, 4, 8]}


def kept_parts(model, points):
    """Kept channels of each part ``[points[i], points[i+1])``."""
    return [kept(model, slice(a, b)) for a, b in zip(points, points[1:])]


def split_calls(graph):
    return [c for c in graph.layer_graph.calls if type(c.layer).__name__ == "Split"]


def split_widths(model):
    """Output widths of each Split node of a (pruned) model, in creation order."""
    return [[int(t.shape[-1]) for t in n.outputs] for op in model._operations
            if type(op).__name__ == "Split" for n in op._inbound_nodes]


def conv_inputs(model, names):
    return [model.get_layer(n).kernel.shape[2] for n in names]


# --- (a, f) two equal halves; the three folds ---------------------------------------------
@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
def test_halves_prune_both_halves(fold):
    model = prepared(halves, [1, 5])
    graph = channel_graph(model)
    (call,) = split_calls(graph)
    groups = graph.layer_channels("p_bn")
    assert graph.kinds[call].name == "split"
    assert [graph.channels[t].tolist() for t in call.outputs] == [groups[:4].tolist(),
                                                                   groups[4:].tolist()]
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    widths = kept_parts(model, POINTS[halves])
    assert split_widths(pruned) == [widths] == [[3, 3]]
    assert pruned.get_layer("p").filters == sum(widths)
    assert conv_inputs(pruned, ["c0", "c1"]) == widths


# --- (b) split points: three parts ------------------------------------------------------------
@pytest.mark.parametrize("fold", [None, "exact"])
def test_split_points_three_parts(fold):
    model = prepared(three_parts, [0, 3, 6])
    graph = channel_graph(model)
    (call,) = split_calls(graph)
    groups = graph.layer_channels("p_bn")
    assert [graph.channels[t].tolist() for t in call.outputs] == [
        groups[a:b].tolist() for a, b in zip([0, 2, 5], [2, 5, 8])]
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    widths = kept_parts(model, POINTS[three_parts])
    assert split_widths(pruned) == [widths]
    assert conv_inputs(pruned, ["c0", "c1", "c2"]) == widths


def test_unchanged_split_is_rebuilt_unchanged():
    model = prepared(three_parts, [])
    pruned = prune_model(model, fold="exact")
    assert split_widths(pruned) == [[2, 3, 3]]
    assert_same_function(model, pruned, random_inputs(model, batch=3))


# --- (c) a part whose every channel is removed ------------------------------------------------
@pytest.mark.parametrize("builder, zeroed", [
    (halves, [4, 5, 6, 7]), (halves, [0, 1, 2, 3, 6]), (halves_concatenated, [4, 5, 6, 7]),
    (halves_concatenated, [0, 1, 2, 3]), (three_parts, [2, 3, 4]), (three_parts, [0, 1, 6]),
    (three_parts, [0, 1, 5, 6, 7])],
    ids=["halves_second", "halves_first", "concatenated_second", "concatenated_first",
         "three_middle", "three_first", "three_first_and_last"])
@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
def test_part_with_every_channel_removed(builder, zeroed, fold):
    model = prepared(builder, zeroed)
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    if fold == "exact":
        widths = kept_parts(model, POINTS[builder])
        live = [w for w in widths if w > 0]
        assert pruned.get_layer("p").filters == sum(widths)
        # no empty part is built: a split of the live parts, or none when one is left
        assert split_widths(pruned) == ([live] if len(live) > 1 else [])


# --- (d) spatial splits ------------------------------------------------------------------------
def rows():
    x = keras.Input((8, 8, 3))
    a, b = ops.split(producer(x), 2, axis=1)
    h = ops.concatenate([L.Conv2D(5, 3, padding="same", name="c0")(a),
                         L.Conv2D(5, 3, padding="same", name="c1")(b)], axis=1)
    return keras.Model(x, head(h))


def columns_of_a_padded_map():
    # zero padding turns the constants into maps; the uneven split cuts the border apart
    x = keras.Input((8, 8, 3))
    h = L.ZeroPadding2D(1)(producer(x))
    a, b, c = ops.split(h, [3, 4], axis=-2)
    convs = [L.Conv2D(5, 3, padding="same", name=f"c{i}")(p) for i, p in enumerate((a, b, c))]
    return keras.Model(x, head(ops.concatenate(convs, axis=2)))


@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
@pytest.mark.parametrize("builder", [rows, columns_of_a_padded_map], ids=lambda b: b.__name__)
def test_spatial_split_is_channelwise(builder, fold):
    zeroed = [1, 2, 6]
    model = prepared(builder, zeroed)
    graph = channel_graph(model)
    (call,) = split_calls(graph)
    assert graph.kinds[call].name == "split"
    groups = graph.layer_channels("p_bn")
    assert all((graph.channels[t] == groups).all() for t in call.outputs)
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    if fold == "exact":
        assert pruned.get_layer("p").filters == kept(model, slice(None))
        assert set(conv_inputs(pruned, ["c0", "c1"])) == {kept(model, slice(None))}


# --- (g) splits that are kept whole ------------------------------------------------------------
def test_each_split_is_a_kind_decision():
    def kind(sections, axis):
        x = keras.Input((6, 6, 8))
        graph = channel_graph(keras.Model(x, ops.split(x, sections, axis=axis)))
        return graph.kinds[split_calls(graph)[0]].name

    followed = [(2, -1), (4, 3), ([2, 5], -1), ((3,), -1), ([np.int64(1), 7], -1), (2, 1),
                (3, -2), ([1, 4], 2), ([0, 6], 1)]
    opaque = [(2, 0), ([0, 4], -1), ([3, 3], -1), ([2, 8], -1), (2, -4)]
    assert [kind(*a) for a in followed] == ["split"] * len(followed)
    assert [kind(*a) for a in opaque] == ["opaque"] * len(opaque)


def batch_split():
    x = keras.Input((8, 8, 3))
    a, b = ops.split(producer(x), 2, axis=0)
    return keras.Model(x, head(L.Concatenate()([a, b])))


def empty_part():
    x = keras.Input((8, 8, 3))
    _, b = ops.split(producer(x), [0], axis=-1)
    return keras.Model(x, head(L.Conv2D(4, 1, name="c0")(b)))


@pytest.mark.parametrize("builder", [batch_split, empty_part], ids=lambda b: b.__name__)
def test_unfollowable_splits_pin_their_channels(builder):
    assert_kept_whole(builder, "Split")


# --- (e) save and load -------------------------------------------------------------------------
@pytest.mark.parametrize("builder, zeroed", [
    (halves, [1, 5]), (halves, [4, 5, 6, 7]), (three_parts, [2, 3, 4]),
    (halves_concatenated, [0, 1, 2, 3]), (columns_of_a_padded_map, [1, 2, 6])],
    ids=["halves", "halves_second_removed", "three_middle_removed",
         "concatenated_first_removed", "padded_columns"])
def test_pruned_splits_save_and_load(builder, zeroed, tmp_path):
    model = prepared(builder, zeroed)
    pruned = prune_model(model, fold="exact")
    assert pruned.get_layer("p").filters < 8
    loaded = reloaded(model, pruned, tmp_path / "split.keras")
    assert split_widths(loaded) == split_widths(pruned)
