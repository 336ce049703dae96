"""aligned_removal: widths at multiples of a tile within a budget (against direct counts)."""

import itertools

import keras
import numpy as np
import pytest

from tf_gamma_prune import ArgumentError
from tf_gamma_prune.analysis.channel_graph import channel_graph
from tf_gamma_prune.analysis.flops import planned_macs
from tf_gamma_prune.prune.plan import rounded_removal
from tf_gamma_prune.reference_models import fashion_vgg
from tf_gamma_prune.prune.width_alignment import aligned_removal

CONVS = [f"conv{i}" for i in range(1, 7)]


def graph_and_scores(seed=0):
    model = fashion_vgg(widths=(8, 12, 16, 16, 24, 24), input_shape=(16, 16, 1))
    graph = channel_graph(model, fold="bias")
    rng = np.random.default_rng(seed)
    scores = np.full(graph.num_groups, np.inf)
    for name in CONVS:
        scores[graph.layer_channels(name)] = rng.uniform(0.1, 2.0, len(graph.layer_channels(name)))
    return graph, scores


def widths(graph, removed):
    return [int(np.count_nonzero(~removed[graph.layer_channels(n)])) for n in CONVS]


def full_cost(graph):
    return planned_macs(graph, np.zeros(graph.num_groups, bool))


@pytest.mark.parametrize("seed, n, fraction", [(0, 4, 0.5), (1, 4, 0.3), (2, 8, 0.4), (3, 4, 0.8)])
def test_aligned_widths_meet_the_budget_and_drop_the_lowest_scores(seed, n, fraction):
    graph, scores = graph_and_scores(seed)
    rng = np.random.default_rng(seed + 10)
    removed = np.zeros(graph.num_groups, bool)
    for name in CONVS:  # an unaligned starting point, as ISTA leaves it
        groups = graph.layer_channels(name)
        removed[rng.choice(groups, rng.integers(1, len(groups) // 2), replace=False)] = True
    budget = fraction * full_cost(graph)
    out = aligned_removal(graph, removed, scores, n, budget, planned_macs)
    final = rounded_removal(graph, out, n)
    cost = planned_macs(graph, final)
    assert cost <= budget * 1.025
    for name, width in zip(CONVS, widths(graph, final)):
        assert width % n == 0 or width == len(graph.layer_channels(name)), (name, width)
        assert width >= n
    dropped = out & ~removed
    for name in CONVS:  # inside a layer the dropped channels scored below the kept ones
        groups = graph.layer_channels(name)
        kept = groups[~out[groups]]
        if dropped[groups].any() and kept.size:
            assert scores[groups[dropped[groups]]].max() <= scores[kept].min()
    # no layer's next block still fits in the budget band (the up phase stopped for a reason)
    if cost < budget * 0.975:
        for name in CONVS:
            groups = graph.layer_channels(name)
            trial = out.copy()
            for group in groups[out[groups]]:  # back one by one until the next block opens
                trial[group] = False
                new = planned_macs(graph, rounded_removal(graph, trial, n))
                if new > cost:
                    assert new > budget * 1.025, name
                    break


def test_greedy_is_feasible_and_close_to_the_best_aligned_widths():
    """Against every aligned width combination of a small model (brute force)."""
    graph, scores = graph_and_scores(4)
    removed = np.zeros(graph.num_groups, bool)
    budget = 0.45 * full_cost(graph)
    out = aligned_removal(graph, removed, scores, 4, budget, planned_macs)
    best = 0
    options = [range(4, len(graph.layer_channels(n)) + 1, 4) for n in CONVS]
    for combo in itertools.product(*options):
        trial = np.zeros(graph.num_groups, bool)
        for name, width in zip(CONVS, combo):
            trial[graph.layer_channels(name)[width:]] = True
        cost = planned_macs(graph, trial)
        if cost <= budget * 1.025:
            best = max(best, cost)
    got = planned_macs(graph, rounded_removal(graph, out, 4))
    assert got <= budget * 1.025
    assert got >= 0.9 * best  # within 10 % of the fullest feasible aligned model


def test_pinned_and_spared_channels_stay():
    graph, scores = graph_and_scores(5)
    spared = graph.layer_channels("conv3")[:6]
    scores[spared] = np.inf
    out = aligned_removal(graph, np.zeros(graph.num_groups, bool), scores, 4,
                          0.15 * full_cost(graph), planned_macs)
    assert not out[spared].any()
    assert not out[graph.pinned].any()


def test_bad_arguments():
    graph, scores = graph_and_scores()
    removed = np.zeros(graph.num_groups, bool)
    for bad in (1, 0, True, 2.0):
        with pytest.raises(ArgumentError, match="round_to"):
            aligned_removal(graph, removed, scores, bad, 1e6, planned_macs)
    with pytest.raises(ArgumentError, match="one entry per channel group"):
        aligned_removal(graph, removed[:-1], scores, 4, 1e6, planned_macs)


def test_module_doctest():
    import doctest

    from tf_gamma_prune.prune import width_alignment

    assert doctest.testmod(width_alignment).failed == 0
    keras.backend.clear_session()


def test_rounded_removal_brings_back_the_highest_scores_first():
    graph, scores = graph_and_scores(seed=3)
    removed = np.zeros(graph.num_groups, bool)
    conv = graph.layer_channels("conv5")  # 24 channels: keep 9, so 7 more come back (tile 16)
    gone = conv[np.argsort(scores[conv])[:15]]
    removed[gone] = True
    got = rounded_removal(graph, removed, 16, scores=scores)
    back = gone[~got[gone]]
    np.testing.assert_array_equal(np.sort(back), np.sort(gone[np.argsort(-scores[gone])[:7]]))
    assert widths(graph, got)[4] == 16 and widths(graph, got)[:4] == [8, 12, 16, 16]
    # without scores the order is |γ| (here all 1: the lowest channel indices come back)
    assert np.all(graph.gamma_scores()[conv] == 1.0)
    plain = rounded_removal(graph, removed, 16)
    np.testing.assert_array_equal(np.sort(gone[~plain[gone]]), np.sort(gone)[:7])
    with pytest.raises(ArgumentError, match="one value per channel group"):
        rounded_removal(graph, removed, 16, scores=scores[:-1])
