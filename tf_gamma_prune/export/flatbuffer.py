"""Operator names read straight from a ``.tflite`` flatbuffer (no interpreter).

:func:`builtin_op_names`, :func:`custom_op_names` and :func:`op_counts` parse the
flatbuffer with TensorFlow's schema; :func:`assert_builtin_only` refuses custom
or Flex ops (:class:`~tf_gamma_prune.errors.NonBuiltinOpError`).
"""

from __future__ import annotations

from collections import Counter

from tf_gamma_prune.errors import ModelFileError, NonBuiltinOpError
from tf_gamma_prune.export.model_file import TFLiteSource, read_tflite


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - ai-edge-litert is an optional extra
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _operator_names(flatbuffer: bytes) -> tuple[list[str], list[str]]:
    """(name per operator code, name per operator instance over all subgraphs)."""
    schema = _schema()
    names_by_code = {
        v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
    }
    try:
        model = schema.Model.GetRootAs(flatbuffer, 0)
        code_names = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                custom = code.CustomCode()
                code_names.append(f"CUSTOM:{custom.decode() if custom else '?'}")
            else:
                code_names.append(names_by_code.get(builtin, f"BUILTIN_{builtin}"))
        instances = []
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for o in range(subgraph.OperatorsLength()):
                instances.append(code_names[subgraph.Operators(o).OpcodeIndex()])
    except Exception as e:  # malformed buffer
        raise ModelFileError(f"Not a readable TFLite flatbuffer ({type(e).__name__}: {e}).") from e
    return code_names, instances


def op_counts(tflite: TFLiteSource) -> dict[str, int]:
    """How many times each op occurs, over all subgraphs (custom ops as ``"CUSTOM:<code>"``).

    >>> import keras
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> from tf_gamma_prune.export import to_tflite
    >>> op_counts(to_tflite(m))
    {'FULLY_CONNECTED': 1}
    """
    return dict(sorted(Counter(_operator_names(read_tflite(tflite))[1]).items()))


def builtin_op_names(tflite: TFLiteSource) -> list[str]:
    """Sorted names of the operator codes in the flatbuffer (``"CONV_2D"``, ...).

    Custom ops appear as ``"CUSTOM:<custom code>"`` (Flex ops as ``"CUSTOM:Flex<Op>"``).
    """
    return sorted(set(_operator_names(read_tflite(tflite))[0]))


def custom_op_names(tflite: TFLiteSource) -> list[str]:
    """Sorted custom codes of non-builtin ops (``"FlexErf"``, ...); empty for a clean model."""
    return sorted({n.split(":", 1)[1] for n in _operator_names(read_tflite(tflite))[0] if n.startswith("CUSTOM:")})


def assert_builtin_only(tflite: TFLiteSource) -> None:
    """Raise :class:`NonBuiltinOpError` if the model holds custom or Flex ops."""
    custom = custom_op_names(tflite)
    if custom:
        flex = [c for c in custom if c.startswith("Flex")]
        raise NonBuiltinOpError(
            f"The TFLite model contains non-builtin ops {custom}"
            + (f" ({len(flex)} Flex/TensorFlow ops)" if flex else "")
            + ". Stock LiteRT runtimes and the GPU delegate cannot run them; re-export with "
            "to_tflite (builtin ops only) after replacing the layers that produce them."
        )
