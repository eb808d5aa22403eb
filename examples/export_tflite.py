"""Exports a trained gated model to TFLite / LiteRT and checks it against Keras.

    python examples/export_tflite.py --model=runs/default/model.keras \
        --kind=portable --output=runs/default/model_portable.tflite

Kinds (see `sanp_keras.export_tflite`):
- portable: batch 1, builtin ops only, each convolution computed over its open channels;
  runs in any stock TFLite / LiteRT runtime (the file an Android app ships).
- masked: dense convolutions times the gates, any batch: the reference.
- kernels: batch 1, gated convolutions as SanpGatedConv2D custom ops run by the C
  kernels of tflite/ (built here with `make -C tflite` if missing).

For portable and kernels, each gated layer is exported alone in both of its exact
forms (over its open channels, or a dense convolution times its gates) and timed on
its calibration inputs, and the faster is kept (`--layer_choice=measured`, about a
second per layer; `threshold` decides by the share of MACs each layer keeps).

`--drop_closed_images=N` first removes the channels the model's gates close for every
one of N training images (`sanp_keras.thinning.drop_closed_channels`: smaller
convolutions, the rest gated as before, the same outputs wherever those channels stay
closed) and prints how often the thinner model agrees with the trained one on the
check images: a trained SANP model that closes some channels for good exports faster.

Then it runs `--check_images` test images through the exported file and Keras, and
prints how many decisions and top-1 labels agree, the largest logit difference and
the batch-1 latency next to the dense model's.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import export  # noqa: E402
from sanp_keras import thinning  # noqa: E402

flags.DEFINE_string("model", "runs/default/model.keras", "A trained gated model (.keras).")
flags.DEFINE_enum("kind", "portable", ["portable", "masked", "kernels"], "Export kind.")
flags.DEFINE_string("output", None, "The .tflite to write (default: beside the model).")
flags.DEFINE_string("dataset", "embedded", "Images for calibration and the check "
                    "(as examples/train_cifar.py's --dataset).")
flags.DEFINE_string("data_dir", None, "Folder with the official archive or tfds data.")
flags.DEFINE_integer("calibration_images", 256, "Images that find always-open channels.")
flags.DEFINE_integer("check_images", 200, "Test images of the parity check (0: none).")
flags.DEFINE_integer("threads", 1, "Threads of the latency check.")
flags.DEFINE_enum("layer_choice", "measured", ["measured", "threshold"],
                  "portable / kernels: per layer, the faster of the gathered (custom-op) form "
                  "and a dense convolution times the gates, timed here (about a second per "
                  "layer), or by the share of MACs the layer keeps (instant).")
flags.DEFINE_integer("drop_closed_images", 0,
                     "Remove first the channels closed for every one of this many training "
                     "images (0: export the model as it is).")
FLAGS = flags.FLAGS


def run(model_path, kind="portable", output=None, dataset="embedded", data_dir=None,
        calibration_images=256, check_images=200, threads=1, layer_choice="measured",
        drop_closed_images=0):
    """Exports, checks and times; returns a dict of the figures."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(
            f"No model at {model_path!r}: train one first (python examples/train_cifar.py).")
    if drop_closed_images < 0:
        raise ValueError("Invalid value for argument `drop_closed_images`: expected 0 (off) "
                         f"or a number of training images. Received: {drop_closed_images}")
    trained = model = keras.models.load_model(model_path)
    output = output or os.path.splitext(model_path)[0] + f"_{kind}.tflite"
    data = datasets.load(dataset, data_dir)
    images = datasets.normalized(data.test, max(calibration_images, check_images))
    calibration = images[:calibration_images]
    result = {"output": output, "kind": kind}
    if drop_closed_images:
        # Drawn at random: the sources list their images class by class.
        drawn = datasets.normalized(data.subset(drop_closed_images).train)
        model, kept = thinning.drop_closed_channels(trained, drawn)
        agree = float(np.mean(np.argmax(model.predict(images, verbose=0), -1)
                              == np.argmax(trained.predict(images, verbose=0), -1)))
        result["closed_channels_removed"] = {"images": drop_closed_images, "kept": kept,
                                             "top1_equal_to_trained": agree}
        print(f"Removed the channels closed on {drop_closed_images} training images (kept / "
              "filters: " + (", ".join(f"{name} {k}/{f}" for name, (k, f) in kept.items())
                             or "none closed") +
              f"); top-1 equal to the trained model on {100 * agree:.2f} % of "
              f"{len(images)} test images.")
    if kind == "kernels":
        export.build_kernels()  # make -C tflite: nothing to do once built
    print(f"Exporting {model_path} as {kind} to {output} ...")
    export.export_tflite(model, output, kind, calibration_data=calibration, decisions=True,
                         batch_size=None if kind == "masked" else 1,
                         layer_choice=layer_choice, verbose=True)
    print(f"Wrote {output} ({os.path.getsize(output) / 1e6:.1f} MB).")
    if check_images <= 0:
        return result
    test = images[:check_images]
    result.update(export.parity.check_file(model, output, kind, test))
    print(f"Check on {len(test)} images: {export.parity.summary(result)}.")
    if kind != "masked" and os.path.exists(export.runners.library_path()):
        dense_path = os.path.splitext(output)[0] + "_dense.tflite"
        export.export_tflite(sk.strip(trained), dense_path, "masked", batch_size=1)
        times = export.time_side_by_side({"dense": dense_path, kind: output}, test[:1],
                                         threads, runs=100)
        result["latency_ms"] = times
        print(f"Batch-1 latency, {threads} thread(s), median of 100: dense "
              f"{times['dense']:.2f} ms, {kind} {times[kind]:.2f} ms "
              f"({times['dense'] / times[kind]:.2f}x).")
    return result


def main(argv):
    del argv
    run(FLAGS.model, FLAGS.kind, FLAGS.output, FLAGS.dataset, FLAGS.data_dir,
        FLAGS.calibration_images, FLAGS.check_images, FLAGS.threads, FLAGS.layer_choice,
        FLAGS.drop_closed_images)


if __name__ == "__main__":
    app.run(main)
