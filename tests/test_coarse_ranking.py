"""CoarseRanking: Taylor scores accumulated during fit, against a direct GradientTape computation."""

import keras
import numpy as np
import pytest

from conftest import tensorflow_only
from tf_gamma_prune import (
    ArgumentError,
    CoarseRanking,
    CriterionError,
    channel_mac_costs,
    count_macs,
    prune_model,
    selection_for_macs,
)
from tf_gamma_prune.analysis.channel_graph import channel_graph

L = keras.layers
pytestmark = tensorflow_only
CLASSES = 3


def small_model(batchnorm=True, name="ranked"):
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", name="c1")(x)
    if batchnorm:
        h = L.BatchNormalization(name="b1")(h)
    h = L.ReLU(name="r1")(h)
    h = L.Conv2D(6, 3, padding="same", name="c2")(h)
    h = L.ReLU(name="r2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(x, L.Dense(CLASSES, name="logits")(h), name=name)
    if batchnorm:
        from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm

        randomize_batchnorm(model, seed=0)
    model.compile(keras.optimizers.SGD(0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.integers(0, CLASSES, n)


def direct_taylor(model, batches):
    """Mean over examples of |Σ_positions a · ∂ℓ_n/∂a| for the tensors the convs/dense read
    (r1 → c2, gap → logits), by a GradientTape over a helper model's intermediate outputs
    and per-example losses (reduction=None)."""
    import tensorflow as tf

    helper = keras.Model(model.input, [model.get_layer("r1").output,
                                       model.get_layer("gap").output, model.output])
    per_example_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  reduction=None)
    totals = {"c1": 0.0, "c2": 0.0}
    count = 0
    for x, y in batches:
        with tf.GradientTape() as tape:
            r1, gap, logits = helper(x, training=False)
            loss = tf.reduce_sum(per_example_loss(y, logits))
        g_r1, g_gap = tape.gradient(loss, [r1, gap])
        totals["c1"] = totals["c1"] + np.abs((r1 * g_r1).numpy().sum(axis=(1, 2))).sum(axis=0)
        totals["c2"] = totals["c2"] + np.abs((gap * g_gap).numpy()).sum(axis=0)
        count += len(x)
    return {k: v / count for k, v in totals.items()}


# ------------------------------------------------------------------ the scores
def test_update_equals_a_direct_activation_times_gradient_computation():
    model = small_model(batchnorm=True)
    x, y = data()
    ranking = CoarseRanking(data=(x, y))
    ranking.set_model(model)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    for bx, by in batches:
        ranking.update(bx, by)
    expected = direct_taylor(model, batches)
    scores = ranking.channel_scores()
    assert set(scores) == {"c1", "c2"} and ranking.examples == 24 and ranking.updates == 2
    for name in ("c1", "c2"):
        assert np.all(expected[name] > 0)
        np.testing.assert_allclose(scores[name], expected[name], rtol=2e-4, atol=1e-9)


def test_fit_accumulates_every_interval_steps_on_its_own_batches():
    model = small_model(batchnorm=False)  # learning rate 0 and no BN: weights stay put
    x, y = data(32, seed=1)
    ranking = CoarseRanking(data=(x, y), interval=2, batch_size=8)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[ranking])
    assert ranking.updates == 4 and ranking.examples == 32  # 8 steps, the 2nd, 4th, ...
    assert ranking.ranking_seconds > 0
    expected = direct_taylor(model, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)])
    for name, scores in ranking.channel_scores().items():
        np.testing.assert_allclose(scores, expected[name], rtol=2e-4, atol=1e-9)
    # a stream of (x, y) batches cycles too
    import tensorflow as tf

    stream = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)
    again = CoarseRanking(data=stream, interval=1)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[again])
    assert again.updates == 4 and again.examples == 32
    expected = direct_taylor(model, [(x[:8], y[:8]), (x[8:16], y[8:16])])
    for name, scores in again.channel_scores().items():
        np.testing.assert_allclose(scores, expected[name], rtol=2e-4, atol=1e-9)


def test_a_new_model_resets_and_the_same_model_keeps_accumulating():
    x, y = data(16)
    model = small_model()
    ranking = CoarseRanking(data=(x, y), interval=1, batch_size=8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ranking])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ranking])
    assert ranking.updates == 4
    other = small_model(name="other")
    other.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ranking])
    assert ranking.updates == 2
    ranking.reset()
    with pytest.raises(CriterionError, match="no scores yet"):
        ranking.selection(0.5)


# ------------------------------------------------------------------ selections
def test_selection_is_a_normalised_global_threshold():
    model = small_model()
    x, y = data()
    ranking = CoarseRanking(data=(x, y))
    ranking.set_model(model)
    ranking.update(x, y)
    scores = ranking.channel_scores()
    normalised = {k: v / np.linalg.norm(v) for k, v in scores.items()}
    pooled = np.concatenate(list(normalised.values()))
    k = 4  # floor(0.4 · 10)
    threshold = np.sort(pooled)[k]
    selection = ranking.selection(0.4)
    assert {n: v.tolist() for n, v in selection.items()} == {
        n: np.flatnonzero(s >= threshold).tolist() for n, s in normalised.items()}
    raw = np.concatenate(list(scores.values()))
    threshold = np.sort(raw)[k]
    assert {n: v.tolist() for n, v in ranking.selection(0.4, normalize=False).items()} == {
        n: np.flatnonzero(s >= threshold).tolist() for n, s in scores.items()}
    # min_channels / round_to
    assert min(len(v) for v in ranking.selection(0.95, min_channels=2).values()) == 2
    assert all(len(v) % 2 == 0 for v in ranking.selection(0.5, round_to=2).values())


def test_selection_for_macs_and_prune_model():
    model = small_model()
    x, y = data()
    ranking = CoarseRanking(data=(x, y), interval=1, batch_size=8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ranking])
    graph = channel_graph(model)
    one_channel = channel_mac_costs(graph)[~graph.pinned].max()
    target = count_macs(model) // 2
    selection, macs = selection_for_macs(model, ranking.criterion, target,
                                         tolerance=one_channel / target)
    assert abs(macs - target) <= one_channel
    small = prune_model(model, selection, probe=False)
    assert count_macs(small) == macs and small.count_params() < model.count_params()
    assert small(x).shape == (24, CLASSES)
    # reproducible: the same weights and batches give the same selection
    twin = small_model()
    twin.set_weights(model.get_weights())
    ranking_twin = CoarseRanking(data=(x, y), interval=1, batch_size=8)
    ranking_twin.set_model(twin)
    for i in range(0, 24, 8):
        ranking_twin.update(x[i:i + 8], y[i:i + 8])
    twin_selection = ranking_twin.selection(0.4)
    ranking.reset()
    ranking.set_model(model)
    for i in range(0, 24, 8):
        ranking.update(x[i:i + 8], y[i:i + 8])
    assert {k: v.tolist() for k, v in ranking.selection(0.4).items()} == {
        k: v.tolist() for k, v in twin_selection.items()}
    with pytest.raises(CriterionError, match="not 'other'"):
        ranking.criterion(small_model(name="other"), 0.5)


def test_pruned_model_computes_the_kept_channels():
    model = small_model(batchnorm=False)
    for name in ("c1", "c2"):
        layer = model.get_layer(name)
        layer.bias.assign(np.zeros(layer.bias.shape))
    x, y = data()
    ranking = CoarseRanking(data=(x, y))
    ranking.set_model(model)
    ranking.update(x, y)
    selection = ranking.selection(0.5)
    small = prune_model(model, selection, probe=False)
    for name, keep in selection.items():
        kernel = model.get_layer(name).kernel.numpy()
        kernel[..., np.setdiff1d(np.arange(kernel.shape[-1]), keep)] = 0.0
        model.get_layer(name).kernel.assign(kernel)
    np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_tied_channels_are_scored_and_removed_together():
    x = keras.Input((6, 6, 2))
    s = L.Conv2D(6, 3, padding="same", name="stem")(x)
    r = L.Conv2D(6, 3, padding="same", activation="relu", name="inner")(s)
    r = L.Conv2D(6, 3, padding="same", name="last")(r)
    h = L.ReLU()(L.Add()([s, r]))
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = L.Conv2D(4, 1, name="pw")(h)
    model = keras.Model(x, L.Dense(CLASSES)(L.GlobalAveragePooling2D()(h)))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bx, by = data(16)
    ranking = CoarseRanking(data=(bx, by))
    ranking.set_model(model)
    ranking.update(bx, by)
    layers = ["stem", "inner", "last"]
    scores = ranking.channel_scores(layers)
    np.testing.assert_array_equal(scores["stem"], scores["last"])
    # the stream's score: |Σ a·g| summed over the tensors the convs read (inner reads stem's
    # output, dw→pw reads the sum), checked against a direct tape on those tensors
    import tensorflow as tf

    helper = keras.Model(model.input, [model.get_layer("stem").output,
                                       model.get_layer("dw").output, model.output])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    with tf.GradientTape() as tape:
        stem, dw, logits = helper(bx, training=False)
        loss = tf.reduce_sum(loss_fn(by, logits))
    g_stem, g_dw = tape.gradient(loss, [stem, dw])
    per_example = (stem * g_stem).numpy().sum(axis=(1, 2)) + (dw * g_dw).numpy().sum(axis=(1, 2))
    np.testing.assert_allclose(scores["stem"], np.abs(per_example).mean(axis=0), rtol=2e-4)
    selection = ranking.selection(0.5, layers=layers)
    assert selection["stem"].tolist() == selection["last"].tolist()
    small = prune_model(model, selection, probe=False)
    assert small.get_layer("dw").kernel.shape[-2] == len(selection["stem"])


# ------------------------------------------------------------------ config and errors
def test_config_round_trip_and_errors():
    ranking = CoarseRanking(interval=5, batch_size=16)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ranking))
    assert isinstance(restored, CoarseRanking)
    assert restored.get_config() == {"interval": 5, "batch_size": 16}
    x, y = data(8)
    model = small_model()
    with pytest.raises(ArgumentError, match="needs data"):
        model.fit(x, y, verbose=0, callbacks=[CoarseRanking()])
    with pytest.raises(ArgumentError, match="interval"):
        CoarseRanking(interval=0)
    with pytest.raises(ArgumentError, match="no model"):
        CoarseRanking().update(x, y)
    uncompiled = keras.Model(model.input, model.output)
    ranking = CoarseRanking(data=(x, y))
    ranking.set_model(uncompiled)
    with pytest.raises(ArgumentError, match="not compiled"):
        ranking.update(x, y)
    ranking.set_model(model)
    with pytest.raises(CriterionError, match="no scores yet"):
        ranking.selection(0.5)
    ranking.update(x, y)
    with pytest.raises(CriterionError, match="prune_fraction"):
        ranking.selection(1.5)
