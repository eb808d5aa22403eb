"""VGG-19 with batch norm, as in Network Slimming (Liu et al. 2017) for CIFAR."""

import keras

from sanp_keras.models._blocks import conv_bn
from sanp_keras.models.registry import register_model

_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512]


@register_model
def vgg19(num_classes=10, input_shape=(32, 32, 3)):
    """VGG-19 (cfg of Network Slimming), global average pool, linear classifier.

    398.1 M MACs for 32x32 inputs (the paper reports 398.5 M, counting more than MACs).
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    block, index = 1, 1
    for v in _VGG19:
        if v == "M":
            x = keras.layers.MaxPooling2D(2, name=f"block{block}.pool")(x)
            block, index = block + 1, 1
            continue
        x = conv_bn(x, v, 3, f"block{block}.conv{index}")
        index += 1
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name="vgg19")
