"""Per-layer ISTA penalties λ_l and the γ–W rescaling trick (Ye et al. 2018).

``gamma_penalties(model)`` gives each BatchNormalization the paper's "memory cost
per channel", normalised by the input area::

    λ_l = (H_l·W_l + k_l·c_{l−1} + Σ_{l' consumes l} k_{l'}·c_{l'}) / (H_in·W_in)

``H_l·W_l`` is the BN's feature-map area, ``k_l·c_{l−1}`` the producer weights per
output channel (kernel area × input channels for a plain conv), and the sum the
consumer weights per input channel (kernel area × output channels for a plain
conv), found by following the channel through activations, pooling, residual adds,
concatenations and Flatten. A BN whose channels reach no weight layer (the logit
layer's BN) gets 0.

Example:

>>> import keras
>>> x = keras.Input((8, 8, 1))
>>> h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
>>> h = keras.layers.BatchNormalization(name="bn1")(h)
>>> h = keras.layers.Conv2D(2, 3, padding="same", name="conv2")(h)
>>> round(gamma_penalties(keras.Model(x, h))["bn1"], 4)  # (64 + 9·1 + 9·2) / 64
1.4219
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import TYPE_CHECKING, Any, Iterable

import keras
import numpy as np

from tf_gamma_prune.analysis.activations import activation_name
from tf_gamma_prune.analysis.batchnorm import NoBatchNormError, is_batchnorm, resolve_layer_name
from tf_gamma_prune.analysis.layer_graph import LayerGraph, layer_graph
from tf_gamma_prune.errors import ArgumentError, InexactRescaleError  # noqa: F401

if TYPE_CHECKING:
    from tf_gamma_prune.analysis.latency_table import LatencyTable

L = keras.layers

WEIGHT_LAYERS = (L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D,
                 L.SeparableConv1D, L.SeparableConv2D, L.Dense)
"""Layers whose kernels produce or consume channels."""

_CHANNELWISE = (
    L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Dropout, L.SpatialDropout1D,
    L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout,
    L.AlphaDropout, L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D,
    L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D,
    L.UpSampling2D, L.UpSampling3D, L.Identity, L.BatchNormalization, L.Add, L.Subtract,
    L.Average, L.Maximum, L.Minimum, L.Multiply, L.Concatenate,
)
"""Layers a channel passes through unchanged in identity (not in value)."""

_HOMOGENEOUS = (
    L.LeakyReLU, L.PReLU, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
    L.SpatialDropout3D, L.GaussianDropout, L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D, L.GlobalAveragePooling3D, L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D,
    L.UpSampling2D, L.UpSampling3D, L.Identity, L.Flatten, L.Reshape, L.Permute,
)
"""Layers with f(α·x) = α·f(x) for α > 0 (in inference)."""

_SAME_SCALE_MERGES = (L.Add, L.Subtract, L.Average, L.Maximum, L.Minimum, L.Concatenate)



# ------------------------------------------------------------------ penalties
def gamma_penalties(model: keras.Model, cost: str = "memory",
                    table: "LatencyTable | None" = None, *,
                    gamma_scale: bool = False) -> dict[str, float]:
    """The paper's per-layer λ_l for every BatchNormalization γ of ``model``.

    Args:
        model: a built functional or Sequential model with a static input size.
        cost: ``"memory"`` (default): the paper's memory cost per channel (module
            docstring); ``"latency"``: the time one channel costs according to
            ``table`` (its producer's output-channel share plus each consumer's
            input-channel share, :meth:`LatencyTable.channel_ms`), divided by the
            mean over the penalised layers, so ISTA shrinks first the channels
            that buy the most time on the measured device; ``"uniform"``: λ_l = 1
            for every layer (with ``gamma_scale``: each layer's mean |γ| alone, so a
            channel goes when its |γ| is small relative to its own layer).
        table: the model's latency table, for ``cost="latency"``.
        gamma_scale: multiply each λ_l by the mean |γ| of its layer (for a
            trained model). ISTA needs ``|γ|/(η·ρ·λ)`` steps to empty a channel,
            so a layer whose training left its γ larger (the last BN before a
            pooled classifier: 1.3 against 0.95 in the trained fashion_vgg)
            otherwise keeps almost all its channels while the others are cut
            (docs/evidence.md §5). A layer whose γ are all 0 keeps λ_l.

    Returns:
        ``{qualified_bn_name: λ_l}``, ready for ``GammaISTA(penalties=...)``.

    Raises:
        NoBatchNormError: the model has no BatchNormalization with a γ.
        ValueError: the input's spatial size is not static.
    """
    if cost == "uniform":
        penalties = {name: 1.0 for name in _memory_penalties(model, "memory")}
    elif cost == "latency":
        penalties = _latency_penalties(model, table)
    else:
        penalties = _memory_penalties(model, cost)
    return _scaled_by_gamma(model, penalties) if gamma_scale else penalties


def _scaled_by_gamma(model: keras.Model, penalties: dict[str, float]) -> dict[str, float]:
    """Each λ_l times its layer's mean |γ| (a layer of zero γ keeps λ_l)."""
    from tf_gamma_prune.analysis.batchnorm import batchnorm_layers

    means = {name: float(np.mean(np.abs(keras.ops.convert_to_numpy(layer.gamma))))
             for name, layer in batchnorm_layers(model)}
    return {name: value * means[name] if means.get(name) else value
            for name, value in penalties.items()}


def _memory_penalties(model: keras.Model, cost: str) -> dict[str, float]:
    """The paper's memory-cost λ_l (see :func:`gamma_penalties`)."""
    if cost != "memory":
        raise ArgumentError(f"gamma_penalties: cost must be 'memory', 'latency' or 'uniform', "
                            f"got {cost!r}.")
    graph = layer_graph(model)
    input_area = _spatial_area(graph.shape(graph.inputs[0]))
    if input_area is None:
        raise ArgumentError(
            "gamma_penalties needs a static input size (the formula divides by the "
            "input area). Build the model with e.g. keras.Input((224, 224, 3))."
        )
    penalties: dict[str, float] = {}
    seen: set[int] = set()
    for call in graph.calls:
        if not is_batchnorm(call.layer) or getattr(call.layer, "gamma", None) is None:
            continue
        if id(call.layer) in seen:  # a shared BN is keyed by its first call
            continue
        seen.add(id(call.layer))
        consumers = _consumer_cost(graph, call.outputs[0])
        if consumers == 0:
            penalties[call.name] = 0.0
            continue
        area = _spatial_area(graph.shape(call.outputs[0]))
        if area is None:
            raise ArgumentError(f"Layer '{call.name}' has a dynamic spatial size.")
        cost = area + _producer_cost(graph, call.inputs[0]) + consumers
        penalties[call.name] = cost / input_area
    if not penalties:
        raise NoBatchNormError(
            f"Model '{model.name}' has no BatchNormalization with a γ (scale=True)."
        )
    return penalties


def _spatial_area(shape: tuple) -> int | None:
    spatial = shape[1:-1]
    if any(d is None for d in spatial):
        return None
    return int(math.prod(spatial)) if spatial else 1


def _kernel_weights(layer: Any) -> int:
    """Number of kernel (rank ≥ 2) weights of a weight layer, biases excluded."""
    return int(sum(math.prod(w.shape) for w in layer.trainable_weights if len(w.shape) >= 2))


def _producer(graph: LayerGraph, tensor: int) -> Any:
    """The weight layer call that produces ``tensor``'s channels, walking back through
    channel-wise layers; ``None`` where there is none."""
    call = graph.producer(tensor)
    while call is not None and not isinstance(call.layer, WEIGHT_LAYERS):
        if not isinstance(call.layer, _CHANNELWISE) or len(call.inputs) != 1:
            return None
        call = graph.producer(call.inputs[0])
    return call


def _producer_cost(graph: LayerGraph, tensor: int) -> float:
    """Producer weights per output channel."""
    call = _producer(graph, tensor)
    if call is None:
        return 0.0
    channels = graph.shape(call.outputs[0])[-1]
    return _kernel_weights(call.layer) / channels


def _consumers(graph: LayerGraph, tensor: int) -> list[tuple[Any, int, int]]:
    """``(call, multiplier, in_features)`` of every weight layer reading ``tensor``'s channels
    through channel-wise layers; ``multiplier`` inputs per channel (a Flatten's area)."""
    found = []
    frontier = [(tensor, 1)]
    seen: set[int] = set()
    while frontier:
        current, multiplier = frontier.pop()
        for call in graph.consumers(current):
            if id(call) in seen:
                continue
            seen.add(id(call))
            if isinstance(call.layer, WEIGHT_LAYERS):
                found.append((call, multiplier, graph.shape(current)[-1]))
            elif isinstance(call.layer, L.Flatten):
                area = _spatial_area(graph.shape(current)) or 1
                frontier.append((call.outputs[0], multiplier * area))
            elif isinstance(call.layer, _CHANNELWISE):
                frontier.append((call.outputs[0], multiplier))
    return found


def _consumer_cost(graph: LayerGraph, tensor: int) -> float:
    """Consumer weights per channel of ``tensor``, summed over every consumer."""
    return sum(_kernel_weights(call.layer) / in_features * multiplier
               for call, multiplier, in_features in _consumers(graph, tensor))


def _latency_penalties(model: keras.Model, table: "LatencyTable | None") -> dict[str, float]:
    """λ_l ∝ the milliseconds one channel of BN l costs (see :func:`gamma_penalties`)."""
    from tf_gamma_prune.analysis.latency_table import LatencyTable

    if not isinstance(table, LatencyTable):
        raise ArgumentError("gamma_penalties(cost='latency') needs table=LatencyTable (measure it "
                            "with tf_gamma_prune.export.measure_latency_table(model)).")
    graph = layer_graph(model)
    raw: dict[str, float] = {}
    for call in graph.calls:
        if not is_batchnorm(call.layer) or getattr(call.layer, "gamma", None) is None or call.name in raw:
            continue
        producer = _producer(graph, call.inputs[0])
        ms = 0.0
        if producer is not None and producer.layer.name in table.layers:
            ms += table.channel_ms(producer.layer.name, "out")
        consumers = _consumers(graph, call.outputs[0])
        for consumer, multiplier, _ in consumers:
            if consumer.layer.name in table.layers:
                ms += table.channel_ms(consumer.layer.name, "in") * multiplier
        raw[call.name] = ms if consumers else 0.0
    if not raw:
        raise NoBatchNormError(f"Model '{model.name}' has no BatchNormalization with a γ (scale=True).")
    mean = float(np.mean([v for v in raw.values() if v > 0] or [1.0]))
    return {name: value / mean for name, value in raw.items()}


# ----------------------------------------------------------------- rescaling
def rescale_gamma(
    model: keras.Model,
    alpha: float,
    layers: Iterable[str] | None = None,
    strict: bool = True,
) -> keras.Model:
    """γ–W rescaling: scale BN γ and β by ``alpha`` and consuming kernels by 1/alpha.

    The model computes the same function afterwards (in inference) when every
    path from a rescaled BN to its consumers is positively homogeneous (ReLU,
    LeakyReLU, linear, pooling, padding, residual adds of equally scaled
    tensors). Small ``alpha`` makes ISTA progress faster on pretrained models;
    ``rescale_gamma(model, 1 / alpha)`` undoes it. Modifies ``model`` in place and
    returns it.

    Args:
        model: functional or Sequential model.
        alpha: positive factor.
        layers: qualified BN names to rescale (default: all BN with γ).
        strict: raise :class:`InexactRescaleError` when the function would
            change (ReLU6, swish, sigmoid, a scaled model output, ...); with
            ``False`` only warn and rescale anyway.

    Example:

    >>> import keras, numpy as np
    >>> x = keras.Input((4,))
    >>> h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3)(x))
    >>> model = keras.Model(x, keras.layers.Dense(2)(keras.layers.ReLU()(h)))
    >>> before = model.predict(np.ones((1, 4)), verbose=0)
    >>> _ = rescale_gamma(model, 0.01)
    >>> bool(np.allclose(model.predict(np.ones((1, 4)), verbose=0), before, atol=1e-5))
    True
    """
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ArgumentError(f"alpha must be a finite positive number, got {alpha}.")
    graph = layer_graph(model)
    chosen = _chosen_bns(graph, layers)
    plan, problems = _rescale_plan(graph, chosen)
    if problems:
        message = (
            "γ–W rescaling is not exact for this model: " + "; ".join(problems) +
            ". It is exact only for positively homogeneous activations (ReLU, "
            "LeakyReLU, linear); exclude these BN layers with `layers=` or pass "
            "strict=False to rescale anyway (the function changes)."
        )
        if strict:
            raise InexactRescaleError(message)
        warnings.warn(message, stacklevel=2)
    for layer in chosen.values():
        layer.gamma.assign(np.asarray(layer.gamma) * alpha)
        if layer.beta is not None:
            layer.beta.assign(np.asarray(layer.beta) * alpha)
    for variable, exponent in plan:
        variable.assign(np.asarray(variable) * alpha ** (-exponent))
    return model


def _chosen_bns(graph: LayerGraph, layers: Iterable[str] | None) -> dict[str, Any]:
    bns: dict[str, Any] = {}
    for call in graph.calls:
        if is_batchnorm(call.layer) and getattr(call.layer, "gamma", None) is not None:
            bns.setdefault(call.name, call.layer)
    if not bns:
        raise NoBatchNormError("The model has no BatchNormalization with a γ to rescale.")
    if layers is None:
        return bns
    names = list(bns)
    return {n: bns[n] for n in (resolve_layer_name(k, names, "BatchNormalization") for k in layers)}


def _rescale_plan(graph: LayerGraph, chosen: dict[str, Any]) -> tuple[list, list[str]]:
    """Kernels to divide by α^exponent, and reasons the rescale would be inexact.

    Each tensor carries the power of α it is scaled by; BN outputs get 1, weight
    layers divide their kernel by α^(input power) and output power 0.
    """
    chosen_ids = {id(layer) for layer in chosen.values()}
    power: dict[int, int] = {t: 0 for t in graph.inputs}
    kernel_powers: dict[int, tuple[Any, int]] = {}
    problems: list[str] = []
    for call in graph.calls:
        ins = [power.get(t, 0) for t in call.inputs]
        layer = call.layer
        if id(layer) in chosen_ids:
            if any(ins):
                problems.append(f"'{call.name}' normalises an already rescaled tensor")
            out = 1
        elif isinstance(layer, WEIGHT_LAYERS):
            for variable in _kernels_seeing_input(layer):
                previous = kernel_powers.setdefault(id(variable), (variable, ins[0]))
                if previous[1] != ins[0]:
                    problems.append(f"shared layer '{call.name}' sees differently scaled inputs")
            out = 0
        elif isinstance(layer, L.Multiply):
            out = sum(ins)
        elif isinstance(layer, _SAME_SCALE_MERGES):
            if len(set(ins)) > 1:
                problems.append(f"'{call.name}' merges tensors with different scales")
            out = ins[0]
        elif _is_homogeneous(layer):
            out = ins[0] if ins else 0
        else:
            if any(ins):
                problems.append(
                    f"'{call.name}' ({_describe(layer)}) is not positively homogeneous"
                )
            out = 0
        for t in call.outputs:
            power[t] = out
    for t in graph.outputs:
        if power.get(t, 0):
            problems.append("a model output would be scaled (a rescaled BN feeds it directly)")
    plan = [(v, p) for v, p in kernel_powers.values() if p]
    return plan, problems


def _kernels_seeing_input(layer: Any) -> list:
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return [layer.depthwise_kernel]
    return [layer.kernel]


def _is_homogeneous(layer: Any) -> bool:
    if isinstance(layer, _HOMOGENEOUS):
        return True
    if isinstance(layer, L.ReLU):
        return layer.max_value is None and float(layer.threshold) == 0.0
    if isinstance(layer, L.Activation):
        fn = layer.activation  # a function (not a layer object) named like a homogeneous one
        return inspect.isfunction(fn) and activation_name(fn) in ("relu", "linear", "leaky_relu")
    return False


def _describe(layer: Any) -> str:
    if isinstance(layer, L.Activation):
        return f"activation {activation_name(layer.activation)}"
    if isinstance(layer, L.ReLU) and layer.max_value is not None:
        return f"ReLU(max_value={layer.max_value})"
    return type(layer).__name__
