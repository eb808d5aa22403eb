"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs: the network phones run.

Width 1.0, the ImageNet network's inverted residual blocks, with the two changes usual
for CIFAR: a stride-1 stem and a stride-1 second stage (strides 1, 1, 2, 2, 1, 2, 1
instead of 2, 2, 2, 2, 1, 2, 1 after a stride-2 stem), so that the last blocks still
see 4x4 maps. `sanp_keras.convert` gates every 1x1 and the stem; each depthwise
convolution follows the gate of the expansion before it (`GatedDepthwiseConv2D`).
"""

import keras

from sanp_keras.models._blocks import conv_bn
from sanp_keras.models.registry import register_model

# (expansion t, output channels c, blocks n, first stride s) of the seven stages.
STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM, HEAD = 32, 1280


def _depthwise_bn_relu6(x, strides, name):
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                     depthwise_initializer="he_normal",
                                     name=f"{name}.conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}.bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}.relu")(x)


def _conv_bn_relu6(x, filters, name, strides=1, kernel_size=1):
    x = conv_bn(x, filters, kernel_size, name, strides=strides, relu=False)
    return keras.layers.ReLU(6.0, name=f"{name}.relu")(x)


def _inverted_residual(x, expansion, filters, strides, name):
    """1x1 expansion (t > 1) -> 3x3 depthwise -> linear 1x1 projection, + x when the
    shapes agree (stride 1, same width)."""
    y = x
    if expansion != 1:
        y = _conv_bn_relu6(y, x.shape[-1] * expansion, f"{name}.expand")
    y = _depthwise_bn_relu6(y, strides, f"{name}.depthwise")
    y = conv_bn(y, filters, 1, f"{name}.project", relu=False)
    if strides == 1 and x.shape[-1] == filters:
        y = keras.layers.Add(name=f"{name}.add")([x, y])
    return y


@register_model
def mobilenetv2(num_classes=10, input_shape=(32, 32, 3), dropout=0.2):
    """MobileNetV2, width 1.0, CIFAR strides (module docstring).

    88.0 M MACs for 32x32 inputs (2.27 M parameters) (`tests/test_flops.py` counts them from `STAGES`).
    """
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn_relu6(inputs, STEM, "stem", kernel_size=3)
    block = 0
    for expansion, filters, count, first_stride in STAGES:
        for i in range(count):
            block += 1
            x = _inverted_residual(x, expansion, filters, first_stride if i == 0 else 1,
                                   f"block{block}")
    x = _conv_bn_relu6(x, HEAD, "head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2")
