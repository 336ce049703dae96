"""The runnable examples in the docstrings of the pruning modules."""

import doctest

import pytest

import tf_gamma_prune.flops
import tf_gamma_prune.graph
import tf_gamma_prune.layers
import tf_gamma_prune.selection
import tf_gamma_prune.surgery


@pytest.mark.parametrize("module", [tf_gamma_prune.graph, tf_gamma_prune.surgery,
                                    tf_gamma_prune.selection, tf_gamma_prune.flops,
                                    tf_gamma_prune.layers])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
