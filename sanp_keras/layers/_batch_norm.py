"""The batch norm that SPMConv2D and GatedDepthwiseConv2D carry after their convolution."""

import keras


def make(use_batch_norm, momentum, epsilon, center, scale):
    """A `BatchNormalization` named "bn", or None when `use_batch_norm` is False."""
    if not use_batch_norm:
        return None
    return keras.layers.BatchNormalization(
        momentum=momentum, epsilon=epsilon, center=center, scale=scale, name="bn"
    )


def config(bn):
    """The owning layer's config entries for `bn` (None: no batch norm)."""
    if bn is None:
        return {"use_batch_norm": False}
    bn_config = bn.get_config()
    return {
        "use_batch_norm": True,
        "bn_momentum": bn_config["momentum"],
        "bn_epsilon": bn_config["epsilon"],
        "bn_center": bn_config["center"],
        "bn_scale": bn_config["scale"],
    }


def set_trainable(core, bn, trainable):
    """Freezes or unfreezes a convolution and its batch norm (frozen: inference mode)."""
    core.trainable = bool(trainable)
    if bn is not None:
        bn.trainable = bool(trainable)
