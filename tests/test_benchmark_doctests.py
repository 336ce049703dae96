"""The docstring examples of the benchmark scripts run (they are not part of the package, so
``test_docstrings`` does not see them). In a subprocess: the scripts define absl flags on import."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITH_EXAMPLES = ["compression", "compression_reference_protocol", "gamma_recipes", "width_speed"]
PROGRAM = """
import doctest, importlib, sys
sys.path.insert(0, "benchmarks")
module = importlib.import_module(sys.argv[1])
result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
print("attempted", result.attempted, "failed", result.failed)
"""


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_benchmark_docstring_examples_run(name):
    proc = subprocess.run([sys.executable, "-c", PROGRAM, name], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    attempted, failed = int(words[words.index("attempted") + 1]), int(words[-1])
    assert failed == 0 and attempted > 0, proc.stdout[-3000:]
