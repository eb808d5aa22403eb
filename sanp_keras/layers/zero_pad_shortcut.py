"""ZeroPadShortcut: the parameter-free shortcut of He et al.'s CIFAR ResNets (option A)."""

import keras
from keras import ops

from sanp_keras.layers import _checks


@keras.saving.register_keras_serializable(package="sanp_keras")
class ZeroPadShortcut(keras.layers.Layer):
    """Subsamples by `stride` and pads channels with zeros up to `filters`.

    He et al. 2016, section 4.2, option (A): "the shortcut still performs identity
    mapping, with extra zero entries padded for increasing dimensions". The padding is
    split between both ends of the channel axis, `(filters - C) // 2` before.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, ceil(height / stride), ceil(width / stride), filters)`.
    """

    def __init__(self, filters, stride=2, **kwargs):
        super().__init__(**kwargs)
        self.filters = _checks.check_int_at_least("filters", filters, 1)
        self.stride = _checks.check_int_at_least("stride", stride, 1)

    def pad_widths(self, channels):
        """(before, after) channel padding for an input of `channels` channels."""
        extra = self.filters - channels
        if extra < 0:
            raise ValueError(
                f"Layer '{self.name}' cannot shrink {channels} channels to "
                f"filters={self.filters}."
            )
        return extra // 2, extra - extra // 2

    def build(self, input_shape):
        self.pad_widths(_checks.check_image_shape(input_shape, self.name))

    def call(self, inputs):
        x = inputs[:, :: self.stride, :: self.stride, :]  # (B, H/s, W/s, C)
        before, after = self.pad_widths(inputs.shape[-1])
        return ops.pad(x, ((0, 0), (0, 0), (0, 0), (before, after)))

    def compute_output_shape(self, input_shape):
        def sub(n):
            return None if n is None else -(-n // self.stride)

        return (input_shape[0], sub(input_shape[1]), sub(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "stride": self.stride})
        return config
