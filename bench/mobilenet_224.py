"""keras.applications.MobileNetV2 at 224x224, the shape a phone runs: dense against the
gated exports, batch 1, side by side in one run.

The network (`weights=None`, width `--alpha`) is converted by `sanp_keras.convert` and
its gates are drawn at random (`_random_gates`: about `--cost` of the dense MACs left,
decisions varying per image; nobody trained them), so this times the kernels on the
layer shapes of an ImageNet MobileNet, not on a trained model's decisions. Timed
through LiteRT's CompiledModel (XNNPACK on) at each of `--threads`: dense (the plain
network), masked, portable and kernels, each checked against Keras on the images.

    python bench/mobilenet_224.py --output=bench/results/mobilenet_224

Writes `<output>.json` and `<output>.md` with the command. Pause other work while it
runs: its figures are latencies.
"""

import os
import platform
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import _random_gates  # noqa: E402  (bench/ is on the path when run as a script)
import _results as results  # noqa: E402
import sanp_keras as sk  # noqa: E402
from sanp_keras import export  # noqa: E402
from sanp_keras.export import layer_choice  # noqa: E402

SIZE = flags.DEFINE_integer("size", 224, "Input height and width.")
ALPHA = flags.DEFINE_float("alpha", 1.0, "MobileNetV2's width multiplier.")
COST = flags.DEFINE_float("cost", 0.5, "Fraction of the dense MACs the random gates keep.")
THREADS = flags.DEFINE_list("threads", ["1", "2"], "Thread counts.")
RUNS = flags.DEFINE_integer("runs", 50, "Timed runs per model (median reported).")
IMAGES = flags.DEFINE_integer("images", 8, "Random images: the gates' calibration and "
                              "the parity check.")
OUTPUT = flags.DEFINE_string("output", "bench/results/mobilenet_224", "Output path stem.")
FOLDER = flags.DEFINE_string("folder", "runs/mobilenet_224", "Where the .tflite files go.")
LAYER_CHOICE = flags.DEFINE_enum(
    "layer_choice", "threshold", ["threshold", "measured"],
    "portable / kernels: how each gated layer picks its form (export_tflite's layer_choice).")


def markdown(row):
    lines = [
        "# keras.applications.MobileNetV2 at 224x224: dense against the gated exports", "",
        f"Command: `{results.command_line()}`", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "(shared: figures within a row are measured side by side).", "",
        f"Width {row['alpha']}, {row['size']}x{row['size']}, gates drawn at random: "
        f"{row['flops_ratio']:.3f} of the dense {row['dense_macs'] / 1e6:.0f} M MACs on "
        f"{row['images']} random images (theory {1 / row['flops_ratio']:.2f}x), decisions "
        "varying per image; the timed image keeps "
        f"{row['timed_image_ratio']:.3f} (theory {1 / row['timed_image_ratio']:.2f}x). "
        f"{row['gated_layers']} gated 1x1 convolutions, {row['gated_depthwise']} depthwise "
        f"ones following them. Layer choice: {row['layer_choice']}"
        + (f" (layers left gated: {row['layers_gated']})" if row.get("layers_gated") else "")
        + ".", "",
        "| threads | dense ms | masked | portable | kernels | kernels of theory |",
        "|---|---|---|---|---|---|",
    ]
    for threads, t in row["latency_ms"].items():
        d = t["dense"]

        def cell(kind):
            return f"{t[kind]:.2f} ms ({d / t[kind]:.2f}x)"

        lines.append(f"| {threads} | {d:.2f} | {cell('masked')} | {cell('portable')} "
                     f"| {cell('kernels')} | {d / t['kernels'] * row['timed_image_ratio']:.2f} |")
    lines += ["", "Parity with Keras on the images:", "", "| kind | decisions | top-1 | max diff "
              "| max abs logit |", "|---|---|---|---|---|"]
    for kind, p in row["parity"].items():
        lines.append(f"| {kind} | {100 * p['decisions_equal']:.3f} % | "
                     f"{100 * p['top1_equal']:.2f} % | {p['max_logit_diff']:.2e} | "
                     f"{p['max_abs_logit']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    size = SIZE.value
    plain = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3),
                                           alpha=ALPHA.value, classes=1000,
                                           classifier_activation=None)  # logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the classifier conv stays dense, as it should
        model = sk.convert(plain)
    images = np.random.RandomState(0).uniform(-1, 1, (IMAGES.value, size, size, 3))
    images = images.astype("float32")
    _random_gates.randomize_gates(model, images, cost=COST.value)
    stats = sk.flops.measure(model, images)
    os.makedirs(FOLDER.value, exist_ok=True)
    paths = {"dense": export.export_tflite(sk.strip(model), f"{FOLDER.value}/dense.tflite",
                                           "masked", batch_size=1)}
    row = {"size": size, "alpha": ALPHA.value, "images": IMAGES.value,
           "flops_ratio": stats["flops_ratio"], "dense_macs": stats["dense_macs"],
           "timed_image_ratio": sk.flops.measure(model, images[:1])["flops_ratio"],
           "gated_layers": len(sk.flops.gated_layers(model)),
           "gated_depthwise": sum(isinstance(l, sk.GatedDepthwiseConv2D) for l in model.layers),
           "parity": {}, "latency_ms": {}, "layer_choice": LAYER_CHOICE.value}
    for kind in ("masked", "portable", "kernels"):
        print(f"exporting {kind} ...", flush=True)
        choice = LAYER_CHOICE.value
        if kind != "masked" and choice == "measured":  # measure once, export twice
            choice = layer_choice.measured_plan(model, kind, images)
        paths[kind] = export.export_tflite(model, f"{FOLDER.value}/{kind}.tflite", kind,
                                           calibration_data=images, batch_size=1,
                                           layer_choice=choice, speed_check=False)
        checked = export.export_tflite(model, f"{FOLDER.value}/{kind}_decisions.tflite", kind,
                                       calibration_data=images, decisions=True, batch_size=1,
                                       layer_choice=choice)
        if isinstance(choice, dict):
            row.setdefault("layers_gated", {})[kind] = sum(
                not (isinstance(v, str) or v is True) for v in choice.values())
        row["parity"][kind] = export.parity.compare(model, export.KernelRunner(checked), images)
        print(kind, export.parity.summary(row["parity"][kind]), flush=True)
    for threads in (int(t) for t in THREADS.value):
        row["latency_ms"][threads] = export.time_side_by_side(paths, images[:1], threads,
                                                              RUNS.value, 5)
        print(threads, row["latency_ms"][threads], flush=True)
    results.write(OUTPUT.value, row, markdown(row))


if __name__ == "__main__":
    app.run(main)
