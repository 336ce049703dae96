"""What the benchmark scripts share: paths, flags, machine facts, random models.

Importing this module prepares a benchmark process: TensorFlow's C++ logging is
quietened (``TF_CPP_MIN_LOG_LEVEL=3`` unless already set) and the repository
root goes first on ``sys.path``, so a script measures this checkout's
``tf_gamma_prune``, also where nothing is installed (the GPU machine). Nothing
heavy is imported here: absl, Keras, TensorFlow and the library load inside the
functions, so a benchmark without TensorFlow (compression on JAX) can use it.

Writing results goes through the library directly:
``tf_gamma_prune.atomic_io.write_json_atomic`` (temporary file + rename).
Commands, outputs and durations of every script: ``benchmarks/README.md``.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys
from typing import Any

BENCHMARKS = pathlib.Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))


def result_path(benchmark: str) -> pathlib.Path:
    """Where ``benchmark``'s committed JSON lives: ``benchmarks/results/<benchmark>.json``."""
    return RESULTS / f"{benchmark}.json"


def define_output_flag(benchmark: str) -> None:
    """The absl flag ``--output``, defaulting to :func:`result_path` of ``benchmark``."""
    from absl import flags

    flags.DEFINE_string("output", str(result_path(benchmark)), "Where to write the JSON results.")


def define_application_flags(size: int, zero_fraction: float) -> None:
    """``--model``, ``--size``, ``--zero_fraction``, ``--seed``: see :func:`random_application`."""
    from absl import flags

    flags.DEFINE_string("model", "ResNet152", "keras.applications architecture (weights=None).")
    flags.DEFINE_integer("size", size, "Input height/width.")
    flags.DEFINE_float("zero_fraction", zero_fraction, "Fraction of BN γ set to exactly 0, at random.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


def random_application(name: str, size: int, seed: int, zero_fraction: float):
    """``keras.applications.<name>`` (random weights) with trained-looking BatchNorms.

    Every BatchNormalization gets random statistics, γ and β, and a random
    ``zero_fraction`` of its γ set to exactly 0
    (``tf_gamma_prune``'s ``randomize_batchnorm``).

    Returns:
        ``(model, (zeroed γ entries, γ entries))``.
    """
    import keras

    from tf_gamma_prune.analysis.batchnorm import randomize_batchnorm

    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    return model, randomize_batchnorm(model, seed=seed, zero_fraction=zero_fraction)


def tensorflow_available() -> bool:
    """Whether TensorFlow imports here (TFLite conversion needs it; Keras on JAX does not)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def machine_info(*keys: str) -> dict[str, Any]:
    """Where a benchmark ran: platform, CPU, Python, TensorFlow (None without it), Keras.

    With ``keys``, only those entries, in that order (the JSON layout each
    benchmark has always written):

        machine_info("tensorflow", "keras", "python", "machine")
    """
    import keras

    tf_version = None
    if tensorflow_available():
        import tensorflow as tf

        tf_version = tf.__version__
    info = {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "tensorflow": tf_version,
            "keras": keras.__version__, "keras_backend": keras.backend.backend()}
    return {key: info[key] for key in keys} if keys else info
