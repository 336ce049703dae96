"""Finding the BatchNormalization layers (and their γ) of a model.

Layers are named by their *qualified name*: the layer's own name for top-level
layers, ``"backbone/conv1_bn"`` for a layer inside a nested model called
``backbone``. These names key every per-layer setting of the package
(penalties, exclusions, sparsity logs).

Example:

>>> import keras
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
...                           keras.layers.BatchNormalization(name="bn")])
>>> [name for name, _ in batchnorm_layers(model)]
['bn']
"""

from __future__ import annotations

from typing import Any, Iterator

import keras


class NoBatchNormError(ValueError):
    """The model has no BatchNormalization γ to sparsify or prune."""


class NonFiniteGammaError(ValueError):
    """A BatchNormalization γ holds NaN or Inf values."""


def is_batchnorm(layer: Any) -> bool:
    """Whether ``layer`` is a BatchNormalization (``synchronized=True`` included)."""
    return isinstance(layer, keras.layers.BatchNormalization)


def named_layers(model: keras.layers.Layer, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every layer under ``model`` with its qualified name, depth first.

    Works for functional, Sequential and subclassed models alike.
    """
    for layer in model._flatten_layers(include_self=False, recursive=False):
        name = f"{prefix}{layer.name}"
        yield name, layer
        yield from named_layers(layer, prefix=f"{name}/")


def batchnorm_layers(model: keras.layers.Layer) -> list[tuple[str, Any]]:
    """``(qualified_name, layer)`` of every BatchNormalization with a trainable γ.

    A layer reached twice (shared) is listed once, under its first name.
    """
    seen: set[int] = set()
    found = []
    for name, layer in named_layers(model):
        if id(layer) in seen or not is_batchnorm(layer):
            continue
        seen.add(id(layer))
        if getattr(layer, "gamma", None) is not None:
            found.append((name, layer))
    return found


def resolve_layer_name(key: str, names: list[str], what: str = "layer") -> str:
    """Map a user-given layer name to one of ``names``.

    ``key`` may be a qualified name (``"backbone/conv1_bn"``) or, when unique,
    the bare layer name (``"conv1_bn"``).

    Raises:
        ValueError: ``key`` matches nothing, or several bare names; the message
            lists the valid names.
    """
    if key in names:
        return key
    matches = [n for n in names if n.rsplit("/", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(names) if names else "(none)"
    if matches:
        raise ValueError(
            f"'{key}' names several {what}s ({', '.join(matches)}); use the "
            "qualified name."
        )
    raise ValueError(f"Unknown {what} '{key}'. Valid names: {listing}.")


def variable_value(variable: Any):
    """A variable's current value as numpy, also while a tf.function is tracing."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.init_scope():
            return keras.ops.convert_to_numpy(variable.value)
    return keras.ops.convert_to_numpy(variable)


def check_finite_gammas(named: list[tuple[str, Any]]) -> None:
    """Raise :class:`NonFiniteGammaError` naming the first layer whose γ is not finite."""
    import numpy as np

    for name, layer in named:
        gamma = variable_value(layer.gamma)
        if not np.all(np.isfinite(gamma)):
            bad = int(np.size(gamma) - np.count_nonzero(np.isfinite(gamma)))
            raise NonFiniteGammaError(
                f"BatchNormalization '{name}' has {bad} non-finite γ value(s) "
                "(NaN/Inf). Training diverged or the weights are corrupt: lower "
                "the learning rate or ρ, or reload a good checkpoint."
            )
