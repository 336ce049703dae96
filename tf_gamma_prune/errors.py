"""Every error tf_gamma_prune raises on purpose, under one root.

``except TfGammaPruneError`` catches all of them; each also keeps the built-in
base it always had (``ValueError``, ``TypeError``, ``RuntimeError``,
``FileNotFoundError``), so existing ``except ValueError`` code keeps working.
Each message names the layer, file or argument at fault and says what to do.

Any stage: :class:`ArgumentError` (an argument value that cannot work).

By pipeline stage:

* input data: :class:`InputDataError` (:class:`CalibrationDataError`,
  :class:`RecalibrationDataError`, :class:`InputShapeError`),
  :class:`DatasetNotFoundError`, :class:`CorruptDatasetError`;
* sparsify: :class:`NoBatchNormError`, :class:`NonFiniteGammaError`,
  :class:`InexactRescaleError`, :class:`ResumeError`,
  :class:`BudgetUnreachableError` (an :class:`ArgumentError`),
  :class:`LatencyTableError` (a latency table unreadable or for another model);
* analyse: :class:`UnsupportedModelError` (:class:`UnsupportedLayerError`,
  :class:`SharedLayerError`), :class:`DynamicShapeError`;
* prune: :class:`SelectionError` (:class:`CriterionError`,
  :class:`TargetUnreachableError`), :class:`NonFiniteWeightError`;
* export: :class:`ExportError` (:class:`NonBuiltinOpError`,
  :class:`ParityError`, :class:`ModelFileError`, :class:`UnsafeModelError`,
  :class:`QATError`), :class:`QATDependencyError`;
* files: :class:`AtomicWriteError`.

>>> import tf_gamma_prune
>>> issubclass(tf_gamma_prune.SelectionError, (TfGammaPruneError, ValueError))
True
"""

from __future__ import annotations


class TfGammaPruneError(Exception):
    """The root of every error raised on purpose by tf_gamma_prune."""


class ArgumentError(TfGammaPruneError, ValueError):
    """An argument value that cannot work; the message names the argument and what is accepted."""


# --- files and data ------------------------------------------------------------
class AtomicWriteError(TfGammaPruneError, RuntimeError):
    """A file could not be written; nothing was left behind."""


class InputDataError(TfGammaPruneError, ValueError):
    """User data (batches of model inputs) that cannot be used as given."""


class DatasetNotFoundError(TfGammaPruneError, FileNotFoundError):
    """A dataset is not available on this machine; the message says how to get it."""


class CorruptDatasetError(TfGammaPruneError, ValueError):
    """A dataset file exists but cannot be parsed."""


# --- sparsify ------------------------------------------------------------------
class NoBatchNormError(TfGammaPruneError, ValueError):
    """The model has no BatchNormalization γ to sparsify or prune."""


class NonFiniteGammaError(TfGammaPruneError, ValueError):
    """A BatchNormalization γ holds NaN or Inf values."""


class InexactRescaleError(TfGammaPruneError, ValueError):
    """γ–W rescaling would change the model's function."""


class RecalibrationDataError(InputDataError):
    """Data that cannot be used to re-estimate BatchNormalization statistics."""


class ResumeError(TfGammaPruneError, ValueError):
    """A checkpoint cannot be read or does not fit the model being resumed."""


class BudgetUnreachableError(ArgumentError):
    """:class:`CostTarget`'s budget is below what removing every removable channel reaches.

    Attributes:
        budget: the requested cost (MACs or parameters).
        reachable: the cost with every channel that may go removed.
    """

    def __init__(self, message: str, budget: int, reachable: int):
        super().__init__(message)
        self.budget = budget
        self.reachable = reachable


class LatencyTableError(TfGammaPruneError, ValueError):
    """A latency table file is unreadable or not a table, or does not fit the model."""


# --- analyse -------------------------------------------------------------------
class UnsupportedModelError(TfGammaPruneError, TypeError):
    """The model cannot be analysed as a graph (subclassed, unbuilt, ...)."""


class UnsupportedLayerError(UnsupportedModelError):
    """A layer (or its configuration) the channel graph does not understand."""


class SharedLayerError(UnsupportedModelError):
    """A layer used several times whose uses would need different rebuilds."""


class DynamicShapeError(TfGammaPruneError, ValueError):
    """Exact constant folding needs a static spatial shape that the model lacks."""


# --- prune ---------------------------------------------------------------------
class SelectionError(TfGammaPruneError, ValueError):
    """An explicit channel selection that cannot be applied as given."""


class CriterionError(SelectionError):
    """Bad input to a selection criterion (fraction, layer names, widths)."""


class TargetUnreachableError(CriterionError):
    """:func:`selection_for_macs` cannot meet the MAC target within the tolerance.

    Attributes:
        target_macs: the requested MACs.
        closest_macs: the reachable MAC count closest to the target.
        closest_fraction: the prune fraction that gives ``closest_macs``.
    """

    def __init__(self, message: str, target_macs: int, closest_macs: int,
                 closest_fraction: float):
        super().__init__(message)
        self.target_macs = target_macs
        self.closest_macs = closest_macs
        self.closest_fraction = closest_fraction


class NonFiniteWeightError(TfGammaPruneError, ValueError):
    """A layer holds NaN or Inf weights; pruning would spread them."""


# --- export --------------------------------------------------------------------
class ExportError(TfGammaPruneError, RuntimeError):
    """A model could not be exported or checked; the message says what to do."""


class CalibrationDataError(InputDataError, ExportError):
    """Calibration data is missing or unusable (int8 representative data, prune_model means)."""


class NonBuiltinOpError(ExportError):
    """A flatbuffer contains custom or Flex (TensorFlow) ops."""


class ParityError(ExportError):
    """TFLite and Keras outputs differ by more than the allowed tolerance."""


class ModelFileError(ExportError, ValueError):
    """A model file is missing, empty, truncated, corrupt or not a model of that kind."""


class UnsafeModelError(ModelFileError):
    """A ``.keras`` file holds Python code (a Lambda layer) and was loaded in safe mode."""


class InputShapeError(InputDataError, ExportError):
    """Inputs whose shape does not fit the model's input; the message gives the expected shape."""


# --- quantization-aware training (tf_gamma_prune.qat) ----------------------------
class QATDependencyError(TfGammaPruneError, ImportError):
    """``tensorflow-model-optimization`` or ``tf_keras`` is missing for :mod:`tf_gamma_prune.qat`;
    the message says ``pip install "tf-gamma-prune[tfmot]"``."""


class QATError(ExportError):
    """The isolated quantization-aware training run failed; the message ends with its stderr tail.

    Attributes:
        returncode: the worker process's exit status (``None`` when it timed out).
        stderr: the worker's whole standard error.
    """

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
