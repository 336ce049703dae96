"""tiled_selection_for_macs: any criterion to a MAC budget with widths in tiles.

Checked against independent computations: the widths and MACs of the model
``prune_model`` actually builds (``count_macs``), the kernels' L1 norms in
numpy (which channels a layer keeps), and ``selection_for_macs`` (the untiled
cut it starts from).
"""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest

from tf_gamma_prune import (
    CriterionError,
    TargetUnreachableError,
    count_macs,
    gamma_threshold_selection,
    l1_norm_selection,
    prune_model,
    selection_for_macs,
    tiled_selection_for_macs,
)
from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm
from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.prune import tiled_selection
from tf_gamma_prune.prune.criteria import layer_widths
from tf_gamma_prune.prune.tiled_selection import removal_order
from tf_gamma_prune.reference_models import fashion_vgg

WIDTHS = (16, 16, 32, 32, 64, 64)


@pytest.fixture(scope="module")
def vgg():
    keras.utils.set_random_seed(3)
    model = fashion_vgg(widths=WIDTHS)
    randomize_batchnorm(model, seed=3)
    return model


def _l1_norms(model, name: str) -> np.ndarray:
    kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


@pytest.mark.parametrize("reduction", [2.0, 3.0, 4.5, 6.0])
def test_l1_norm_in_tiles_meets_the_budget_with_the_largest_norms(vgg, reduction):
    target = round(count_macs(vgg) / reduction)
    selection, macs = tiled_selection_for_macs(vgg, l1_norm_selection, target, 8)
    small = prune_model(vgg, selection, probe=False)
    assert macs == count_macs(small)
    assert abs(macs - target) <= 0.05 * target
    widths = layer_widths(small)
    assert all(w % 8 == 0 for w in widths.values()), widths
    for i in range(1, 7):  # each conv keeps its filters of largest L1 norm (Li et al.)
        keep = selection[f"conv{i}"]
        norms = _l1_norms(vgg, f"conv{i}")
        assert len(keep) == widths[f"bn{i}"]
        assert set(keep.tolist()) == set(np.argsort(-norms, kind="stable")[:len(keep)].tolist())


def test_reaches_budgets_that_uniform_tiles_cannot(vgg):
    """selection_for_macs(round_to=8) moves in whole-model steps and misses these budgets
    (the closest: 0.64 and 1.29 of them); moving each layer by its own tiles meets them."""
    for reduction in (2.0, 2.5):
        target = round(count_macs(vgg) / reduction)
        with pytest.raises(TargetUnreachableError, match="tiled_selection_for_macs moves"):
            selection_for_macs(vgg, l1_norm_selection, target, round_to=8)
        selection, macs = tiled_selection_for_macs(vgg, l1_norm_selection, target, 8)
        assert abs(macs - target) <= 0.05 * target
        assert all(len(k) % 8 == 0 for k in selection.values())


def test_starts_from_the_untiled_cut(vgg):
    """Each width stays within a tile or two of the criterion's own (uniform) cut."""
    target = round(count_macs(vgg) / 3.0)
    untiled, _ = selection_for_macs(vgg, l1_norm_selection, target)
    tiled, _ = tiled_selection_for_macs(vgg, l1_norm_selection, target, 8)
    assert set(tiled) == set(untiled)
    for name in untiled:
        assert abs(len(tiled[name]) - len(untiled[name])) <= 16, (name, len(untiled[name]))


def test_a_global_criterion_works_too(vgg):
    target = round(count_macs(vgg) / 2.5)
    selection, macs = tiled_selection_for_macs(vgg, gamma_threshold_selection, target, 8)
    assert abs(macs - target) <= 0.05 * target
    assert macs == count_macs(prune_model(vgg, selection, probe=False))
    gammas = {f"bn{i}": np.abs(keras.ops.convert_to_numpy(vgg.get_layer(f"bn{i}").gamma))
              for i in range(1, 7)}
    for name, keep in selection.items():  # kept: the layer's largest |γ|
        g = gammas[name]
        assert np.min(g[keep]) >= np.max(np.delete(g, keep), initial=-np.inf)


def test_removal_order_follows_the_norms(vgg):
    graph = channel_graph(vgg)
    order = removal_order(graph, lambda f: l1_norm_selection(vgg, f), 64)
    for i in range(1, 7):
        groups = graph.layer_channels(f"conv{i}")
        norms = _l1_norms(vgg, f"conv{i}")
        ranks = order[groups]
        assert np.isinf(ranks[np.argmax(norms)])  # a layer's best filter is never removed
        finite = np.isfinite(ranks)
        # removed earlier = smaller norm (ties: the same step)
        assert np.all(np.diff(ranks[finite][np.argsort(norms[finite])]) >= 0)
    assert np.all(np.isinf(order[graph.pinned]))


def test_residual_tied_convs_keep_their_width():
    """L1-norm leaves residual-tied convs out by default; the tiles do not touch them."""
    keras.utils.set_random_seed(0)
    x = keras.Input((16, 16, 3))
    stem = keras.layers.Conv2D(24, 3, padding="same", name="stem")(x)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="inner")(stem)
    h = keras.layers.Conv2D(24, 3, padding="same", name="outer")(h)
    h = keras.layers.Add()([stem, h])
    y = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(x, y)
    target = round(count_macs(model) * 0.7)
    selection, macs = tiled_selection_for_macs(model, l1_norm_selection, target, 8,
                                               tolerance=0.1)
    assert set(selection) == {"inner"} and len(selection["inner"]) % 8 == 0
    small = prune_model(model, selection, probe=False)
    assert macs == count_macs(small) and abs(macs - target) <= 0.1 * target
    assert small.get_layer("stem").filters == 24 and small.get_layer("outer").filters == 24
    x_test = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    assert small(x_test).shape == (2, 3)


def test_bad_arguments_and_budgets_say_what_to_do(vgg):
    target = round(count_macs(vgg) / 3.0)
    with pytest.raises(CriterionError, match="round_to must be an integer >= 2"):
        tiled_selection_for_macs(vgg, l1_norm_selection, target, 1)
    with pytest.raises(CriterionError, match="steps must be an integer >= 2"):
        tiled_selection_for_macs(vgg, l1_norm_selection, target, 8, steps=1)
    with pytest.raises(TargetUnreachableError, match="closest"):  # below one channel a layer
        tiled_selection_for_macs(vgg, l1_norm_selection, 1000, 8)
    with pytest.raises(TargetUnreachableError, match="tiles of 32") as info:
        tiled_selection_for_macs(vgg, l1_norm_selection, round(count_macs(vgg) / 9), 32,
                                 tolerance=0.01)
    assert info.value.closest_macs > 0


def test_doctests():
    assert doctest.testmod(tiled_selection).failed == 0
