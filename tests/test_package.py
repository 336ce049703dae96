"""Package hygiene: no global state changes on import (doctests: tests/test_docstrings.py)."""

import subprocess
import sys




def test_import_never_loads_tfmot_or_flips_legacy_keras():
    code = (
        "import os, sys, tf_gamma_prune, keras\n"
        "assert 'tensorflow_model_optimization' not in sys.modules, 'tfmot imported'\n"
        "assert 'tf_keras' not in sys.modules, 'tf_keras imported'\n"
        "assert os.environ.get('TF_USE_LEGACY_KERAS') is None\n"
        "assert keras.__version__.startswith('3.')\n"
        "assert keras.mixed_precision.global_policy().name == 'float32'\n"
        # everything outside the QAT call itself: pruning, export, the qat module and its spec
        "import numpy as np\n"
        "x = keras.Input((8, 8, 3))\n"
        "h = keras.layers.Conv2D(4, 3, padding='same', use_bias=False)(x)\n"
        "h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))\n"
        "m = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))\n"
        "small = tf_gamma_prune.prune_model(m, {m.layers[1].name: [0, 1]})\n"
        "tf_gamma_prune.to_tflite(small, quantization='int8', representative_data=[np.ones((4, 8, 8, 3), 'float32')])\n"
        "from tf_gamma_prune.qat import model_spec, SUPPORTED_LAYERS\n"
        "model_spec(small)\n"
        "assert callable(tf_gamma_prune.quantize_aware_finetune)\n"
        "assert 'tensorflow_model_optimization' not in sys.modules, 'tfmot imported'\n"
        "assert 'tf_keras' not in sys.modules, 'tf_keras imported'\n"
        "assert os.environ.get('TF_USE_LEGACY_KERAS') is None\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


