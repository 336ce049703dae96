"""Reference networks used by the examples and benchmarks.

``fashion_vgg``: the Fashion-MNIST reference, a VGG-style BN network that is
deliberately over-parameterised (like VGG on CIFAR) so pruning has headroom::

    [Conv3x3(w1)-BN-ReLU] ×2 → MaxPool → [Conv3x3(w2)-BN-ReLU] ×2 → MaxPool
    → [Conv3x3(w3)-BN-ReLU] ×2 → GlobalAveragePooling → Dropout → Dense(10)

Default widths 32-32-64-64-128-128: 289,066 parameters (BN statistics included) and 29.3 M multiply-adds
per 28×28 image; every conv has no bias (BN follows) and 'same' padding. BN uses
momentum 0.9 (not Keras' 0.99) so that its moving statistics settle within the
short CPU training budgets used here.

``resnet20``: the CIFAR ResNet-20 of He et al. (3 stages × 3 basic blocks, 16-32-64
channels), as in the paper's CIFAR-10 experiments.

Example:

>>> model = fashion_vgg(widths=(8, 8, 16, 16, 32, 32))
>>> model.output_shape
(None, 10)
"""

from __future__ import annotations

from typing import Sequence

import keras

from tf_gamma_prune.errors import ArgumentError

L = keras.layers


def fashion_vgg(
    widths: Sequence[int] = (32, 32, 64, 64, 128, 128),
    input_shape: tuple = (28, 28, 1),
    classes: int = 10,
    dropout: float = 0.3,
    bn_momentum: float = 0.9,
    name: str = "fashion_vgg",
) -> keras.Model:
    """The VGG-style BN reference network (see the module docstring)."""
    if len(widths) != 6:
        raise ArgumentError(f"fashion_vgg takes 6 conv widths, got {len(widths)}.")
    x = keras.Input(input_shape, name="image")
    h = x
    for i, width in enumerate(widths):
        h = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(h)
        h = L.BatchNormalization(momentum=bn_momentum, name=f"bn{i + 1}")(h)
        h = L.ReLU(name=f"relu{i + 1}")(h)
        if i in (1, 3):
            h = L.MaxPooling2D(name=f"pool{i // 2 + 1}")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dropout(dropout, name="dropout")(h)
    y = L.Dense(classes, name="logits")(h)
    return keras.Model(x, y, name=name)


def resnet20(
    input_shape: tuple = (32, 32, 3), classes: int = 10, widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 3, name: str = "resnet20",
) -> keras.Model:
    """CIFAR ResNet-20 (basic blocks, 1×1 projection shortcuts on down-sampling)."""
    x = keras.Input(input_shape, name="image")
    h = L.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    h = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(h))
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            prefix = f"s{stage + 1}b{block + 1}"
            stride = 2 if stage > 0 and block == 0 else 1
            r = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                         name=f"{prefix}_conv1")(h)
            r = L.ReLU(name=f"{prefix}_relu1")(L.BatchNormalization(name=f"{prefix}_bn1")(r))
            r = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(r)
            r = L.BatchNormalization(name=f"{prefix}_bn2")(r)
            shortcut = h
            if stride != 1 or h.shape[-1] != width:
                shortcut = L.Conv2D(width, 1, strides=stride, use_bias=False,
                                    name=f"{prefix}_proj")(h)
                shortcut = L.BatchNormalization(name=f"{prefix}_proj_bn")(shortcut)
            h = L.ReLU(name=f"{prefix}_out")(L.Add(name=f"{prefix}_add")([shortcut, r]))
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(x, L.Dense(classes, name="logits")(h), name=name)


def first_conv_bns_of_blocks(model: keras.Model) -> list[str]:
    """Names of the BN after the first conv of each residual block (``*_bn1``).

    The paper prunes only these in ResNet-20; pass the other BN names to
    ``GammaISTA(exclude=...)``.
    """
    return [l.name for l in model.layers if l.name.endswith("_bn1")]
