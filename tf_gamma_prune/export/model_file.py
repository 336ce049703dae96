"""Model files: read a ``.tflite`` flatbuffer, load a ``.keras`` model safely.

Both raise :class:`~tf_gamma_prune.errors.ModelFileError` (missing, empty,
truncated or corrupt file) with the path and what to do.
"""

from __future__ import annotations

import os
from typing import Mapping, Union

from tf_gamma_prune.errors import ModelFileError, UnsafeModelError

TFLiteSource = Union[bytes, bytearray, memoryview, str, os.PathLike]


TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4-8 of every .tflite


def read_tflite(source: TFLiteSource) -> bytes:
    """The flatbuffer bytes of ``source`` (bytes as they are, or a file path).

    Raises:
        ModelFileError: missing/unreadable file, or bytes that are not a TFLite
            flatbuffer (empty, no ``TFL3`` identifier). A truncated flatbuffer keeps
            its identifier; the interpreter's verifier (:func:`make_interpreter`)
            rejects it.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "The given bytes"
    else:
        where = f"TFLite model {os.fspath(source)!r}"
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelFileError(f"Cannot read {where}: {e}") from e
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(
            f"{where} is not a TFLite flatbuffer ({len(data)} bytes, no 'TFL3' identifier): an empty, "
            "truncated or wrong file."
        )
    return data


def load_keras_model(path: str | os.PathLike, *, trust: bool = False, custom_objects: Mapping | None = None):
    """``keras.models.load_model`` with typed errors for bad files.

    Safe mode is on unless ``trust=True``: a file holding Python code (a Lambda
    layer) is refused, because loading it would run that code. Only pass
    ``trust=True`` for files you trust.

    Raises:
        ModelFileError: missing, empty, truncated or corrupt file, or one Keras
            cannot load (the message keeps Keras' reason).
        UnsafeModelError: a Lambda layer (or other code) under safe mode.
    """
    import zipfile

    import keras

    import tf_gamma_prune.layers  # noqa: F401  registers the package's custom layers

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"No such model file: {path}")
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()  # CRC of every member: catches truncation and bit rot
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ModelFileError(
                f"{path} is not a complete .keras archive ({type(e).__name__}: {e}); the file is "
                "probably truncated (an interrupted copy or save) or not a Keras model."
            ) from e
        if broken is not None:
            raise ModelFileError(f"{path} is corrupt: member {broken!r} fails its CRC check.")
        if "config.json" not in names:
            raise ModelFileError(f"{path} is a zip archive without config.json: not a .keras model.")
    try:
        return keras.models.load_model(path, safe_mode=not trust, custom_objects=custom_objects)
    except Exception as e:  # Keras raises ValueError, TypeError, KeyError, OSError (h5py) ...
        text = str(e)
        if not trust and ("safe_mode" in text or "Lambda" in text):
            raise UnsafeModelError(
                f"Refused to load {path} in safe mode: it contains Python code (e.g. a Lambda layer) "
                "that would run when loaded. If you trust this file, pass trust=True (--trust_model "
                "on the command line)."
            ) from e
        raise ModelFileError(f"Cannot load {path} as a Keras model ({type(e).__name__}: {text[:2000]})") from e
