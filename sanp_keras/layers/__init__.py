"""Keras layers of sanp_keras."""

from sanp_keras.layers.binarize import improved_semantic_hash as improved_semantic_hash
from sanp_keras.layers.binarize import saturating_sigmoid as saturating_sigmoid
from sanp_keras.layers.gated_depthwise_conv2d import (
    GatedDepthwiseConv2D as GatedDepthwiseConv2D,
)
from sanp_keras.layers.saliency_gate import SaliencyGate as SaliencyGate
from sanp_keras.layers.spm_conv2d import SPMConv2D as SPMConv2D
from sanp_keras.layers.zero_pad_shortcut import ZeroPadShortcut as ZeroPadShortcut
