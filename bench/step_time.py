"""Gated vs dense step time on CPU, side by side in one run.

Times, for each backbone, one training step (`train_on_batch`, plus the budget
callback's per-batch update for the gated model) and one inference step
(`predict_on_batch`) of the plain model and of its SANP-gated conversion, alternating
the two so that the machine's noise hits both alike, and reports median ratios.

    python bench/step_time.py --models=resnet20,mcifarnet --batch_size=128 \
        --repeats=15 --output=bench/results/step_time

Writes `<output>.json` and `<output>.md` with the command that produced them.
Goals (issue 2): training <= 1.25x dense, inference <= 1.15x dense.
"""

import os
import platform
import time

from absl import app
from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import _results as results  # noqa: E402  (bench/ is on the path when run as a script)
import sanp_keras as sk  # noqa: E402

FLAGS = flags.DEFINE_string("models", "resnet20,mcifarnet", "Comma-separated zoo names.")
BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
REPEATS = flags.DEFINE_integer("repeats", 15, "Timed steps per model and kind.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first.")
OUTPUT = flags.DEFINE_string("output", "bench/results/step_time", "Output path stem.")


def _compile(model):
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(name, batch, repeats, warmup):
    plain = _compile(sk.models.create_model(name, gated=False))
    gated = _compile(sk.convert(plain))
    callback = sk.BudgetCallback(budget=0.5)
    callback.set_model(gated)
    callback.on_train_begin()
    rng = np.random.RandomState(0)
    x = tf.constant(rng.uniform(size=(batch, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.randint(0, 10, size=batch))

    def gated_train():
        gated.train_on_batch(x, y)
        callback.on_train_batch_end(0)

    steps = {
        "train_dense": lambda: plain.train_on_batch(x, y),
        "train_gated": gated_train,
        "infer_dense": lambda: plain.predict_on_batch(x),
        "infer_gated": lambda: gated.predict_on_batch(x),
    }
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in steps}
    for _ in range(repeats):  # interleaved: dense, gated, dense, gated...
        for key, fn in steps.items():
            times[key].append(_timed(fn))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "model": name,
        "jit_compile": bool(gated.jit_compile),
        "median_s": med,
        "train_ratio": med["train_gated"] / med["train_dense"],
        "infer_ratio": med["infer_gated"] / med["infer_dense"],
    }


def run(models, batch, repeats, warmup):
    return [bench_model(m, batch, repeats, warmup) for m in models]


def _markdown(rows, command):
    lines = [
        "# Gated vs dense step time (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}",
        "",
        "| model | XLA | train dense (ms) | train gated (ms) | ratio (goal <= 1.25) "
        "| infer dense (ms) | infer gated (ms) | ratio (goal <= 1.15) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["median_s"]
        lines.append(
            f"| {r['model']} | {r['jit_compile']} | {1e3 * m['train_dense']:.0f} "
            f"| {1e3 * m['train_gated']:.0f} "
            f"| {r['train_ratio']:.2f} | {1e3 * m['infer_dense']:.0f} "
            f"| {1e3 * m['infer_gated']:.0f} | {r['infer_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    rows = run(FLAGS.value.split(","), BATCH.value, REPEATS.value, WARMUP.value)
    results.write(OUTPUT.value, {"batch_size": BATCH.value, "results": rows},
                  _markdown(rows, results.command_line()))


if __name__ == "__main__":
    app.run(main)
