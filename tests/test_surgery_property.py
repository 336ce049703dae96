"""Property-based: random DAGs of conv/BN/activation/pool/add/concat/depthwise/
separable/dense/squeeze-excitation/grouped conv/transposed conv/keras.ops
(add, pad, clip, mean)/spatial-concatenation blocks (global-pooling or Flatten→Dense
heads) with random γ zero patterns.

Properties (checked against the ORIGINAL model's outputs, not the analysis):
1. the pruned model computes the original function (relative error ≤ 1e-5);
2. no constant channel that could have been removed survives: every BN
   channel of the pruned model with γ == 0, removed by force (its value folded,
   tied non-constant members treated as 0), changes the outputs — or cannot be
   removed at all (pinned, or tied to a channel the selection keeps) — so
   keeping it was necessary;
3. pruning again removes nothing;
4. the default fold (``"auto"``) is exact too and never makes the model
   larger (parameters, constants included).

Properties 1-3 are checked with ``fold="exact"``, which removes every
removable constant channel.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import json
import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_surgery_helpers import random_inputs, randomize_batchnorms, relative_error

from tf_gamma_prune import SelectionError, model_cost, prune_model
from tf_gamma_prune.analysis.batchnorm import batchnorm_layers

L = keras.layers

ACTS = ["relu", "relu6", "swish", "sigmoid", "linear", "leaky", "tanh"]

block = st.one_of(
    st.tuples(st.just("conv"), st.integers(0, 99), st.integers(1, 5),
              st.sampled_from([1, 3]), st.sampled_from(["same", "valid"]),
              st.sampled_from([1, 2]), st.booleans(), st.sampled_from(ACTS)),
    st.tuples(st.just("dw"), st.integers(0, 99), st.sampled_from([1, 2]),
              st.sampled_from(["same", "valid"]), st.sampled_from([1, 2]),
              st.sampled_from(ACTS)),
    st.tuples(st.just("pool"), st.integers(0, 99), st.sampled_from(["max", "avg"]),
              st.sampled_from(["same", "valid"])),
    st.tuples(st.just("pad"), st.integers(0, 99)),
    st.tuples(st.just("add"), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("concat"), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("se"), st.integers(0, 99)),
    st.tuples(st.just("dense"), st.integers(0, 99), st.integers(1, 5), st.sampled_from(ACTS)),
    st.tuples(st.just("sep"), st.integers(0, 99), st.integers(1, 5),
              st.sampled_from(["same", "valid"]), st.sampled_from(ACTS)),
    st.tuples(st.just("grouped"), st.integers(0, 99), st.integers(1, 3),
              st.sampled_from(["same", "valid"]), st.sampled_from(ACTS)),
    st.tuples(st.just("transpose"), st.integers(0, 99), st.integers(1, 5),
              st.sampled_from([1, 2]), st.sampled_from(ACTS)),
    st.tuples(st.just("ops"), st.integers(0, 99), st.integers(0, 99),
              st.sampled_from(["add", "pad", "clip", "mean"])),
    st.tuples(st.just("stack"), st.integers(0, 99), st.integers(0, 99)),
)

recipes = st.fixed_dictionaries({
    "size": st.integers(4, 8),
    "channels": st.integers(1, 3),
    "blocks": st.lists(block, min_size=1, max_size=7),
    "head_width": st.integers(1, 4),
    "flatten_head": st.booleans(),
    "seed": st.integers(0, 2**16),
    "zero_fraction": st.sampled_from([0.3, 0.6, 0.9]),
})


def activation(name):
    return {"relu6": L.ReLU(6.0), "leaky": L.LeakyReLU(0.1)}.get(name) or L.Activation(name)


def build(recipe):
    x = keras.Input((recipe["size"], recipe["size"], recipe["channels"]))
    tensors = [x]
    for spec in recipe["blocks"]:
        kind, i = spec[0], spec[1] % len(tensors)
        t = tensors[i]
        size = t.shape[1]
        if kind == "conv":
            _, _, width, k, padding, stride, bias, act = spec
            padding = "same" if size < k else padding
            y = L.Conv2D(width, k, padding=padding, strides=stride, use_bias=bias)(t)
            y = activation(act)(L.BatchNormalization()(y))
        elif kind == "dw":
            _, _, dm, padding, stride, act = spec
            padding = "same" if size < 3 else padding
            y = L.DepthwiseConv2D(3, padding=padding, strides=stride, depth_multiplier=dm)(t)
            y = activation(act)(L.BatchNormalization()(y))
        elif kind == "pool":
            _, _, pool, padding = spec
            padding = "same" if size < 2 else padding
            cls = L.MaxPooling2D if pool == "max" else L.AveragePooling2D
            y = cls(2, padding=padding)(t)
        elif kind == "pad":
            y = L.ZeroPadding2D(1)(t)
        elif kind == "add":
            same = [u for u in tensors if tuple(u.shape) == tuple(t.shape) and u is not t]
            if same:
                u = same[spec[2] % len(same)]
            else:  # project t to a same-shaped branch
                u = L.BatchNormalization()(L.Conv2D(t.shape[-1], 1)(t))
            y = L.Add()([t, u])
        elif kind == "dense":  # a Dense on a feature map acts on the channel axis
            _, _, width, act = spec
            y = activation(act)(L.BatchNormalization()(L.Dense(width)(t)))
        elif kind == "sep":
            _, _, width, padding, act = spec
            padding = "same" if size < 3 else padding
            y = L.SeparableConv2D(width, 3, padding=padding)(t)
            y = activation(act)(L.BatchNormalization()(y))
        elif kind == "concat":
            same = [u for u in tensors if tuple(u.shape[1:3]) == tuple(t.shape[1:3])]
            y = L.Concatenate()([t, same[spec[2] % len(same)]])
        elif kind == "grouped":  # groups = the input's channel count's largest divisor <= 3
            _, _, per_group, padding, act = spec
            groups = max(g for g in (1, 2, 3) if t.shape[-1] % g == 0)
            padding = "same" if size < 3 else padding
            y = L.Conv2D(groups * per_group, 3, padding=padding, groups=groups)(t)
            y = activation(act)(L.BatchNormalization()(y))
        elif kind == "transpose":
            _, _, width, stride, act = spec
            y = L.Conv2DTranspose(width, 3, strides=stride, padding="same")(t)
            y = activation(act)(L.BatchNormalization()(y))
        elif kind == "ops":
            op = spec[3]
            if op == "add":
                same = [u for u in tensors if tuple(u.shape) == tuple(t.shape)]
                y = keras.ops.add(t, same[spec[2] % len(same)])
            elif op == "pad":
                y = keras.ops.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]])
            elif op == "clip":
                y = keras.ops.clip(t, -1.0, 1.5)
            else:
                y = keras.ops.mean(t, axis=(1, 2), keepdims=True)
        elif kind == "stack":  # concatenation along a spatial axis
            same = [u for u in tensors if tuple(u.shape[2:]) == tuple(t.shape[2:])]
            y = L.Concatenate(axis=1)([t, same[spec[2] % len(same)]])
        else:  # squeeze-and-excitation
            s = L.GlobalAveragePooling2D(keepdims=True)(t)
            s = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(2, 1)(s)))
            s = L.Conv2D(t.shape[-1], 1, activation="sigmoid")(s)
            y = L.Multiply()([t, s])
        tensors.append(y)
    if recipe.get("flatten_head"):
        h = L.Flatten()(tensors[-1])
    else:
        h = L.GlobalAveragePooling2D()(tensors[-1])
    # swish, not ReLU, after global pooling: a ReLU on pooled features is often
    # dead for every probe example, which would hide channels from the oracle
    h = L.Activation("swish")(L.BatchNormalization()(L.Dense(recipe["head_width"])(h)))
    return keras.Model(x, L.Dense(2)(h))


def check_recipe(recipe):
    model = build(recipe)
    randomize_batchnorms(model, seed=recipe["seed"], zero_fraction=recipe["zero_fraction"])
    x = random_inputs(model, batch=16, seed=recipe["seed"] + 1)
    default = prune_model(model)
    assert relative_error(model, default, x) <= 1e-5
    assert model_cost(default).params <= model_cost(model).params
    pruned = prune_model(model, fold="exact")
    assert relative_error(model, pruned, x) <= 1e-5
    _, again = prune_model(pruned, fold="exact", return_report=True, probe=False)
    assert again.removed_constant == 0
    for name, bn in batchnorm_layers(pruned):
        gamma = np.asarray(bn.gamma) if bn.scale else np.ones(bn.moving_mean.shape)
        for k in np.flatnonzero(gamma == 0):
            keep = [j for j in range(len(gamma)) if j != k]
            if not keep:
                continue
            try:
                forced = prune_model(pruned, {name: keep}, remove_constant=False, fold="exact")
            except SelectionError:
                continue  # pinned: could not have been removed
            if forced.get_layer(name).moving_mean.shape[0] == len(gamma):
                continue  # tied to a kept channel (e.g. depthwise multiplier)
            err = relative_error(pruned, forced, x)
            assert err > 1e-6, f"{name}[{k}] is constant and removable but was kept"


FUZZ_CASES = pathlib.Path(__file__).parent / "fuzz_cases"


def check_and_record(recipe, test_name):
    """Run :func:`check_recipe`; on failure save the recipe as a reproducible case.

    Hypothesis calls the test last with its shrunk (minimal) failing example, so
    ``tests/fuzz_cases/new/<test>.json`` ends up holding that one. Move it up into
    ``tests/fuzz_cases/`` to keep it as a regression case: ``test_saved_cases``
    replays every JSON file there.
    """
    try:
        check_recipe(recipe)
    except Exception:
        target = FUZZ_CASES / "new" / f"{test_name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(recipe, indent=1) + "\n")
        raise


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipes)
def test_random_dags(recipe):
    check_and_record(recipe, "test_random_dags")


@pytest.mark.parametrize("case", sorted(FUZZ_CASES.glob("*.json")), ids=lambda p: p.stem)
def test_saved_cases(case):
    recipe = json.loads(case.read_text())
    recipe["blocks"] = [tuple(b) for b in recipe["blocks"]]
    check_recipe(recipe)


@pytest.mark.slow
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipes)
def test_random_dags_many(recipe):
    check_and_record(recipe, "test_random_dags_many")
