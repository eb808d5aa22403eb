"""Building blocks shared by the plain backbones of the zoo."""

import keras


def conv_bn(x, filters, kernel_size, name, strides=1, padding="same", relu=True):
    """Conv2D (no bias) -> BatchNormalization -> optional ReLU, named `name.conv` etc.

    `sanp_keras.convert` turns each such pair into one `SPMConv2D` named `name.conv`.
    """
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}.conv",
    )(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}.bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}.relu")(x)
    return x
