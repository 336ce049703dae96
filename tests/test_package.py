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
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


