"""Grouped convolutions (groups > 1): exact, each group keeps the same width.

Outputs: output ``j`` of every group is one channel. Inputs: channels can go as long as
every group loses as many (``groups`` must still divide the input width); the plan puts
channels back where a group would lose more, and a removed input's constant folds into
its own group's outputs. Checked against the unpruned model in float64 (≤ 1e-5).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import outputs64, randomize_batchnorms

from tf_gamma_prune import channel_graph, prune_model

L = keras.layers


def grouped_model(conv, shape, groups=4, filters=8):
    x = keras.Input(shape)
    h = L.BatchNormalization(name="bn1")(conv(8, 3, padding="same", name="conv1")(x))
    h = conv(filters, 3, padding="same", groups=groups, name="grouped")(h)
    h = L.ReLU()(L.BatchNormalization(name="bn2")(h))
    y = conv(3, 3, padding="same", name="head")(h)
    return keras.Model(x, y)


@pytest.mark.parametrize("conv, shape", [(L.Conv2D, (8, 8, 3)), (L.Conv1D, (10, 3))])
def test_output_position_of_every_group_is_removed_together_exactly(conv, shape):
    model = randomize_batchnorms(grouped_model(conv, shape), seed=4, zero_fraction=0.0)
    gamma = model.get_layer("bn2").gamma.numpy()
    gamma[[1, 3, 5, 7]] = 0.0  # output 1 of each of the 4 groups (2 outputs per group)
    gamma[2] = 0.0  # output 0 of group 1 only: the group's twins are not constant, kept
    model.get_layer("bn2").gamma.assign(gamma)
    model.get_layer("bn1").gamma.assign(np.where(np.arange(8) < 2, 0.0, 1.0))  # read by grouped
    pruned, report = prune_model(model, return_report=True)
    assert pruned.get_layer("grouped").filters == 4 and pruned.get_layer("grouped").groups == 4
    # bn1's constants (0 and 1) are both in group 0 of 'grouped': removing them alone would
    # unbalance the groups, so they stay
    assert pruned.get_layer("conv1").filters == 8
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype("float32")
    np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(model, x)[0], rtol=1e-5, atol=1e-5)
    assert report.max_rel_deviation < 1e-5


def test_grouped_channels_are_coupled_across_groups():
    graph = channel_graph(grouped_model(L.Conv2D, (8, 8, 3)))
    groups = graph.layer_channels("grouped")
    assert groups[:2].tolist() == groups[2:4].tolist() == groups[6:8].tolist()
    assert len(set(groups.tolist())) == 2
    assert not graph.pinned[graph.layer_channels("bn1")].any()  # inputs may go, balanced


@pytest.mark.parametrize("fold", ["exact", "carrier"])
def test_random_zeros_never_crash_and_stay_exact(fold):
    model = randomize_batchnorms(grouped_model(L.Conv2D, (8, 8, 3), groups=2), seed=9)
    gamma = model.get_layer("bn2").gamma.numpy()
    gamma[[0, 4]] = 0.0  # output 0 of both groups, on top of the random zeros
    model.get_layer("bn2").gamma.assign(gamma)
    pruned, report = prune_model(model, fold=fold, return_report=True)
    assert report.removed_constant > 0
    assert report.max_rel_deviation < 1e-5


def grouped_reader_model(conv, shape, kernel=3, padding="same", groups=4):
    """conv1 (8) -> BN -> ReLU -> grouped conv (2 inputs per group) -> BN -> ReLU -> head."""
    x = keras.Input(shape)
    h = L.ReLU()(L.BatchNormalization(name="bn1")(conv(8, 3, padding="same", name="conv1")(x)))
    h = conv(8, kernel, padding=padding, groups=groups, name="grouped")(h)
    h = L.ReLU()(L.BatchNormalization(name="bn2")(h))
    return keras.Model(x, conv(3, 3, padding="same", name="head")(h))


def set_zero_gamma(model, name, positions):
    bn = model.get_layer(name)
    gamma = np.array(bn.gamma)
    gamma[positions] = 0.0
    bn.gamma.assign(gamma)


def assert_exact(original, pruned, shape):
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype("float32")
    np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(original, x)[0],
                               rtol=1e-5, atol=1e-5)


CASES = [  # (conv, input shape, kernel, padding, folds that remove the grouped conv's inputs)
    (L.Conv2D, (8, 8, 3), 3, "same", ("exact", "carrier")),  # auto keeps padded constants
    (L.Conv2D, (8, 8, 3), 1, "valid", ("auto", "exact", "carrier")),
    (L.Conv2D, (9, 9, 3), 3, "valid", ("auto", "exact", "carrier")),
    (L.Conv1D, (10, 3), 3, "same", ("exact", "carrier")),
]


@pytest.mark.parametrize("conv, shape, kernel, padding, removing", CASES)
@pytest.mark.parametrize("fold", ["auto", "exact", "carrier"])
def test_one_constant_input_per_group_goes_exactly(conv, shape, kernel, padding, removing, fold):
    model = grouped_reader_model(conv, shape, kernel, padding)
    randomize_batchnorms(model, seed=2, zero_fraction=0.0, positive_beta=True)
    set_zero_gamma(model, "bn1", [0, 3, 5, 6])  # one of the 2 inputs of each of the 4 groups
    pruned, report = prune_model(model, fold=fold, return_report=True)
    grouped = pruned.get_layer("grouped")
    assert grouped.groups == 4 and grouped.filters == 8
    if fold in removing:
        assert grouped.kernel.shape[-2] == 1  # 4 inputs: one per group
        assert pruned.get_layer("conv1").filters == 4
    else:
        assert grouped.kernel.shape[-2] == 2
    assert_exact(model, pruned, shape)
    assert report.max_rel_deviation < 1e-5


@pytest.mark.parametrize("fold", ["auto", "exact"])
def test_unequal_losses_are_balanced(fold):
    model = grouped_reader_model(L.Conv2D, (8, 8, 3), kernel=1, padding="valid")
    randomize_batchnorms(model, seed=3, zero_fraction=0.0, positive_beta=True)
    set_zero_gamma(model, "bn1", [0, 1, 2, 4, 6])  # group 0 loses both, the others one
    pruned, report = prune_model(model, fold=fold, return_report=True)
    assert pruned.get_layer("grouped").kernel.shape[-2] == 1  # every group lost one
    assert pruned.get_layer("conv1").filters == 4
    assert any("'grouped': kept 1 input channel(s)" in n for n in report.notes)
    assert_exact(model, pruned, (8, 8, 3))


def test_selected_inputs_are_balanced_and_dropped():
    """A selection dropping non-constant inputs unevenly: balanced, and the pruned model is
    the original with the dropped channels set to 0 (BN γ = β = 0)."""
    model = grouped_reader_model(L.Conv2D, (8, 8, 3))
    randomize_batchnorms(model, seed=4, zero_fraction=0.0)
    # drops 0, 1 (both of group 0), 3, 5, 6 (one of groups 1, 2, 3)
    pruned, report = prune_model(model, {"bn1": [2, 4, 7]}, return_report=True)
    assert pruned.get_layer("grouped").kernel.shape[-2] == 1
    assert pruned.get_layer("conv1").filters == 4
    kept_channels = _kept_bn1_channels(model, pruned)
    assert [c // 2 for c in kept_channels] == [0, 1, 2, 3]  # one per group
    assert {2, 4, 7} <= set(kept_channels)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    bn = reference.get_layer("bn1")
    off = np.isin(np.arange(8), kept_channels)
    bn.gamma.assign(np.where(off, np.array(bn.gamma), 0.0))
    bn.beta.assign(np.where(off, np.array(bn.beta), 0.0))
    assert_exact(reference, pruned, (8, 8, 3))


def _kept_bn1_channels(model, pruned):
    """Which of bn1's channels the pruned bn1 kept (matched by their γ)."""
    before = np.array(model.get_layer("bn1").gamma)
    after = np.array(pruned.get_layer("bn1").gamma)
    return sorted(int(np.flatnonzero(before == g)[0]) for g in after)


@pytest.mark.parametrize("keep", [[1, 2, 4, 7], [0, 2, 4], [0, 2, 4, 6, 7]])
def test_planned_costs_match_the_rebuilt_model(keep):
    from tf_gamma_prune import count_macs, model_cost, plan_removal
    from tf_gamma_prune.analysis.flops import planned_macs, planned_params

    model = grouped_reader_model(L.Conv2D, (8, 8, 3), kernel=1, padding="valid")
    randomize_batchnorms(model, seed=5, zero_fraction=0.0)
    selection = {"conv1": keep, "bn2": [0, 2, 4, 6]}  # inputs; output 0 of every group
    graph = channel_graph(model)
    plan = plan_removal(graph, selection)
    pruned = prune_model(model, selection)
    per_group = {3: 1, 4: 1, 5: 2}[len(keep)]  # [0, 2, 4, 6, 7]: group 3 keeps both
    assert pruned.get_layer("grouped").kernel.shape[-2] == per_group
    assert pruned.get_layer("grouped").filters == 4
    assert planned_macs(graph, plan.removed) == count_macs(pruned)
    assert planned_params(graph, plan.removed) == model_cost(pruned).params


def test_prunenet_scores_a_grouped_reader_like_its_dense_equivalent():
    from tf_gamma_prune.analysis.conv_response import dense_kernel
    from tf_gamma_prune.prune.criteria_prunenet import (
        global_importance_scores,
        global_importance_selection,
    )

    model = grouped_reader_model(L.Conv2D, (8, 8, 3))
    randomize_batchnorms(model, seed=6, zero_fraction=0.0)
    # the same function with an ungrouped, block-diagonal kernel
    dense = grouped_reader_model(L.Conv2D, (8, 8, 3), groups=1)
    for layer in model.layers:
        if not layer.weights:
            continue
        target = dense.get_layer(layer.name)
        if layer.name == "grouped":
            target.kernel.assign(dense_kernel(layer).astype("float32"))
            target.bias.assign(np.array(layer.bias))
        else:
            target.set_weights(layer.get_weights())
    data = np.random.default_rng(1).standard_normal((16, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(outputs64(dense, data)[0], outputs64(model, data)[0], rtol=1e-5,
                               atol=1e-5)
    grouped_scores = global_importance_scores(model, data)["conv1"]
    np.testing.assert_allclose(grouped_scores, global_importance_scores(dense, data)["conv1"],
                               rtol=1e-4, atol=1e-8)
    selection = global_importance_selection(model, 0.3, data=data)
    pruned = prune_model(model, selection)
    assert pruned.get_layer("grouped").groups == 4
