"""Module paths before the split into stage subpackages (0.1), kept for one release.

``from tf_gamma_prune.graph import channel_graph`` still works: each old
module name is an alias of the module that now holds its code. Prefer the
package root (``from tf_gamma_prune import channel_graph``) or the new paths;
the aliases go in 0.3.
"""

from __future__ import annotations

import importlib
import sys

MOVED = {
    "batchnorm": "analysis.batchnorm",
    "layer_graph": "analysis.layer_graph",
    "flops": "analysis.flops",
    "graph": "analysis.channel_graph",
    "callbacks": "sparsify.callbacks",
    "recalibration": "sparsify.recalibration",
    "resume": "sparsify.resume",
    "penalties": "sparsify.penalties",
    "slimming": "sparsify.slimming",
    "optimizer": "sparsify.gamma_ista",
    "criteria": "prune.criteria",
    "selection": "prune.plan",
    "surgery": "prune.prune_model",
}

_package = sys.modules["tf_gamma_prune"]
for _old, _new in MOVED.items():
    _module = importlib.import_module(f"tf_gamma_prune.{_new}")
    sys.modules.setdefault(f"tf_gamma_prune.{_old}", _module)
    if not hasattr(_package, _old):  # the function layer_graph keeps its name
        setattr(_package, _old, _module)
