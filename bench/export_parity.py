"""Parity of every export kind with Keras, for every zoo backbone, on 1,000 images.

Gates are given random weights (seeded) so that every layer prunes a varying share of
its channels per image; the backbone keeps its initial weights. For each backbone and
kind it reports the share of (image, channel) decisions and of top-1 labels equal to
Keras, and the largest logit difference, against the goals of issue 4 (>= 99.9 %,
>= 99.9 %, <= 1e-3). `bench/latency.py` does the same check on trained models.

    python bench/export_parity.py --output=bench/results/export_parity

Writes `<output>.json` and `<output>.md` with the command that produced them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import _results as results  # noqa: E402  (bench/ is on the path when run as a script)
import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import export  # noqa: E402

BACKBONES = flags.DEFINE_list("backbones", sk.models.list_models(), "Zoo backbones.")
IMAGES = flags.DEFINE_integer("images", 1000, "Test images of the embedded sample.")
WORK = flags.DEFINE_string("work_dir", "runs/export_parity", "Where the .tflite files go.")
OUTPUT = flags.DEFINE_string("output", "bench/results/export_parity", "Output path stem.")
KINDS = ("masked", "portable", "kernels")
GOALS = {"decisions_equal": 0.999, "top1_equal": 0.999, "max_logit_diff": 1e-3}


def gated_model(backbone, seed=0):
    model = sk.models.create_model(backbone)
    rng = np.random.RandomState(seed)
    for layer in sk.flops.gated_layers(model):
        gate = layer.gate
        gate.excite_kernel.assign(rng.normal(0, 0.5, gate.excite_kernel.shape))
        gate.excite_bias.assign(rng.normal(0, 1.0, gate.excite_bias.shape))
    return model


def markdown(rows, command):
    lines = ["# Export parity with Keras (random gates, embedded test images)", "",
             f"Command: `{command}`", "",
             "| backbone | kind | images | open share | decisions equal | top-1 equal "
             "| max logit diff | goals met |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = (r["decisions_equal"] >= GOALS["decisions_equal"]
               and r["top1_equal"] >= GOALS["top1_equal"]
               and r["max_logit_diff"] <= GOALS["max_logit_diff"])
        lines.append(f"| {r['backbone']} | {r['kind']} | {r['images']} "
                     f"| {100 * r['open_share']:.1f} % | {100 * r['decisions_equal']:.3f} % "
                     f"| {100 * r['top1_equal']:.2f} % | {r['max_logit_diff']:.2e} "
                     f"| {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    export.build_kernels()
    images = datasets.normalized(datasets.load("embedded").test, IMAGES.value)
    rows = []
    for backbone in BACKBONES.value:
        model = gated_model(backbone)
        for kind in KINDS:
            path = export.export_tflite(
                model, os.path.join(WORK.value, f"{backbone}_{kind}.tflite"), kind,
                calibration_data=images[:256], decisions=True)
            row = {"backbone": backbone, "kind": kind, "images": len(images),
                   **export.parity.check_file(model, path, kind, images)}
            print(row, flush=True)
            rows.append(row)
        results.write(OUTPUT.value, {"results": rows, "goals": GOALS},
                      markdown(rows, results.command_line()))


if __name__ == "__main__":
    app.run(main)
