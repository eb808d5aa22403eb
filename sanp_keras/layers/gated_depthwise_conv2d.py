"""GatedDepthwiseConv2D: a depthwise convolution that follows its input's gate."""

import keras
from keras import ops

from sanp_keras.layers import _batch_norm
from sanp_keras.layers import _checks


@keras.saving.register_keras_serializable(package="sanp_keras")
class GatedDepthwiseConv2D(keras.layers.Layer):
    """Depthwise convolution (+ batch norm) masked by the decisions of its producer.

    Output channel `c` of a depthwise convolution reads input channel `c` only, so it
    needs no gate of its own: it is computed exactly when the `SPMConv2D` that produced
    its input kept channel `c` (MobileNetV2's expansion 1x1 -> depthwise 3x3). Masking
    after the batch norm keeps closed channels exactly zero, which the projection
    convolution that follows then skips on its input side:

        y[i, ..., c] = b[i, c] * BN(w[c] * x[i, ..., c])    then `activation`

    Args:
        kernel_size, strides, padding, use_bias, depthwise_initializer,
        bias_initializer, depthwise_regularizer: as in `keras.layers.DepthwiseConv2D`
            (`depth_multiplier` and `dilation_rate` must be 1, channels_last only).
        activation: applied after masking.
        use_batch_norm, bn_momentum, bn_epsilon, bn_center, bn_scale: the batch norm.

    Input shape:
        A list `[x, decisions]`: `x` of shape `(batch, height, width, channels)` and the
        producer's decisions of shape `(batch, channels)`.

    Output shape:
        `(batch, new_height, new_width, channels)`.
    """

    def __init__(
        self,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        activation=None,
        use_bias=False,
        depthwise_initializer="glorot_uniform",
        bias_initializer="zeros",
        depthwise_regularizer=None,
        use_batch_norm=True,
        bn_momentum=0.99,
        bn_epsilon=1e-3,
        bn_center=True,
        bn_scale=True,
        backbone_trainable=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.use_batch_norm = bool(use_batch_norm)
        self.depthwise = keras.layers.DepthwiseConv2D(
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            depthwise_initializer=depthwise_initializer,
            bias_initializer=bias_initializer,
            depthwise_regularizer=depthwise_regularizer,
            name="depthwise",
        )
        self.bn = _batch_norm.make(
            self.use_batch_norm, bn_momentum, bn_epsilon, bn_center, bn_scale
        )

        self.backbone_trainable = backbone_trainable

    @property
    def backbone_trainable(self):
        """Whether the depthwise convolution and batch norm train. Saved with the layer."""
        return self.depthwise.trainable

    @backbone_trainable.setter
    def backbone_trainable(self, value):
        _batch_norm.set_trainable(self.depthwise, self.bn, value)

    @property
    def kernel_size(self):
        return self.depthwise.kernel_size

    def build(self, input_shape):
        x_shape, b_shape = input_shape
        channels = _checks.check_image_shape(x_shape, self.name)
        if b_shape[-1] != channels:
            raise ValueError(
                f"Layer '{self.name}' needs one decision per input channel. "
                f"Received: input_shape={tuple(x_shape)}, decisions_shape={tuple(b_shape)}"
            )
        self.depthwise.build(x_shape)
        if self.bn is not None:
            self.bn.build(self.depthwise.compute_output_shape(x_shape))

    def call(self, inputs, training=None):
        x, decisions = inputs  # (B, H, W, C), (B, C)
        y = self.depthwise(x)
        if self.bn is not None:
            y = self.bn(y, training=training)
        y = y * ops.cast(decisions, y.dtype)[:, None, None, :]
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        return self.depthwise.compute_output_shape(input_shape[0])

    def get_config(self):
        config = super().get_config()
        dw = self.depthwise.get_config()
        for key in (
            "kernel_size",
            "strides",
            "padding",
            "use_bias",
            "depthwise_initializer",
            "bias_initializer",
            "depthwise_regularizer",
        ):
            config[key] = dw[key]
        config["activation"] = keras.activations.serialize(self.activation)
        config["backbone_trainable"] = self.backbone_trainable
        config.update(_batch_norm.config(self.bn))
        return config
