"""Real architectures from keras.applications (weights=None, small inputs).

Random BN statistics and β, half of the γ zeroed: the pruned model has fewer
parameters and computes the original function (relative max error ≤ 1e-5,
float64 comparison of float32 outputs).
"""

from __future__ import annotations

import keras
import pytest
from test_surgery_helpers import assert_same_function, random_inputs, randomize_batchnorms

from tf_gamma_prune import prune_model

APPS = keras.applications


def check_exact(build, input_shape=(64, 64, 3), seed=0):
    model = build(weights=None, input_shape=input_shape)
    randomize_batchnorms(model, seed=seed)
    pruned, report = prune_model(model, return_report=True, probe=False)
    assert report.params_after == pruned.count_params()
    assert report.params_after - report.border_params < report.params_before
    assert report.macs_after < report.macs_before
    assert_same_function(model, pruned, random_inputs(model, batch=2))
    return report


def test_resnet50():
    report = check_exact(APPS.ResNet50)
    assert report.params_after < report.params_before
    # 3x3 'same' convs read constant channels: the default fold carries them, no border maps
    assert report.carriers and not report.border_corrections


def test_mobilenet_v2():
    report = check_exact(APPS.MobileNetV2)
    assert report.params_after < report.params_before


def test_densenet121():
    report = check_exact(APPS.DenseNet121)
    assert report.params_after < report.params_before


def test_resnet50_as_nested_backbone():
    base = APPS.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    x = keras.Input((64, 64, 3))
    y = keras.layers.GlobalAveragePooling2D()(base(x))
    model = keras.Model(x, keras.layers.Dense(4)(y))
    randomize_batchnorms(model, seed=1)
    pruned = prune_model(model)
    assert pruned.count_params() < model.count_params()
    assert_same_function(model, pruned)


SLOW_APPS = ["ResNet50V2", "MobileNet", "MobileNetV3Small", "MobileNetV3Large",
             "EfficientNetB0", "EfficientNetV2B0", "Xception", "NASNetMobile"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_APPS)
def test_more_applications(name):
    shape = (75, 75, 3) if name == "Xception" else (64, 64, 3)
    if name == "NASNetMobile":
        shape = (224, 224, 3)  # NASNet checks its input size without weights too
    check_exact(getattr(APPS, name), input_shape=shape)
