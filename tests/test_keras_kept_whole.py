"""Keras layers the channel graph keeps whole: recurrent, attention, embedding, wrapper, einsum.

CNN-RNN, CNN-attention, video (TimeDistributed) and text-CNN models hold layers that mix channels
in ways the graph does not follow. They are kept whole (every channel they read or write, weights
copied unchanged, named in the report's notes), and the convolutional part around them prunes:
"p_bn" (γ = 0 channels with β > 0, from :mod:`channel_op_helpers`) sits one conv block before the
kept-whole layer, so its channels go and their constants fold into that block's conv.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from channel_op_helpers import prepared, producer, reloaded
from test_surgery_helpers import assert_same_function, random_inputs

from tf_gamma_prune import channel_graph, prune_model
from tf_gamma_prune.analysis.kinds.registry import KEPT_WHOLE_LAYERS

L = keras.layers
ZEROED = [1, 4, 6]


def block(h, filters=6, name="c"):
    """The conv block between p_bn and the kept-whole layer (its BN is read by that layer)."""
    return L.ReLU()(L.BatchNormalization(name=f"{name}_bn")(L.Conv2D(filters, 3, name=name)(h)))


def sequence_model(make_layer):
    """Image → producer → block → (rows·cols, 6) sequence → the layer → Dense."""
    def build():
        x = keras.Input((10, 10, 3))
        h = L.Reshape((-1, 6))(block(producer(x)))
        h = make_layer(h)
        if len(h.shape) == 3:
            h = L.GlobalAveragePooling1D()(h)
        return keras.Model(x, L.Dense(3)(h))
    return build


def text_cnn():
    x = keras.Input((20,), dtype="int32")
    h = L.Embedding(50, 16, name="embedding")(x)
    h = L.ReLU()(L.BatchNormalization(name="p_bn")(L.Conv1D(8, 3, padding="same", name="p")(h)))
    h = L.ReLU()(L.BatchNormalization(name="c_bn")(L.Conv1D(6, 3, name="c")(h)))
    return keras.Model(x, L.Dense(3)(L.GlobalMaxPooling1D()(h)))


def video_model():
    """TimeDistributed(Conv2D) over frames, then Conv3D blocks (p_bn is the first 3D block's)."""
    x = keras.Input((4, 10, 10, 3))
    h = L.TimeDistributed(L.Conv2D(5, 3), name="frames")(x)
    h = L.ReLU()(L.BatchNormalization(name="p_bn")(L.Conv3D(8, 3, padding="same", name="p")(h)))
    h = L.ReLU()(L.BatchNormalization(name="c_bn")(L.Conv3D(6, 3, name="c")(h)))
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling3D()(h)))


def conv_lstm_model():
    x = keras.Input((10, 10, 3))
    h = L.ConvLSTM1D(4, 3, name="conv_lstm")(block(producer(x)))
    return keras.Model(x, L.Dense(3)(L.Flatten()(h)))


def attention_model(layer):
    def build():
        x = keras.Input((10, 10, 3))
        h = L.Reshape((-1, 6))(block(producer(x)))
        h = layer([h, h]) if isinstance(layer, (L.Attention, L.AdditiveAttention)) else layer(h, h)
        return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling1D()(h)))
    return build


MODELS = {
    "LSTM": sequence_model(lambda h: L.LSTM(4, name="lstm")(h)),
    "GRU": sequence_model(lambda h: L.GRU(4, return_sequences=True, name="gru")(h)),
    "SimpleRNN": sequence_model(lambda h: L.SimpleRNN(4, name="rnn")(h)),
    "Bidirectional": sequence_model(lambda h: L.Bidirectional(L.LSTM(3), name="bidi")(h)),
    "EinsumDense": sequence_model(
        lambda h: L.EinsumDense("abc,cd->abd", output_shape=(None, 5), name="einsum")(h)),
    "MultiHeadAttention": attention_model(L.MultiHeadAttention(2, 4, name="mha")),
    "Attention": attention_model(L.Attention(name="attention")),
    "Embedding": text_cnn,
    "TimeDistributed": video_model,
    "ConvLSTM1D": conv_lstm_model,
}


def test_every_listed_layer_has_a_model_here():
    present = {name for name in KEPT_WHOLE_LAYERS if hasattr(L, name)}
    tested = set(MODELS) | {"RNN", "ConvLSTM2D", "ConvLSTM3D", "GroupQueryAttention", "AdditiveAttention"}
    assert present <= tested, f"no model for {sorted(present - tested)}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_prunes_around_the_kept_whole_layer(name, tmp_path):
    model = prepared(MODELS[name], ZEROED)
    graph = channel_graph(model)
    (kept,) = [c for c in graph.layer_graph.calls if type(c.layer).__name__ == name]
    assert graph.kinds[kept].name == "opaque"
    assert not graph.pinned[graph.layer_channels("p_bn")].any()
    pruned, report = prune_model(model, return_report=True)
    assert pruned.get_layer("p").filters == 8 - len(ZEROED)  # valid conv after p: no carrier
    assert any(f"layer '{kept.name}'" in note for note in report.notes), report.notes
    tokens = name == "Embedding"
    inputs = np.random.default_rng(1).integers(0, 50, (3, 20)) if tokens else random_inputs(model, 3)
    assert_same_function(model, pruned, inputs)
    for old, new in zip(model.get_layer(kept.name).weights, pruned.get_layer(kept.name).weights):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))  # copied unchanged
    if not tokens:  # reloaded() feeds random floats
        reloaded(model, pruned, tmp_path / "pruned.keras")


def test_a_layer_outside_the_list_still_raises():
    """Only the listed Keras layers are kept whole by default; an unknown class still raises."""
    from tf_gamma_prune import UnsupportedLayerError

    class Custom(L.Layer):
        def call(self, x):
            return x

    def build():
        x = keras.Input((10, 10, 3))
        return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling2D()(Custom()(block(producer(x))))))

    with pytest.raises(UnsupportedLayerError, match="unknown_layers"):
        prune_model(prepared(build, ZEROED))
