"""The training-side library on Keras' JAX backend (``KERAS_BACKEND=jax``).

Keras picks its backend once per process, so this runs pytest in a subprocess
with ``KERAS_BACKEND=jax`` over the test files of GammaISTA (its numpy
soft-threshold references included), NetworkSlimming, the per-layer penalties
and the γ–W rescale, ``recalibrate_batchnorm`` and ``prune_model``'s save /
load / selection / error paths (about 2 minutes on 2 cores); the criteria's
file (another minute: ResNet-sized models) runs under ``-m slow``.
TensorFlow-only tests in them (tf.distribute, synchronized BN, TFLite) skip
themselves there (``conftest.tensorflow_only``). The GPU machine
this project may borrow has JAX and no TensorFlow; see also
``test_compression_without_tensorflow.py``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = ("test_optimizer.py", "test_slimming.py", "test_penalties.py", "test_recalibration.py",
         "test_surgery_save.py", "test_layers.py", "test_surgery_selection.py",
         "test_surgery_errors.py")
SLOW_FILES = ("test_criteria.py",)


def _pytest_on_jax(files: tuple[str, ...]) -> str:
    """The summary line of pytest run over ``files`` with KERAS_BACKEND=jax; fails on a failure."""
    pytest.importorskip("jax", reason="install jax to test the JAX backend (the dev extra does)")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         "-n", "0",  # one process: the suite around it already runs two
         *(str(ROOT / "tests" / f) for f in files)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, tail
    return summary


def _passed(summary: str) -> int:
    return int(summary.split(" passed")[0].split()[-1])


def test_library_tests_pass_on_the_jax_backend():
    summary = _pytest_on_jax(FILES)
    assert _passed(summary) >= 75, summary  # the files really ran (77 with no skip among them)
    assert " skipped" in summary, summary  # the TensorFlow-only tests skipped: it was JAX


@pytest.mark.slow
def test_criteria_tests_pass_on_the_jax_backend():
    summary = _pytest_on_jax(SLOW_FILES)
    assert _passed(summary) >= 25, summary
