"""Helpers shared by the keras.ops tests (slices, splits, resizing; no tests here).

Every model has a producer "p" -> "p_bn" -> ReLU whose BN has chosen channels at
γ = 0 with β > 0 (nonzero constants after the ReLU), the other BNs random.
"""

from __future__ import annotations

import keras
import numpy as np
from test_surgery_helpers import randomize_batchnorms

L = keras.layers


def producer(x, filters=8):
    x = L.Conv2D(filters, 3, padding="same", name="p")(x)
    return L.ReLU()(L.BatchNormalization(name="p_bn")(x))


def head(h):
    return L.Dense(3)(L.GlobalAveragePooling2D()(h))


def prepared(builder, zeroed, seed=3):
    """``builder()`` with random BNs and p_bn's channels ``zeroed`` at γ = 0, β in [0.4, 1.3]."""
    model = builder()
    randomize_batchnorms(model, seed=seed, zero_fraction=0.0)
    bn = model.get_layer("p_bn")
    gamma = np.asarray(bn.gamma).copy()
    beta = np.asarray(bn.beta).copy()
    gamma[zeroed] = 0.0
    beta[zeroed] = np.linspace(0.4, 1.3, len(zeroed))
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    return model


def kept(model, key):
    """Independent count: channels of p_bn with γ != 0 inside the Python slice ``key``."""
    gamma = np.asarray(model.get_layer("p_bn").gamma)
    return int(np.count_nonzero(gamma[key]))


def assert_kept_whole(builder, op: str) -> None:
    """The ``op`` node of ``builder()`` is opaque: p_bn's channels stay (zeroed ones too), exactly."""
    from test_surgery_helpers import assert_same_function, random_inputs

    from tf_gamma_prune import channel_graph, prune_model

    model = prepared(builder, [1, 4, 6])
    graph = channel_graph(model)
    (call,) = [c for c in graph.layer_graph.calls if type(c.layer).__name__ == op]
    assert graph.kinds[call].name == "opaque"
    assert graph.pinned[graph.layer_channels("p_bn")].all()
    pruned = prune_model(model, fold="exact")
    assert pruned.get_layer("p").filters == 8
    assert_same_function(model, pruned, random_inputs(model, batch=4))  # even: a batch split


def reloaded(original, pruned, path):
    """``pruned`` saved to ``path`` and loaded back, checked against ``original``'s outputs."""
    from test_surgery_helpers import assert_same_function, random_inputs

    import tf_gamma_prune.layers  # noqa: F401  the custom layers of pruned models

    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert_same_function(original, loaded, random_inputs(original, batch=3))
    return loaded
