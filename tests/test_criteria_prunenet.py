"""PruneNet's global importance (Khetan & Karnin 2020) against independent computations."""

import keras
import numpy as np
import pytest

from tf_gamma_prune import (
    CriterionError,
    InputDataError,
    channel_mac_costs,
    count_macs,
    global_importance_scores,
    global_importance_selection,
    prune_model,
    selection_for_macs,
)
from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.prune import criteria_prunenet
from tf_gamma_prune.reference_models import fashion_vgg

L = keras.layers
to_numpy = keras.ops.convert_to_numpy
STDS = np.array([1.0, 3.0, 2.0, 0.5, 1.5])


def planted_model(reader_kernel=3, strides=1):
    """conv 'a' copies its 5 input channels (identity 1×1); 'b' reads them with equal weights."""
    x = keras.Input((7, 7, 5))
    a = L.Conv2D(5, 1, use_bias=False, name="a")(x)
    b = L.Conv2D(4, reader_kernel, strides=strides, padding="same", name="b")(a)
    model = keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(b)))
    model.get_layer("a").kernel.assign(np.eye(5).reshape(1, 1, 5, 5))
    rng = np.random.default_rng(0)
    w = rng.choice([-1.0, 1.0], size=(reader_kernel, reader_kernel, 5, 4))
    model.get_layer("b").kernel.assign(w)  # every input channel: the same weight norm
    return model


def planted_data(n=96, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 7, 7, 5)) * STDS).astype("float32")


def reference_variance(model, x, reader="b"):
    """Σ_o Var(z_{c,o}) with z_c the reader's conv of channel c alone (masking the
    other channels; a different computation path from the library's depthwise one)."""
    a = to_numpy(keras.Model(model.input, model.get_layer("a").output)(x))
    layer = model.get_layer(reader)
    out = []
    for c in range(a.shape[-1]):
        masked = np.zeros_like(a)
        masked[..., c] = a[..., c]
        z = keras.ops.conv(masked, layer.kernel, strides=layer.strides, padding=layer.padding)
        out.append(to_numpy(z).astype(np.float64).reshape(-1, z.shape[-1]).var(axis=0).sum())
    return np.array(out)


# ------------------------------------------------------------------ the score
@pytest.mark.parametrize("kernel, strides", [(1, 1), (3, 1), (3, 2)])
def test_planted_variances_are_ranked_in_order(kernel, strides):
    model = planted_model(kernel, strides)
    x = planted_data()
    reference = reference_variance(model, x)
    for normalization, expected in (("layer_mean", reference / reference.mean()),
                                    ("share", reference / reference.sum())):
        scores = global_importance_scores(model, x, max_examples=96,
                                          normalization=normalization)["a"]
        assert np.argsort(scores).tolist() == np.argsort(STDS).tolist()
        np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_dense_reader_after_flatten_sums_positions():
    x = keras.Input((3, 3, 4))
    h = L.Conv2D(4, 1, use_bias=False, name="a")(x)
    model = keras.Model(x, L.Dense(3, use_bias=False, name="head")(L.Flatten()(h)))
    rng = np.random.default_rng(2)
    model.get_layer("head").kernel.assign(rng.normal(size=(36, 3)))
    data = rng.normal(size=(50, 3, 3, 4)).astype("float32") * [0.2, 1.0, 3.0, 0.7]
    act = to_numpy(keras.Model(model.input, model.get_layer("a").output)(data)).reshape(50, -1)
    v = act.var(axis=0) * (model.get_layer("head").kernel.numpy() ** 2).sum(axis=1)
    channel = np.arange(36) % 4  # Flatten of (3, 3, 4): channel is the fastest axis
    share = np.bincount(channel, weights=v / v.sum())
    for normalization, expected in (("share", share), ("layer_mean", share * 4)):
        scores = global_importance_scores(model, data, batch_size=16,
                                          normalization=normalization)["a"]
        np.testing.assert_allclose(scores, expected, rtol=1e-6)


def two_widths_model():
    """conv 'narrow' (4 channels) and 'wide' (16) copy planted input channels, each
    read by its own Dense head. Within each layer the channels' std follow one pattern."""
    pattern = np.sqrt([1.0, 1.0, 1.5, 1.5])  # variances: half at 1, half at 1.5
    xa, xb = keras.Input((4, 4, 4)), keras.Input((4, 4, 16))
    narrow = L.Conv2D(4, 1, use_bias=False, name="narrow")(xa)
    wide = L.Conv2D(16, 1, use_bias=False, name="wide")(xb)
    heads = [L.Dense(3, name=f"head_{n}", kernel_initializer="ones")(L.Flatten()(t))
             for n, t in (("narrow", narrow), ("wide", wide))]
    model = keras.Model([xa, xb], L.Add()(heads))
    model.get_layer("narrow").kernel.assign(np.eye(4).reshape(1, 1, 4, 4))
    model.get_layer("wide").kernel.assign(np.eye(16).reshape(1, 1, 16, 16))
    stds = np.concatenate([pattern, np.repeat(pattern, 4)])
    data = (np.random.default_rng(7).normal(size=(256, 4, 4, 20)) * stds).astype("float32")
    return model, (data[..., :4], data[..., 4:])


def test_layer_mean_compares_layers_of_different_widths_fairly():
    model, data = two_widths_model()
    layers = ["narrow", "wide"]
    keep = global_importance_selection(model, 0.5, data=data, layers=layers)
    assert (len(keep["narrow"]), len(keep["wide"])) == (2, 8)   # each loses its weaker half
    share = global_importance_selection(model, 0.5, data=data, layers=layers,
                                        normalization="share")
    # "share": a wide channel scores 1/20 or 1.5/20, a narrow one 1/5 or 1.5/5: all ten from "wide"
    assert (len(share["narrow"]), len(share["wide"])) == (4, 6)
    with pytest.raises(CriterionError, match="normalization"):
        global_importance_scores(model, data, normalization="sum")


def test_one_global_threshold_over_layers_matches_numpy():
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    data = np.random.default_rng(3).random((24, 28, 28, 1), "float32")
    scores = global_importance_scores(model, data)
    pooled = np.concatenate(list(scores.values()))
    for fraction in (0.3, 0.6):
        k = int(np.floor(fraction * pooled.size + 1e-9))
        threshold = np.sort(pooled)[k]
        expected = {n: np.flatnonzero(s >= threshold).tolist() for n, s in scores.items()}
        selection = global_importance_selection(model, fraction, data=data)
        assert {n: v.tolist() for n, v in selection.items()} == expected


def test_cost_aware_divides_by_the_mac_cost_of_each_channel():
    x = keras.Input((8, 8, 3))
    h = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")(x)
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.SeparableConv2D(5, 3, padding="same", name="sep")(h)
    h = L.Conv2D(4, 3, strides=2, padding="same", name="c2")(h)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    graph = channel_graph(model)
    costs = channel_mac_costs(graph)
    full = planned_macs(graph, np.zeros(graph.num_groups, bool))
    for g in np.flatnonzero(~graph.pinned):  # independent: the MACs one removal saves
        removed = np.zeros(graph.num_groups, bool)
        removed[g] = True
        assert costs[g] == full - planned_macs(graph, removed)
    data = np.random.default_rng(4).random((16, 8, 8, 3), "float32")
    plain = global_importance_scores(model, data)
    aware = global_importance_scores(model, data, cost_aware=True)
    for name in plain:
        np.testing.assert_allclose(aware[name], plain[name] / costs[graph.layer_channels(name)])


# ------------------------------------------------------------------ budgets and surgery
@pytest.mark.parametrize("cost_aware", [False, True])
def test_meets_a_mac_budget_within_one_channel(cost_aware):
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    data = np.random.default_rng(5).random((16, 28, 28, 1), "float32")
    graph = channel_graph(model)
    one_channel = channel_mac_costs(graph)[~graph.pinned].max()
    full = count_macs(model)
    for share in (0.6, 0.35):
        target = int(share * full)
        selection, macs = selection_for_macs(model, global_importance_selection, target,
                                             tolerance=one_channel / target, data=data,
                                             cost_aware=cost_aware)
        assert abs(macs - target) <= one_channel
        small = prune_model(model, selection, probe=False)
        assert count_macs(small) == macs and small.count_params() < model.count_params()
        again = global_importance_selection(model, 0.5, data=data, cost_aware=cost_aware)
        criteria_prunenet._SCORES.clear()
        fresh = global_importance_selection(model, 0.5, data=data, cost_aware=cost_aware)
        assert {k: v.tolist() for k, v in again.items()} == {k: v.tolist() for k, v in fresh.items()}


def test_pruned_model_computes_the_kept_channels():
    model = planted_model(3)
    model.get_layer("b").bias.assign(np.zeros(4))
    x = planted_data(32)
    selection = global_importance_selection(model, 0.4, data=x, layers=["a"])
    assert selection["a"].tolist() == [1, 2, 4]  # the three largest variances
    small = prune_model(model, selection, probe=False)
    kernel = model.get_layer("a").kernel.numpy()
    kernel[..., [0, 3]] = 0.0
    model.get_layer("a").kernel.assign(kernel)
    np.testing.assert_allclose(to_numpy(small(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_a_one_shot_iterator_serves_every_call_of_selection_for_macs():
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    rng = np.random.default_rng(6)
    batches = iter([rng.random((8, 28, 28, 1), "float32") for _ in range(3)])
    target = count_macs(model) // 2
    selection, macs = selection_for_macs(model, global_importance_selection, target, data=batches)
    assert abs(macs - target) <= 0.05 * target


def test_tied_channels_share_one_score():
    x = keras.Input((6, 6, 3))
    s = L.Conv2D(6, 3, padding="same", name="stem")(x)
    r = L.Conv2D(6, 3, padding="same", activation="relu", name="inner")(s)
    r = L.Conv2D(6, 3, padding="same", name="last")(r)
    h = L.Conv2D(4, 3, name="head")(L.ReLU()(L.Add()([s, r])))
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    data = np.random.default_rng(7).random((16, 6, 6, 3), "float32")
    layers = ["stem", "inner", "last"]
    scores = global_importance_scores(model, data, layers=layers)
    np.testing.assert_array_equal(scores["stem"], scores["last"])
    selection = global_importance_selection(model, 0.5, data=data, layers=layers)
    assert selection["stem"].tolist() == selection["last"].tolist()
    assert len(selection["stem"]) + len(selection["inner"]) == 6  # 12 channels, a tied one once
    small = prune_model(model, selection, probe=False)
    assert small(data).shape == (16, 2)


# ------------------------------------------------------------------ options and errors
def test_min_channels_round_to_and_errors():
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    data = np.random.default_rng(8).random((8, 28, 28, 1), "float32")
    selection = global_importance_selection(model, 0.95, data=data, min_channels=2)
    assert min(len(v) for v in selection.values()) == 2
    selection = global_importance_selection(model, 0.5, data=data, round_to=4)
    assert all(len(v) % 4 == 0 for v in selection.values())
    with pytest.raises(InputDataError, match="needs data="):
        global_importance_selection(model, 0.5, data=None)
    with pytest.raises(InputDataError, match="at least 2"):
        global_importance_selection(model, 0.5, data=data[:1])
    with pytest.raises(InputDataError, match="expects"):
        global_importance_selection(model, 0.5, data=data[:, :27])
    with pytest.raises(CriterionError, match="max_examples"):
        global_importance_selection(model, 0.5, data=data, max_examples=0)
    with pytest.raises(CriterionError, match="prune_fraction"):
        global_importance_selection(model, -0.1, data=data)
    with pytest.raises(CriterionError, match="min_channels"):
        global_importance_selection(model, 0.5, data=data, min_channels=0)
