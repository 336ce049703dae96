"""Can every op of a ``.tflite`` run on the TFLite GPU delegate?

:func:`gpu_compatibility` combines TFLite's analyzer with TensorFlow's GPU
delegate op table (:data:`GPU_DELEGATE_OPS`), because the analyzer in some
wheels reports every op as compatible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np

from tf_gamma_prune.export.flatbuffer import op_counts
from tf_gamma_prune.export.interpreter import SignatureRunner, make_interpreter
from tf_gamma_prune.export.model_file import TFLiteSource, read_tflite

# Ops that tflite::CheckGpuDelegateCompatibility accepts (tensorflow/lite/tools/
# versioning/gpu_compatibility.cc, TF 2.21). It also checks op parameters
# (strides, broadcasting, fused activations...); this table checks names only.
GPU_DELEGATE_OPS = frozenset(
    """ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS CUMSUM
    DENSIFY DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP
    EQUAL EXP FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH
    LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM
    MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN
    REDUCE_PROD RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SELECT
    SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE
    STABLEHLO_CLAMP STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV""".split()
) | frozenset(
    f"CUSTOM:{c}" for c in ("Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Resampler")
)


@dataclasses.dataclass(frozen=True)
class GpuReport:
    """Whether a flatbuffer can run entirely on the TFLite GPU delegate.

    Attributes:
        compatible: no op is known to fall back to the CPU and shapes are static.
        unsupported_ops: op name → count, for ops the GPU delegate does not run.
        analyzer_warnings: the analyzer's ``GPU COMPATIBILITY WARNING`` lines.
        analyzer_says_compatible: whether the analyzer printed "looks compatible".
            The analyzer of the TF 2.21 / ai-edge-litert 2.3 pip wheels is built
            without the per-op check and says so for *every* model, which is why
            the op table is consulted too.
        dynamic_inputs: names of inputs with a dynamic (-1) dimension; the GPU
            delegate needs static shapes.
        analyzer_text: the analyzer's full output, for humans.
    """

    compatible: bool
    unsupported_ops: dict[str, int]
    analyzer_warnings: list[str]
    analyzer_says_compatible: bool
    dynamic_inputs: list[str]
    analyzer_text: str

    def summary(self) -> str:
        if self.compatible:
            return "GPU delegate: every op supported (by name; parameters are checked on device)."
        parts = []
        if self.unsupported_ops:
            parts.append("ops not run by the GPU delegate: " + ", ".join(f"{k}×{v}" for k, v in self.unsupported_ops.items()))
        if self.analyzer_warnings:
            parts.append(f"{len(self.analyzer_warnings)} analyzer warning(s)")
        if self.dynamic_inputs:
            parts.append(f"dynamic input shapes {self.dynamic_inputs} (export with batch_size=1)")
        return "GPU delegate: NOT fully compatible: " + "; ".join(parts)


def analyzer_text(tflite: TFLiteSource, gpu_compatibility: bool = True) -> str:
    """The text that ``tf.lite.experimental.Analyzer.analyze`` prints for the model."""
    import tensorflow as tf

    data = read_tflite(tflite)
    make_interpreter(data)  # the verifier first: the analyzer segfaults on truncated flatbuffers
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=data, gpu_compatibility=gpu_compatibility)
    return buffer.getvalue()


def gpu_compatibility(tflite: TFLiteSource) -> GpuReport:
    """Check that every op of the model can run on the TFLite GPU delegate.

    Combines the analyzer's verdict (``tf.lite.experimental.Analyzer`` with
    ``gpu_compatibility=True``) with a name check against the ops the GPU
    delegate implements, and flags dynamic input shapes.

    >>> import keras
    >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> from tf_gamma_prune.export import to_tflite
    >>> gpu_compatibility(to_tflite(m)).compatible
    True
    """
    data = read_tflite(tflite)
    text = analyzer_text(data, gpu_compatibility=True)
    warnings = [line.strip() for line in text.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    unsupported = {
        name: count for name, count in op_counts(data).items() if name not in GPU_DELEGATE_OPS
    }
    runner = SignatureRunner(data)
    dynamic = sorted(k for k, d in runner.inputs.items() if np.any(np.asarray(d["shape_signature"]) < 0))
    return GpuReport(
        compatible=not unsupported and not warnings and not dynamic,
        unsupported_ops=unsupported,
        analyzer_warnings=warnings,
        analyzer_says_compatible="looks compatible with GPU delegate" in text,
        dynamic_inputs=dynamic,
        analyzer_text=text,
    )
