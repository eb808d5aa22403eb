"""Export of gated models to TFLite / LiteRT (`export_tflite`) and their runners."""

from sanp_keras.export.runners import Interpreter as Interpreter
from sanp_keras.export.runners import KernelRunner as KernelRunner
from sanp_keras.export.runners import build_kernels as build_kernels
from sanp_keras.export.runners import kernel_isa as kernel_isa
from sanp_keras.export.runners import kernel_isas as kernel_isas
from sanp_keras.export.runners import set_kernel_isa as set_kernel_isa
from sanp_keras.export.runners import time_side_by_side as time_side_by_side
from sanp_keras.export import parity as parity
from sanp_keras.export import tflite_export as tflite_export
from sanp_keras.export.layer_choice import always_on_channels as always_on_channels
from sanp_keras.export.layer_choice import builtin_layers as builtin_layers
from sanp_keras.export.tflite_export import export_tflite as export_tflite

__all__ = ["Interpreter", "KernelRunner", "always_on_channels", "build_kernels", "builtin_layers",
           "export_tflite", "kernel_isa", "kernel_isas", "set_kernel_isa", "time_side_by_side"]
