"""M-CifarNet (Zhao et al. 2018, Mayo), the backbone of FBS (Gao et al. 2019)."""

import keras

from sanp_keras.models._blocks import conv_bn
from sanp_keras.models.registry import register_model

# (filters, strides, padding) of the eight 3x3 convolutions; dropout after #4 and #7.
_CONVS = [
    (64, 1, "valid"),
    (64, 1, "same"),
    (128, 2, "same"),
    (128, 1, "same"),
    (128, 1, "same"),
    (192, 2, "same"),
    (192, 1, "same"),
    (192, 1, "same"),
]
_DROPOUT_AFTER = (4, 7)


@register_model
def mcifarnet(num_classes=10, input_shape=(32, 32, 3), dropout=0.3):
    """M-CifarNet: eight 3x3 conv + BN + ReLU, no max-pool, average pool, 1x1 classifier.

    174.3 M MACs for 32x32 inputs (paper table 1).
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, (filters, strides, padding) in enumerate(_CONVS, start=1):
        x = conv_bn(x, filters, 3, f"conv{i}", strides=strides, padding=padding)
        if i in _DROPOUT_AFTER:
            x = keras.layers.Dropout(dropout, name=f"conv{i}.dropout")(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)  # (B, 1, 1, 192)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)  # (B, 1, 1, classes)
    outputs = keras.layers.Flatten(name="logits")(x)
    return keras.Model(inputs, outputs, name="mcifarnet")
