"""Baseline selection criteria against independent NumPy computations and prune_model."""

import doctest
import math

import keras
import numpy as np
import pytest

import tf_gamma_prune.prune.criteria
from tf_gamma_prune import (
    CriterionError,
    NoBatchNormError,
    SelectionError,
    TargetUnreachableError,
    count_macs,
    gamma_threshold_selection,
    l1_norm_selection,
    layer_widths,
    prune_model,
    random_selection,
    selection_for_macs,
)
from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.reference_models import fashion_vgg, resnet20
from tf_gamma_prune.prune.plan import plan_removal

SMALL = (8, 8, 16, 16, 32, 32)
BNS = [f"bn{i}" for i in range(1, 7)]
CONVS = [f"conv{i}" for i in range(1, 7)]


def vgg(seed=0, widths=SMALL):
    model = fashion_vgg(widths=widths)
    randomize_batchnorm(model, seed=seed, signed_gamma=True)
    return model


def kept(selection):
    return {k: np.asarray(v).tolist() for k, v in selection.items()}


# ------------------------------------------------------- Network Slimming threshold
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.7])
def test_gamma_threshold_matches_numpy_global_percentile(fraction):
    model = vgg(seed=1)
    gammas = [np.abs(model.get_layer(b).gamma.numpy()) for b in BNS]
    pooled = np.concatenate(gammas)
    k = math.floor(fraction * pooled.size + 1e-9)
    threshold = np.sort(pooled)[k] if k < pooled.size else np.inf
    expected = {b: np.flatnonzero(g >= threshold).tolist() for b, g in zip(BNS, gammas)}
    assert all(expected.values()), "no layer emptied here (see the next test)"
    selection = gamma_threshold_selection(model, fraction)
    assert kept(selection) == expected
    assert sum(len(v) for v in selection.values()) == pooled.size - k
    small = prune_model(model, selection, probe=False)
    assert layer_widths(small) == {b: len(v) for b, v in expected.items()}
    for b in BNS:  # the kept channels are the original ones, in order
        np.testing.assert_array_equal(small.get_layer(b).gamma.numpy(),
                                      model.get_layer(b).gamma.numpy()[expected[b]])


def test_gamma_threshold_never_empties_a_layer_and_honours_layers():
    model = vgg(seed=2)
    tiny = np.linspace(1e-4, 2e-4, 8).astype("float32") * np.array([1, -1] * 4, "float32")
    model.get_layer("bn2").gamma.assign(tiny)  # the 8 smallest |γ| of the model
    selection = gamma_threshold_selection(model, 0.1)  # 11 of 112: would take all of bn2
    assert kept(selection)["bn2"] == [int(np.argmax(np.abs(tiny)))]
    prune_model(model, selection, probe=False)  # a valid selection
    # restricted to two layers: the threshold is over those two only
    selection = gamma_threshold_selection(model, 0.5, layers=["bn5", "bn6"])
    assert set(selection) == {"bn5", "bn6"}
    g5, g6 = (np.abs(model.get_layer(b).gamma.numpy()) for b in ("bn5", "bn6"))
    threshold = np.sort(np.concatenate([g5, g6]))[32]
    assert kept(selection) == {"bn5": np.flatnonzero(g5 >= threshold).tolist(),
                               "bn6": np.flatnonzero(g6 >= threshold).tolist()}


def test_gamma_threshold_on_resnet_scores_tied_channels_together():
    model = resnet20()
    randomize_batchnorm(model, seed=3, signed_gamma=True)
    stream = ["stem_bn"] + [f"s1b{i}_bn2" for i in (1, 2, 3)]  # tied by the residual adds
    for i, name in enumerate(stream):
        gamma = model.get_layer(name).gamma.numpy()
        gamma[:5] = 1e-3 * (1 + np.arange(5))  # small in every member: these go
        gamma[5] = 1e-3 if i else gamma[5]     # small in all but one member: it stays
        model.get_layer(name).gamma.assign(gamma)
    selection = gamma_threshold_selection(model, 0.05)
    assert kept(selection)["stem_bn"] == list(range(5, 16))
    assert all(kept(selection)[n] == list(range(5, 16)) for n in stream)
    graph = channel_graph(model)
    small = prune_model(model, selection, probe=False)
    assert layer_widths(small, ["stem_conv", "s1b2_conv2", "s1b2_conv1"]) == {
        "stem_conv": 11, "s1b2_conv2": 11, "s1b2_conv1": len(selection["s1b2_bn1"])}
    assert count_macs(small) == planned_macs(graph, plan_removal(graph, selection).removed)
    # a tied channel counts once: 9 bn1 layers (336 channels) + 3 streams (16 + 32 + 64)
    removed = set()
    for name, keep in selection.items():
        groups = graph.layer_channels(name)
        removed |= set(np.delete(groups, keep).tolist())
    assert len(removed) == math.floor(0.05 * (336 + 112))


# ------------------------------------------------------------- L1-norm filters
@pytest.mark.parametrize("fraction", [0.25, 0.6])
def test_l1_norm_matches_numpy_per_filter_norms(fraction):
    keras.utils.set_random_seed(4)
    model = vgg(seed=4)
    selection = l1_norm_selection(model, fraction)
    assert list(selection) == CONVS  # the logits Dense is pinned (model output)
    expected = {}
    for name in CONVS:
        kernel = model.get_layer(name).kernel.numpy()
        norms = np.abs(kernel).sum(axis=(0, 1, 2))
        drop = np.argsort(norms)[: math.floor(fraction * norms.size)]
        expected[name] = sorted(set(range(norms.size)) - set(drop.tolist()))
    assert kept(selection) == expected
    small = prune_model(model, selection, probe=False)
    keep_in = slice(None)  # conv1 reads the image
    for name in CONVS:  # the kept filters, over the kept inputs, unchanged
        np.testing.assert_array_equal(
            small.get_layer(name).kernel.numpy(),
            model.get_layer(name).kernel.numpy()[:, :, keep_in][..., expected[name]])
        keep_in = expected[name]


def test_l1_norm_on_resnet_skips_residual_tied_convs_unless_named():
    keras.utils.set_random_seed(5)
    model = resnet20()
    selection = l1_norm_selection(model, 0.5)
    assert sorted(selection) == sorted(f"s{s}b{b}_conv1" for s in (1, 2, 3) for b in (1, 2, 3))
    for name, keep in selection.items():
        n = model.get_layer(name).filters
        assert len(keep) == n - n // 2
    # naming tied convs: ranked together by the sum of their filters' norms
    names = ["s1b1_conv2", "s1b2_conv2"]
    selection = l1_norm_selection(model, 0.25, layers=names)
    norms = sum(np.abs(model.get_layer(n).kernel.numpy()).sum(axis=(0, 1, 2)) for n in names)
    expected = sorted(set(range(16)) - set(np.argsort(norms)[:4].tolist()))
    assert kept(selection) == {n: expected for n in names}
    small = prune_model(model, selection, probe=False)
    widths = layer_widths(small, ["stem_conv", "s1b1_conv2", "s1b3_conv2", "s1b1_conv1"])
    assert widths == {"stem_conv": 12, "s1b1_conv2": 12, "s1b3_conv2": 12, "s1b1_conv1": 16}
    graph = channel_graph(model)
    assert count_macs(small) == planned_macs(graph, plan_removal(graph, selection).removed)


# --------------------------------------------------------------------- random
def test_random_selection_is_reproducible_and_honours_widths():
    model = vgg()
    widths = {"bn1": 3, "bn4": 16, "bn6": 5}
    a = random_selection(model, widths, seed=7)
    assert kept(a) == kept(random_selection(model, widths, seed=7))
    assert kept(a) != kept(random_selection(model, widths, seed=8))
    assert {k: len(v) for k, v in a.items()} == widths
    assert all(np.all(np.diff(v) > 0) for v in a.values())
    small = prune_model(model, a, probe=False)
    assert {k: v for k, v in layer_widths(small).items() if k in widths} == widths
    # a layer's choice does not depend on which other layers are named
    assert kept(random_selection(model, {"bn6": 5}, seed=7))["bn6"] == kept(a)["bn6"]


def test_random_selection_is_uniform_over_channels():
    model = vgg()
    trials, n, k = 600, 32, 8
    counts = np.zeros(n)
    for seed in range(trials):
        counts[random_selection(model, {"bn6": k}, seed=seed)["bn6"]] += 1
    expected = trials * k / n
    chi2 = np.sum((counts - expected) ** 2 / expected)  # df = 31: mean 31, sd 7.9
    assert chi2 < 31 + 6 * 7.9, counts
    first_k = np.zeros(n)
    first_k[:k] = trials  # what a biased "keep the first k" would give
    assert np.sum((first_k - expected) ** 2 / expected) > 31 + 6 * 7.9


def test_random_selection_ties_residual_layers_and_rejects_bad_widths():
    model = resnet20()
    sel = random_selection(model, {"s1b1_bn2": 9, "s1b3_bn2": 9, "stem_bn": 9}, seed=3)
    assert kept(sel)["s1b1_bn2"] == kept(sel)["s1b3_bn2"] == kept(sel)["stem_bn"]
    small = prune_model(model, sel, probe=False)
    assert layer_widths(small)["s1b2_bn2"] == 9
    with pytest.raises(CriterionError, match="between 1 and 16"):
        random_selection(model, {"stem_bn": 17})
    with pytest.raises(CriterionError, match="between 1 and 16"):
        random_selection(model, {"stem_bn": 0})
    with pytest.raises(CriterionError, match="integer"):
        random_selection(model, {"stem_bn": 4.5})
    with pytest.raises(CriterionError, match="Unknown layer 'nope'"):
        random_selection(model, {"nope": 4})
    with pytest.raises(CriterionError, match="pinned.*model output"):
        random_selection(model, {"logits": 5})
    with pytest.raises(CriterionError, match="non-empty"):
        random_selection(model, {})


# -------------------------------------------------------------- layer widths
def test_layer_widths_line_up_between_pruned_and_unpruned_models():
    model = vgg(seed=6)
    assert layer_widths(model) == dict(zip(BNS, SMALL))
    small = prune_model(model, gamma_threshold_selection(model, 0.5), probe=False)
    widths = layer_widths(small)
    assert list(widths) == BNS and sum(widths.values()) == 56
    # the "same widths, random channels" and "from scratch" controls
    again = prune_model(model, random_selection(model, widths, seed=0), probe=False)
    assert layer_widths(again) == widths
    assert layer_widths(fashion_vgg(widths=tuple(widths.values()))) == widths
    # nested model: qualified names in the original, bare after prune_model flattens it
    x = keras.Input((28, 28, 1))
    outer = keras.Model(x, keras.layers.Dense(3)(model(x)))
    nested = layer_widths(outer)
    assert list(nested) == [f"{model.name}/{b}" for b in BNS]
    flat = layer_widths(prune_model(outer, random_selection(outer, widths), probe=False))
    assert flat == widths
    x = keras.Input((4,))
    with pytest.raises(NoBatchNormError):
        layer_widths(keras.Model(x, keras.layers.Dense(2)(x)))
    with pytest.raises(CriterionError, match="Unknown layer"):
        layer_widths(model, ["nope"])


# ------------------------------------------------------------- MAC targets
def test_planned_macs_equal_count_macs_of_the_rebuilt_model():
    """Depthwise, separable, Flatten→Dense, a residual add and a conv losing its input."""
    x = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    h = keras.layers.BatchNormalization(name="b1")(h)
    d = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(h)
    d = keras.layers.Conv2D(8, 1, name="pw")(d)
    h = keras.layers.Add(name="add")([h, d])
    s = keras.layers.SeparableConv2D(6, 3, name="sep")(h)
    s = keras.layers.BatchNormalization(name="b2")(s)
    t = keras.layers.Conv2D(5, 3, strides=2, name="c3")(s)
    t = keras.layers.BatchNormalization(name="b3")(t)
    y = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(t))
    model = keras.Model(x, y)
    randomize_batchnorm(model, seed=8)
    graph = channel_graph(model)
    assert planned_macs(graph, np.zeros(graph.num_groups, bool)) == count_macs(model)
    for selection in [{"b1": [0, 3, 5], "b2": [1, 2], "b3": [0, 4]},
                      {"add": [2], "sep": [0, 1, 2, 3, 4], "c3": [1]},
                      {"dw": list(range(0, 16, 3)), "b3": [0, 1, 2, 3]}]:
        expected = count_macs(prune_model(model, selection, probe=False))
        assert planned_macs(graph, plan_removal(graph, selection).removed) == expected


@pytest.mark.parametrize("criterion", [gamma_threshold_selection, l1_norm_selection])
def test_selection_for_macs_lands_within_tolerance(criterion):
    model = vgg(seed=9, widths=(32, 32, 64, 64, 128, 128))
    full = count_macs(model)
    for share, tolerance in [(0.5, 0.05), (0.25, 0.02)]:
        target = int(share * full)
        selection, macs = selection_for_macs(model, criterion, target, tolerance=tolerance)
        assert abs(macs - target) <= tolerance * target
        assert count_macs(prune_model(model, selection, probe=False)) == macs


def test_selection_for_macs_counts_the_rounded_widths():
    """With round_to the MACs are those of prune_model(..., round_to=...): tile steps."""
    model = vgg(seed=9, widths=(32, 32, 64, 64, 128, 128))
    half = count_macs(prune_model(model, l1_norm_selection(model, 0.5), probe=False))
    selection, macs = selection_for_macs(model, l1_norm_selection, half, round_to=16)
    pruned = prune_model(model, selection, round_to=16, probe=False)
    assert count_macs(pruned) == macs and abs(macs - half) <= 0.05 * half
    widths = [layer.filters for layer in pruned.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(w % 16 == 0 for w in widths), widths
    # a third of the MACs lies between two tile steps of uniform widths (2.77x and 3.39x fewer)
    third = count_macs(model) // 3
    with pytest.raises(TargetUnreachableError) as err:
        selection_for_macs(model, l1_norm_selection, third, round_to=16)
    closest = err.value.closest_macs
    assert abs(closest - third) > 0.05 * third
    assert selection_for_macs(model, l1_norm_selection, third)[1] != closest  # unrounded: reachable
    with pytest.raises(CriterionError, match="round_to"):
        selection_for_macs(model, l1_norm_selection, half, round_to=0)


def test_selection_for_macs_passes_kwargs_and_raises_when_unreachable():
    model = vgg(seed=10)
    full = count_macs(model)
    selection, macs = selection_for_macs(model, gamma_threshold_selection, int(0.8 * full),
                                         layers=["bn5", "bn6"])
    assert set(selection) == {"bn5", "bn6"} and abs(macs - 0.8 * full) <= 0.04 * full
    with pytest.raises(TargetUnreachableError):  # pruning only bn5/bn6 cannot halve it
        selection_for_macs(model, gamma_threshold_selection, full // 2, layers=["bn5", "bn6"])
    with pytest.raises(TargetUnreachableError, match=f"closest it reaches is {full:,}") as err:
        selection_for_macs(model, l1_norm_selection, int(full * 1.2))
    assert err.value.closest_macs == full and err.value.target_macs == int(full * 1.2)
    # at most: every layer keeps one channel
    floor = count_macs(prune_model(model, l1_norm_selection(model, 0.999), probe=False))
    with pytest.raises(TargetUnreachableError) as err:
        selection_for_macs(model, l1_norm_selection, floor // 4)
    assert err.value.closest_macs == floor
    assert isinstance(err.value, ValueError) and isinstance(err.value, SelectionError)
    # between two consecutive steps of the criterion with no tolerance
    _, macs = selection_for_macs(model, l1_norm_selection, full // 2, tolerance=0.1)
    with pytest.raises(TargetUnreachableError):
        selection_for_macs(model, l1_norm_selection, macs + 1, tolerance=0.0)
    with pytest.raises(CriterionError, match="positive integer"):
        selection_for_macs(model, l1_norm_selection, 0)
    with pytest.raises(CriterionError, match="tolerance"):
        selection_for_macs(model, l1_norm_selection, full // 2, tolerance=1.5)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, "0.5", True, float("nan")])
def test_bad_fractions_are_refused(fraction):
    model = vgg()
    for criterion in (gamma_threshold_selection, l1_norm_selection):
        with pytest.raises(CriterionError, match="prune_fraction"):
            criterion(model, fraction)


def test_bad_layers_and_models_without_batchnorm():
    model = vgg()
    with pytest.raises(CriterionError, match="Unknown layer 'bn9'"):
        gamma_threshold_selection(model, 0.5, layers=["bn9"])
    with pytest.raises(CriterionError, match="not a BatchNormalization"):
        gamma_threshold_selection(model, 0.5, layers=["conv1"])
    with pytest.raises(CriterionError, match="no .* kernel"):
        l1_norm_selection(model, 0.5, layers=["bn1"])
    with pytest.raises(CriterionError, match="model output"):
        l1_norm_selection(model, 0.5, layers=["logits"])
    with pytest.raises(CriterionError, match="list of names"):
        l1_norm_selection(model, 0.5, layers="conv1")
    x = keras.Input((8, 8, 1))
    plain = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(
        keras.layers.Conv2D(4, 3, name="c")(x))))
    with pytest.raises(NoBatchNormError):
        gamma_threshold_selection(plain, 0.5)
    assert len(l1_norm_selection(plain, 0.5)["c"]) == 2  # no BN needed for L1 norms


def test_docstring_examples_run():
    result = doctest.testmod(tf_gamma_prune.prune.criteria, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("build", [
    lambda: fashion_vgg(widths=(6, 6, 8, 8, 12, 12), input_shape=(12, 12, 1)),
    lambda: resnet20(input_shape=(12, 12, 3), widths=(4, 8, 8)),
])
def test_zero_gamma_selection_rewinds_gamma_istas_choice_onto_other_weights(build):
    """The selection from a sparsified copy keeps exactly the channels prune_model keeps there;
    applied to the original (other weights) it gives the same widths, and its kept channels
    are those of the original (checked against a direct slice of one conv kernel)."""
    from tf_gamma_prune import zero_gamma_selection

    keras.utils.set_random_seed(0)
    original = build()
    randomize_batchnorm(original, seed=0)
    sparse = keras.models.clone_model(original)
    sparse.set_weights([w * 1.1 for w in original.get_weights()])
    rng = np.random.default_rng(1)
    for layer in sparse.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma = layer.gamma.numpy()
            gamma[rng.random(gamma.shape) < 0.4] = 0.0
            layer.gamma.assign(gamma)
    selection = zero_gamma_selection(sparse)
    expected = layer_widths(prune_model(sparse, fold="bias"))
    rewound = prune_model(original, selection, fold="bias", probe=False)
    assert layer_widths(rewound) == expected
    assert any(len(kept) < sparse.get_layer(name).gamma.shape[0] for name, kept in selection.items())
    for name, kept in selection.items():
        gamma = sparse.get_layer(name).gamma.numpy()
        assert np.all(gamma[kept] != 0) or len(kept) == len(gamma)  # tied groups may keep zeros
    first_bn = next(l for l in original.layers if isinstance(l, keras.layers.BatchNormalization))
    np.testing.assert_array_equal(rewound.get_layer(first_bn.name).gamma.numpy(),
                                  first_bn.gamma.numpy()[selection[first_bn.name]])
