"""The selection criteria with ``unknown_layers="opaque"`` (issue 15): rank and prune around a
composite custom layer (a layer holding its own Conv2D + BatchNormalization).

By default every criterion raises the typed error that ``prune_model`` raises; with
``unknown_layers="opaque"`` the composite layer is kept whole (the channels it reads and
writes are pinned, never selected) and the rest of the model is ranked. The pruned model
is compared, in float64, with the original whose removed channels are zeroed where they
are read (what dropping a channel means without ``calibration_data``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops
from test_surgery_helpers import assert_same_function, randomize_batchnorms

from tf_gamma_prune import (
    UnsupportedLayerError,
    channel_graph,
    count_macs,
    gamma_threshold_selection,
    l1_norm_selection,
    plan_removal,
    prune_model,
    random_selection,
    selection_for_macs,
)
from tf_gamma_prune.prune.criteria_prunenet import (
    global_importance_scores,
    global_importance_selection,
)
from tf_gamma_prune.prune.criteria_redundancy import (
    layer_redundancy,
    redundancy_random_selection,
    structural_redundancy_selection,
)

L = keras.layers


@keras.saving.register_keras_serializable(package="tf_gamma_prune_criteria_tests")
class ConvBlock(L.Layer):
    """Conv2D + BatchNormalization + ReLU inside one custom layer."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = L.Conv2D(filters, 3, padding="same", use_bias=False)
        self.bn = L.BatchNormalization()

    def build(self, shape):
        self.conv.build(tuple(shape))
        self.bn.build(tuple(shape[:-1]) + (self.filters,))

    def call(self, x, training=None):
        return ops.relu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, shape):
        return tuple(shape[:-1]) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def model_with_block():
    x = keras.Input((12, 12, 3))
    h = L.ReLU()(L.BatchNormalization(name="bn_stem")(
        L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)))
    h = ConvBlock(8, name="block")(h)
    h = L.ReLU()(L.BatchNormalization(name="bn_a")(
        L.Conv2D(8, 3, padding="same", use_bias=False, name="conv_a")(h)))
    h = L.ReLU()(L.BatchNormalization(name="bn_b")(
        L.Conv2D(8, 3, padding="same", use_bias=False, name="conv_b")(h)))
    model = keras.Model(x, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(h)))
    rng = np.random.default_rng(0)
    for w in model.get_layer("block").weights:
        if "kernel" in w.path:
            w.assign(rng.standard_normal(w.shape).astype("float32") * 0.3)
    # random BN statistics, no γ exactly 0: every removed channel is a selected one
    return randomize_batchnorms(model, seed=1, zero_fraction=0.0)


DATA = np.random.default_rng(2).standard_normal((16, 12, 12, 3)).astype("float32")

CRITERIA = {
    "gamma_threshold": lambda m, **kw: gamma_threshold_selection(m, 0.5, **kw),
    "l1_norm": lambda m, **kw: l1_norm_selection(m, 0.5, **kw),
    "random": lambda m, **kw: random_selection(m, {"bn_a": 3, "bn_b": 5}, seed=4, **kw),
    "structural_redundancy": lambda m, **kw: structural_redundancy_selection(m, 0.5, **kw),
    "redundancy_random": lambda m, **kw: redundancy_random_selection(m, 0.5, seed=1, **kw),
    "global_importance": lambda m, **kw: global_importance_selection(m, 0.5, data=DATA, **kw),
    "layer_redundancy": lambda m, **kw: layer_redundancy(m, **kw),
    "global_importance_scores": lambda m, **kw: global_importance_scores(m, DATA, **kw),
}
SELECTIONS = [n for n in CRITERIA if n not in ("layer_redundancy", "global_importance_scores")]


def dropped_reference(model, selection):
    """The original with every removed channel zeroed where a conv/dense reads it."""
    graph = channel_graph(model, unknown_layers="opaque")
    plan = plan_removal(graph, selection)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for call, t in graph.fold_sites():
        gone = plan.removed[graph.channels[t]]
        if gone.any():
            layer = reference.get_layer(call.layer.name)
            kernel = np.array(layer.kernel)
            kernel[..., gone, :] = 0.0
            layer.kernel.assign(kernel)
    return reference


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criteria_refuse_an_unknown_layer_by_default(name):
    with pytest.raises(UnsupportedLayerError, match="unknown_layers"):
        CRITERIA[name](model_with_block())


@pytest.mark.parametrize("name", SELECTIONS)
def test_criteria_rank_around_an_opaque_layer_and_prune_exactly(name):
    model = model_with_block()
    selection = CRITERIA[name](model, unknown_layers="opaque")
    graph = channel_graph(model, unknown_layers="opaque")
    removed = plan_removal(graph, selection).removed
    assert removed.any(), "the criterion should remove something"
    # the channels the block reads (stem) and writes are kept
    block = next(c for c in graph.layer_graph.calls if c.name == "block")
    assert not removed[graph.channels[block.inputs[0]]].any()
    assert not removed[graph.channels[block.outputs[0]]].any()
    pruned, report = prune_model(model, selection, unknown_layers="opaque", return_report=True)
    assert any("kept whole: layer 'block'" in note for note in report.notes)
    for layer_name, keep in selection.items():
        assert pruned.get_layer(layer_name).output.shape[-1] == len(keep)
    for before, after in zip(model.get_layer("block").get_weights(),
                             pruned.get_layer("block").get_weights()):
        np.testing.assert_array_equal(before, after)
    assert_same_function(dropped_reference(model, selection), pruned, DATA[:4])


@pytest.mark.parametrize("name", ["layer_redundancy", "global_importance_scores"])
def test_scores_around_an_opaque_layer(name):
    scores = CRITERIA[name](model_with_block(), unknown_layers="opaque")
    # the stem's output is read by the block (pinned): not a prunable conv
    assert set(scores) == {"conv_a", "conv_b"}


@pytest.mark.parametrize("criterion", [l1_norm_selection, structural_redundancy_selection])
def test_selection_for_macs_passes_unknown_layers_on(criterion):
    model = model_with_block()
    target = int(0.7 * count_macs(model))
    with pytest.raises(UnsupportedLayerError):
        selection_for_macs(model, criterion, target)
    selection, macs = selection_for_macs(model, criterion, target, tolerance=0.1,
                                         unknown_layers="opaque")
    pruned = prune_model(model, selection, unknown_layers="opaque")
    assert macs == count_macs(pruned)
    assert abs(macs - target) <= 0.1 * target


def test_selection_for_macs_with_a_criterion_without_the_parameter():
    model = model_with_block()

    def criterion(m, fraction):  # no unknown_layers parameter: not passed to it
        return l1_norm_selection(m, fraction, unknown_layers="opaque")

    target = int(0.7 * count_macs(model))
    _, macs = selection_for_macs(model, criterion, target, tolerance=0.1,
                                 unknown_layers="opaque")
    assert abs(macs - target) <= 0.1 * target
