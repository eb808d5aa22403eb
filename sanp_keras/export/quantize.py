"""Post-training int8 quantization of the export graphs, gates kept in float.

`int8_flatbuffer` converts an inference `tf.function` (from `builders.py`) to a TFLite
model whose convolutions, matrix products, residual additions and the multiplication
by the gates' scale are int8: int8 activations (per tensor, asymmetric), per-channel
int8 weights, int32 biases, ranges calibrated on the caller's images. The model's
input and outputs stay float32 (a QUANTIZE after the input, a DEQUANTIZE before each
output), so that it runs with the same feeds as the float export.

Each gate (`builders.gate_scale`: the channel means, two small FULLY_CONNECTED layers,
the threshold and the scale, named under `builders.GATE_SCOPE`) stays float32 but its
channel means, computed in int8 and dequantized (C_in values rather than the whole
map); its scale is quantized again for the multiplication. Quantizing the gate as well
rounds its scores to one int8 step of their whole range, which moves the decisions
near the threshold: on a ResNet-20 with random half-open gates that left 67 % of the
(sample, channel) decisions equal to the float model's, against 98.5-99.98 % with float
gates (`bench/int8_export.py` measures it on your model). The gate's arithmetic is a
few hundred MACs a layer; what it costs is the runtime's overhead for its dozen ops,
float or int8 alike.
"""

import warnings

import numpy as np
import tensorflow as tf

from sanp_keras.export import builders

QUANTIZE_CHOICES = (None, "int8")
_GATE_SCOPE_PREFIX = builders.GATE_SCOPE


def check_quantize(quantize, calibration_data):
    """Validates the `quantize` argument of `export_tflite` with its calibration data."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"Invalid value for argument `quantize`. Expected one of "
                         f"{QUANTIZE_CHOICES}. Received: quantize={quantize!r}")
    if quantize is not None and calibration_data is None:
        raise ValueError(f"quantize={quantize!r} calibrates the int8 ranges on images: pass "
                         "calibration_data (a few hundred of your images, N x H x W x C).")


def representative_dataset(calibration_data, batch_size):
    """The converter's calibration feed: `calibration_data` in batches of the export's
    batch size (None, a `masked` export of any batch: one image at a time)."""
    images = np.asarray(calibration_data, np.float32)
    if images.ndim != 4:
        raise ValueError("Invalid value for argument `calibration_data`. Expected images "
                         f"(N, H, W, C). Received: an array of shape {images.shape}")
    step = batch_size or 1

    def feed():
        for i in range(0, len(images) - step + 1, step):
            yield {"image": images[i : i + step]}

    return feed


def _gate_tensors(calibrated, int8_ops=("MEAN", "ABS")):
    """Names of the output tensors of the gates' ops in a calibrated model, but those of
    `int8_ops` (the channel means over the feature map)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=calibrated)
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    names = set()
    for op in interpreter._get_ops_details():  # noqa: SLF001 (the only op listing)
        if op["op_name"] in int8_ops:
            continue
        for index in op["outputs"]:
            # A fused op's tensor is named after every TF op in it, ";"-separated.
            name = tensors.get(index, "")
            if any(part.split("/")[0].startswith(_GATE_SCOPE_PREFIX)
                   for part in name.split(";")):
                names.add(name)
    return sorted(names)


def int8_flatbuffer(saved_model_dir, calibration_data, batch_size):
    """The int8 TFLite flatbuffer of the SavedModel at `saved_model_dir`, gates float."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration_data, batch_size)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    # Calibrate once, then quantize everything but the gates (what the converter's
    # QuantizationDebugger does for its `denylisted_nodes`).
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001
    with warnings.catch_warnings():  # the calibrator runs the deprecated tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        calibrated = converter.convert()
    keep_float = _gate_tensors(calibrated)
    from tensorflow.lite.python import convert as lite_convert

    return lite_convert.mlir_quantize(
        calibrated, disable_per_channel=False, fully_quantize=False,
        enable_numeric_verify=False, denylisted_nodes=keep_float or None)
