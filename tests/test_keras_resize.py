"""Resizing feature maps: ``keras.ops.image.resize`` nodes and the ``Resizing`` layer (FPN / U-Net
decoders) are per channel over space, so the channels before them prune like any other.

The models and their γ come from :mod:`channel_op_helpers` (zeroed channels of "p_bn" carry β > 0, so
constants pass through the resize); each pruned model is compared with the original on random inputs.
"""

from __future__ import annotations

import keras
import pytest
from channel_op_helpers import head, kept, prepared, producer, reloaded
from keras import ops
from test_surgery_helpers import assert_same_function, random_inputs

from tf_gamma_prune import UnsupportedLayerError, channel_graph, prune_model

L = keras.layers
ZEROED = [1, 5]


def resized(kind: str, size=(13, 11), **options):
    """producer → resize 8×8 to ``size`` (the op or the layer) → conv 3×3 (valid) → BN → head."""
    def build():
        x = keras.Input((8, 8, 3))
        h = producer(x)
        if kind == "op":
            h = ops.image.resize(h, size, **options)
        else:
            h = L.Resizing(*size, **options)(h)
        return keras.Model(x, head(L.BatchNormalization(name="bn2")(L.Conv2D(4, 3, name="c")(h))))
    return build


CASES = {
    "op_bilinear": resized("op"),
    "op_nearest": resized("op", interpolation="nearest"),
    "op_bicubic": resized("op", interpolation="bicubic"),
    "op_padded": resized("op", (8, 16), pad_to_aspect_ratio=True),  # zero rows: not uniform
    "layer_padded": resized("layer", (8, 16), pad_to_aspect_ratio=True, fill_value=0.5),
    "layer_bilinear": resized("layer"),
    "layer_nearest": resized("layer", interpolation="nearest"),
    "layer_cropped": resized("layer", crop_to_aspect_ratio=True),
}


@pytest.mark.parametrize("fold", [None, "exact", "carrier"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_resized_channels_prune_and_keep_the_function(case, fold):
    model = prepared(CASES[case], ZEROED)
    graph = channel_graph(model)
    resize = [c for c in graph.layer_graph.calls if type(c.layer).__name__ in ("Resize", "Resizing")]
    assert [graph.kinds[c].name for c in resize] == ["spatial"]
    pruned = prune_model(model, **({} if fold is None else {"fold": fold}))
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    if fold == "exact":
        assert pruned.get_layer("p").filters == kept(model, slice(None)) == 8 - len(ZEROED)
        assert pruned.get_layer("c").kernel.shape[2] == kept(model, slice(None))


def test_a_channels_first_resize_is_refused_with_the_fix():
    x = keras.Input((8, 8, 3))
    h = L.Permute((3, 1, 2))(producer(x))  # channels first for the resize, back after it
    h = ops.image.resize(h, (6, 6), data_format="channels_first")
    model = keras.Model(x, head(L.Permute((2, 3, 1))(h)))
    with pytest.raises(UnsupportedLayerError, match="channels_first.*channels_last"):
        prune_model(model)


@pytest.mark.parametrize("case", ["op_bilinear", "layer_nearest"])
def test_pruned_resizes_save_and_load(case, tmp_path):
    model = prepared(CASES[case], ZEROED)
    pruned = prune_model(model)
    assert pruned.get_layer("p").filters == 8 - len(ZEROED)
    reloaded(model, pruned, tmp_path / "pruned.keras")
