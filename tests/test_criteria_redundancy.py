"""Structural redundancy reduction (Wang et al. 2021) against independent NumPy computations."""

import keras
import numpy as np
import pytest

from tf_gamma_prune import (
    CriterionError,
    channel_mac_costs,
    count_macs,
    layer_redundancy,
    prune_model,
    redundancy_random_selection,
    selection_for_macs,
    structural_redundancy_selection,
)
from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.prune import criteria_redundancy
from tf_gamma_prune.prune.criteria_redundancy import redundancy
from tf_gamma_prune.reference_models import fashion_vgg

L = keras.layers
to_numpy = keras.ops.convert_to_numpy


def clustered_filters(rng, n, k, fan_in, noise=1e-3):
    """``n`` filters (columns) in ``k`` tight clusters around random directions, random scales."""
    centres = rng.normal(size=(k, fan_in))
    labels = np.arange(n) % k
    filters = centres[labels] + noise * rng.normal(size=(n, fan_in))
    return (filters * rng.uniform(0.5, 2.0, size=(n, 1))).T, labels


def two_branch_model(rng, width=16, clusters=2, in_ch=4):
    """A planted redundant conv and a diverse conv side by side, read by one conv."""
    x = keras.Input((8, 8, in_ch))
    a = L.Conv2D(width, 3, padding="same", activation="relu", name="redundant")(x)
    b = L.Conv2D(width, 3, padding="same", activation="relu", name="diverse")(x)
    h = L.Concatenate(name="cat")([a, b])
    h = L.Conv2D(4, 3, padding="same", name="head")(h)
    model = keras.Model(x, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)))
    kernel, _ = clustered_filters(rng, width, clusters, 9 * in_ch)
    model.get_layer("redundant").kernel.assign(kernel.reshape(3, 3, in_ch, width))
    model.get_layer("diverse").kernel.assign(rng.normal(size=(3, 3, in_ch, width)))
    return model


# ------------------------------------------------------------------ R itself
@pytest.mark.parametrize("n, k", [(12, 3), (16, 4), (12, 6), (10, 1)])
def test_k_tight_clusters_give_n_over_k(n, k):
    rng = np.random.default_rng(n + k)
    x = keras.Input((5, 5, 4))
    h = L.Conv2D(n, 3, name="conv")(x)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    kernel, _ = clustered_filters(rng, n, k, 36)
    model.get_layer("conv").kernel.assign(kernel.reshape(3, 3, 4, n))
    assert layer_redundancy(model)["conv"] == pytest.approx(n / k)


@pytest.mark.parametrize("in_ch", [1, 8, 128])
def test_random_filters_are_not_redundant_in_any_dimension(in_ch):
    """3x3 filters of 9, 72 and 1,152 numbers: the default ("auto") links no random pair."""
    rng = np.random.default_rng(in_ch)
    x = keras.Input((5, 5, in_ch))
    h = L.Conv2D(32, 3, name="conv")(x)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    model.get_layer("conv").kernel.assign(rng.normal(size=(3, 3, in_ch, 32)))
    # independent check: no two unit filters more alike than 4/sqrt(d) (at most 0.95) in cosine
    f = model.get_layer("conv").kernel.numpy().reshape(-1, 32).T
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    cosine = f @ f.T - 2 * np.eye(32)
    assert cosine.max() < min(4 / np.sqrt(9 * in_ch), 0.95)
    assert layer_redundancy(model)["conv"] == pytest.approx(1.0)


def test_auto_threshold_by_hand():
    for d in (9, 17, 18, 72, 1152):
        cosine = min(4 / np.sqrt(d), 0.95)
        assert criteria_redundancy.auto_threshold(d) == pytest.approx(np.sqrt(2 - 2 * cosine))
    with pytest.raises(CriterionError, match="dimension"):
        criteria_redundancy.auto_threshold(0)


def test_a_fixed_distance_misses_clusters_in_many_dimensions():
    """Clusters whose members share half their direction (cosine ≈ 0.5, chance ≈ ±0.03 in
    1,152 dimensions) are redundant for "auto"; the fixed 0.5 (cosine > 0.875) sees none."""
    rng = np.random.default_rng(7)
    x = keras.Input((5, 5, 128))
    h = L.Conv2D(24, 3, name="conv")(x)
    model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
    kernel, labels = clustered_filters(rng, 24, 4, 1152, noise=1.0)
    model.get_layer("conv").kernel.assign(kernel.reshape(3, 3, 128, 24))
    f = kernel.T / np.linalg.norm(kernel.T, axis=1, keepdims=True)
    cosine = f @ f.T
    same = labels[:, None] == labels[None]
    off = ~np.eye(24, dtype=bool)
    assert cosine[same & off].min() > 0.3 and np.abs(cosine[~same]).max() < 0.118
    assert layer_redundancy(model)["conv"] == pytest.approx(24 / 4)
    assert layer_redundancy(model, threshold=0.5)["conv"] == pytest.approx(1.0)
    with pytest.raises(CriterionError, match='"auto" or a number'):
        layer_redundancy(model, threshold="relative")


def test_redundancy_of_a_path_graph_by_hand():
    # 0-1-2-3-4 in a chain: one component; greedy 1-cover {1, 3} = 2; 2-cover {2} = 1
    d = np.full((5, 5), 1.9)
    for i in range(4):
        d[i, i + 1] = d[i + 1, i] = 0.1
    np.fill_diagonal(d, 0.0)
    assert redundancy(d, 0.5) == pytest.approx(5 / (0.35 * 1 + 0.65 * 1.5))
    # a star with centre 0 and an isolated vertex 5: 2 components, covers 2 and 2
    d = np.full((6, 6), 1.9)
    d[0, 1:5] = d[1:5, 0] = 0.2
    np.fill_diagonal(d, 0.0)
    assert redundancy(d, 0.5) == pytest.approx(6 / 2)


# ------------------------------------------------------------------ allocation
def test_removals_come_from_the_redundant_layer():
    model = two_branch_model(np.random.default_rng(1))
    redundancy_by_layer = layer_redundancy(model)
    assert redundancy_by_layer["redundant"] == pytest.approx(8.0)
    assert redundancy_by_layer["diverse"] == pytest.approx(1.0)
    assert layer_redundancy(model)["head"] == pytest.approx(1.0)  # pruned by default too
    layers = ["redundant", "diverse"]
    selection = structural_redundancy_selection(model, 0.25, layers=layers)  # 8 of 32 go
    assert len(selection["redundant"]) == 8 and len(selection["diverse"]) == 16
    # inside the layer: the largest-L1 filters stay (independent NumPy ranking)
    kernel = model.get_layer("redundant").kernel.numpy()
    l1 = np.abs(kernel).reshape(-1, 16).sum(axis=0)
    assert selection["redundant"].tolist() == sorted(np.argsort(l1)[8:].tolist())
    # larger fractions: still mostly from the redundant layer
    selection = structural_redundancy_selection(model, 0.5, layers=layers)
    removed = {k: 16 - len(v) for k, v in selection.items()}
    assert removed["redundant"] >= 14 and sum(removed.values()) == 16


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_variant_has_the_same_allocation_and_random_filters(seed):
    model = two_branch_model(np.random.default_rng(2))
    layers = ["redundant", "diverse"]
    srr = structural_redundancy_selection(model, 0.25, layers=layers)
    rand = redundancy_random_selection(model, 0.25, seed=seed, layers=layers)
    assert {k: len(v) for k, v in rand.items()} == {k: len(v) for k, v in srr.items()}
    assert len(rand["redundant"]) == 8 and len(rand["diverse"]) == 16
    again = redundancy_random_selection(model, 0.25, seed=seed, layers=layers)
    assert {k: v.tolist() for k, v in again.items()} == {k: v.tolist() for k, v in rand.items()}
    # the draw follows numpy's generator: the 8 lowest scores of the layer's groups go
    graph = channel_graph(model)
    scores = np.random.default_rng(seed).random(graph.num_groups)[graph.layer_channels("redundant")]
    assert rand["redundant"].tolist() == sorted(np.argsort(scores, kind="stable")[8:].tolist())


def test_seeds_differ_and_results_do_not_depend_on_the_cache():
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    a = redundancy_random_selection(model, 0.4, seed=0)
    b = redundancy_random_selection(model, 0.4, seed=1)
    assert any(a[k].tolist() != b[k].tolist() for k in a)
    first = structural_redundancy_selection(model, 0.4)
    criteria_redundancy._PROCESSES.clear()
    second = structural_redundancy_selection(model, 0.4)
    assert {k: v.tolist() for k, v in first.items()} == {k: v.tolist() for k, v in second.items()}
    # a larger fraction removes a superset
    more = structural_redundancy_selection(model, 0.6)
    assert all(set(more[k]) <= set(first[k]) for k in first)
    # weights changed: the cache must not serve the old order
    model.get_layer("conv6").kernel.assign(model.get_layer("conv6").kernel * 0.0 + 1.0)
    changed = structural_redundancy_selection(model, 0.4)
    assert len(changed["conv6"]) < len(first["conv6"])  # 32 identical filters: R = 32


# ------------------------------------------------------------------ budgets and surgery
@pytest.mark.parametrize("criterion", [structural_redundancy_selection,
                                       redundancy_random_selection])
def test_meets_a_mac_budget_within_one_channel(criterion):
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    graph = channel_graph(model)
    one_channel = channel_mac_costs(graph)[~graph.pinned].max()
    full = count_macs(model)
    for share in (0.6, 0.35):
        target = int(share * full)
        selection, macs = selection_for_macs(model, criterion, target,
                                             tolerance=one_channel / target)
        assert abs(macs - target) <= one_channel
        small = prune_model(model, selection, probe=False)
        assert count_macs(small) == macs and small.count_params() < model.count_params()


@pytest.mark.parametrize("criterion", [structural_redundancy_selection,
                                       redundancy_random_selection])
def test_pruned_model_computes_the_kept_channels(criterion):
    """No BatchNorm, zero biases: a removed channel is exactly 0, so the pruned model
    equals the original with the removed filters zeroed."""
    model = two_branch_model(np.random.default_rng(3))
    for name in ("redundant", "diverse", "head"):
        model.get_layer(name).bias.assign(np.zeros_like(model.get_layer(name).bias.numpy()))
    selection = criterion(model, 0.4)
    small = prune_model(model, selection, probe=False)
    x = np.random.default_rng(4).normal(size=(5, 8, 8, 4)).astype("float32")
    for name, keep in selection.items():
        kernel = model.get_layer(name).kernel.numpy()
        dropped = np.setdiff1d(np.arange(kernel.shape[-1]), keep)
        kernel[..., dropped] = 0.0
        model.get_layer(name).kernel.assign(kernel)
    np.testing.assert_allclose(to_numpy(small(x)), to_numpy(model(x)), rtol=1e-5, atol=1e-5)
    assert small.get_layer("redundant").kernel.shape[-1] == len(selection["redundant"])


# ------------------------------------------------------------------ tied channels
def residual_model(rng):
    x = keras.Input((6, 6, 3))
    s = L.Conv2D(8, 3, padding="same", name="stem")(x)
    r = L.Conv2D(8, 3, padding="same", activation="relu", name="inner")(s)
    r = L.Conv2D(8, 3, padding="same", name="last")(r)
    h = L.Add(name="add")([s, r])
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(L.ReLU()(h))
    h = L.Conv2D(4, 1, name="pw")(h)
    model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
    # planted: the residual stream's filters form 2 clusters in both convs
    model.get_layer("stem").kernel.assign(clustered_filters(rng, 8, 2, 27)[0].reshape(3, 3, 3, 8))
    model.get_layer("last").kernel.assign(clustered_filters(rng, 8, 2, 72)[0].reshape(3, 3, 8, 8))
    return model


def test_tied_convs_are_one_unit():
    model = residual_model(np.random.default_rng(5))
    assert sorted(layer_redundancy(model)) == ["inner", "pw"]  # residual-tied: only when named
    layers = ["stem", "last", "inner"]
    r = layer_redundancy(model, layers=layers)
    assert r["stem"] == r["last"] == pytest.approx(4.0)  # 8 stream channels, 2 clusters
    # independent: concatenate each conv's unit filters, normalise, compute R by hand
    blocks = []
    for name in ("stem", "last"):
        f = model.get_layer(name).kernel.numpy().reshape(-1, 8).T
        blocks.append(f / np.linalg.norm(f, axis=1, keepdims=True))
    v = np.concatenate(blocks, axis=1)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    assert r["stem"] == pytest.approx(redundancy(d, criteria_redundancy.auto_threshold(27 + 72)))
    selection = structural_redundancy_selection(model, 0.25, layers=layers)
    assert selection["stem"].tolist() == selection["last"].tolist()
    kept = sum(len(v) for k, v in selection.items() if k != "last")  # a tied channel once
    assert kept == 16 - 4
    small = prune_model(model, selection, probe=False)
    assert small.get_layer("dw").kernel.shape[-2] == len(selection["stem"])
    x = np.random.default_rng(6).normal(size=(2, 6, 6, 3)).astype("float32")
    assert small(x).shape == (2, 2)


# ------------------------------------------------------------------ options and errors
def test_min_channels_and_round_to():
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    for criterion in (structural_redundancy_selection, redundancy_random_selection):
        selection = criterion(model, 0.95, min_channels=3)
        assert min(len(v) for v in selection.values()) == 3
        selection = criterion(model, 0.6, round_to=4)
        assert all(len(v) % 4 == 0 for v in selection.values())
        prune_model(model, selection, probe=False)


def test_bad_arguments_are_refused_with_typed_errors():
    model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
    with pytest.raises(CriterionError, match="prune_fraction"):
        structural_redundancy_selection(model, 1.0)
    with pytest.raises(CriterionError, match="threshold"):
        structural_redundancy_selection(model, 0.5, threshold=0.0)
    with pytest.raises(CriterionError, match="threshold"):
        layer_redundancy(model, threshold="0.5")
    with pytest.raises(CriterionError, match="min_channels"):
        structural_redundancy_selection(model, 0.5, min_channels=0)
    with pytest.raises(CriterionError, match="round_to"):
        redundancy_random_selection(model, 0.5, round_to=0)
    with pytest.raises(CriterionError, match="seed"):
        redundancy_random_selection(model, 0.5, seed="1")
    with pytest.raises(CriterionError, match="Unknown layer 'conv9'"):
        structural_redundancy_selection(model, 0.5, layers=["conv9"])
    with pytest.raises(CriterionError, match="no .* kernel"):
        layer_redundancy(model, layers=["bn1"])
