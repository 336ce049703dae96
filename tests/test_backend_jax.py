"""The training-side library on Keras' JAX backend (``KERAS_BACKEND=jax``).

Keras picks its backend once per process, so this runs pytest in a subprocess
with ``KERAS_BACKEND=jax`` over the test files of GammaISTA (its numpy
soft-threshold references included), NetworkSlimming, the per-layer penalties
and the γ–W rescale, the criteria, ``recalibrate_batchnorm`` and
``prune_model``'s save / load / selection / error paths. TensorFlow-only tests
in them (tf.distribute, synchronized BN, TFLite) skip themselves there
(``conftest.tensorflow_only``). About 2.5 minutes on 2 cores. The GPU machine
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
         "test_criteria.py", "test_surgery_save.py", "test_layers.py", "test_surgery_selection.py",
         "test_surgery_errors.py")


def test_library_tests_pass_on_the_jax_backend():
    pytest.importorskip("jax", reason="install jax to test the JAX backend (the dev extra does)")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         *(str(ROOT / "tests" / f) for f in FILES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, tail
    assert int(summary.split(" passed")[0].split()[-1]) >= 80, summary  # the files really ran
    assert " skipped" in summary, summary  # the TensorFlow-only tests skipped: it was JAX
