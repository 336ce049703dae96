"""Keras image augmentation layers inside the model (the tutorials' ``data_augmentation``).

``RandomFlip``, ``RandomRotation``, ``RandomContrast`` ... are the identity at inference and keep
channels apart in training, so they are spatial: the model around them prunes, and a constant
channel goes through them unchanged. Colour-mixing ones (``RandomHue``, ``RandomGrayscale`` ...) are
opaque. Both claims are checked here on every such layer this Keras has (identity at inference on
random images; in training, with the same seed, changing one input channel changes that output
channel only), and the pruned models are compared with the originals at inference.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from channel_op_helpers import head, prepared, producer, reloaded
from test_surgery_helpers import assert_same_function, random_inputs

from tf_gamma_prune import channel_graph, prune_model
from tf_gamma_prune.analysis.kinds.spatial import (
    AUGMENTATION_LAYERS,
    COLOR_MIXING_AUGMENTATION_LAYERS,
)

L = keras.layers
ARGS = {"RandomCrop": (6, 6), "RandomRotation": (0.2,), "RandomZoom": (0.2,),
        "RandomTranslation": (0.2, 0.2), "RandomContrast": (0.3,), "RandomBrightness": (0.3,),
        "RandomSharpness": (0.5,), "RandomPosterization": (4,)}
"""Positional arguments of the layers that need some (sizes, factors)."""
KWARGS = {"RandomShear": {"x_factor": 0.2}, "RandomInvert": {"factor": 1.0},
          "RandomErasing": {"factor": 1.0}, "RandomGaussianBlur": {"factor": 1.0},
          "RandomPerspective": {"factor": 1.0}, "RandomElasticTransform": {"factor": 1.0},
          "Solarization": {"addition_factor": 0.3, "threshold_factor": 0.5}}
"""Keyword arguments that make the layer transform with certainty (``factor`` 1: always)."""
PRESENT = [n for n in AUGMENTATION_LAYERS if hasattr(L, n)]


def augmentation(name: str, seed: int = 5):
    """The layer ``name`` with arguments that make it transform in training."""
    return getattr(L, name)(*ARGS.get(name, ()), seed=seed, **KWARGS.get(name, {}))


def images(channels=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, 12, 12, channels)).astype("float32")


def test_the_lists_name_layers_this_keras_has():
    assert len(PRESENT) >= 10  # the common ones at least
    for name in ("RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast", "RandomCrop"):
        assert name in PRESENT


@pytest.mark.parametrize("name", PRESENT)
def test_augmentation_is_identity_at_inference(name):
    x = images()
    y = keras.ops.convert_to_numpy(augmentation(name)(x, training=False))
    np.testing.assert_array_equal(y, x)


def transformed_seed(name: str, x: np.ndarray) -> int:
    """A seed at which the layer changes ``x`` in training (some draw "no change" at random)."""
    for seed in range(20):
        y = keras.ops.convert_to_numpy(augmentation(name, seed)(x, training=True))
        if y.shape != x.shape or not np.allclose(y, x):
            return seed
    raise AssertionError(f"{name} never changed an image in training: the check would see nothing")


def training_output(name: str, x: np.ndarray, seed: int) -> np.ndarray:
    return keras.ops.convert_to_numpy(augmentation(name, seed)(x, training=True))


@pytest.mark.parametrize("name", PRESENT)
def test_augmentation_keeps_channels_apart_in_training(name):
    """Changing input channel 1 changes output channel 1 only (same seed, same random draw)."""
    x = images()
    seed = transformed_seed(name, x)
    other = x.copy()
    other[..., 1] = 255 - other[..., 1]
    y, y_other = training_output(name, x, seed), training_output(name, other, seed)
    np.testing.assert_allclose(np.delete(y_other, 1, -1), np.delete(y, 1, -1), rtol=1e-5, atol=1e-3)
    assert not np.allclose(y_other[..., 1], y[..., 1])


def test_a_colour_mixing_layer_fails_the_channel_check():
    """The check above can fail: RandomGrayscale mixes the (3 colour) channels."""
    x = images(channels=3)
    other = x.copy()
    other[..., 1] = 255 - other[..., 1]
    y, y_other = (keras.ops.convert_to_numpy(L.RandomGrayscale(factor=1.0, seed=1)(v, training=True))
                  for v in (x, other))
    assert not np.allclose(y_other[..., 0], y[..., 0], atol=1e-3)


def tutorial_model():
    """keras.io's image classification from scratch, small: augmentation → rescaling → conv blocks."""
    data_augmentation = keras.Sequential(
        [L.RandomFlip("horizontal"), L.RandomRotation(0.1), L.RandomZoom(0.1),
         L.RandomContrast(0.2)], name="data_augmentation")
    x = keras.Input((16, 16, 3))
    h = L.Rescaling(1 / 255)(data_augmentation(x))
    h = producer(h)
    h = L.ReLU()(L.BatchNormalization(name="bn2")(L.Conv2D(6, 3, padding="same", name="c2")(h)))
    return keras.Model(x, head(h))


def test_tutorial_model_prunes_exactly_and_reloads(tmp_path):
    model = prepared(tutorial_model, [1, 4, 6])
    pruned, report = prune_model(model, return_report=True)
    # the 'same' 3×3 conv after p reads the constants at the border: one carrier channel holds them
    assert pruned.get_layer("p").filters == 5 + len(report.carrier_channels.get("p", [])) <= 6
    assert pruned.count_params() < model.count_params()
    assert_same_function(model, pruned, random_inputs(model, batch=3))
    loaded = reloaded(model, pruned, tmp_path / "pruned.keras")
    kinds = [type(layer).__name__ for layer in loaded.layers if type(layer).__name__.startswith("Random")]
    assert kinds == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast"]  # still in it


@pytest.mark.parametrize("name", ["RandomFlip", "RandomTranslation", "RandomBrightness",
                                  "RandomErasing", "CenterCrop"])
def test_augmentation_after_a_conv_passes_its_constants(name):
    """Mid-network: p_bn's γ = 0 channels (constant, β > 0) cross the layer into a 3×3 conv."""
    def build():
        x = keras.Input((10, 10, 3))
        h = producer(x)
        h = L.CenterCrop(7, 7)(h) if name == "CenterCrop" else augmentation(name)(h)
        return keras.Model(x, head(L.BatchNormalization(name="bn2")(L.Conv2D(4, 3, name="c")(h))))

    model = prepared(build, [0, 3, 5])
    graph = channel_graph(model)
    (call,) = [c for c in graph.layer_graph.calls if type(c.layer).__name__ == name]
    assert graph.kinds[call].name == "spatial"
    pruned = prune_model(model)
    assert pruned.get_layer("p").filters == 5  # nothing pinned: the three constants were folded
    assert_same_function(model, pruned, random_inputs(model, batch=2))


def test_center_crop_larger_than_its_input_keeps_a_constant_uniform():
    """CenterCrop(12, 12) of an 8×8 map resizes it: a uniform constant must stay uniform."""
    def build():
        x = keras.Input((8, 8, 3))
        h = L.CenterCrop(12, 12)(producer(x))
        return keras.Model(x, head(L.BatchNormalization(name="bn2")(L.Conv2D(4, 3, name="c")(h))))

    model = prepared(build, [2, 7])
    pruned = prune_model(model)
    assert pruned.get_layer("p").filters == 6
    assert_same_function(model, pruned, random_inputs(model, batch=2))


@pytest.mark.parametrize("name", [n for n in ("RandomHue", "RandomGrayscale", "AutoContrast")
                                  if hasattr(L, n)])
def test_colour_mixing_layers_are_opaque(name):
    options = {"RandomHue": {"factor": 0.2, "value_range": (0, 255)},
               "RandomGrayscale": {"factor": 0.5}, "AutoContrast": {"value_range": (0, 255)}}[name]
    assert name in COLOR_MIXING_AUGMENTATION_LAYERS

    def build():
        x = keras.Input((10, 10, 3))
        h = L.Conv2D(3, 1, name="rgb")(x)  # three channels into the colour layer
        h = getattr(L, name)(**options)(h)
        return keras.Model(x, head(L.ReLU()(L.BatchNormalization(name="p_bn")(
            L.Conv2D(8, 3, padding="same", name="p")(h)))))

    model = prepared(build, [1, 4])
    graph = channel_graph(model)
    (call,) = [c for c in graph.layer_graph.calls if type(c.layer).__name__ == name]
    assert graph.kinds[call].name == "opaque"
    assert graph.pinned[graph.layer_channels("rgb")].all()
    pruned = prune_model(model)
    assert pruned.get_layer("rgb").filters == 3 and pruned.get_layer("p").filters == 6
    assert_same_function(model, pruned, random_inputs(model, batch=2))


def test_gamma_ista_and_cost_target_train_a_model_with_augmentation():
    """The tutorial model trains under GammaISTA + CostTarget (which build the channel graph) and
    prunes to its budget, exactly at inference."""
    from tf_gamma_prune import CostTarget, GammaISTA, count_macs

    keras.utils.set_random_seed(0)
    model = tutorial_model()
    model.compile(GammaISTA(keras.optimizers.SGD(0.05), min_channels=1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (128, 16, 16, 3)).astype("float32"), rng.integers(0, 3, 128)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[CostTarget(macs=0.6, every=2)])
    pruned = prune_model(model)
    assert count_macs(pruned) <= 0.6 * 1.05 * count_macs(model)
    assert_same_function(model, pruned, random_inputs(model, batch=3))
