"""Atomic writes leave the old file or the new one, and no temporary files."""

import json
import os

import keras
import pytest

from tf_gamma_prune.atomic_io import (
    AtomicWriteError, save_keras_atomic, write_atomic, write_json_atomic,
)


class Unserializable:
    pass


def test_failed_json_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": Unserializable()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_failed_keras_save_leaves_nothing(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    target = tmp_path / "m.keras"

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_keras_atomic(model, target)
    assert os.listdir(tmp_path) == []
    with pytest.raises(AtomicWriteError, match=".keras"):
        save_keras_atomic(model, tmp_path / "m.h5")


def test_write_creates_parent_directories(tmp_path):
    write_atomic(tmp_path / "a" / "b" / "x.bin", b"xyz")
    assert (tmp_path / "a" / "b" / "x.bin").read_bytes() == b"xyz"
