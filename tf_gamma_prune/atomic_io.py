"""Writing files atomically: readers see the old file or the new one, never a part.

Every file the package writes (.tflite, .keras, benchmark JSON) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from tf_gamma_prune.errors import AtomicWriteError  # noqa: F401


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one.

    The bytes go to a temporary file in the same directory, are fsync'ed, and
    the temporary file is renamed over ``path`` (``os.replace``). On any error
    the temporary file is removed and ``path`` is left untouched. Missing parent
    directories are created.

    >>> import tempfile, pathlib
    >>> d = tempfile.mkdtemp()
    >>> write_atomic(f"{d}/x.bin", b"abc")
    >>> pathlib.Path(f"{d}/x.bin").read_bytes()
    b'abc'
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_keras_atomic(model: Any, path: str | os.PathLike) -> None:
    """``model.save(path)`` through a temporary ``.keras`` file and ``os.replace``.

    A failing save leaves neither ``path`` changed nor a temporary file behind.
    """
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(".keras"):
        raise AtomicWriteError(f"Keras models are saved as .keras files; got {path!r}.")
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:-6]}.", suffix=".tmp.keras", dir=directory)
    os.close(fd)
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``json.dump`` (indented, trailing newline) through :func:`write_atomic`."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
