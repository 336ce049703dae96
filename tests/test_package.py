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




STAGE_ORDER = ("analysis", "prune", "sparsify")  # each may import only the ones before it


def stage_imports() -> list[tuple[str, str, str]]:
    """``(file, its stage, imported stage)`` for every import between the stage subpackages."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "tf_gamma_prune"
    found = []
    for stage in STAGE_ORDER:
        for path in sorted((root / stage).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                for name in names:
                    parts = name.split(".")
                    if len(parts) > 1 and parts[0] == "tf_gamma_prune" and parts[1] in STAGE_ORDER:
                        found.append((str(path.relative_to(root)), stage, parts[1]))
    return found


def test_stages_import_one_way_sparsify_prune_analysis():
    found = stage_imports()
    assert any(imported == "analysis" for _, stage, imported in found if stage == "prune")
    backwards = [(f, imported) for f, stage, imported in found
                 if STAGE_ORDER.index(imported) > STAGE_ORDER.index(stage)]
    assert not backwards, (
        f"{backwards}: a stage imports a later one (order {' <- '.join(STAGE_ORDER)}); move the "
        "shared piece down (docs/architecture.md)")
