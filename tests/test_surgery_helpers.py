"""Helpers shared by the surgery tests (no tests here).

The independent check everywhere: run the ORIGINAL model and the pruned model
on the same random inputs in inference mode and compare in float64.
"""

from __future__ import annotations

import keras
import numpy as np

from tf_gamma_prune.analysis.batchnorm import batchnorm_layers, randomize_batchnorm


def randomize_batchnorms(model, seed=0, zero_fraction=0.5, positive_beta=False):
    """Random signed γ (a random subset exactly 0), β, moving mean and variance."""
    randomize_batchnorm(model, seed=seed, zero_fraction=zero_fraction, signed_gamma=True,
                        positive_beta=positive_beta)
    return model


def random_inputs(model, batch=2, seed=1):
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs:
        shape = (batch,) + tuple(d if d is not None else 16 for d in t.shape[1:])
        arrays.append(rng.standard_normal(shape).astype("float32"))
    return arrays[0] if len(arrays) == 1 else arrays


def outputs64(model, x):
    out = model(x, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(o), np.float64)
            for o in keras.tree.flatten(out)]


def relative_error(original, pruned, x):
    """max |pruned - original| / max |original| over all outputs."""
    a, b = outputs64(original, x), outputs64(pruned, x)
    assert [o.shape for o in a] == [o.shape for o in b]
    diff = max(float(np.abs(p - q).max()) for p, q in zip(a, b))
    scale = max(float(np.abs(p).max()) for p in a)
    return diff / max(scale, 1e-30)


def assert_same_function(original, pruned, x=None, tol=1e-5):
    x = random_inputs(original) if x is None else x
    err = relative_error(original, pruned, x)
    assert err <= tol, f"relative output error {err:.3g} > {tol}"
    return err


def batchnorm_gammas(model):
    return {name: np.asarray(bn.gamma) for name, bn in batchnorm_layers(model) if bn.scale}
