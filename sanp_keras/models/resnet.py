"""ResNets for CIFAR: ResNet-18 (basic blocks 64-512) and He et al.'s ResNet-20/56."""

import keras

from sanp_keras.layers.zero_pad_shortcut import ZeroPadShortcut
from sanp_keras.models._blocks import conv_bn
from sanp_keras.models.registry import register_model


def _basic_block(x, filters, strides, name, shortcut):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
    y = conv_bn(x, filters, 3, f"{name}.conv1", strides=strides)
    y = conv_bn(y, filters, 3, f"{name}.conv2", relu=False)
    if strides != 1 or x.shape[-1] != filters:
        if shortcut == "projection":  # option B: 1x1 conv + BN
            x = conv_bn(x, filters, 1, f"{name}.shortcut", strides=strides, relu=False)
        else:  # option A: subsample and pad channels with zeros, no parameters
            x = ZeroPadShortcut(filters, strides, name=f"{name}.shortcut")(x)
    y = keras.layers.Add(name=f"{name}.add")([y, x])
    return keras.layers.ReLU(name=f"{name}.relu")(y)


def _resnet(name, widths, blocks, num_classes, input_shape, shortcut):
    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, widths[0], 3, "stem")
    for s, (filters, count) in enumerate(zip(widths, blocks), start=1):
        for b in range(1, count + 1):
            strides = 2 if (b == 1 and s > 1) else 1
            x = _basic_block(x, filters, strides, f"stage{s}.block{b}", shortcut)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


@register_model
def resnet18(num_classes=10, input_shape=(32, 32, 3)):
    """ResNet-18 for CIFAR: 3x3 stem, no max-pool, projection shortcuts. 555.4 M MACs."""
    return _resnet("resnet18", (64, 128, 256, 512), (2, 2, 2, 2), num_classes,
                   input_shape, "projection")


@register_model
def resnet20(num_classes=10, input_shape=(32, 32, 3)):
    """ResNet-20 (He et al. 2016, section 4.2), zero-padding shortcuts. 40.6 M MACs."""
    return _resnet("resnet20", (16, 32, 64), (3, 3, 3), num_classes, input_shape, "zeropad")


@register_model
def resnet56(num_classes=10, input_shape=(32, 32, 3)):
    """ResNet-56 (He et al. 2016, section 4.2), zero-padding shortcuts. 125.5 M MACs."""
    return _resnet("resnet56", (16, 32, 64), (9, 9, 9), num_classes, input_shape, "zeropad")
