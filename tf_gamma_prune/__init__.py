"""tf_gamma_prune: channel pruning for Keras 3 models.

Train with :class:`GammaISTA` so that useless BatchNormalization channels reach
exactly zero, remove them with ``prune_model`` and ship the result with
``to_tflite``.

This module only re-exports the public API; it never imports
``tensorflow_model_optimization`` (that would switch the process to legacy
Keras).
"""

__version__ = "0.1.0"

# --- public API, by module (each module holds one concept) ---
from tf_gamma_prune.atomic_io import AtomicWriteError, save_keras_atomic, write_atomic
from tf_gamma_prune.batchnorm import NoBatchNormError, NonFiniteGammaError, batchnorm_layers
from tf_gamma_prune.callbacks import SparsityMonitor, gamma_sparsity, sparsity_summary
from tf_gamma_prune.criteria import (
    CriterionError,
    TargetUnreachableError,
    gamma_threshold_selection,
    l1_norm_selection,
    layer_widths,
    random_selection,
    selection_for_macs,
)
from tf_gamma_prune.export import (
    CalibrationDataError,
    ExportError,
    InputShapeError,
    ModelFileError,
    NonBuiltinOpError,
    ParityError,
    UnsafeModelError,
    benchmark_latency,
    builtin_op_names,
    check_parity,
    compare_latency,
    gpu_compatibility,
    load_keras_model,
    to_tflite,
)
from tf_gamma_prune.flops import LayerCost, ModelCost, count_macs, model_cost
from tf_gamma_prune.graph import (
    ChannelGraph,
    DynamicShapeError,
    SharedLayerError,
    UnsupportedLayerError,
    channel_graph,
    coupled_groups,
    register_layer_kind,
)
from tf_gamma_prune.layer_graph import UnsupportedModelError, layer_graph
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature
from tf_gamma_prune.optimizer import GammaISTA
from tf_gamma_prune.recalibration import RecalibrationDataError, recalibrate_batchnorm
from tf_gamma_prune.penalties import InexactRescaleError, gamma_penalties, rescale_gamma
from tf_gamma_prune.resume import ResumeError, StepCheckpoint, fit_resumable
from tf_gamma_prune.selection import RemovalPlan, SelectionError, plan_removal
from tf_gamma_prune.slimming import NetworkSlimming
from tf_gamma_prune.surgery import NonFiniteWeightError, PruneReport, prune_model

import types as _types  # noqa: E402

__all__ = sorted(
    name for name, value in globals().items()
    if not name.startswith("_") and not isinstance(value, _types.ModuleType)
)
