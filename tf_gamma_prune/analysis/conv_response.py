"""Linear-layer responses to constant inputs, in float64: the maths behind exact folding.

A removed constant channel still reaches the layers that read it. For a conv,
depthwise, separable or dense layer that contribution is linear in the
constant, so it can be computed once (:func:`linear_response`) and folded into
a bias. Zero padding makes the response differ at the borders: with the input's
static spatial size the exact per-position map is returned, which
:func:`split_response` splits into a per-channel bias and a border map.

>>> import keras, numpy as np
>>> conv = keras.layers.Conv2D(1, 3, padding="same", use_bias=False)
>>> conv.build((None, 4, 4, 1))
>>> _ = conv.kernel.assign(np.ones((3, 3, 1, 1)))
>>> bias, border = split_response(linear_response(conv, np.ones((1, 1, 1, 1)), (4, 4)), 1)
>>> bias.tolist(), border[0][0, 0].tolist()
([9.0], [-5.0])
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

L = keras.layers


def batchnorm_inference(layer: Any, x: np.ndarray) -> np.ndarray:
    """A BatchNormalization (last axis) in inference mode, in float64 numpy.

    With γ = 0 the output is exactly β, whatever ``x`` is (finite).
    """
    w = layer.moving_mean.shape[0]
    mean = numpy_weight(layer.moving_mean)
    var = numpy_weight(layer.moving_variance)
    gamma = numpy_weight(layer.gamma) if layer.scale else np.ones(w)
    beta = numpy_weight(layer.beta) if layer.center else np.zeros(w)
    scale = gamma / np.sqrt(var + layer.epsilon)
    return (np.asarray(x, np.float64) - mean) * scale + beta


# --- linear responses (shared with surgery) ---------------------------------------
def kernel_size(layer: Any) -> tuple[int, ...]:
    return tuple(getattr(layer, "kernel_size", ()) or ())


def is_transposed_conv(layer: Any) -> bool:
    return isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose))


def has_padding_effect(layer: Any) -> bool:
    """Whether the layer can make a uniform input non-uniform (zero padding; for
    transposed convs also the borders and the stride pattern of the taps)."""
    if is_transposed_conv(layer):
        return any(k > 1 for k in kernel_size(layer)) or any(s > 1 for s in layer.strides)
    padding = getattr(layer, "padding", "valid")
    if padding == "valid" or isinstance(layer, L.Dense):
        return False
    dilation = getattr(layer, "dilation_rate", (1,) * len(kernel_size(layer)))
    if isinstance(dilation, int):
        dilation = (dilation,) * len(kernel_size(layer))
    return any((k - 1) * d > 0 for k, d in zip(kernel_size(layer), dilation))


def numpy_weight(variable: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)


def conv_groups(layer: Any) -> int:
    """``groups`` of a grouped convolution (1 for every other layer)."""
    return int(getattr(layer, "groups", 1) or 1)


def dense_kernel(layer: Any, channels: np.ndarray | None = None) -> np.ndarray:
    """A conv's ``(*k, C_in, C_out)`` kernel in float64; a grouped kernel
    (``(*k, C_in / groups, C_out)``) expanded to the block-diagonal kernel of the
    same function (zeros where an output does not read an input).

    ``channels``: only these input channels (rows of the result).

    >>> import keras
    >>> conv = keras.layers.Conv1D(4, 1, groups=2, use_bias=False)
    >>> conv.build((None, 5, 4))
    >>> _ = conv.kernel.assign(np.ones((1, 2, 4)))
    >>> dense_kernel(conv)[0].astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    groups = conv_groups(layer)
    if groups == 1 or is_transposed_conv(layer):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        if channels is not None:
            kernel = kernel[..., channels, :]
        return np.asarray(kernel, np.float64)
    kernel = numpy_weight(layer.kernel)
    n_in, c_out = kernel.shape[-2], kernel.shape[-1]
    per_out = c_out // groups
    dense = np.zeros(kernel.shape[:-2] + (n_in * groups, c_out))
    for g in range(groups):
        outs = slice(g * per_out, (g + 1) * per_out)
        dense[..., g * n_in:(g + 1) * n_in, outs] = kernel[..., :, outs]
    return dense if channels is None else dense[..., channels, :]


def linear_response(layer: Any, value: np.ndarray,
                    spatial_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The bias-free, pre-activation output of a conv / depthwise / separable /
    dense ``layer`` for a constant input ``value`` (float64).

    ``value`` is either uniform over space (shape ``(1, 1, ..., C)``) or a full
    map (``(1, H, W, C)``). A uniform value without ``spatial_shape`` gives the
    interior response (uniform too); with ``spatial_shape`` (the input's
    static spatial size) the exact per-position response, zero padding
    included. Maps are run through the layer's own strides/padding/dilation.

    Example:

    >>> import keras, numpy as np
    >>> conv = keras.layers.Conv2D(1, 3, padding="same", use_bias=False)
    >>> conv.build((None, 4, 4, 1))
    >>> _ = conv.kernel.assign(np.ones((3, 3, 1, 1)))
    >>> linear_response(conv, np.ones((1, 1, 1, 1)))[0, 0, 0].tolist()
    [9.0]
    >>> linear_response(conv, np.ones((1, 1, 1, 1)), (4, 4))[0, :2, :2, 0].tolist()
    [[4.0, 6.0], [6.0, 9.0]]
    """
    value = np.asarray(value, np.float64)
    uniform = all(d == 1 for d in value.shape[1:-1])
    if isinstance(layer, L.Dense):
        return np.tensordot(value, numpy_weight(layer.kernel), axes=[[-1], [0]])
    if uniform and (spatial_shape is None or not has_padding_effect(layer)):
        return _interior_response(layer, value)
    if uniform and is_transposed_conv(layer):
        return _conv_map(layer, np.broadcast_to(value, (1,) + tuple(spatial_shape)
                                                + value.shape[-1:]))
    if uniform:
        return _uniform_response_map(layer, value.reshape(-1), tuple(spatial_shape))
    if is_transposed_conv(layer):
        return _conv_map(layer, value)
    if all(k == 1 for k in kernel_size(layer)):
        strided = value[(slice(None),) + tuple(slice(None, None, s) for s in layer.strides)]
        return _interior_response(layer, strided)
    return _conv_map(layer, value)


def _effective_kernels(layer: Any, channel_value: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Kernel taps already multiplied by the constant input: ``(*k, C_out)``.

    For a separable conv, the depthwise part and the pointwise matrix.
    Only the input channels with a nonzero value are read.
    """
    nz = np.flatnonzero(channel_value)
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        k = numpy_weight(layer.kernel)
        return (k * channel_value[:, None]).reshape(k.shape[:-2] + (-1,)), None
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        dw = numpy_weight(layer.depthwise_kernel)
        pw = numpy_weight(layer.pointwise_kernel)
        taps = (dw * channel_value[:, None]).reshape(dw.shape[:-2] + (-1,))
        return taps, pw.reshape(pw.shape[-2:])
    k = dense_kernel(layer, nz)
    return np.tensordot(k, channel_value[nz], axes=[[-2], [0]]), None


def _interior_response(layer: Any, value: np.ndarray) -> np.ndarray:
    """Response where every kernel tap reads ``value`` (uniform, or a map read
    by a 1x1 kernel)."""
    lead = value.shape[:-1]
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        k = numpy_weight(layer.kernel)
        summed = k.sum(axis=tuple(range(k.ndim - 2)))  # (C, dm)
        return (value[..., :, None] * summed).reshape(lead + (-1,))
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        dw = numpy_weight(layer.depthwise_kernel)
        pw = numpy_weight(layer.pointwise_kernel)
        summed = dw.sum(axis=tuple(range(dw.ndim - 2)))
        mid = (value[..., :, None] * summed).reshape(lead + (-1,))
        return np.tensordot(mid, pw.reshape(pw.shape[-2:]), axes=[[-1], [0]])
    nz = np.flatnonzero(np.any(value.reshape(-1, value.shape[-1]) != 0, axis=0))
    if is_transposed_conv(layer):
        # (*k, C_out, C_in): an interior output position receives, on average,
        # 1 / prod(strides) of the taps (exact for stride 1)
        k = numpy_weight(layer.kernel)[..., nz]
        summed = k.sum(axis=tuple(range(k.ndim - 2))) / float(np.prod(layer.strides))
        return np.tensordot(value[..., nz], summed, axes=[[-1], [1]])
    k = dense_kernel(layer, nz)
    summed = k.sum(axis=tuple(range(k.ndim - 2)))  # (nz, C_out)
    return np.tensordot(value[..., nz], summed, axes=[[-1], [0]])


def _tap_masks(layer: Any, spatial_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Per spatial axis, ``(out, k)``: whether tap ``a`` of output ``i`` reads
    inside the input (TensorFlow's 'same' / Keras' 'causal' padding)."""
    masks = []
    dilation = layer.dilation_rate
    for axis, (size, k, s) in enumerate(zip(spatial_shape, kernel_size(layer), layer.strides)):
        d = dilation[axis] if isinstance(dilation, (tuple, list)) else dilation
        extent = (k - 1) * d + 1
        if layer.padding == "valid":
            out, before = (size - extent) // s + 1, 0
        elif layer.padding == "causal":
            out, before = -(-size // s), (k - 1) * d
        else:  # same
            out = -(-size // s)
            before = max((out - 1) * s + extent - size, 0) // 2
        pos = np.arange(out)[:, None] * s - before + np.arange(k)[None, :] * d
        masks.append(((pos >= 0) & (pos < size)).astype(np.float64))
    return masks


def _uniform_response_map(layer: Any, channel_value: np.ndarray,
                          spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Exact per-position response to a uniform input, without a convolution:
    the valid taps of an output position are a product of per-axis intervals."""
    taps, pointwise = _effective_kernels(layer, channel_value)
    out = taps
    masks = _tap_masks(layer, spatial_shape)
    # contract one spatial axis at a time: (k1, ..., kn, O) -> (o1, ..., on, O)
    for axis, mask in enumerate(masks):
        out = np.tensordot(mask, out, axes=[[1], [axis]])  # new axis first
        out = np.moveaxis(out, 0, axis)
    if pointwise is not None:
        out = out @ pointwise
    return out[None]


def _conv_map(layer: Any, value: np.ndarray) -> np.ndarray:
    """Run the layer's convolution (no bias) on a map, in float64."""
    ops = keras.ops
    kernel = depthwise = pointwise = None
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        depthwise = numpy_weight(layer.kernel)
    elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        depthwise = numpy_weight(layer.depthwise_kernel)
        pointwise = numpy_weight(layer.pointwise_kernel)
    else:
        kernel = dense_kernel(layer)  # a grouped kernel as its block-diagonal equivalent
    x = ops.convert_to_tensor(value, "float64")
    padding = layer.padding
    if padding == "causal":
        k = kernel_size(layer)[0]
        d = layer.dilation_rate[0] if isinstance(layer.dilation_rate, tuple) else layer.dilation_rate
        x = ops.pad(x, [[0, 0], [(k - 1) * d, 0], [0, 0]])
        padding = "valid"
    common = dict(strides=layer.strides, padding=padding,
                  data_format="channels_last", dilation_rate=layer.dilation_rate)
    if is_transposed_conv(layer):
        out = ops.conv_transpose(x, ops.convert_to_tensor(kernel, "float64"),
                                 output_padding=layer.output_padding, **common)
    elif kernel is not None:
        out = ops.conv(x, ops.convert_to_tensor(kernel, "float64"), **common)
    elif pointwise is None:
        out = ops.depthwise_conv(x, ops.convert_to_tensor(depthwise, "float64"), **common)
    else:
        out = ops.separable_conv(x, ops.convert_to_tensor(depthwise, "float64"),
                                 ops.convert_to_tensor(pointwise, "float64"), **common)
    return np.asarray(ops.convert_to_numpy(out), np.float64)


def split_response(response: np.ndarray | None,
                   width: int) -> tuple[np.ndarray, tuple | None]:
    """Split a response into a per-channel bias part and a border map.

    The bias part is the response at the central position (the interior); the
    border map is what remains (``None`` when the response is uniform).
    """
    if response is None:
        return np.zeros(width), None
    if all(d == 1 for d in response.shape[1:-1]):
        return response.reshape(-1), None
    center = tuple(d // 2 for d in response.shape[1:-1])
    u = response[(0,) + center]
    rest = response - u
    scale = max(float(np.abs(response).max()), 1e-30)
    if float(np.abs(rest).max()) <= 1e-9 * scale:
        return u, None
    return u, (rest[0],)
