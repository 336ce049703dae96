"""Package hygiene: no global state changes on import, docstring examples run."""

import doctest
import importlib
import subprocess
import sys

import pytest

DOCTESTED = [
    "tf_gamma_prune.batchnorm",
    "tf_gamma_prune.callbacks",
    "tf_gamma_prune.criteria",
    "tf_gamma_prune.layer_graph",
    "tf_gamma_prune.optimizer",
    "tf_gamma_prune.penalties",
    "tf_gamma_prune.recalibration",
    "tf_gamma_prune.reference_models",
    "tf_gamma_prune.slimming",
]


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


@pytest.mark.parametrize("module_name", DOCTESTED)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module_name} has no docstring example"
    assert result.failed == 0
