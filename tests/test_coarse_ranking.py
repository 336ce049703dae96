"""CoarseRanking: Taylor scores from the optimizer's own γ/β gradients, against a direct
activation × gradient computation over the BatchNormalization outputs."""

import keras
import numpy as np
import pytest

from conftest import run_mirrored, tensorflow_only
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
from tf_gamma_prune.errors import NoBatchNormError

L = keras.layers
CLASSES = 3
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # mean over the batch


def small_model(name="ranked"):
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(4, 3, padding="same", name="c1"), L.BatchNormalization(name="b1"),
        L.ReLU(name="r1"),
        L.Conv2D(6, 3, padding="same", name="c2"), L.BatchNormalization(name="b2"),
        L.ReLU(name="r2"),
        L.GlobalAveragePooling2D(name="gap"), L.Dense(CLASSES, name="logits"),
    ], name=name)
    from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm

    randomize_batchnorm(model, seed=0)  # β far from 0, so the β·∂L/∂β term matters
    return model


def ranked_model(lr=0.0, momentum=0.0, name="ranked"):
    model = small_model(name)
    ranking = CoarseRanking(keras.optimizers.SGD(lr, momentum=momentum))
    model.compile(ranking, LOSS)
    return model, ranking


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.integers(0, CLASSES, n)


def direct_contributions(model, x, y):
    """``{bn: Σ_{examples, positions} ∂L/∂y · y}`` per channel of each BN output ``y``,
    for one batch in training mode: the derivative of the loss with respect to a
    per-channel factor ``m = 1`` multiplying each BN output
    (``∂L/∂m_c = Σ ∂L/∂y_c · y_c``), by the backend's own autodiff over the layers
    called one by one (no γ/β gradient involved)."""
    layers = model.layers
    names = [layer.name for layer in layers if isinstance(layer, L.BatchNormalization)]

    def loss_of(masks):
        with keras.StatelessScope():  # BN's moving statistics are not updated
            h = keras.ops.convert_to_tensor(x)
            for layer in layers:
                h = layer(h, training=True)
                if layer.name in masks:
                    h = h * masks[layer.name]
            return LOSS(y, h)

    ones = {n: np.ones(model.get_layer(n).gamma.shape, "float32") for n in names}
    if keras.backend.backend() == "jax":
        import jax

        grads = jax.grad(loss_of)({n: jax.numpy.asarray(v) for n, v in ones.items()})
    else:
        import tensorflow as tf

        masks = {n: tf.constant(v) for n, v in ones.items()}
        with tf.GradientTape() as tape:
            tape.watch(masks)
            loss = loss_of(masks)
        grads = tape.gradient(loss, masks)
    return {n: np.asarray(grads[n], np.float64) for n in names}


def direct_scores(model, batches):
    """Mean over the batches of the squared per-batch contributions."""
    total = None
    for x, y in batches:
        c = direct_contributions(model, x, y)
        total = {n: v ** 2 for n, v in c.items()} if total is None else {
            n: total[n] + c[n] ** 2 for n in total}
    return {n: v / len(batches) for n, v in total.items()}


def batches_of(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


# ------------------------------------------------------------------ the scores
def test_fit_scores_equal_a_direct_activation_times_gradient_computation():
    model, ranking = ranked_model(lr=0.0)  # the weights do not move: same model every step
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert ranking.batches == 3 and ranking.ranked_layers == ["b1", "b2"]
    expected = direct_scores(model, batches_of(x, y, 8))
    scores = ranking.channel_scores()
    assert set(scores) == {"b1", "b2"}
    for name in ("b1", "b2"):
        assert np.all(expected[name] > 0)
        np.testing.assert_allclose(scores[name], expected[name], rtol=2e-3, atol=1e-12)


def test_custom_loop_reads_gamma_and_beta_before_the_update():
    """With a moving model (lr > 0, momentum) each step is scored on the weights the forward
    pass used; a second fit keeps accumulating; reset starts over."""
    model, ranking = ranked_model(lr=0.2, momentum=0.9)
    ranking.attach(model)
    x, y = data(32, seed=2)
    expected = {"b1": 0.0, "b2": 0.0}
    for bx, by in batches_of(x, y, 8):
        c = direct_contributions(model, bx, by)
        expected = {n: expected[n] + c[n] ** 2 for n in expected}
        variables = model.trainable_variables
        if keras.backend.backend() == "jax":
            import jax

            def loss_of(values):
                trainable = values
                non_trainable = [v.value for v in model.non_trainable_variables]
                out, _ = model.stateless_call(trainable, non_trainable, bx, training=True)
                return LOSS(by, out)

            grads = jax.grad(loss_of)([v.value for v in variables])
        else:
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = LOSS(by, model(bx, training=True))
            grads = tape.gradient(loss, variables)
        ranking.apply_gradients(zip(grads, variables))
    assert ranking.batches == 4
    for name, scores in ranking.channel_scores().items():
        np.testing.assert_allclose(scores, expected[name] / 4, rtol=2e-3, atol=1e-12)
    ranking.reset()
    assert ranking.batches == 0
    with pytest.raises(CriterionError, match="no scores yet"):
        ranking.selection(0.5)


def test_training_is_unchanged_by_the_ranking():
    x, y = data(32, seed=3)
    ranked, _ = ranked_model(lr=0.1, momentum=0.9)
    plain = small_model("plain")
    plain.set_weights(ranked.get_weights())
    plain.compile(keras.optimizers.SGD(0.1, momentum=0.9), LOSS)
    for m in (ranked, plain):
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(ranked.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@tensorflow_only
def test_tied_channels_add_their_contributions_before_squaring():
    x = keras.Input((6, 6, 2))
    s = L.BatchNormalization(name="bs")(L.Conv2D(6, 3, padding="same", name="stem")(x))
    r = L.Conv2D(6, 3, padding="same", activation="relu", name="inner")(s)
    r = L.BatchNormalization(name="br")(L.Conv2D(6, 3, padding="same", name="last")(r))
    h = L.ReLU()(L.Add()([s, r]))
    h = L.BatchNormalization(name="bp")(L.Conv2D(4, 1, name="pw")(h))
    model = keras.Model(x, L.Dense(CLASSES)(L.GlobalAveragePooling2D()(L.ReLU()(h))))
    from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm

    randomize_batchnorm(model, seed=1)
    ranking = CoarseRanking(keras.optimizers.SGD(0.0))
    model.compile(ranking, LOSS)
    bx, by = data(16)
    model.fit(bx, by, batch_size=8, shuffle=False, verbose=0)
    scores = ranking.channel_scores()
    assert set(scores) == {"bs", "br", "bp"}
    np.testing.assert_array_equal(scores["bs"], scores["br"])
    # direct: a tape over the three BN outputs; the stream's two BNs add up per batch
    import tensorflow as tf

    helper = keras.Model(model.input, [model.get_layer(n).output for n in ("bs", "br", "bp")]
                         + [model.output])
    expected = {"stream": 0.0, "bp": 0.0}
    for i in (0, 8):
        with tf.GradientTape() as tape:
            *outs, logits = helper(bx[i:i + 8], training=True)
            loss = LOSS(by[i:i + 8], logits)
        grads = tape.gradient(loss, outs)
        c = [(o * g).numpy().sum(axis=(0, 1, 2)).astype(np.float64) for o, g in zip(outs, grads)]
        expected["stream"] = expected["stream"] + (c[0] + c[1]) ** 2
        expected["bp"] = expected["bp"] + c[2] ** 2
    np.testing.assert_allclose(scores["bs"], expected["stream"] / 2, rtol=2e-3, atol=1e-12)
    np.testing.assert_allclose(scores["bp"], expected["bp"] / 2, rtol=2e-3, atol=1e-12)
    selection = ranking.selection(0.5)
    assert selection["bs"].tolist() == selection["br"].tolist()
    small = prune_model(model, selection, probe=False)
    assert small.get_layer("inner").kernel.shape[-2] == len(selection["bs"])


# ------------------------------------------------------------------ selections
def test_selection_is_a_normalised_global_threshold():
    model, ranking = ranked_model()
    x, y = data()
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    scores = ranking.channel_scores()
    normalised = {k: v / np.linalg.norm(v) for k, v in scores.items()}
    pooled = np.concatenate(list(normalised.values()))
    k = 4  # floor(0.4 · 10)
    threshold = np.sort(pooled)[k]
    assert {n: v.tolist() for n, v in ranking.selection(0.4).items()} == {
        n: np.flatnonzero(s >= threshold).tolist() for n, s in normalised.items()}
    raw = np.concatenate(list(scores.values()))
    threshold = np.sort(raw)[k]
    kept = {n: np.flatnonzero(s >= threshold).tolist() for n, s in scores.items()}
    kept = {n: v or [int(np.argmax(scores[n]))] for n, v in kept.items()}  # min_channels=1
    assert {n: v.tolist() for n, v in ranking.selection(0.4, normalize=False).items()} == kept
    assert min(len(v) for v in ranking.selection(0.95, min_channels=2).values()) == 2
    assert all(len(v) % 2 == 0 for v in ranking.selection(0.5, round_to=2).values())
    only = ranking.selection(0.5, layers=["b2"])
    assert list(only) == ["b2"] and len(only["b2"]) == 3
    with pytest.raises(CriterionError, match="not a ranked BatchNormalization"):
        ranking.selection(0.5, layers=["c1"])
    with pytest.raises(CriterionError, match="prune_fraction"):
        ranking.selection(1.5)


def test_selection_for_macs_and_prune_model():
    model, ranking = ranked_model(lr=0.05)
    x, y = data()
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    graph = channel_graph(model)
    one_channel = channel_mac_costs(graph)[~graph.pinned].max()
    target = count_macs(model) // 2
    selection, macs = selection_for_macs(model, ranking.criterion, target,
                                         tolerance=one_channel / target)
    assert abs(macs - target) <= one_channel
    small = prune_model(model, selection, probe=False)
    assert count_macs(small) == macs and small.count_params() < model.count_params()
    assert small(x).shape == (24, CLASSES)
    with pytest.raises(CriterionError, match="not 'other'"):
        ranking.criterion(small_model(name="other"), 0.5)


# ------------------------------------------------------------------ saving
def test_scores_survive_save_and_load(tmp_path):
    model, ranking = ranked_model(lr=0.05, momentum=0.9)
    x, y = data()
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    path = str(tmp_path / "ranked.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.optimizer
    assert isinstance(restored, CoarseRanking) and restored.batches == 3
    for name, scores in ranking.channel_scores().items():
        np.testing.assert_array_equal(restored.channel_scores()[name], scores)
    assert {k: v.tolist() for k, v in restored.selection(0.4).items()} == {
        k: v.tolist() for k, v in ranking.selection(0.4).items()}
    loaded.fit(x, y, batch_size=8, shuffle=False, verbose=0)  # keeps accumulating
    assert restored.batches == 6
    config = keras.saving.serialize_keras_object(ranking)
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, CoarseRanking) and again.get_config() == ranking.get_config()


# ------------------------------------------------------------------ errors
def test_errors():
    with pytest.raises(TypeError, match="Keras 3 optimizer"):
        CoarseRanking("sgd")
    with pytest.raises(ArgumentError, match="does not take"):
        CoarseRanking(keras.optimizers.SGD(), interval=10)
    ranking = CoarseRanking(keras.optimizers.SGD())
    assert ranking.batches == 0
    with pytest.raises(CriterionError, match="no scores yet"):
        ranking.selection(0.5)
    with pytest.raises(RuntimeError, match="attach"):
        ranking.build(small_model().trainable_variables)
    plain = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    plain.compile(CoarseRanking(keras.optimizers.SGD()), "mse")
    with pytest.raises(NoBatchNormError):
        plain.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)


@tensorflow_only
def test_mirrored_strategy_two_cpu_replicas_match_single_device():
    out = run_mirrored(
        "from tf_gamma_prune import CoarseRanking",
        """
        h = keras.layers.BatchNormalization(name="bn", synchronized=True)(
            keras.layers.Dense(16)(x))
        """,
        """
        with strategy.scope():
            model = build()
            ranking = CoarseRanking(keras.optimizers.SGD(0.05, momentum=0.9))
            model.compile(ranking, loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        out[mode] = [ranking.batches, ranking.channel_scores()["bn"].tolist()]
        """)
    (single_batches, single), (mirrored_batches, mirrored) = out["single"], out["mirrored"]
    assert single_batches == mirrored_batches == 8
    assert np.all(np.array(single) > 0)
    np.testing.assert_allclose(single, mirrored, rtol=1e-3, atol=1e-9)
