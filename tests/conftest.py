"""Shared test setup: quiet TensorFlow, seed everything, small model builders."""

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402


tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow-only feature (tf.distribute, synchronized BN, tf.summary, TFLite)")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


def small_bn_convnet(input_shape=(28, 28, 1), widths=(8, 16), classes=10, name="small"):
    """Conv-BN-ReLU blocks, global pooling and a dense classifier."""
    x = keras.Input(input_shape)
    h = x
    for i, w in enumerate(widths):
        h = keras.layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        if i < len(widths) - 1:
            h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    y = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(x, y, name=name)


def randomize_batchnorm(model, rng):
    """Random γ, β and moving statistics, so BN is far from the identity (no γ zeroed)."""
    from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm as randomize

    randomize(model, seed=int(rng.integers(2**31)))


_MIRRORED_SCRIPT = """\
import os, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
@IMPORTS@

def build():
    keras.utils.set_random_seed(3)
    x = keras.Input((6,))
@HIDDEN@
    return keras.Model(x, keras.layers.Dense(1)(keras.layers.ReLU()(h)))

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 6)).astype("float32")
y = (x[:, :1] * 2.0).astype("float32")
out = {}
for mode in @MODES@:
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
                if mode == "mirrored" else tf.distribute.get_strategy())
@STEP@
print(json.dumps(out))
"""


def mirrored_script(imports: str, hidden: str, step: str,
                    modes: tuple[str, ...] = ("single", "mirrored")) -> str:
    """The script :func:`run_mirrored` runs (see there), for reading or running it yourself."""
    def block(code):
        return textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")

    return (_MIRRORED_SCRIPT.replace("@IMPORTS@", textwrap.dedent(imports).strip("\n"))
            .replace("@HIDDEN@", block(hidden)).replace("@MODES@", repr(tuple(modes)))
            .replace("@STEP@", block(step)))


def run_mirrored(imports: str, hidden: str, step: str,
                 modes: tuple[str, ...] = ("single", "mirrored")) -> dict:
    """Train the same small model once per mode in a fresh interpreter with two logical
    CPU devices (no GPU); the script's ``out`` dict, from its JSON output.

    ``imports`` are the script's ``tf_gamma_prune`` imports. ``build()`` seeds 3 and
    makes ``Input((6,))`` -> ``hidden`` (code turning ``x`` into ``h``) -> ReLU ->
    ``Dense(1)``; the data are 64 fixed random rows ``x`` with ``y = 2 * x[:, :1]``.
    For each of ``modes``, ``strategy`` is ``MirroredStrategy`` over ``/cpu:0`` and
    ``/cpu:1`` when the mode is ``"mirrored"``, else the default strategy, and
    ``step`` runs (with ``mode``, ``strategy``, ``build``, ``x``, ``y`` and ``out``):
    it compiles and fits a model and stores what to compare in ``out[mode]``.
    """
    result = subprocess.run([sys.executable, "-c", mirrored_script(imports, hidden, step, modes)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
