"""Re-estimate BatchNormalization moving statistics from data.

After ISTA on α-rescaled γ (the pretrained flow), after pruning non-constant
channels (Network Slimming, L1-norm), or after any large weight change, the BN
moving mean/variance describe activations the network no longer produces: the
model is fine in training mode and poor in inference mode. :func:`recalibrate_batchnorm`
replaces them by the *plain average* over the given batches — every batch
weighs the same, unlike the exponential moving average of training, whose
first batches are never fully forgotten. No other weight changes.

Example:

>>> import keras, numpy as np
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="bn")])
>>> x = np.random.default_rng(0).normal(5.0, 2.0, (64, 3)).astype("float32")
>>> recalibrate_batchnorm(model, x, batch_size=16)
4
>>> bool(np.allclose(model.get_layer("bn").moving_mean.numpy(), x.mean(axis=0), atol=1e-5))
True
"""

from __future__ import annotations

from typing import Any

import keras

from tf_gamma_prune.analysis.batchnorm import batchnorm_layers
from tf_gamma_prune.errors import ArgumentError, NoBatchNormError, RecalibrationDataError
from tf_gamma_prune.inputs import input_specs, model_input_batches, pack_inputs


def recalibrate_batchnorm(
    model: keras.Model,
    data: Any,
    *,
    batch_size: int = 256,
    max_batches: int | None = None,
) -> int:
    """Set every BN's moving mean/variance to their average over ``data``.

    Runs forward passes in training mode (so Dropout and other training-only
    behaviour is on, as during ``fit``) with each BN's momentum set so that the
    moving statistics become the running plain average of the per-batch
    statistics; momentum and ``trainable`` flags are restored afterwards, even
    on error, and on error the moving statistics are put back too (all or
    nothing). Frozen BNs (``trainable=False``) are recalibrated too. The
    per-batch variance is Keras' (biased) batch variance, as in training.

    Args:
        model: a built Keras model (nested models included).
        data: model inputs, read like everywhere in this package
            (:func:`tf_gamma_prune.inputs.model_input_batches`): one batch (an
            array, ``(x, y)``, a dict or list of arrays per input; split into
            ``batch_size`` batches), or a ``tf.data.Dataset`` / iterator / list
            of batches. Every batch weighs the same in the average.
        batch_size: batch size when ``data`` is one in-memory batch.
        max_batches: use at most this many batches.

    Returns:
        The number of batches used.

    Raises:
        NoBatchNormError: the model has no BatchNormalization layer.
        RecalibrationDataError: no batch, or a batch with NaN/Inf.
    """
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}.")
    if max_batches is not None and max_batches < 1:
        raise ArgumentError(f"max_batches must be >= 1 or None, got {max_batches}.")
    layers = [layer for _, layer in batchnorm_layers(model, with_gamma=False)]
    if not layers:
        raise NoBatchNormError(
            f"'{model.name}' has no BatchNormalization layer; there are no statistics to "
            "recalibrate."
        )
    saved = [(layer, layer.momentum, layer.trainable) for layer in layers]
    statistics = [(v, v.numpy()) for layer in layers
                  for v in (layer.moving_mean, layer.moving_variance)]
    used = 0
    try:
        for layer in layers:
            layer.trainable = True  # a frozen BN runs in inference mode even with training=True
        for batch in model_input_batches(data, input_specs(model, strict=False), what="data",
                                         error=RecalibrationDataError, batch_size=batch_size):
            if max_batches is not None and used >= max_batches:
                break
            for layer in layers:
                layer.momentum = used / (used + 1.0)  # running plain average
            model(pack_inputs(model, batch), training=True)
            used += 1
        if used == 0:
            raise RecalibrationDataError(
                "recalibrate_batchnorm got no batch; pass an array of model inputs or a "
                "non-empty dataset / iterable of batches."
            )
    except BaseException:
        for variable, value in statistics:  # all or nothing
            variable.assign(value)
        raise
    finally:
        for layer, momentum, trainable in saved:
            layer.momentum = momentum
            layer.trainable = trainable
    return used
