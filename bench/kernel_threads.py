"""How a `kernels` model should share threads with XNNPACK: every split, side by side.

A `kernels` model alternates XNNPACK partitions (the builtin ops) with sanp custom ops,
each run by its own thread pool. For each model, at `--threads` n, this times in one
process, interleaved (`runners.time_runners`), batch 1 on test image 0:

- dense: the plain model (`sk.strip`), XNNPACK at n threads;
- kernels 1/1: the `kernels` export, everything at 1 thread;
- kernels n/n: XNNPACK at n, the kernels' pool at n (the runner's choice before
  `runtime_threads_for`);
- kernels n/1: XNNPACK at n, the kernels at 1 (no split of any gated convolution);
- kernels 1/n: XNNPACK at 1, the kernels' pool at n (spinning where the cores hold it);
- kernels auto: what `KernelRunner(path, num_threads=n)` chooses on this machine.

Models: ResNet-20 with gates nobody trained (`_random_gates`, about half the MACs,
decisions varying per sample) and the trained ones of `--shipped` (shipped names or
.keras files), each exported as `kernels` with the measured layer choice.

    python bench/kernel_threads.py --output=bench/results/kernel_threads

Writes `<output>.json` and `<output>.md` with the command that produced them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import _random_gates  # noqa: E402  (bench/ is on the path when run as a script)
import _results as results  # noqa: E402
import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import export  # noqa: E402
from sanp_keras.export import runners  # noqa: E402

SHIPPED = flags.DEFINE_list(
    "shipped", ["resnet20_cifar10_sanp_0.33", "resnet20_cifar10_sanp_kd_0.5",
                "checkpoints/converged/fixed_k_0.5/model.keras"],
    "Shipped SANP models (or .keras files) timed besides the random-gate ResNet-20.")
THREADS = flags.DEFINE_integer("threads", 2, "n, the model's thread count.")
RUNS = flags.DEFINE_integer("runs", 300, "Timed runs per configuration (median).")
FOLDER = flags.DEFINE_string("work_dir", "runs/kernel_threads", "Exported files.")
OUTPUT = flags.DEFINE_string("output", "bench/results/kernel_threads", "Output path stem.")


def exported(name, model, images):
    """(dense path, kernels path) of `model`, exported under --work_dir."""
    folder = os.path.join(FOLDER.value, name)
    dense = export.export_tflite(sk.strip(model), f"{folder}/dense.tflite", "masked",
                                 batch_size=1)
    kernels = export.export_tflite(model, f"{folder}/kernels.tflite", "kernels",
                                   calibration_data=images, batch_size=1, speed_check=False,
                                   layer_choice="measured")  # as latency.py and frontier.py
    return dense, kernels


def configurations(dense, kernels, n):
    """{label: KernelRunner} of one model: (kernels' threads, XNNPACK's) per label."""
    made = {"dense": runners.KernelRunner(dense, num_threads=n)}
    for label, (ours, theirs) in {"kernels 1/1": (1, 1), f"kernels {n}/{n}": (n, n),
                                  f"kernels {n}/1": (1, n),
                                  f"kernels 1/{n}": (n, 1)}.items():
        made[label] = runners.KernelRunner(kernels, num_threads=ours, runtime_threads=theirs)
    made["kernels auto"] = runners.KernelRunner(kernels, num_threads=n)
    return made


def markdown(rows, n, cores):
    labels = list(rows[0]["ms"])
    lines = [f"# `kernels` models at {n} threads: XNNPACK's threads / the kernels' threads",
             "", f"Command: `{results.command_line()}`", "",
             f"Machine: {cores} cores, shared: compare within a row (side by side, "
             "interleaved). 'a/b': XNNPACK at a threads, the sanp kernels at b. "
             f"'auto': `KernelRunner(path, num_threads={n})` here "
             "(`runners.runtime_threads_for`). Median ms, in brackets the speed-up over "
             f"the dense model at {n} threads.", "",
             "| model | auto chose | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    for r in rows:
        d = r["ms"]["dense"]
        lines.append(f"| {r['model']} | {r['auto']} | "
                     + " | ".join(f"{t:.3f} ({d / t:.2f}x)" for t in r["ms"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    n = THREADS.value
    images = datasets.normalized(datasets.load("embedded").test, 256)
    models = {"resnet20 random gates": _random_gates.randomize_gates(
        sk.models.create_model("resnet20"), images)}
    models.update({name: keras.models.load_model(name, compile=False) if name.endswith(
        ".keras") else sk.models.pretrained(name) for name in SHIPPED.value})
    export.build_kernels()
    rows = []
    for name, model in models.items():
        dense, kernels = exported(name.replace(" ", "_").replace("/", "_"), model, images)
        made = configurations(dense, kernels, n)
        try:
            ms = runners.time_runners(made, images[:1], RUNS.value)
        finally:
            for runner in made.values():
                runner.close()
        auto = made["kernels auto"]
        rows.append({"model": name, "ms": ms,
                     "auto": f"{auto.runtime_threads}/{auto.num_threads}"})
        print(rows[-1], flush=True)
    results.write(OUTPUT.value, {"threads": n, "cores": os.cpu_count(), "rows": rows},
                  markdown(rows, n, os.cpu_count()))


if __name__ == "__main__":
    app.run(main)
