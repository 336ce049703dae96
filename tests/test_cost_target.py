"""CostTarget: ρ steered to a MAC or parameter budget; GammaISTA's min_channels floor."""

from __future__ import annotations

import doctest
import json
import warnings

import keras
import numpy as np
import pytest

from tf_gamma_prune import (
    ArgumentError,
    BudgetUnreachableError,
    CostTarget,
    GammaISTA,
    channel_graph,
    count_macs,
    prune_model,
)
from tf_gamma_prune.analysis.flops import planned_macs, planned_params
from tf_gamma_prune.reference_models import fashion_vgg
from tf_gamma_prune.sparsify.cost_target import group_scores

L = keras.layers


def small_vgg(dropout: float = 0.3):
    keras.utils.set_random_seed(0)
    return fashion_vgg(widths=(4, 4, 8, 8, 8, 8), input_shape=(8, 8, 1), dropout=dropout)


def spread_gammas(model, seed=0):
    """|γ| spread as in a trained network."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.05, 1.5, layer.gamma.shape))


def compiled(model, learning_rate=0.02, min_channels=1, **kwargs):
    model.compile(GammaISTA(keras.optimizers.SGD(learning_rate), min_channels=min_channels,
                            **kwargs),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.attach(model).build(model.trainable_variables)
    return model


def data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n)


def started(target, model, total_steps=100):
    """``target`` set up on ``model`` as ``fit`` would (measures step 0)."""
    target.total_steps = target.total_steps or total_steps
    target.set_model(model)
    target.on_train_begin()
    target.on_epoch_begin(0)
    target.on_train_batch_begin(0)
    return target


@pytest.mark.parametrize("kwargs, match", [
    ({"macs": 1.5}, "fraction"), ({"macs": 0}, "macs must be"), ({"macs": True}, "macs must be"),
    ({"params": 2.0}, "fraction"), ({"params": -3}, "params must be"),
    ({}, "exactly one budget"), ({"macs": 0.5, "params": 0.5}, "exactly one budget"),
    ({"macs": 0.5, "reach_at": 0}, "reach_at"), ({"macs": 0.5, "every": 0}, "every"),
    ({"macs": 0.5, "push_gain": -1}, "push_gain"), ({"macs": 0.5, "lookahead": -1}, "lookahead"),
    ({"macs": 0.5, "unknown_layers": "skip"}, "unknown_layers"),
    ({"macs": 0.5, "round_to": 0}, "round_to"), ({"macs": 0.5, "round_to": 2.0}, "round_to"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        CostTarget(**kwargs)


def test_schedule_is_linear_then_flat():
    target = CostTarget(macs=0.25, reach_at=0.5, total_steps=100)
    target.start_cost, target.budget = 1000, 250
    assert [target.scheduled_cost(s) for s in (0, 25, 50, 80)] == [1000, 625, 250, 250]


def test_first_plan_sets_rho_to_zero_the_channels_closest_to_the_schedule():
    model = compiled(small_vgg(), learning_rate=0.01)
    spread_gammas(model, seed=1)
    graph = channel_graph(model, fold="bias")
    scores = group_scores(graph, model.optimizer)
    target = started(CostTarget(macs=0.5, every=10, reach_at=0.5, lookahead=1), model)
    step0 = target.history[0]
    start = planned_macs(graph, graph.removable_constant_groups())
    assert target.start_cost == start and target.budget == round(start * 0.5)
    wanted = start - 0.2 * (start - target.budget)  # 10 of 50 steps
    assert step0["target"] == pytest.approx(wanted)
    threshold = step0["rho"] * target.every * 0.01  # the shrink of the next window
    planned = planned_macs(graph, scores <= threshold * (1 + 1e-6))
    assert planned == round(step0["planned_fraction"] * start)
    for other in np.unique(scores[np.isfinite(scores)]):  # no threshold comes closer
        assert abs(planned - wanted) <= abs(planned_macs(graph, scores <= other) - wanted)


def test_hold_at_rho_min_when_the_cost_is_at_the_target():
    model = compiled(small_vgg())
    spread_gammas(model)
    target = started(CostTarget(macs=0.5, every=10, total_steps=100), model)
    target.budget = target.start_cost  # nothing left to remove: hold
    target._done += 10
    assert target.adapt() == target.rho_min
    assert float(model.optimizer.rho) == pytest.approx(target.rho_min)


def test_the_last_window_holds_a_cost_within_tolerance():
    """Nothing after the last window can revive an overshoot: a cost within tolerance stays."""
    model = compiled(small_vgg())
    spread_gammas(model)
    target = started(CostTarget(macs=0.5, every=10, total_steps=100, tolerance=0.05), model)
    target.budget = round(target.start_cost / 1.04)  # 4 % above it: outside the hold band (2.5 %)
    target._done = 80  # a window before the last: it still removes
    assert target.adapt() > target.rho_min
    model.optimizer.rho = 0.0
    target.history.clear()
    target._done = 90  # the last window (90 -> 100)
    assert target.adapt() == target.rho_min and target.history[-1]["macs"] == target.start_cost
    target.budget = round(target.start_cost / 1.06)  # outside the tolerance: it still removes
    target._done = 90
    assert target.adapt() > target.rho_min


def test_the_end_of_the_run_is_measured_and_nothing_is_revived():
    """A channel revived when training is over would never train: it would only add cost
    (a CLI run ended at 43.8 % of the MACs and its pruned model had 53.4 %)."""
    model = compiled(small_vgg())
    spread_gammas(model)
    target = started(CostTarget(macs=0.5, every=10, total_steps=100), model)
    bn = model.get_layer("bn6")
    bn.gamma.assign(np.where(np.arange(8) < 5, 0.0, bn.gamma.numpy()))
    target._done = 95
    target.enforce()  # locked at step 95
    graph = channel_graph(model, fold="bias")
    cost = planned_macs(graph, graph.removable_constant_groups())
    target.budget = cost + (target.start_cost - cost) // 2  # far below the band
    target._done = 99
    target.adapt()  # the last window still revives
    assert (~target._locked["bn6"][:5]).any()
    target._locked["bn6"][:5] = True
    bn.gamma.assign(np.where(np.arange(8) < 5, 0.0, bn.gamma.numpy()))
    target._done = 100  # the end of the run
    assert target.adapt() == target.rho_min and target._locked["bn6"][:5].all()
    assert (bn.gamma.numpy()[:5] == 0).all() and target.history[-1]["macs"] == cost


def test_a_run_that_ends_above_the_budget_is_trimmed_to_it():
    """Training over 20 % above the budget: the smallest |γ|/λ go to zero, β kept."""
    for final_trim in (True, False):
        model = compiled(small_vgg())
        spread_gammas(model, seed=3)
        graph = channel_graph(model, fold="bias")
        scores = group_scores(graph, model.optimizer)
        betas = {n: model.get_layer(n).beta.numpy() for n in ("bn1", "bn6")}
        target = started(CostTarget(macs=0.5, every=10, total_steps=100, fold="bias",
                                    final_trim=final_trim), model)
        target.budget = round(target.start_cost / 1.2)
        model.optimizer.iterations.assign(100)  # the run's last step done
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            target.on_train_end()
        caught = [w for w in caught if issubclass(w.category, UserWarning)]
        if not final_trim:
            assert not caught and "trimmed" not in target.history[-1]
            assert target.history[-1]["macs"] == target.start_cost and not target.within_budget()
            assert CostTarget.from_config(target.get_config()).final_trim is False
            continue
        assert len(caught) == 1 and "set to γ = 0 to meet it" in str(caught[0].message)
        last = target.history[-1]
        assert target.history[-2]["macs"] == target.start_cost and target.within_budget()
        assert count_macs(prune_model(model, fold="bias")) == last["macs"]
        gone = channel_graph(model, fold="bias").removable_constant_groups()
        assert last["trimmed"] == gone.sum() > 0
        assert scores[gone].max() < scores[~gone & np.isfinite(scores)].min()  # the smallest
        assert planned_macs(graph, gone) == last["macs"]  # independent count of the same plan
        for name, beta in betas.items():
            np.testing.assert_array_equal(model.get_layer(name).beta.numpy(), beta)


def test_the_trim_skips_a_wide_group_that_would_jump_below_the_band():
    """A small-|γ| group costing more than the tolerance band: taking it with the threshold
    lands below the band; the trim skips it for the next groups and lands within."""
    model = compiled(small_vgg())
    spread_gammas(model, seed=3)
    graph = channel_graph(model, fold="bias")
    scores = group_scores(graph, model.optimizer)
    target = started(CostTarget(macs=0.5, every=10, total_steps=100, fold="bias"), model)
    budgets = [round(target.start_cost * f) for f in np.linspace(0.4, 0.9, 51)]
    jumps = [b for b in budgets if target.threshold_for(graph, scores, b)[1] < 0.95 * b]
    assert jumps, "no budget where the plain threshold jumps below the band"
    target.budget = jumps[0]
    model.optimizer.iterations.assign(100)  # the run's last step done
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        target.on_train_end()
    last = target.history[-1]
    assert target.within_budget() and last["trimmed"] > 0
    gone = channel_graph(model, fold="bias").removable_constant_groups()
    assert planned_macs(graph, gone) == last["macs"] == count_macs(prune_model(model, fold="bias"))
    skipped = ~gone & np.isfinite(scores) & (scores < scores[gone].max())
    assert skipped.any()  # a smaller score kept: the wide group
    for group in np.flatnonzero(skipped):  # each skipped group would have jumped below
        assert planned_macs(graph, gone | (np.arange(graph.num_groups) == group)) < 0.95 * jumps[0]


def test_hold_stays_at_rho_min_at_a_zero_learning_rate():
    # the end of a cosine schedule: nothing to remove must not read as "infinite rho"
    model = compiled(small_vgg(), learning_rate=0.0)
    spread_gammas(model)
    target = started(CostTarget(macs=0.5, every=10, total_steps=100), model)
    target.budget = target.start_cost
    target._done += 10
    assert target.adapt() == target.rho_min


def test_locked_channels_stay_zero_and_revive_brings_the_cost_back_to_the_budget():
    model = compiled(small_vgg())
    spread_gammas(model)
    target = started(CostTarget(macs=0.5, every=4, total_steps=100), model)
    bn = model.get_layer("bn6")
    gamma = bn.gamma.numpy()
    gamma[:5] = 0.0
    bn.gamma.assign(gamma)
    target._done += 1
    target.enforce()  # zero before a step: locked
    assert target._locked["bn6"][:5].all()
    bn.gamma.assign(np.where(np.arange(8) < 5, 0.3, gamma))  # a step pushed them out
    target._done += 1
    target.enforce()
    assert (bn.gamma.numpy()[:5] == 0).all()  # set back to zero
    graph = channel_graph(model, fold="bias")
    cost = planned_macs(graph, graph.removable_constant_groups())
    target.budget = cost + 3 * (target.start_cost - cost) // 5  # far below the band: revive
    target._done = 20
    target.adapt()
    unlocked = ~target._locked["bn6"][:5]
    assert 0 < unlocked.sum() < 5
    revived_cost = target.history[-1]["planned_fraction"] * target.start_cost
    assert abs(revived_cost - target.budget) < abs(cost - target.budget)
    target._done += 1
    target.enforce()  # revived channels are not locked again while still at zero
    assert (~target._locked["bn6"][:5]).sum() == unlocked.sum()


def test_revived_channels_get_a_gradient_before_a_relu():
    """A trained network's zero-γ channel with β < 0 outputs relu(β) = 0 and gets no
    gradient: revive wakes it (small γ, β ≥ 0) so it trains again."""
    model = compiled(small_vgg(dropout=0.0))
    spread_gammas(model)
    target = started(CostTarget(macs=0.5, every=4, total_steps=100), model)
    bn = model.get_layer("bn6")
    bn.beta.assign(np.full(8, -0.3))
    gamma = bn.gamma.numpy()
    gamma[:5] = 0.0
    bn.gamma.assign(gamma)
    target._done += 1
    target.enforce()  # locked at zero
    graph = channel_graph(model, fold="bias")
    cost = planned_macs(graph, graph.removable_constant_groups())
    target.budget = cost + 3 * (target.start_cost - cost) // 5
    target._done = 20
    target.adapt()
    woken = ~target._locked["bn6"][:5]
    assert woken.any()
    before = bn.gamma.numpy()[:5][woken]
    assert np.all(before > 0) and np.all(bn.beta.numpy()[:5][woken] == 0)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # GammaISTA at the controller's rho_min
    assert np.all(bn.gamma.numpy()[:5][woken] != before)


def test_a_budget_below_the_reachable_minimum_is_refused():
    model = compiled(small_vgg(), min_channels=3)
    spread_gammas(model)
    x, y = data(32)
    with pytest.raises(BudgetUnreachableError, match=r"cannot be reached.*min_channels=3") as info:
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[CostTarget(macs=0.05)])
    assert 0 < info.value.reachable < count_macs(model)
    assert info.value.budget < info.value.reachable


def test_pinned_channels_make_a_budget_unreachable():
    x = keras.Input((6, 6, 2))
    h = L.BatchNormalization(name="free")(L.Conv2D(4, 3, padding="same", use_bias=False)(x))
    y = L.BatchNormalization(name="out")(L.Conv2D(4, 3, padding="same", use_bias=False)(h))
    model = keras.Model(x, y)  # the output's channels are pinned, "free" is not penalised
    model.compile(GammaISTA(keras.optimizers.SGD(0.01), exclude=["free"]), loss="mse")
    model.optimizer.attach(model).build(model.trainable_variables)
    target = CostTarget(macs=0.9, total_steps=10)
    target.set_model(model)
    with pytest.raises(BudgetUnreachableError, match="cannot be reached.*pinned") as info:
        target.on_train_begin()
    assert info.value.reachable == count_macs(model) == 36 * 9 * (2 * 4 + 4 * 4)


def test_warns_once_when_every_removable_channel_is_gone_above_the_budget():
    model = compiled(small_vgg())
    spread_gammas(model)
    target = started(CostTarget(macs=0.5, every=4, total_steps=100), model)
    model.optimizer.min_channels = 8  # the floor now spares every channel
    target._done = 8
    with pytest.warns(UserWarning, match="every channel that may go is gone"):
        target.adapt()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        target._done = 12
        target.adapt()


def test_needs_gamma_ista():
    model = small_vgg()
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x, y = np.zeros((8, 8, 8, 1), "float32"), np.zeros((8, 10), "float32")
    with pytest.raises(ArgumentError, match="GammaISTA"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[CostTarget(macs=0.5)])


def test_fit_logs_rho_and_the_measured_cost_equals_the_pruned_model():
    model = compiled(small_vgg())
    spread_gammas(model)
    target = CostTarget(macs=0.5, every=4)
    x, y = data()
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    assert len(history.history["rho"]) == 3 and "pruned_macs_fraction" in history.history
    assert target.history[-1]["step"] == 48  # the end of the run is measured
    assert target.history[-1]["macs"] < target.start_cost
    assert count_macs(prune_model(model)) == target.history[-1]["macs"] == target.pruned_cost()
    assert target.within_budget()
    graph = channel_graph(model, fold="bias")  # carriers of the default fold="auto" aside
    assert CostTarget(macs=0.5, fold="bias").cost(graph, graph.removable_constant_groups()) \
        == count_macs(prune_model(model, fold="bias"))


def aligned_fit(fold, scale_beta=True, budget=0.4):
    keras.utils.set_random_seed(0)
    model = compiled(fashion_vgg(widths=(16, 16, 32, 32, 32, 32), input_shape=(8, 8, 1)),
                     scale_beta=scale_beta)
    spread_gammas(model)
    target = CostTarget(macs=budget, every=4, round_to=4, fold=fold)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    return model, target


@pytest.mark.parametrize("fold", ["auto", "bias"])
def test_round_to_aligns_the_widths_within_the_budget(fold):
    model, target = aligned_fit(fold)
    pruned = prune_model(model, round_to=4, fold=fold)
    widths = [layer.filters for layer in pruned.layers if isinstance(layer, L.Conv2D)]
    assert all(w % 4 == 0 for w in widths), widths
    assert count_macs(pruned) == target.history[-1]["macs"] == target.pruned_cost()
    assert target.within_budget()
    unaligned = [layer.filters for layer in prune_model(model, fold=fold).layers
                 if isinstance(layer, L.Conv2D)]
    assert unaligned == widths  # the widths are aligned in the model itself, no rounding needed
    state = target.get_state()
    assert state["aligned"] and CostTarget.from_config(target.get_config()).round_to == 4
    assert target.history[-1]["rho"] == target.rho_min  # held since the alignment


def test_round_to_aligns_tied_residual_streams():
    """A ResNet's residual streams are channel groups shared by several convs: aligned too."""
    from tf_gamma_prune.reference_models import resnet20

    keras.utils.set_random_seed(0)
    model = compiled(resnet20(input_shape=(16, 16, 3), blocks_per_stage=1), scale_beta=True)
    spread_gammas(model)
    target = CostTarget(macs=0.5, every=4, round_to=8)
    rng = np.random.default_rng(0)
    x, y = rng.random((256, 16, 16, 3)).astype("float32"), rng.integers(0, 10, 256)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    pruned = prune_model(model)
    widths = [layer.filters for layer in pruned.layers if isinstance(layer, L.Conv2D)]
    assert all(w % 8 == 0 for w in widths), widths
    assert count_macs(pruned) == target.history[-1]["macs"] and target.within_budget()


def test_round_to_without_scale_beta_leaves_nothing_to_carry():
    """Without scale_beta the zero-γ channels keep their β, whose constants would need a carrier
    tile each under fold="auto"; the alignment sets every removed channel's β to 0 (and holds it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"CostTarget\(round_to")  # "the aligned model costs"
        model, target = aligned_fit("auto", scale_beta=False)
    pruned = prune_model(model, round_to=4)
    widths = [layer.filters for layer in pruned.layers if isinstance(layer, L.Conv2D)]
    assert all(w % 4 == 0 for w in widths), widths
    assert count_macs(pruned) == target.history[-1]["macs"] and target.within_budget()
    for name, _, _ in model.optimizer.targets:  # removed: γ = β = 0
        bn = model.get_layer(name)
        gone = bn.gamma.numpy() == 0
        assert gone.any() and not bn.beta.numpy()[gone].any()


def test_parameter_budget():
    model = compiled(small_vgg())
    spread_gammas(model)
    target = CostTarget(params=0.5, every=4)
    x, y = data()
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    assert "pruned_params_fraction" in history.history
    assert target.start_cost == model.count_params() and target.budget == round(
        0.5 * model.count_params())
    pruned = prune_model(model)
    assert pruned.count_params() == target.history[-1]["params"]
    assert abs(pruned.count_params() - target.budget) <= 0.05 * target.budget


def test_planned_params_equal_the_pruned_model():
    """planned_params counts what prune_model(fold="bias") builds, collapsed layers included."""
    rng = np.random.default_rng(0)
    for trial, p_zero in enumerate([0.0, 0.3, 0.7, 1.0]):
        model = small_vgg()
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                gamma = rng.uniform(0.2, 1.0, layer.gamma.shape)
                gamma[rng.random(gamma.shape) < p_zero] = 0
                layer.gamma.assign(gamma)
                layer.beta.assign(rng.normal(size=layer.beta.shape) * (trial % 2))
        graph = channel_graph(model, fold="bias")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # all-zero γ layers warn
            pruned = prune_model(model, fold="bias")
        assert planned_params(graph, graph.removable_constant_groups()) == pruned.count_params()


def test_state_round_trips_through_get_config_and_continues_exactly():
    """A controller rebuilt from get_config() continues as the original would."""
    def fresh():
        model = compiled(small_vgg(dropout=0.0))
        spread_gammas(model)
        return model

    x, y = data(128)
    model = fresh()
    target = CostTarget(macs=0.4, every=3, total_steps=32)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[target])
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(target)))
    saved = [v.numpy() for v in model.variables + model.optimizer.variables]

    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[target])
    first = [v.numpy() for v in model.variables]

    for variable, value in zip(model.variables + model.optimizer.variables, saved):
        variable.assign(value)
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, CostTarget)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[again])
    assert again.history == target.history
    for a, b in zip(first, [v.numpy() for v in model.variables]):
        np.testing.assert_array_equal(a, b)


def test_group_scores_spare_the_largest_and_the_pinned():
    model = small_vgg()
    model.get_layer("bn6").gamma.assign(np.linspace(0.1, 0.8, 8))
    model.compile(GammaISTA(keras.optimizers.SGD(0.01), min_channels=2,
                            penalties={"bn6": 2.0}), loss="mse")
    model.optimizer.attach(model).build(model.trainable_variables)
    graph = channel_graph(model, fold="bias")
    scores = group_scores(graph, model.optimizer)[graph.layer_channels("bn6")]
    np.testing.assert_allclose(scores[:6], np.linspace(0.1, 0.8, 8)[:6] / 2.0)
    assert np.isinf(scores[6:]).all()


def test_min_channels_spares_the_largest_gammas():
    x = keras.Input((4,))
    h = L.BatchNormalization(name="bn")(L.Dense(4, name="fc")(x))
    model = keras.Model(x, L.Dense(1)(h))
    model.get_layer("bn").gamma.assign([0.1, 0.5, -0.9, 0.3])
    model.compile(GammaISTA(keras.optimizers.SGD(1e-3), rho=1e6, min_channels=2), loss="mse")
    model.fit(np.ones((4, 4), "float32"), np.zeros((4, 1), "float32"), epochs=1, verbose=0)
    gamma = model.get_layer("bn").gamma.numpy()
    assert gamma[0] == 0 and gamma[3] == 0
    np.testing.assert_allclose(gamma[[1, 2]], [0.5, -0.9], atol=1e-2)  # spared: not shrunk


def test_min_channels_is_saved():
    optimizer = GammaISTA(keras.optimizers.SGD(0.1), min_channels=3)
    assert GammaISTA.from_config(optimizer.get_config()).min_channels == 3
    with pytest.raises(ArgumentError, match="min_channels"):
        GammaISTA(keras.optimizers.SGD(0.1), min_channels=-1)


def test_module_docstring_examples_run():
    import tf_gamma_prune.analysis.flops
    import tf_gamma_prune.sparsify.cost_target

    for module in (tf_gamma_prune.sparsify.cost_target, tf_gamma_prune.analysis.flops):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0


def test_cost_target_steers_a_gamma_ista_inside_coarse_ranking():
    """CoarseRanking(GammaISTA(...)): the controller finds the GammaISTA inside and meets the
    budget, and the ranking still accumulates scores during the same steps."""
    from tf_gamma_prune import CoarseRanking

    model = small_vgg()
    spread_gammas(model)
    ranking = CoarseRanking(GammaISTA(keras.optimizers.SGD(0.02), min_channels=1))
    model.compile(ranking, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    target = CostTarget(macs=0.5, every=4)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    assert target._optimizer() is ranking.inner_optimizer
    assert target.within_budget()
    assert count_macs(prune_model(model)) == target.history[-1]["macs"]
    assert float(keras.ops.convert_to_numpy(ranking._batches)) == 48


@pytest.mark.parametrize("budget", [{"macs": 0.5}, {"params": 0.4}])
def test_network_slimming_gets_its_threshold_at_the_budget(budget):
    """With NetworkSlimming, CostTarget leaves l1 alone and sets the global |γ| threshold at the
    end: the smallest-|γ| channels' γ become 0 and prune_model meets the budget."""
    from tf_gamma_prune import NetworkSlimming

    model = small_vgg()
    spread_gammas(model)
    model.compile(NetworkSlimming(keras.optimizers.SGD(0.02), l1=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    target = CostTarget(**budget, fold="bias")
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[target])
    pruned = prune_model(model, fold="bias")
    cost = count_macs(pruned) if "macs" in budget else pruned.count_params()
    assert cost <= target.budget and cost >= 0.9 * target.budget  # the first step at or below it
    assert cost == target.history[-1][target.metric]
    # what was zeroed: the globally smallest |γ| among the surviving channels' layers
    for name, kept in target.selection.items():
        gamma = np.abs(model.get_layer(name).gamma.numpy())
        assert np.count_nonzero(gamma) == len(kept) or len(kept) == 1


def test_network_slimming_threshold_counts_the_rounded_widths():
    from tf_gamma_prune import NetworkSlimming

    keras.utils.set_random_seed(0)
    model = fashion_vgg(widths=(16, 16, 32, 32, 32, 32), input_shape=(8, 8, 1))
    spread_gammas(model)
    model.compile(NetworkSlimming(keras.optimizers.SGD(0.02), l1=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    target = CostTarget(macs=0.5, fold="bias", round_to=4)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[target])
    pruned = prune_model(model, fold="bias", round_to=4)
    assert all(layer.filters % 4 == 0 for layer in pruned.layers if isinstance(layer, L.Conv2D))
    assert count_macs(pruned) == target.history[-1]["macs"] <= target.budget


def test_a_model_with_a_composite_layer_needs_opaque_and_then_meets_the_budget():
    """``unknown_layers="opaque"`` as in prune_model: the composite block's channels stay whole."""
    from test_criteria_opaque import model_with_block

    from tf_gamma_prune import UnsupportedLayerError

    model = model_with_block()
    model.compile(GammaISTA(keras.optimizers.SGD(0.02), min_channels=1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((128, 12, 12, 3)).astype("float32"), rng.integers(0, 4, 128)
    with pytest.raises(UnsupportedLayerError, match="unknown_layers"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[CostTarget(macs=0.7)])
    target = CostTarget(macs=0.7, every=2, unknown_layers="opaque")
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    pruned = prune_model(model, unknown_layers="opaque")
    assert count_macs(pruned) == target.pruned_cost() == target.history[-1]["macs"]
    assert abs(count_macs(pruned) - target.budget) <= 0.05 * target.budget
    assert pruned.get_layer("block").filters == 8  # kept whole
    assert CostTarget.from_config(target.get_config()).unknown_layers == "opaque"


def test_reweighted_scores_are_the_cumulative_shrink_that_empties_each_channel():
    model = small_vgg()
    gamma = np.linspace(0.1, 0.8, 8)
    model.get_layer("bn6").gamma.assign(gamma)
    model.compile(GammaISTA(keras.optimizers.SGD(0.01), min_channels=2, penalties={"bn6": 2.0},
                            reweight_epsilon=0.1), loss="mse")
    model.optimizer.attach(model).build(model.trainable_variables)
    graph = channel_graph(model, fold="bias")
    scores = group_scores(graph, model.optimizer)[graph.layer_channels("bn6")]
    np.testing.assert_allclose(scores[:6], (gamma * (gamma / gamma.mean() + 0.1) / 2.0)[:6])
    assert np.isinf(scores[6:]).all()


def test_reweighted_gamma_ista_meets_a_mac_budget():
    model = compiled(small_vgg(), reweight_epsilon=0.1)
    spread_gammas(model)
    target = CostTarget(macs=0.5, every=4)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[target])
    pruned = prune_model(model)
    assert count_macs(pruned) == target.history[-1]["macs"]
    assert abs(count_macs(pruned) - target.budget) <= 0.05 * target.budget
