"""Parity: run a ``.tflite`` next to its Keras model and measure how far apart they are.

:func:`check_parity` returns a :class:`ParityReport`;
``report.assert_within(tol)`` raises :class:`~tf_gamma_prune.errors.ParityError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from tf_gamma_prune.errors import ExportError, InputShapeError, ParityError
from tf_gamma_prune.export.interpreter import SignatureRunner
from tf_gamma_prune.export.model_file import TFLiteSource, read_tflite
from tf_gamma_prune.inputs import pack_inputs


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How close TFLite outputs are to Keras outputs on the same inputs.

    Attributes:
        max_abs: largest absolute difference over all outputs and examples.
        max_rel: ``max_abs`` of each output divided by that output's largest
            ``|keras value|``, maximised over outputs.
        top1_agreement: fraction of examples whose arg-max class agrees
            (single rank-2 output with more than one column), else ``None``.
        n: number of examples compared.
    """

    max_abs: float
    max_rel: float
    top1_agreement: float | None
    n: int

    def assert_within(self, rtol: float = 1e-4) -> None:
        """Raise :class:`ParityError` when ``max_rel > rtol``."""
        if not self.max_rel <= rtol:
            raise ParityError(
                f"TFLite differs from Keras by {self.max_rel:.3g} (relative to max |output|) > {rtol:g}; "
                f"max_abs={self.max_abs:.3g} over {self.n} examples. A float32 export should match to "
                "~1e-6: check preprocessing inside the model, training-mode layers, or quantization."
            )


def _named_inputs(model: Any, inputs: Any, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {k: np.asarray(v) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)) and len(names) > 1:
        return {n: np.asarray(v) for n, v in zip(names, inputs)}
    if len(names) != 1:
        raise ExportError(f"The model has {len(names)} inputs {names}; pass a list or a dict of arrays.")
    return {names[0]: np.asarray(inputs)}


def _check_parity_inputs(model: Any, named: dict[str, np.ndarray], runner: "SignatureRunner") -> None:
    """Every input has the model's rank and static sizes, and all share one non-zero batch."""
    keras_shapes = {}
    for t in getattr(model, "inputs", None) or []:
        keras_shapes[t.name] = tuple(t.shape)
    if len(keras_shapes) == len(runner.inputs) and set(keras_shapes) != set(runner.inputs):
        keras_shapes = dict(zip(runner.inputs, keras_shapes.values()))  # match by position
    batches = set()
    for name, value in named.items():
        signature = [int(d) for d in np.asarray(runner.inputs[name]["shape_signature"])]
        expected = [None] + [None if d < 0 else d for d in signature[1:]]
        for i, d in enumerate(keras_shapes.get(name, ())[1:], start=1):
            if i < len(expected) and expected[i] is None and d is not None:
                expected[i] = int(d)
        shown = tuple(expected)
        if value.ndim != len(expected) or any(
            e is not None and e != v for e, v in zip(expected[1:], value.shape[1:])
        ):
            raise InputShapeError(
                f"check_parity: input {name!r} has shape {value.shape}; the model expects {shown} "
                "(batch first, None = any size)."
            )
        batches.add(value.shape[0])
    if len(batches) > 1:
        raise InputShapeError(f"check_parity: the inputs have different batch sizes {sorted(batches)}.")
    if batches == {0}:
        raise InputShapeError("check_parity: the inputs hold no examples (batch size 0).")


def check_parity(
    model: Any,
    tflite: TFLiteSource,
    inputs: Any,
    *,
    classifier: bool | None = None,
    chunk: int = 64,
) -> ParityReport:
    """Compare Keras (``training=False``) and LiteRT outputs on ``inputs``.

    Args:
        model: the Keras model that was exported.
        tflite: flatbuffer bytes or path.
        inputs: a float array (batch first), a list of arrays (one per model
            input, in ``model.inputs`` order) or a dict keyed by input name.
            int8-input models get them quantized with the input tensor's scale
            and zero point; int8 outputs are dequantized.
        classifier: force (or forbid) the top-1 agreement; ``None`` decides from
            the output shape.
        chunk: examples per Keras call and per interpreter call for dynamic-batch
            models (fixed-batch models run at their exported batch size).

    Example:

    >>> import keras, numpy as np
    >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    >>> from tf_gamma_prune.export import to_tflite
    >>> r = check_parity(m, to_tflite(m), np.ones((5, 3), "float32"))
    >>> r.n, r.top1_agreement
    (5, 1.0)
    """
    import keras

    runner = SignatureRunner(read_tflite(tflite))
    keras_names = [t.name for t in getattr(model, "inputs", None) or []] or list(runner.inputs)
    named = _named_inputs(model, inputs, keras_names)
    if set(named) != set(runner.inputs):
        if len(named) == len(runner.inputs):  # flatbuffer from elsewhere: match by position
            named = dict(zip(runner.inputs, named.values()))
        else:
            raise ExportError(f"Inputs {sorted(named)} do not match the TFLite inputs {sorted(runner.inputs)}.")
    _check_parity_inputs(model, named, runner)
    n = next(iter(named.values())).shape[0]
    keras_order = [k for k in keras_names if k in named] if set(keras_names) == set(named) else list(named)

    expected: list[list[np.ndarray]] = []
    for start in range(0, n, chunk):
        x = [named[k][start:start + chunk] for k in keras_order]
        y = model(pack_inputs(model, x), training=False)
        expected.append([keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(y)])

    got: list[list[np.ndarray]] = []
    step = runner.fixed_batch or chunk
    for start in range(0, n, step):
        part = {k: v[start:start + step] for k, v in named.items()}
        m = next(iter(part.values())).shape[0]
        if runner.fixed_batch and m < step:  # pad the last chunk of a fixed-batch model
            part = {k: np.concatenate([v, np.repeat(v[-1:], step - m, axis=0)]) for k, v in part.items()}
        got.append([o[:m] for o in runner(part)])

    n_outputs = len(expected[0])
    if len(got[0]) != n_outputs:
        raise ExportError(f"Keras gives {n_outputs} outputs, TFLite {len(got[0])}: not the same model?")
    max_abs, max_rel = 0.0, 0.0
    ref_all, out_all = [], []
    for j in range(n_outputs):
        ref = np.concatenate([e[j] for e in expected]).astype(np.float64)
        out = np.concatenate([g[j] for g in got]).astype(np.float64)
        if ref.shape != out.shape:
            raise ExportError(f"Output {j}: Keras shape {ref.shape} vs TFLite {out.shape}.")
        diff = float(np.max(np.abs(ref - out))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
        ref_all.append(ref)
        out_all.append(out)
    if classifier is None:
        classifier = n_outputs == 1 and ref_all[0].ndim == 2 and ref_all[0].shape[1] > 1
    top1 = None
    if classifier:
        top1 = float(np.mean(np.argmax(ref_all[0], -1) == np.argmax(out_all[0], -1)))
    return ParityReport(max_abs=max_abs, max_rel=max_rel, top1_agreement=top1, n=int(n))
