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

from tf_gamma_prune.errors import ArgumentError, NoBatchNormError, NonFiniteGammaError  # noqa: F401


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


def batchnorm_layers(model: keras.layers.Layer, *,
                     with_gamma: bool = True) -> list[tuple[str, Any]]:
    """``(qualified_name, layer)`` of every BatchNormalization with a trainable γ
    (of every BatchNormalization with ``with_gamma=False``).

    A layer reached twice (shared) is listed once, under its first name.
    """
    seen: set[int] = set()
    found = []
    for name, layer in named_layers(model):
        if id(layer) in seen or not is_batchnorm(layer):
            continue
        seen.add(id(layer))
        if not with_gamma or getattr(layer, "gamma", None) is not None:
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
        raise ArgumentError(
            f"'{key}' names several {what}s ({', '.join(matches)}); use the "
            "qualified name."
        )
    raise ArgumentError(f"Unknown {what} '{key}'. Valid names: {listing}.")


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


def randomize_batchnorm(
    model: keras.layers.Layer,
    *,
    seed: int = 0,
    zero_fraction: float = 0.0,
    signed_gamma: bool = False,
    positive_beta: bool = False,
) -> tuple[int, int]:
    """Give every BatchNormalization non-trivial parameters, as after training.

    For checking that pruning is exact: γ ~ U(0.5, 1.5) (random sign with
    ``signed_gamma``), a random ``zero_fraction`` of γ set exactly to 0, β ~ N(0.3, 1)
    (``|β|`` with ``positive_beta``, so ``act(β)`` of a removed channel is a real
    constant), moving mean ~ N(0, 0.5), moving variance ~ U(0.5, 2). Layers without γ
    or β get only what they have. Modifies ``model`` in place.

    Returns:
        ``(zeroed γ entries, γ entries)`` over the whole model.

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
    ...                           keras.layers.BatchNormalization()])
    >>> randomize_batchnorm(model, seed=0, zero_fraction=1.0)
    (8, 8)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    zeros = total = 0
    seen: set[int] = set()
    for _, layer in named_layers(model):
        if id(layer) in seen or not is_batchnorm(layer):
            continue
        seen.add(id(layer))
        c = layer.moving_mean.shape[0]
        if layer.scale:
            gamma = rng.uniform(0.5, 1.5, c)
            if signed_gamma:
                gamma = gamma * rng.choice([-1.0, 1.0], c)
            gamma[rng.random(c) < zero_fraction] = 0.0
            zeros += int(np.sum(gamma == 0))
            total += c
            layer.gamma.assign(gamma.astype("float32"))
        if layer.center:
            beta = rng.normal(0.3, 1.0, c)
            layer.beta.assign((np.abs(beta) if positive_beta else beta).astype("float32"))
        layer.moving_mean.assign(rng.normal(0.0, 0.5, c).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    return zeros, total
