"""Running the tf_keras / tfmot side in a separate process, and nothing of it here.

tensorflow-model-optimization works on tf_keras (legacy Keras 2) models only,
and TensorFlow picks its Keras once per process from ``TF_USE_LEGACY_KERAS``.
So :func:`run_worker` starts ``_isolated/qat_worker.py`` with a fresh Python
(the same interpreter), that variable set in the *child's* environment only,
and a job folder of atomically written JSON / ``.npz`` files; the caller's
``os.environ``, ``tf.keras``, ``sys.modules`` and Keras 3 state stay as they
were. :func:`missing_dependencies` checks that tfmot and tf_keras are installed
without importing them.

Example:

>>> missing_dependencies(["json"])
[]
>>> missing_dependencies(["surely_not_a_module_name"])
['surely_not_a_module_name']
>>> os.path.basename(WORKER)
'qat_worker.py'
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Sequence

from tf_gamma_prune.atomic_io import write_atomic
from tf_gamma_prune.errors import QATDependencyError, QATError, UnsupportedLayerError

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_isolated", "qat_worker.py")

#: What the isolated side imports: ``{module: pip distribution}``.
DEPENDENCIES = {"tf_keras": "tf-keras", "tensorflow_model_optimization": "tensorflow-model-optimization"}

INSTALL_HINT = 'pip install "tf-gamma-prune[tfmot]"'

STDERR_TAIL = 4000


def missing_dependencies(modules: Sequence[str] = tuple(DEPENDENCIES)) -> list[str]:
    """The top-level ``modules`` that are not installed (found without importing them)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_dependencies() -> None:
    """Raise :class:`~tf_gamma_prune.QATDependencyError` when tfmot or tf_keras is missing."""
    missing = missing_dependencies()
    if missing:
        names = ", ".join(f"{m} ({DEPENDENCIES.get(m, m)})" for m in missing)
        raise QATDependencyError(
            f"Quantization-aware training needs {names}, which is not installed. Install the extra: "
            f"{INSTALL_HINT} (tensorflow-model-optimization>=0.8 and the tf-keras release that "
            "matches your TensorFlow). It runs in a separate process; your Keras 3 session is "
            "not switched to legacy Keras.")


def write_job(job_dir: str, mode: str, models: Sequence[str], settings: dict) -> None:
    """Write ``job.json`` for the worker (atomically)."""
    job = {"mode": mode, "models": list(models), "settings": settings}
    write_atomic(os.path.join(job_dir, "job.json"), (json.dumps(job, indent=1) + "\n").encode())


def child_environment() -> dict[str, str]:
    """The worker's environment: a copy of ours with ``TF_USE_LEGACY_KERAS=1``
    (ours is not changed) and TensorFlow's C++ logging quietened unless set."""
    env = dict(os.environ)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tail(text: str) -> str:
    text = text or ""
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


def run_worker(job_dir: str, timeout: float | None = None) -> str:
    """Run the worker on ``job_dir`` in a fresh interpreter; return its stderr.

    Raises:
        QATDependencyError: the worker could not import tf_keras or tfmot.
        UnsupportedLayerError: tfmot refused a layer (the message names it).
        QATError: any other failure or the ``timeout``; the message ends with
            the worker's stderr tail.
    """
    command = [sys.executable, WORKER, job_dir]
    try:
        done = subprocess.run(command, cwd=job_dir, env=child_environment(), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise QATError(
            f"The isolated QAT process did not finish within {timeout:g} s and was stopped. Pass a "
            f"larger timeout= or less data / fewer epochs.\n\nIts stderr (tail):\n{_tail(stderr)}",
            returncode=None, stderr=stderr) from None
    if done.returncode == 0:
        return done.stderr
    error = {}
    error_path = os.path.join(job_dir, "error.json")
    if os.path.exists(error_path):
        with open(error_path) as f:
            error = json.load(f)
    kind, message = error.get("kind"), error.get("message", "")
    if kind == "dependency":
        raise QATDependencyError(
            f"The isolated QAT process could not import its dependencies: {message}. "
            f"Install them with {INSTALL_HINT}.")
    if kind == "unsupported":
        raise UnsupportedLayerError(
            f"tensorflow-model-optimization cannot quantize the converted model: {message}. "
            "Replace that layer by a supported one (tf_gamma_prune.qat.SUPPORTED_LAYERS) or use "
            "post-training quantization: to_tflite(model, quantization='int8', "
            "representative_data=...).")
    what = f"{error.get('type', 'error')}: {message}" if error else f"exit status {done.returncode}"
    raise QATError(
        f"The isolated QAT process failed ({what}).\n\nIts stderr (tail):\n{_tail(done.stderr)}",
        returncode=done.returncode, stderr=done.stderr)
