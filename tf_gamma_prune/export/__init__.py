"""Export: the pruned Keras model as a TFLite/LiteRT flatbuffer for phones, and checks on it.

One module per job:

* :mod:`.convert` — :func:`to_tflite` (builtin ops only, float16/dynamic/int8
  quantization, atomic write) and :func:`to_tflite_variants` (several quantizations, one export);
* :mod:`.model_file` — :func:`read_tflite`, :func:`load_keras_model` (safe mode,
  typed errors for missing/corrupt files);
* :mod:`.flatbuffer` — operator names from the flatbuffer,
  :func:`assert_builtin_only`;
* :mod:`.gpu` — :func:`gpu_compatibility` with the GPU delegate;
* :mod:`.interpreter` — :func:`make_interpreter` (LiteRT);
* :mod:`.parity` — :func:`check_parity` against the Keras model;
* :mod:`.latency` — :func:`benchmark_latency`, :func:`compare_latency`,
  :func:`latency_side_by_side`;
* :mod:`.layer_latency` — :func:`measure_latency_table` (per-layer latencies
  for latency budgets).

Example:

>>> import keras, numpy as np
>>> from tf_gamma_prune.export import builtin_op_names, check_parity, to_tflite
>>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
>>> flatbuffer = to_tflite(model)
>>> "CONV_2D" in builtin_op_names(flatbuffer)
True
>>> report = check_parity(model, flatbuffer, np.random.rand(4, 8, 8, 3).astype("float32"))
>>> report.n, report.max_rel <= 1e-4
(4, True)
"""

from tf_gamma_prune.atomic_io import save_keras_atomic, write_atomic
from tf_gamma_prune.errors import (
    CalibrationDataError,
    ExportError,
    InputShapeError,
    ModelFileError,
    NonBuiltinOpError,
    ParityError,
    UnsafeModelError,
)
from tf_gamma_prune.export.convert import QUANTIZATIONS, to_tflite, to_tflite_variants
from tf_gamma_prune.export.flatbuffer import (
    assert_builtin_only,
    builtin_op_names,
    custom_op_names,
    op_counts,
)
from tf_gamma_prune.export.gpu import GPU_DELEGATE_OPS, GpuReport, analyzer_text, gpu_compatibility
from tf_gamma_prune.export.interpreter import make_interpreter
from tf_gamma_prune.export.layer_latency import measure_latency_table
from tf_gamma_prune.export.latency import (
    LatencyComparison,
    LatencyReport,
    benchmark_latency,
    compare_latency,
    latency_side_by_side,
    time_in_turns,
)
from tf_gamma_prune.export.model_file import (
    TFLITE_IDENTIFIER,
    TFLiteSource,
    load_keras_model,
    read_tflite,
)
from tf_gamma_prune.export.parity import ParityReport, check_parity
from tf_gamma_prune.inputs import calibration_inputs

__all__ = [
    "CalibrationDataError", "ExportError", "GPU_DELEGATE_OPS", "GpuReport", "InputShapeError",
    "LatencyComparison", "LatencyReport", "ModelFileError", "NonBuiltinOpError", "ParityError",
    "ParityReport", "QUANTIZATIONS", "TFLITE_IDENTIFIER", "TFLiteSource", "UnsafeModelError",
    "analyzer_text", "assert_builtin_only", "benchmark_latency", "builtin_op_names",
    "check_parity", "compare_latency", "custom_op_names", "gpu_compatibility", "latency_side_by_side",
    "load_keras_model", "make_interpreter", "measure_latency_table", "op_counts", "read_tflite",
    "save_keras_atomic", "time_in_turns", "to_tflite", "to_tflite_variants", "write_atomic",
    "calibration_inputs",
]
