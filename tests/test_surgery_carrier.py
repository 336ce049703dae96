"""prune_model(fold="carrier"): exact like fold="exact", without BorderCorrection layers.

Where removed constant channels feed a zero-padded conv, one of them (the
carrier) stays and the reader's weights route the others through it. Every
test compares the pruned model with the ORIGINAL model on random inputs
(inference mode, float64): relative max error <= 1e-5, and checks widths and
weights against NumPy computations from the original weights.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_surgery import CASES, cbr, head
from test_surgery_helpers import (
    assert_same_function,
    outputs64,
    random_inputs,
    randomize_batchnorms,
    relative_error,
)

from tf_gamma_prune import prune_model
from tf_gamma_prune.analysis.flops import model_cost
from tf_gamma_prune.layers import BorderCorrection

L = keras.layers


def borders(model):
    return [l.name for l in model.layers if isinstance(l, BorderCorrection)]


def set_bn(model, name, gamma, beta):
    bn = model.get_layer(name)
    bn.gamma.assign(np.asarray(gamma, "float32"))
    bn.beta.assign(np.asarray(beta, "float32"))


def constants_after_relu(model, name):
    """relu(β) of a BN (its γ = 0 channels output exactly that)."""
    return np.maximum(np.asarray(model.get_layer(name).beta, np.float64), 0.0)


# --- the basic case, checked weight by weight -------------------------------------------
def same_convnet(sequential=False):
    layers = [L.Conv2D(8, 3, padding="same", name="c1"), L.BatchNormalization(name="bn1"),
              L.ReLU(name="r1"), L.Conv2D(6, 3, padding="same", name="c2"),
              L.BatchNormalization(name="bn2"), L.ReLU(name="r2"),
              L.Conv2D(4, 3, padding="same", name="c3"), L.GlobalAveragePooling2D(),
              L.Dense(3, name="logits")]
    if sequential:
        return keras.Sequential([keras.Input((9, 9, 3))] + layers)
    x = keras.Input((9, 9, 3))
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y)


@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
def test_carrier_is_exact_one_extra_channel_no_border_layer(sequential):
    model = randomize_batchnorms(same_convnet(sequential), seed=0, zero_fraction=0.0)
    zero1 = np.array([0, 1, 0, 1, 1, 0, 0, 1], bool)  # 4 removed, constants relu(β)
    set_bn(model, "bn1", np.where(zero1, 0.0, 1.3), [0.2, 0.7, -0.1, 0.4, 1.1, 0.3, 0.2, -0.5])
    zero2 = np.array([1, 0, 1, 0, 0, 0], bool)
    set_bn(model, "bn2", np.where(zero2, 0.0, 0.8), [0.5, 0.1, 0.9, -0.2, 0.0, 0.3])
    x = random_inputs(model, batch=3)

    exact, rep_exact = prune_model(model, return_report=True, fold="exact")
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert borders(exact) and rep_exact.border_corrections == ["c2", "c3"]
    assert borders(pruned) == [] and report.border_corrections == []
    assert relative_error(model, pruned, x) <= 1e-5
    assert report.max_rel_deviation <= 1e-5
    # kept + 1 carrier: the removed constant with the largest relu(β)
    c1 = constants_after_relu(model, "bn1")
    c2 = constants_after_relu(model, "bn2")
    assert pruned.get_layer("c1").filters == (~zero1).sum() + 1
    assert pruned.get_layer("c2").filters == (~zero2).sum() + 1
    carrier1 = int(np.flatnonzero(zero1)[np.argmax(c1[zero1])])
    carrier2 = int(np.flatnonzero(zero2)[np.argmax(c2[zero2])])
    assert report.carriers == {"c2": carrier1, "c3": carrier2}
    assert report.carrier_channels == {"c1": [carrier1], "bn1": [carrier1],
                                       "c2": [carrier2], "bn2": [carrier2]}
    # the reader's kernel, from the original weights: W_c += Σ_j W_j c_j / c_c
    w = np.asarray(model.get_layer("c2").kernel, np.float64)
    keep_in = np.flatnonzero(~zero1 | (np.arange(8) == carrier1))
    keep_out = np.flatnonzero(~zero2 | (np.arange(6) == carrier2))
    expected = w.copy()
    for j in np.flatnonzero(zero1):
        if j != carrier1:
            expected[:, :, carrier1, :] += w[:, :, j, :] * c1[j] / c1[carrier1]
    expected = expected[:, :, keep_in][..., keep_out]
    np.testing.assert_allclose(np.asarray(pruned.get_layer("c2").kernel), expected,
                               rtol=1e-5, atol=1e-6)
    assert [type(l) for l in pruned.layers if not isinstance(l, L.InputLayer)] == \
        [type(l) for l in model.layers if not isinstance(l, L.InputLayer)]
    # honest counts: params and MACs of the model as built, carrier included
    assert report.params_after == pruned.count_params()
    assert report.macs_after == model_cost(pruned).macs
    hw = 9 * 9
    k1, k2 = pruned.get_layer("c1").filters, pruned.get_layer("c2").filters
    assert report.macs_after == hw * 9 * (3 * k1 + k1 * k2 + k2 * 4) + 4 * 3
    assert "carriers" in report.summary()


def test_activation_stays_in_the_reader():
    # the exact fold splits a reader's activation off (it must follow the
    # border map); with a carrier it stays fused
    x = keras.Input((7, 7, 2))
    h = cbr(x, 6, padding="same")
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="reader")(h)
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=3, positive_beta=True)
    exact = prune_model(model, fold="exact")
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert exact.get_layer("reader").activation.__name__ == "linear"
    assert pruned.get_layer("reader").activation.__name__ == "relu"
    assert report.carriers and borders(pruned) == []
    assert_same_function(model, pruned)


def test_zero_constants_need_no_carrier():
    # relu(β) = 0 for every removed channel: nothing to fold, nothing to carry
    model = randomize_batchnorms(same_convnet(), seed=0, zero_fraction=0.0)
    set_bn(model, "bn1", [0, 1, 0, 1, 0, 1, 1, 1], [-0.3, 0.2, -0.1, 0.1, -2.0, 0.4, 0.1, 0.2])
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert report.carriers == {} and report.carrier_channels == {}
    assert pruned.get_layer("c1").filters == 5
    assert_same_function(model, pruned)


# --- graph shapes -----------------------------------------------------------------------
def test_one_tensor_two_padded_readers_share_one_carrier():
    x = keras.Input((8, 8, 3))
    h = cbr(x, 8, padding="same", name="c1")
    a = L.Conv2D(4, 3, padding="same", name="ra")(h)
    b = L.Conv2D(5, (1, 3), padding="same", strides=2, name="rb")(h)
    y = L.Concatenate()([L.GlobalAveragePooling2D()(a), L.GlobalAveragePooling2D()(b)])
    model = randomize_batchnorms(keras.Model(x, L.Dense(3)(y)), seed=1, positive_beta=True)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    removed = int((np.asarray(model.layers[2].gamma) == 0).sum())
    assert removed >= 2
    assert pruned.get_layer("c1").filters == 8 - removed + 1
    assert set(report.carriers) == {"ra", "rb"}
    assert report.carriers["ra"] == report.carriers["rb"]
    assert borders(pruned) == []
    assert_same_function(model, pruned)


def test_residual_add():
    x = keras.Input((8, 8, 3))
    s = cbr(x, 6, padding="same")
    b = cbr(s, 5, padding="same")
    b = L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(b))
    y = L.ReLU()(L.Add()([s, b]))
    y = cbr(y, 4, padding="same")
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=2, zero_fraction=0.5,
                                 positive_beta=True)
    exact, rep_exact = prune_model(model, return_report=True, fold="exact")
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert rep_exact.border_corrections and report.border_corrections == []
    assert report.carriers
    assert_same_function(model, pruned)
    assert relative_error(exact, pruned, random_inputs(model)) <= 1e-5


def test_pooling_between_producer_and_reader():
    x = keras.Input((12, 12, 3))
    h = cbr(x, 8, padding="same", name="c1")
    h = L.MaxPooling2D(3, strides=2, padding="same")(h)
    h = L.AveragePooling2D(2)(h)
    y = L.Conv2D(4, 3, padding="same", name="reader")(h)
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=4, positive_beta=True)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    kept = int((np.asarray(model.layers[2].gamma) != 0).sum())
    assert pruned.get_layer("c1").filters == kept + 1
    assert "reader" in report.carriers and borders(pruned) == []
    assert_same_function(model, pruned)


def test_zero_padding_layer_then_valid_conv():
    # ZeroPadding2D turns the constants into maps (0 in the pad), all of the
    # same shape: one channel still carries them
    x = keras.Input((8, 8, 3))
    h = cbr(x, 8, padding="same", name="c1")
    h = L.ZeroPadding2D(((1, 2), (0, 1)))(h)
    y = L.Conv2D(4, 3, strides=2, name="reader")(h)
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=5, positive_beta=True)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert "reader" in report.carriers and borders(pruned) == []
    assert_same_function(model, pruned)


def test_strided_and_1d_convs():
    x = keras.Input((11, 9, 3))
    y = cbr(x, 8, padding="same")
    y = cbr(y, 6, kernel=(3, 5), padding="same", strides=2)
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=6, positive_beta=True)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert len(report.carriers) == 2 and borders(pruned) == []
    assert_same_function(model, pruned)

    x = keras.Input((20, 3))
    y = cbr(x, 8, conv=L.Conv1D, padding="same")
    y = cbr(y, 6, conv=L.Conv1D, padding="causal", dilation_rate=2)
    y = cbr(y, 6, conv=L.Conv1D, padding="same", strides=2)
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=6, positive_beta=True)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert len(report.carriers) == 3 and borders(pruned) == []
    assert_same_function(model, pruned)


def test_transposed_conv_reader():
    x = keras.Input((6, 6, 3))
    y = cbr(x, 8, padding="same")
    y = cbr(y, 6, conv=L.Conv2DTranspose, strides=2, padding="same")
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=7, positive_beta=True)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert len(report.carriers) == 2 and borders(pruned) == []
    assert_same_function(model, pruned)


# --- fallbacks --------------------------------------------------------------------------
def test_depthwise_between_producer_and_reader_falls_back_to_a_border_map():
    x = keras.Input((8, 8, 3))
    h = cbr(x, 8, kernel=1)
    h = L.DepthwiseConv2D(3, padding="same")(h)  # each constant becomes its own map
    y = L.Conv2D(4, 1, name="project")(h)
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=8, positive_beta=True)
    exact = prune_model(model, fold="exact")
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert "project" not in report.carriers
    assert report.border_corrections == ["project"]
    assert any("'project' keeps a BorderCorrection" in n and "depthwise" in n
               for n in report.notes)
    assert [l.filters for l in pruned.layers if isinstance(l, L.Conv2D)] == \
        [l.filters for l in exact.layers if isinstance(l, L.Conv2D)]
    assert_same_function(model, pruned)


def test_separable_reader_falls_back_and_stays_exact():
    x = keras.Input((8, 8, 3))
    h = cbr(x, 8, padding="same")
    y = L.SeparableConv2D(4, 3, padding="same", name="sep")(h)
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=9, positive_beta=True)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert "sep" in report.border_corrections
    assert any("'sep' keeps a BorderCorrection (separable" in n for n in report.notes)
    assert_same_function(model, pruned)


def test_calibration_means_ride_on_the_carrier():
    model = randomize_batchnorms(same_convnet(), seed=10, positive_beta=True)
    data = np.random.default_rng(0).standard_normal((32, 9, 9, 3)).astype("float32")
    kept = np.flatnonzero(np.asarray(model.get_layer("bn1").gamma) != 0)
    selection = {"bn1": kept[:-2]}  # drop two non-constant channels too (mean-replaced)
    exact = prune_model(model, selection, calibration_data=data)
    pruned, report = prune_model(model, selection, fold="carrier", calibration_data=data,
                                 return_report=True)
    assert "c2" in report.carriers and borders(pruned) == []
    # the same mean-replaced function as the exact fold
    assert relative_error(exact, pruned, data[:4]) <= 1e-5


def test_only_calibration_means_cannot_be_carried():
    model = randomize_batchnorms(same_convnet(), seed=11, zero_fraction=0.0)
    data = np.random.default_rng(0).standard_normal((16, 9, 9, 3)).astype("float32")
    exact = prune_model(model, {"bn1": [0, 1, 2, 3, 4]}, calibration_data=data)
    pruned, report = prune_model(model, {"bn1": [0, 1, 2, 3, 4]}, fold="carrier",
                                 calibration_data=data, return_report=True)
    assert report.carriers == {} and report.border_corrections == ["c2"]
    assert any("calibration-mean" in n for n in report.notes)
    assert relative_error(exact, pruned, data[:4]) <= 1e-6


# --- round_to, dynamic shapes, saving ----------------------------------------------------
def test_round_to_reuses_a_constant_channel_kept_back_by_rounding():
    x = keras.Input((8, 8, 3))
    h = cbr(x, 16, padding="same", name="c1")
    y = L.Conv2D(4, 3, padding="same", name="reader")(h)
    model = keras.Model(x, head(y))
    randomize_batchnorms(model, seed=12, zero_fraction=0.0, positive_beta=True)
    bn = model.layers[2]
    gamma = np.asarray(bn.gamma).copy()
    gamma[:13] = 0.0  # 3 kept -> rounding keeps 5 of the 13 constants back: width 8
    bn.gamma.assign(gamma)
    exact, rep_exact = prune_model(model, round_to=8, return_report=True, fold="exact")
    pruned, report = prune_model(model, fold="carrier", round_to=8, return_report=True)
    assert exact.get_layer("c1").filters == 8
    assert rep_exact.border_corrections == ["reader"]  # 8 removed constants to fold
    assert pruned.get_layer("c1").filters == 8  # a kept-back constant carries: no extra width
    assert report.carrier_channels == {}
    # rounding keeps back the largest constants (equal γ = 0), the largest one carries
    c = constants_after_relu(model, bn.name)[:13]
    assert report.carriers == {"reader": int(np.argmax(c))}
    assert borders(pruned) == []
    assert_same_function(model, pruned)


def test_round_to_never_adds_a_block_for_a_carrier():
    # 8 kept of 16: no spare slot. A carrier would make the width 9 -> 16, a
    # whole block more: the reader keeps its border map instead (round_to=1 carries)
    x = keras.Input((8, 8, 3))
    h = cbr(x, 16, padding="same", name="c1")
    y = L.Conv2D(4, 3, padding="same", name="reader")(h)
    model = keras.Model(x, head(y))
    randomize_batchnorms(model, seed=12, zero_fraction=0.0, positive_beta=True)
    model.layers[2].gamma.assign(np.where(np.arange(16) < 8, 0.0, 1.0).astype("float32"))
    pruned, report = prune_model(model, fold="carrier", round_to=8, return_report=True)
    assert pruned.get_layer("c1").filters == 8
    assert report.carriers == {} and report.border_corrections == ["reader"]
    assert any("'reader' keeps a BorderCorrection" in n and "round_to=8" in n
               for n in report.notes)
    assert_same_function(model, pruned)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert pruned.get_layer("c1").filters == 9 and borders(pruned) == []
    assert_same_function(model, pruned)


@pytest.mark.parametrize("kept, carried", [(8, False), (11, True), (16, False), (3, True)])
def test_carrier_tile_only_where_the_last_tile_has_room(kept, carried):
    x = keras.Input((8, 8, 3))
    h = cbr(x, 24, padding="same", name="c1")
    y = L.Conv2D(4, 3, padding="same", name="reader")(h)
    model = keras.Model(x, head(y))
    randomize_batchnorms(model, seed=14, zero_fraction=0.0, positive_beta=True)
    model.layers[2].gamma.assign(np.where(np.arange(24) < 24 - kept, 0.0, 1.0).astype("float32"))
    pruned, report = prune_model(model, fold="carrier", carrier_tile=8, return_report=True)
    # kept % 8 == 0: one more channel would start a new tile of 8
    assert carried == (kept % 8 != 0)
    assert pruned.get_layer("c1").filters == kept + carried
    assert bool(report.carriers) == carried
    assert report.border_corrections == ([] if carried else ["reader"])
    if not carried:
        assert any("carrier_tile=8" in n and "'c1'" in n for n in report.notes)
    assert_same_function(model, pruned)
    with pytest.raises(ValueError, match="carrier_tile"):
        prune_model(model, fold="carrier", carrier_tile=0)


def test_dynamic_spatial_shape_works_where_exact_cannot():
    from tf_gamma_prune import DynamicShapeError

    x = keras.Input((None, None, 3))
    y = cbr(cbr(x, 6, padding="same"), 4, padding="same")
    model = randomize_batchnorms(keras.Model(x, head(y)), seed=2, positive_beta=True)
    with pytest.raises(DynamicShapeError):
        prune_model(model, fold="exact")
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert len(report.carriers) == 2
    for shape in [(2, 9, 7, 3), (1, 16, 5, 3)]:
        assert_same_function(model, pruned, np.random.default_rng(0).random(shape, "float32"))


def test_save_and_load_round_trip(tmp_path):
    model = randomize_batchnorms(same_convnet(), seed=13, positive_beta=True)
    pruned = prune_model(model, fold="carrier")
    path = tmp_path / "carrier.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    x = random_inputs(model, batch=3)
    np.testing.assert_allclose(outputs64(loaded, x)[0], outputs64(pruned, x)[0], rtol=0, atol=0)
    assert_same_function(model, loaded, x)


# --- every surgery case: exact, and border maps only where a fallback is noted -----------
@pytest.mark.parametrize("build", CASES, ids=[c.__name__ for c in CASES])
def test_every_surgery_case(build):
    model = randomize_batchnorms(build(), seed=3,
                                 zero_fraction=getattr(build, "zero_fraction", 0.5))
    x = random_inputs(model)
    pruned, report = prune_model(model, fold="carrier", return_report=True)
    assert_same_function(model, pruned, x)
    assert report.fold == "carrier"
    fallbacks = {n.split("'")[3] for n in report.notes if n.startswith("fold='carrier'")}
    assert set(report.border_corrections) <= fallbacks
    assert not set(report.carriers) & fallbacks
    assert report.params_after == pruned.count_params()


# --- random conv chains with 'same' padding (carriers are common here) -----------------
def random_recipe(rng):
    """A recipe for test_surgery_property.build: mostly padded convs on the newest tensor."""
    from test_surgery_property import ACTS

    blocks = []
    for b in range(int(rng.integers(2, 7))):
        i = int(b if rng.random() < 0.75 else rng.integers(0, b + 1))
        act = str(rng.choice(ACTS))
        r = rng.random()
        if r < 0.5:
            blocks.append(("conv", i, int(rng.integers(2, 7)), 3, "same",
                           int(rng.choice([1, 1, 2])), bool(rng.random() < 0.5), act))
        elif r < 0.6:
            blocks.append(("pool", i, str(rng.choice(["max", "avg"])),
                           str(rng.choice(["same", "valid"]))))
        elif r < 0.67:
            blocks.append(("pad", i))
        elif r < 0.75:
            blocks.append(("add", i, int(rng.integers(0, 99))))
        elif r < 0.83:
            blocks.append(("concat", i, int(rng.integers(0, 99))))
        elif r < 0.9:
            blocks.append(("dw", i, int(rng.integers(1, 3)), str(rng.choice(["same", "valid"])),
                           int(rng.integers(1, 3)), act))
        elif r < 0.95:
            blocks.append(("sep", i, int(rng.integers(1, 5)), str(rng.choice(["same", "valid"])),
                           act))
        else:
            blocks.append(("conv", i, int(rng.integers(2, 7)), 1, "valid", 1, True, act))
    return {"size": int(rng.integers(4, 9)), "channels": int(rng.integers(1, 4)),
            "blocks": blocks, "head_width": int(rng.integers(1, 5)),
            "flatten_head": bool(rng.random() < 0.3), "seed": int(rng.integers(2**16)),
            "zero_fraction": float(rng.choice([0.3, 0.6, 0.9])),
            "positive_beta": bool(rng.random() < 0.6)}


def check_random_chains(n, seed):
    from test_surgery_property import build

    rng = np.random.default_rng(seed)
    carried = 0
    for _ in range(n):
        recipe = random_recipe(rng)
        model = randomize_batchnorms(build(recipe), seed=recipe["seed"],
                                     zero_fraction=recipe["zero_fraction"],
                                     positive_beta=recipe["positive_beta"])
        x = random_inputs(model, batch=8, seed=recipe["seed"] + 1)
        tile = int(rng.choice([1, 1, 4]))
        pruned, report = prune_model(model, fold="carrier", carrier_tile=tile,
                                     return_report=True, probe=False)
        assert relative_error(model, pruned, x) <= 1e-5, recipe
        fallbacks = {n.split("'")[3] for n in report.notes if n.startswith("fold='carrier'")}
        assert set(report.border_corrections) <= fallbacks, recipe
        # the carriers are still needed: pruning again removes nothing
        _, again = prune_model(pruned, fold="carrier", carrier_tile=tile, return_report=True,
                               probe=False)
        assert again.removed_constant == 0, recipe
        carried += len(report.carriers)
    assert carried >= n // 5  # the generator does exercise carriers


def test_random_conv_chains():
    check_random_chains(20, seed=0)


@pytest.mark.slow
def test_random_conv_chains_many():
    check_random_chains(300, seed=1)


def _run_cli_prune(tmp_path, model, *flag_args):
    import os
    import pathlib
    import subprocess
    import sys

    src, out = tmp_path / "model.keras", tmp_path / "pruned.keras"
    model.save(src)
    repo = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "tf_gamma_prune", "prune", str(src), "--out", str(out),
         *flag_args],
        cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return keras.models.load_model(out)


def test_cli_carrier_tile_flag(tmp_path):
    """--carrier_tile reaches prune_model: with tiles of 2 this model keeps one border map
    instead of a carrier (checked against the library call, which differs from tile 1)."""
    model = randomize_batchnorms(same_convnet(), seed=15, positive_beta=True)
    tiled = prune_model(model, fold="carrier", carrier_tile=2)
    untiled = prune_model(model, fold="carrier")
    assert len(borders(tiled)) != len(borders(untiled))  # the flag has something to change
    pruned = _run_cli_prune(tmp_path, model, "--fold", "carrier", "--carrier_tile", "2")
    assert len(borders(pruned)) == len(borders(tiled))
    widths = [getattr(layer, "filters", None) for layer in pruned.layers]
    assert widths == [getattr(layer, "filters", None) for layer in tiled.layers]
    assert_same_function(model, pruned)


def test_cli_fold_flag(tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    model = randomize_batchnorms(same_convnet(), seed=15, positive_beta=True)
    src, out = tmp_path / "model.keras", tmp_path / "pruned.keras"
    model.save(src)
    repo = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "tf_gamma_prune", "prune", str(src), "--out", str(out),
         "--fold", "carrier"],
        cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fold=carrier" in proc.stdout and "carriers:" in proc.stdout
    pruned = keras.models.load_model(out)
    assert borders(pruned) == []
    assert_same_function(model, pruned)
