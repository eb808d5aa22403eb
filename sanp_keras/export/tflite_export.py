"""`export_tflite`: a gated Keras model to a `.tflite` file of one of three kinds."""

import os
import tempfile

import numpy as np
import tensorflow as tf

from sanp_keras import flops
from sanp_keras.export import builders
from sanp_keras.export import patching


def always_on_channels(model, calibration_data):
    """Per SPMConv2D, the output channels open for every calibration sample.

    Returns a dict from layer name to an int array of channel indices.
    """
    decisions, _ = flops.collect_decisions(model, np.asarray(calibration_data, np.float32))
    return {name: np.flatnonzero(d.all(axis=0)) for name, d in decisions.items()}


KERNEL_COST_RATIO = 0.55


def builtin_layers(model, calibration_data, threshold=KERNEL_COST_RATIO):
    """Per SPMConv2D, whether the `kernels` export keeps it a builtin convolution.

    A layer whose mean MACs on the calibration data exceed `threshold` of its dense
    MACs runs faster as XNNPACK's dense convolution times its gates than in the
    custom kernel, which does fewer MACs but each more slowly than XNNPACK's
    hand-tuned dense convolution: both are exact, so the choice only moves time.
    """
    per_layer = flops.measure(model, calibration_data)["per_layer"]
    return {name: stats["mean_macs"] > threshold * stats["dense_macs"]
            for name, stats in per_layer.items() if stats.get("kind") == "conv"}


def _convert(function, signature, model):
    """TFLite flatbuffer of a tf.function, builtin ops only (a Flex op fails loudly)."""
    module = tf.Module()
    module.run = function
    module.weights = [w.value for w in model.weights]  # tracked, so saving can freeze them
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=function.get_concrete_function(*signature))
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


def export_tflite(model, path, kind="portable", calibration_data=None, decisions=False,
                  batch_size=None):
    """Writes `model` (holding SPMConv2D layers) to a `.tflite` file.

    Args:
        model: a gated Keras model (from the zoo, `sanp_keras.convert`, or your own).
        path: output file.
        kind: `"portable"` (batch 1, builtin ops only, each convolution computed over
            its open channels; runs in any stock TFLite / LiteRT runtime), `"masked"`
            (dense convolutions times the gates, any batch: the reference), or
            `"kernels"` (batch 1, gated convolutions as `SanpGatedConv2D` custom ops
            run by the C kernels of `tflite/`: see `sanp_keras.export.KernelRunner`).
        calibration_data: images (N, H, W, C). `portable`: channels open for all of
            them get a static, XNNPACK-friendly convolution. `kernels`: layers that
            prune little on them stay builtin convolutions (`builtin_layers`).
            Optional; the model stays exact on every input either way.
        decisions: add every gate's decisions as outputs "decisions_NNN" (for parity
            checks), besides "output".
        batch_size: the input's batch dimension; None (any) is allowed for `masked`
            only, the other kinds are batch 1.

    Returns:
        The path written.
    """
    if kind not in builders.KINDS:
        raise ValueError(f"Unknown export kind {kind!r}; expected one of {builders.KINDS}.")
    plan = None
    if kind == "portable" and calibration_data is not None:
        plan = always_on_channels(model, calibration_data)
        for name, builtin in builtin_layers(model, calibration_data).items():
            if builtin:
                plan[name] = "dense"
    if kind == "kernels" and calibration_data is not None:
        plan = builtin_layers(model, calibration_data)
    function, signature = builders.inference_function(
        model, kind, plan, decisions=decisions, batch_size=batch_size)
    flatbuffer = _convert(function, signature, model)
    if kind == "kernels":
        gated = [layer for layer in flops.gated_layers(model)
                 if layer.mode in ("sanp", "fixed_k", "fbs")
                 and not (plan or {}).get(layer.name)]
        flatbuffer = patching.gated_convs_to_custom_ops(flatbuffer, expected=len(gated))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, path)
    return path
