"""Per gated layer, the faster of two exact forms, timed in the runtime that runs it.

Each export kind can compute a gated convolution in two ways that give the same
output: `portable` gathers the open channels at run time (`builders.portable_conv`)
or runs the dense CONV_2D times the gates (`builders.masked_conv`); `kernels` runs
the sanp custom op or, again, a builtin CONV_2D times the gates. Which one is faster
depends on the layer's shape, on how much it prunes and on the runtime: gathering a
32x32 map of 16 channels costs several times XNNPACK's dense convolution of it
even with 3 of 4 channels closed, while on a 4x4 map of 512 channels it wins. A MACs
threshold (`builtin_layers`) guesses; `measured_plan` asks: it exports
every gated layer alone in both forms and times them side by side on that layer's
real inputs (its activations for calibration images).

The module also holds the other per-layer plans: `always_on_channels` (the channels
`portable` computes statically) and `builtin_layers` (the MACs threshold).

The times are those of the machine that exports: on a phone the crossover moves, so
export on (or measure with) the target when the last percent matters.
"""

import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import logging

from sanp_keras import flops
from sanp_keras import graph
from sanp_keras.export import builders
from sanp_keras.export import folding
from sanp_keras.export import patching
from sanp_keras.export import runners
from sanp_keras.layers import SPMConv2D

# Gate modes whose decisions change with the input (the others are settled at export).
DYNAMIC_MODES = ("sanp", "fixed_k", "fbs")


def layer_inputs(model, images):
    """Every SPMConv2D's input for `images`: dict name -> (N, H, W, C_in) array."""
    functional = graph.as_functional(model)
    recorded = {}

    def call(layer, *args, **kwargs):
        if isinstance(layer, SPMConv2D):
            recorded[layer.name] = args[0]
        return layer(*args, **kwargs)

    functional._run_through_graph(tf.convert_to_tensor(np.asarray(images, np.float32)),
                                  operation_fn=lambda op: op, call_fn=call)
    return {name: np.asarray(x) for name, x in recorded.items()}


def always_on_channels(model, calibration_data):
    """Per SPMConv2D, the output channels open for every calibration sample.

    Returns a dict from layer name to an int array of channel indices.
    """
    decisions, _ = flops.collect_decisions(model, np.asarray(calibration_data, np.float32))
    return {name: np.flatnonzero(d.all(axis=0)) for name, d in decisions.items()}


KERNEL_COST_RATIO = 0.55  # the threshold's share of MACs
# The largest output maps (pixels) the gathered forms are chosen for without measuring:
# the custom op won on ResNet-20's 32x32 maps (bench/results/latency.md, random gates),
# gathering by builtin ops only on small deep maps (it lost on every 32x32 one); at
# MobileNetV2's 224x224 shapes both lost on the larger maps even with half the channels
# closed (bench/results/mobilenet_224_threshold.md).
KERNEL_MAX_PIXELS = 32 * 32
GATHER_MAX_PIXELS = 8 * 8


def builtin_layers(model, calibration_data, threshold=KERNEL_COST_RATIO,
                   max_pixels=KERNEL_MAX_PIXELS):
    """Per SPMConv2D, whether the `kernels` export keeps it a builtin convolution.

    A layer whose mean MACs on the calibration data exceed `threshold` of its dense
    MACs runs faster as XNNPACK's dense convolution times its gates than in the
    custom kernel, which does fewer MACs but each more slowly than XNNPACK's
    hand-tuned dense convolution; so does a layer whose output map has more than
    `max_pixels` pixels, where XNNPACK's tiling beats the kernel's whatever it prunes.
    Both forms are exact, so the choice only moves time.
    """
    per_layer = flops.measure(model, calibration_data)["per_layer"]
    pixels = {node.operation.name: int(np.prod(node.output_tensors[0].shape[1:3]))
              for node in graph.model_nodes(model) if isinstance(node.operation, SPMConv2D)}
    return {name: bool(stats["mean_macs"] > threshold * stats["dense_macs"]
                       or pixels.get(name, 0) > max_pixels)
            for name, stats in per_layer.items() if stats.get("kind") == "conv"}


def threshold_plan(model, kind, calibration_data):
    """The `plan` of `builders.inference_function` by the MACs threshold: `kernels`,
    `builtin_layers`; `portable`, the always-open channels, or "dense" for the layers
    `builtin_layers` keeps builtin with maps of at most `GATHER_MAX_PIXELS`."""
    if kind == "kernels":
        return builtin_layers(model, calibration_data)
    builtin = builtin_layers(model, calibration_data, max_pixels=GATHER_MAX_PIXELS)
    plan = always_on_channels(model, calibration_data)
    plan.update({name: "dense" for name, keep in builtin.items() if keep})
    return plan


def one_layer_flatbuffer(build, shape):
    """A batch-1 `.tflite` flatbuffer of `build(x) -> (y, decisions)` on inputs `shape`
    (H, W, C), builtin ops only."""
    signature = [tf.TensorSpec((1, *shape), tf.float32, name="image")]

    @tf.function(input_signature=signature)
    def run(image):
        return {"output": build(image)[0]}

    return builders.convert(run, signature)


def _forms(kind, folded, always_on):
    """{form name: (build, plan entry)} of one layer's two exact forms for `kind`."""
    if kind == "portable":
        return {
            "gathered": (lambda x: builders.portable_conv(x, folded, always_on), always_on),
            "dense": (lambda x: builders.masked_conv(x, folded), "dense"),
        }
    return {
        "kernel": (lambda x: builders.kernels_conv(x, folded, False), False),
        "builtin": (lambda x: builders.kernels_conv(x, folded, True), True),
    }


def write_forms(kind, folded, always_on, shape, folder, prefix):
    """Writes one layer's two forms for `kind` as batch-1 `.tflite` files, input shape
    (H, W, C_in), named `<prefix>_<form>.tflite` in `folder` (for `kernels`, with the
    custom ops `export_tflite` would give the layer: the builtin form's SANP gate is a
    SanpSEGate op too). Returns {form: (path, plan entry)}."""
    written = {}
    for form, (build, entry) in _forms(kind, folded, always_on).items():
        flatbuffer = one_layer_flatbuffer(build, shape)
        if kind == "kernels":  # as export_tflite makes it: a SANP gate in a custom op
            flatbuffer = patching.gated_convs_to_custom_ops(
                flatbuffer, expected=int(form == "kernel"),
                se_gates=patching.se_gates_of([folded]))
        path = os.path.join(folder, f"{prefix}_{form}.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        written[form] = (path, entry)
    return written


def _file_prefix(index, layer_name):
    safe = "".join(c if c.isalnum() else "_" for c in layer_name)
    return f"{index:03d}_{safe}"


def _timer(path, custom_ops=False, num_threads=1):
    """A function (x, runs) -> median milliseconds of the model at `path` on `x`: the C
    timing loop of `KernelRunner` at `num_threads` where the kernels are built (a model
    with custom ops needs them), else the stock interpreter in a Python loop (the same
    overhead for both forms of a layer)."""
    if custom_ops or os.path.exists(runners.library_path()):
        runner = runners.KernelRunner(path, num_threads=num_threads)
        return lambda x, runs: float(np.median(runner.time(x, runs=runs, warmup=2)))
    runner = runners.Interpreter(path, num_threads=num_threads)

    def median_ms(x, runs):
        times = []
        for _ in range(runs + 2):
            start = time.perf_counter()
            runner.run(x)
            times.append(time.perf_counter() - start)
        return float(np.median(times[2:])) * 1e3

    return median_ms


def measure_forms(model, kind, calibration_data, samples=8, runs=30, verbose=False,
                  num_threads=1):
    """Times both forms of every input-dependent gated layer of `model`.

    Args:
        model: a gated Keras model.
        kind: "portable" or "kernels".
        calibration_data: images (N, H, W, C); the first `samples` give the inputs
            timed, all of them the channels `portable` treats as always open.
        samples: images whose activations each layer is timed on (their sum counts).
        runs: timed runs per sample and form (the median counts).
        verbose: log each layer's times.
        num_threads: the runtime's threads when timing: the count the model will run
            at (at 2 threads XNNPACK's dense convolution uses both cores, and the
            faster form of a layer can change).

    Returns:
        dict layer name -> {form: (milliseconds summed over the samples, plan entry)}.
    """
    if kind not in ("portable", "kernels"):
        raise ValueError(f"Layer choice is for kinds 'portable' and 'kernels'; got {kind!r}.")
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError("Invalid value for argument `num_threads`: expected an integer "
                         f">= 1. Received: num_threads={num_threads!r}")
    images = np.asarray(calibration_data, np.float32)
    always_on = always_on_channels(model, images) if kind == "portable" else {}
    inputs = layer_inputs(model, images[:samples])
    layers = [layer for layer in flops.gated_layers(model) if layer.mode in DYNAMIC_MODES]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, layer in enumerate(layers):
            folded = folding.fold_conv(layer)
            x = inputs[layer.name]  # (samples, H, W, C_in)
            forms = write_forms(kind, folded, always_on.get(layer.name), x.shape[1:], tmp,
                                _file_prefix(index, layer.name))
            timers = {form: _timer(path, kind == "kernels", num_threads)
                      for form, (path, _) in forms.items()}
            entries = {form: entry for form, (_, entry) in forms.items()}
            total = {form: 0.0 for form in timers}
            for sample in x:  # forms alternate per sample: noise hits both alike
                for form, timer in timers.items():
                    total[form] += timer(sample[None], runs)
            result[layer.name] = {form: (total[form], entries[form]) for form in timers}
            if verbose:
                logging.info("layer choice %d/%d %s: %s", index + 1, len(layers), layer.name,
                             ", ".join(f"{f} {t * 1e3 / len(x):.0f} us" for f, t in total.items()))
    return result


# `kernels`: the custom op must be this much faster than the builtin form to be kept.
# Timed alone, both forms pay a model's fixed costs; inside the model the builtin
# convolution joins its neighbours' XNNPACK partition (and XNNPACK's threads), while a
# custom op splits a partition and costs the dispatcher a few microseconds: near a
# tie the builtin form is the faster one in the model (ResNet-20 at 0.33: a layer
# timed 83 us as the op and 86 us builtin ran 1.7 % faster as a model when builtin).
KERNEL_MARGIN = 0.1


def measured_plan(model, kind, calibration_data, samples=8, runs=30, verbose=False,
                  num_threads=1):
    """The `plan` of `builders.inference_function` that runs each layer in its faster
    form at `num_threads`, as `measure_forms` timed it (portable: the always-open
    channels, or "dense"; kernels: True to keep the layer builtin, unless the custom op
    is faster by more than KERNEL_MARGIN)."""
    times = measure_forms(model, kind, calibration_data, samples, runs, verbose, num_threads)
    if kind == "kernels":
        return {name: forms["builtin"][1]
                if forms["kernel"][0] * (1 + KERNEL_MARGIN) >= forms["builtin"][0]
                else forms["kernel"][1] for name, forms in times.items()}
    return {name: min(forms.values(), key=lambda pair: pair[0])[1]
            for name, forms in times.items()}
