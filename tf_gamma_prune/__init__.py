"""tf_gamma_prune: make Keras 3 CNNs smaller and faster by removing whole channels.

The pipeline, one subpackage per stage (data flows one way)::

    sparsify/  train with GammaISTA: BatchNorm γ of useless channels reach exactly 0
    analysis/  read the model: call graph, layer kinds, tied channels, constants, MACs
    prune/     decide what goes (plan, criteria) and rebuild a narrower model (prune_model)
    export/    TFLite/LiteRT flatbuffer, parity, GPU-delegate check, latency

Everything public is importable from here. This module never imports
``tensorflow_model_optimization`` (that would switch the process to legacy
Keras) and changes no global state. Quantization-aware training
(:func:`quantize_aware_finetune`, the ``tfmot`` extra) loads lazily from
:mod:`tf_gamma_prune.qat` on first use and runs tfmot in a separate process.

>>> import tf_gamma_prune
>>> issubclass(tf_gamma_prune.UnsupportedLayerError, tf_gamma_prune.TfGammaPruneError)
True
"""

__version__ = "0.1.0"

import types as _types  # noqa: E402

from tf_gamma_prune import _old_paths  # noqa: E402,F401  (import paths before 0.2, for one release)

# --- analyse ---
from tf_gamma_prune.analysis.batchnorm import batchnorm_layers
from tf_gamma_prune.analysis.channel_graph import ChannelGraph, channel_graph, coupled_groups
from tf_gamma_prune.analysis.flops import LayerCost, ModelCost, count_macs, model_cost
from tf_gamma_prune.analysis.latency_table import LatencyTable, planned_latency_ms
from tf_gamma_prune.analysis.kinds import LayerKind, register_layer_kind
from tf_gamma_prune.analysis.layer_graph import layer_graph
from tf_gamma_prune.atomic_io import save_keras_atomic, write_atomic
from tf_gamma_prune.errors import (  # noqa: I001  (errors first: every stage raises them)
    ArgumentError,
    AtomicWriteError,
    BudgetUnreachableError,
    CalibrationDataError,
    CorruptDatasetError,
    CriterionError,
    DatasetNotFoundError,
    DynamicShapeError,
    ExportError,
    InexactRescaleError,
    InputDataError,
    InputShapeError,
    LatencyTableError,
    ModelFileError,
    NoBatchNormError,
    NonBuiltinOpError,
    NonFiniteGammaError,
    NonFiniteWeightError,
    ParityError,
    QATDependencyError,
    QATError,
    RecalibrationDataError,
    ResumeError,
    SelectionError,
    SharedLayerError,
    TargetUnreachableError,
    TfGammaPruneError,
    UnsafeModelError,
    UnsupportedLayerError,
    UnsupportedModelError,
)

# --- export ---
from tf_gamma_prune.export import (
    benchmark_latency,
    builtin_op_names,
    check_parity,
    compare_latency,
    gpu_compatibility,
    latency_side_by_side,
    load_keras_model,
    to_tflite,
    to_tflite_variants,
)
from tf_gamma_prune.layers import BorderCorrection, ConstantFeature

# --- prune ---
from tf_gamma_prune.prune.criteria import (
    gamma_threshold_selection,
    l1_norm_selection,
    layer_widths,
    random_selection,
    selection_for_macs,
    zero_gamma_selection,
)
from tf_gamma_prune.prune.criteria_prunenet import (
    channel_mac_costs,
    global_importance_scores,
    global_importance_selection,
)
from tf_gamma_prune.prune.criteria_receding import (
    receding_importance_selection,
    receding_importances,
)
from tf_gamma_prune.prune.criteria_redundancy import (
    layer_redundancy,
    redundancy_random_selection,
    structural_redundancy_selection,
)
from tf_gamma_prune.prune.plan import RemovalPlan, plan_removal
from tf_gamma_prune.prune.prune_model import prune_model
from tf_gamma_prune.prune.report import PruneReport
from tf_gamma_prune.prune.tiled_selection import tiled_selection_for_macs

# --- sparsify (train) ---
from tf_gamma_prune.sparsify.admm import (
    ADMMFilterPruning,
    admm_selection,
    admm_targets_for_macs,
    filter_projection,
)
from tf_gamma_prune.bounded_layer import BoundedBatchNormalization
from tf_gamma_prune.sparsify.bounded_batchnorm import to_bounded_batchnorm, to_standard_batchnorm
from tf_gamma_prune.sparsify.coarse_ranking import CoarseRanking
from tf_gamma_prune.sparsify.callbacks import SparsityMonitor, gamma_sparsity, sparsity_summary
from tf_gamma_prune.sparsify.cost_target import CostTarget
from tf_gamma_prune.sparsify.distillation import Distiller
from tf_gamma_prune.sparsify.gamma_ista import GammaISTA
from tf_gamma_prune.sparsify.penalties import gamma_penalties, rescale_gamma
from tf_gamma_prune.sparsify.recalibration import recalibrate_batchnorm
from tf_gamma_prune.sparsify.receding_importance import (
    BatchNormLRMultiplier,
    RecedingImportanceRegularizer,
)
from tf_gamma_prune.sparsify.resume import StepCheckpoint, fit_resumable
from tf_gamma_prune.sparsify.slimming import NetworkSlimming

# --- quantization-aware training (tfmot extra): imported on first use ---
_LAZY = {"QATResult": "tf_gamma_prune.qat", "quantize_aware_finetune": "tf_gamma_prune.qat"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "qat":
        import importlib

        return importlib.import_module("tf_gamma_prune.qat")
    raise AttributeError(f"module 'tf_gamma_prune' has no attribute {name!r}")


__all__ = sorted(
    [name for name, value in globals().items()
     if not name.startswith("_") and not isinstance(value, _types.ModuleType)
     and name not in _LAZY]
    + list(_LAZY)
)
