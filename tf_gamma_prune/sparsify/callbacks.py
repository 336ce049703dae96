"""Watching γ sparsify: per-layer zero counts in ``logs``, TensorBoard, one-line summary.

Example:

>>> import keras
>>> from tf_gamma_prune import GammaISTA, SparsityMonitor
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
...     keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1)])
>>> model.compile(GammaISTA(keras.optimizers.SGD(0.1), rho=20.0), loss="mse")
>>> history = model.fit(keras.random.normal((8, 4)), keras.ops.zeros((8, 1)),
...                     epochs=1, verbose=0, callbacks=[SparsityMonitor()])
>>> history.history["zero_gamma/bn"]
[8.0]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tf_gamma_prune.analysis.batchnorm import (
    NonFiniteGammaError,
    batchnorm_layers,
    check_finite_gammas,
    variable_value,
)


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """Zero count of one BatchNormalization γ."""

    name: str
    zeros: int
    channels: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.channels if self.channels else 0.0


def gamma_sparsity(model: keras.Model) -> list[LayerSparsity]:
    """How many γ entries are exactly zero, per BatchNormalization layer.

    Raises:
        NonFiniteGammaError: a γ holds NaN/Inf (the message names the layer).
    """
    named = batchnorm_layers(model)
    check_finite_gammas(named)
    result = []
    for name, layer in named:
        gamma = np.asarray(variable_value(layer.gamma))
        result.append(LayerSparsity(name, int(np.sum(gamma == 0)), int(gamma.size)))
    return result


def sparsity_summary(model: keras.Model, max_layers: int = 8) -> str:
    """One line for notebooks: total zero γ and the most sparse layers.

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.BatchNormalization(name="bn")])
    >>> _ = model.get_layer("bn").gamma.assign([0.0, 1.0, 0.0, 1.0])
    >>> sparsity_summary(model)
    'γ = 0: 2/4 channels (50.0%) | bn 2/4'
    """
    layers = gamma_sparsity(model)
    zeros = sum(s.zeros for s in layers)
    channels = sum(s.channels for s in layers)
    ranked = sorted(layers, key=lambda s: -s.fraction)[:max_layers]
    parts = [f"{s.name} {s.zeros}/{s.channels}" for s in ranked]
    more = " ..." if len(layers) > max_layers else ""
    percent = 100.0 * zeros / channels if channels else 0.0
    return f"γ = 0: {zeros}/{channels} channels ({percent:.1f}%) | " + ", ".join(parts) + more


def gamma_penalty_value(optimizer: Any) -> float | None:
    """``ρ · Σ_l λ_l ‖γ_l‖₁`` of a (built) GammaISTA, else ``None``."""
    targets = getattr(optimizer, "targets", None)
    if targets is None:
        inner = getattr(optimizer, "inner_optimizer", None)
        return None if inner is None else gamma_penalty_value(inner)
    if not targets:
        return None
    rho = float(keras.ops.convert_to_numpy(optimizer.rho))
    total = sum(lam * float(np.abs(np.asarray(variable_value(var))).sum())
                for _, var, lam in targets)
    return rho * total


@keras.saving.register_keras_serializable(package="tf_gamma_prune")
class SparsityMonitor(keras.callbacks.Callback):
    """Adds γ sparsity to the epoch ``logs`` (so ``History`` and TensorBoard get it).

    Keys: ``zero_gamma/<layer>`` (count of exactly-zero γ), ``zero_gamma_fraction``
    (over all BN channels) and, with GammaISTA, ``gamma_penalty`` (ρ·Σλ‖γ‖₁).
    Put it before ``keras.callbacks.TensorBoard`` in the callback list.

    Args:
        log_dir: if given, also write per-layer γ histograms (``gamma/<layer>``)
            and zero counts there as TensorBoard summaries, every epoch.
        verbose: print :func:`sparsity_summary` at the end of each epoch.

    Raises:
        NonFiniteGammaError: at the end of an epoch where some γ became NaN/Inf.
    """

    def __init__(self, log_dir: str | None = None, verbose: bool = False):
        super().__init__()
        self.log_dir = log_dir
        self.verbose = bool(verbose)
        self._writer = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        layers = gamma_sparsity(self.model)
        for s in layers:
            logs[f"zero_gamma/{s.name}"] = float(s.zeros)
        channels = sum(s.channels for s in layers)
        logs["zero_gamma_fraction"] = (
            sum(s.zeros for s in layers) / channels if channels else 0.0
        )
        penalty = gamma_penalty_value(self.model.optimizer)
        if penalty is not None:
            logs["gamma_penalty"] = penalty
        if self.log_dir:
            self._write_summaries(epoch, layers)
        if self.verbose:
            print(sparsity_summary(self.model))

    def _write_summaries(self, epoch: int, layers: list[LayerSparsity]) -> None:
        import tensorflow as tf

        if self._writer is None:
            try:
                import tensorboard  # noqa: F401 - tf.summary needs it for histograms
            except ImportError:
                raise ImportError(
                    "SparsityMonitor(log_dir=...) writes TensorBoard summaries: "
                    "`pip install tensorboard` (or tf-gamma-prune[tensorboard])."
                ) from None
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=epoch):
            for name, layer in batchnorm_layers(self.model):
                tf.summary.histogram(f"gamma/{name}", variable_value(layer.gamma))
            for s in layers:
                tf.summary.scalar(f"zero_gamma/{s.name}", s.zeros)
        self._writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self) -> dict:
        return {"log_dir": self.log_dir, "verbose": self.verbose}


__all__ = [
    "LayerSparsity",
    "NonFiniteGammaError",
    "SparsityMonitor",
    "gamma_penalty_value",
    "gamma_sparsity",
    "sparsity_summary",
]
