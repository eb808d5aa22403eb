"""sanp_keras: Self-Adaptive Network Pruning (Chen et al. 2019) for Keras 3.

Every convolution gets a Saliency-and-Pruning Module that decides, per input sample,
which of its output channels to compute; a callback holds the mean cost of the whole
network to a budget.
"""

from sanp_keras import distillation as distillation
from sanp_keras import export as export
from sanp_keras import flops as flops
from sanp_keras import models as models
from sanp_keras import slimming as slimming
from sanp_keras import thinning as thinning
from sanp_keras import training as training
from sanp_keras.callbacks import BudgetCallback as BudgetCallback
from sanp_keras.convert import convert as convert
from sanp_keras.convert import strip as strip
from sanp_keras.export import export_tflite as export_tflite
from sanp_keras.layers import GatedDepthwiseConv2D as GatedDepthwiseConv2D
from sanp_keras.layers import SaliencyGate as SaliencyGate
from sanp_keras.layers import SPMConv2D as SPMConv2D
from sanp_keras.layers import ZeroPadShortcut as ZeroPadShortcut

__version__ = "0.1.0"

__all__ = [
    "BudgetCallback",
    "GatedDepthwiseConv2D",
    "SPMConv2D",
    "SaliencyGate",
    "ZeroPadShortcut",
    "convert",
    "distillation",
    "export",
    "export_tflite",
    "flops",
    "models",
    "slimming",
    "strip",
    "thinning",
    "training",
]
