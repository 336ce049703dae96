"""Layer kinds: each kind's rules in one place; a new layer is supported by one registration."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery_helpers import outputs64, randomize_batchnorms

from tf_gamma_prune import (
    LayerKind,
    UnsupportedLayerError,
    channel_graph,
    prune_model,
    register_layer_kind,
)
from tf_gamma_prune.analysis.constants import Constants
from tf_gamma_prune.analysis.kinds import MIXING, kind_of_layer

L = keras.layers


@keras.saving.register_keras_serializable(package="tf_gamma_prune_tests")
class TileChannels(L.Layer):
    """Repeats the channel axis twice: output channel ``k`` and ``C + k`` are input channel ``k``."""

    def call(self, x):
        return keras.ops.concatenate([x, x], axis=-1)

    def compute_output_shape(self, shape):
        return tuple(shape[:-1]) + (2 * shape[-1],)


class TileKind(LayerKind):
    """The rules of TileChannels: channels repeat, constants repeat, rebuilt as is."""

    name = "tile"

    def connect(self, b, call):
        b.raw[call.outputs[0]] = np.tile(b.raw[call.inputs[0]], 2)

    def propagate(self, b, call, ins):
        src = ins[0]
        if src is None:
            return None
        return Constants(np.tile(src.mask, 2), np.concatenate([src.value, src.value], axis=-1))


def tile_model():
    x = keras.Input((6, 6, 3))
    h = L.Conv2D(5, 3, padding="same", use_bias=False, name="conv")(x)
    h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    h = TileChannels(name="tile")(h)
    y = L.Conv2D(4, 3, padding="same", name="reader")(h)
    return keras.Model(x, y)


def test_a_custom_kind_makes_a_new_layer_prunable_exactly():
    model = tile_model()
    with pytest.raises(UnsupportedLayerError, match="does not know"):
        channel_graph(model)
    register_layer_kind(TileChannels, TileKind())
    randomize_batchnorms(model, seed=3, zero_fraction=0.0)
    model.get_layer("bn").gamma.assign([1.0, 0.0, -0.7, 0.0, 0.4])  # channels 1 and 3 constant
    graph = channel_graph(model)
    tile_call = next(c for c in graph.layer_graph.calls if c.name == "tile")
    assert graph.kinds[tile_call].name == "tile"
    np.testing.assert_array_equal(graph.constant_mask(tile_call.outputs[0]),
                                  [False, True, False, True, False] * 2)
    pruned, report = prune_model(model, fold="exact", return_report=True)
    assert pruned.get_layer("conv").filters == 3
    assert pruned.get_layer("reader").kernel.shape[-2] == 6  # 3 kept, tiled twice
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(outputs64(pruned, x)[0], outputs64(model, x)[0], rtol=1e-5, atol=1e-5)
    assert report.max_rel_deviation < 1e-5
    default, report = prune_model(model, return_report=True)  # exact too, never larger
    assert report.max_rel_deviation < 1e-5 and report.params_after <= report.params_before


def test_named_kinds_and_their_flags():
    assert kind_of_layer(L.Conv2D(2, 1)).name == MIXING
    assert kind_of_layer(L.Conv2D(2, 1)).folds_constants
    assert not kind_of_layer(L.ReLU()).folds_constants
    assert kind_of_layer(L.Lambda(lambda t: t)) is None
    with pytest.raises(ValueError, match="LayerKind instance"):
        register_layer_kind(TileChannels, "mixing")
