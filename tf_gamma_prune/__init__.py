"""tf_gamma_prune: channel pruning for Keras 3 models.

Train with :class:`GammaISTA` so that useless BatchNormalization channels reach
exactly zero, remove them with ``prune_model`` and ship the result with
``to_tflite``.

This module only re-exports the public API; it never imports
``tensorflow_model_optimization`` (that would switch the process to legacy
Keras).
"""

__version__ = "0.1.0"

# --- public API (one import line per module; keep sorted by module) ---
from tf_gamma_prune.batchnorm import NoBatchNormError, NonFiniteGammaError, batchnorm_layers
from tf_gamma_prune.callbacks import SparsityMonitor, gamma_sparsity, sparsity_summary
from tf_gamma_prune.export import ExportError, check_parity, gpu_compatibility, to_tflite, builtin_op_names, benchmark_latency, compare_latency
from tf_gamma_prune.layer_graph import UnsupportedModelError, layer_graph
from tf_gamma_prune.optimizer import GammaISTA
from tf_gamma_prune.penalties import InexactRescaleError, gamma_penalties, rescale_gamma
from tf_gamma_prune.flops import LayerCost, ModelCost, count_macs, model_cost  # noqa: E402,F401
from tf_gamma_prune.graph import ChannelGraph, DynamicShapeError, SharedLayerError, UnsupportedLayerError, channel_graph, coupled_groups, register_layer_kind  # noqa: E402,F401
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature  # noqa: E402,F401
from tf_gamma_prune.selection import RemovalPlan, SelectionError, plan_removal  # noqa: E402,F401
from tf_gamma_prune.surgery import NonFiniteWeightError, PruneReport, prune_model  # noqa: E402,F401
