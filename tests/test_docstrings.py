"""Every module's docstring examples run (doctest), and the modules have some."""

import doctest
import importlib
import pkgutil

import pytest

import tf_gamma_prune

SKIPPED = {"tf_gamma_prune.__main__"}  # importing it runs the command line
WITHOUT_EXAMPLES = {  # package indexes, the CLI, and engines exercised through prune_model's examples
    "tf_gamma_prune._old_paths", "tf_gamma_prune.analysis", "tf_gamma_prune.cli",
    "tf_gamma_prune.prune", "tf_gamma_prune.sparsify", "tf_gamma_prune.export.interpreter",
    "tf_gamma_prune.export.model_file", "tf_gamma_prune.prune.calibration",
    "tf_gamma_prune.prune.folding", "tf_gamma_prune.prune.rebuild", "tf_gamma_prune.prune.report",
    "tf_gamma_prune.sparsify.wrapper",
}
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(tf_gamma_prune.__path__, "tf_gamma_prune.")
    if m.name not in SKIPPED
) + ["tf_gamma_prune"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if name not in WITHOUT_EXAMPLES:
        assert result.attempted > 0, f"{name} has no docstring example"
