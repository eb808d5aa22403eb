"""`export_tflite`: a gated Keras model to a `.tflite` file of one of three kinds."""

import os
import warnings

from sanp_keras import flops
from sanp_keras.export import builders
from sanp_keras.export import folding
from sanp_keras.export import layer_choice as choice
from sanp_keras.export import patching
from sanp_keras.export import quantize as quantization
from sanp_keras.export import speed_check as speed

LAYER_CHOICES = ("threshold", "measured")


def export_tflite(model, path, kind="portable", calibration_data=None, decisions=False,
                  batch_size=None, layer_choice="threshold", verbose=False,
                  gates_in_kernels=True, quantize=None, speed_check=True):
    """Writes `model` (holding SPMConv2D layers) to a `.tflite` file.

    Args:
        model: a gated Keras model (from the zoo, `sanp_keras.convert`, or your own).
        path: output file.
        kind: `"portable"` (batch 1, builtin ops only, each convolution computed over
            its open channels; runs in any stock TFLite / LiteRT runtime), `"masked"`
            (dense convolutions times the gates, any batch: the reference), or
            `"kernels"` (batch 1, gated convolutions as `SanpGatedConv2D` custom ops
            run by the C kernels of `tflite/`: see `sanp_keras.export.KernelRunner`).
        calibration_data: images (N, H, W, C), what the speed of `portable` and
            `kernels` rests on; the model stays exact on every input either way.
            `portable`: a layer that prunes little on them stays a dense CONV_2D times
            its gates, the others gather their open channels, the ones open for all
            of them in a static, XNNPACK-friendly convolution (`layer_choice`).
            Without it every gated layer of a `portable` export is a dense CONV_2D
            times its gates (about the dense model's speed, never slower, no
            speed-up; a warning says so): gathering costs several times a dense
            convolution where few channels close, and nothing tells which layers
            close many. `kernels`: layers that prune little on them stay builtin
            convolutions; without it every gated layer is a custom op (faster than
            dense where a layer prunes about half its MACs or more, slower where it
            prunes little).
        decisions: add every gate's decisions as outputs "decisions_NNN" (for parity
            checks), besides "output".
        batch_size: the input's batch dimension; None (any) is allowed for `masked`
            only, the other kinds are batch 1.
        layer_choice: for `portable` and `kernels` with calibration data, how each
            gated layer picks between its gathered / custom-op form and a dense
            CONV_2D times its gates: "threshold" (by the share of MACs it keeps and
            the size of its output map, `builtin_layers`: instant) or "measured"
            (each layer exported alone in both forms and timed on its calibration
            inputs, `layer_choice.measured_plan`:
            about a second per layer, and faster models), or the plan that
            `layer_choice.measured_plan(model, kind, calibration_data)` returned, to
            export one model several times measuring once.
        verbose: log the progress of a measured layer choice.
        gates_in_kernels: `kernels` only: each SANP layer's gate is computed by the
            custom ops (SanpSEGatedConv2D, SanpSEGate) rather than by ~12 builtin ops;
            False keeps the builtin gates (to measure what moving them saves).
        quantize: None (float32) or `"int8"`: post-training full-integer quantization
            (int8 activations, per-channel int8 weights, int32 biases; float32 input
            and outputs), its ranges calibrated on `calibration_data` (required). Each gate stays float32 inside the int8
            graph, so that its decisions follow the float model's as closely as the
            int8 feature maps allow (`sanp_keras.export.quantize`). `kernels` runs
            each gated convolution as a `SanpGatedConv2DInt8` custom op (the int8
            masked arithmetic, byte for byte, over the open channels; the gates stay
            builtin float ops). A model without gates (a plain Keras model) exported
            as `masked` is the int8 dense model to compare with.
        speed_check: `portable` and `kernels` with calibration data (and without
            `decisions`): time the file written against the dense model
            (`sanp_keras.strip(model)` exported plain, the same `quantize`) side by
            side on the first calibration image, batch 1, 1 thread, and warn where it
            is slower (`speed_check.check_against_dense`): a few seconds, one more
            conversion. False skips it.

    A trained SANP model usually closes some channels for every input; it exports
    faster (smaller convolutions) after `sanp_keras.thinning.drop_closed_channels`,
    which removes them from the Keras model first (README, frontier table).

    Returns:
        The path written.
    """
    if kind not in builders.KINDS:
        raise ValueError(f"Unknown export kind {kind!r}; expected one of {builders.KINDS}.")
    if not isinstance(layer_choice, dict) and layer_choice not in LAYER_CHOICES:
        raise ValueError(f"Unknown layer_choice {layer_choice!r}; expected one of "
                         f"{LAYER_CHOICES} or a plan from layer_choice.measured_plan.")
    if layer_choice == "measured" and calibration_data is None and kind != "masked":
        raise ValueError("layer_choice='measured' times each layer on calibration inputs: "
                         "pass calibration_data (images, N x H x W x C).")
    quantization.check_quantize(quantize, calibration_data)
    plan = None
    if isinstance(layer_choice, dict):
        plan = layer_choice
    elif kind == "portable" and calibration_data is None:
        plan = {layer.name: "dense" for layer in flops.gated_layers(model)
                if layer.mode in choice.DYNAMIC_MODES}
        if plan:
            warnings.warn(
                "export_tflite(kind='portable') without calibration_data: every gated "
                "layer stays a dense convolution times its gates, as fast as the dense "
                "model and no faster. Pass calibration_data (a few hundred of your "
                "images) to let the layers that prune gather their open channels.",
                stacklevel=2)
    elif kind in ("portable", "kernels") and calibration_data is not None:
        if layer_choice == "measured":
            plan = choice.measured_plan(model, kind, calibration_data, verbose=verbose)
        else:
            plan = choice.threshold_plan(model, kind, calibration_data)
    function, signature = builders.inference_function(
        model, kind, plan, decisions=decisions, batch_size=batch_size)
    flatbuffer = builders.convert(function, signature, [w.value for w in model.weights],
                                  quantize=quantize, calibration_data=calibration_data)
    if kind == "kernels":
        dynamic = [layer for layer in flops.gated_layers(model)
                   if layer.mode in choice.DYNAMIC_MODES]
        gated = [layer for layer in dynamic if not (plan or {}).get(layer.name)]
    if kind == "kernels" and quantize == "int8":
        flatbuffer = patching.int8_gated_convs_to_custom_ops(flatbuffer, expected=len(gated))
    elif kind == "kernels":
        # SE gates go into the kernels, also those of layers kept builtin (SanpSEGate).
        se_gates = (patching.se_gates_of(folding.fold_conv(layer) for layer in dynamic)
                    if gates_in_kernels else {})
        flatbuffer = patching.gated_convs_to_custom_ops(flatbuffer, expected=len(gated),
                                                        se_gates=se_gates)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, path)
    if (speed_check and kind in ("portable", "kernels") and calibration_data is not None
            and not decisions and flops.gated_layers(model)):
        speed.check_against_dense(model, path, kind, calibration_data, quantize)
    return path
