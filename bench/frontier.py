"""Top-1 error against measured batch-1 latency, one point per trained model: the
frontier a user picks a method and a budget from.

    python bench/frontier.py --dataset=../shared/data/cifar10 \
        --models=dense=resnet20_cifar10,sanp_0.5=resnet20_cifar10_sanp_0.5,\
sanp_0.33=resnet20_cifar10_sanp_0.33,slimming_0.5=checkpoints/converged/slimming_0.5/model.keras \
        --output=bench/results/frontier_resnet20

Each of `--models` is `label=source`, the source a shipped model (`sk.models.
list_pretrained()`) or a `.keras` file; the first is the reference (the dense backbone)
whose MACs every cost is a fraction of and whose latency every speed-up divides. Every
figure is measured here, on these weights:

- top-1 error and mean MACs per image (gates counted) on the test images of `--dataset`
  (`sanp_keras.report.evaluate`);
- batch-1 latency of the form a phone would run: a plain model (dense, Network
  Slimming, thin) as one dense `.tflite`; a gated one as `kernels` (the sanp custom
  ops, each layer's form measured at the thread count it is timed at,
  `layer_choice.measured_plan(..., num_threads=t)`); all timed side by side in one
  LiteRT runtime (CompiledModel, XNNPACK), median of `--runs`, at each of `--threads`,
  on test image 0.

`--drop_closed=label,...` measures those gated models without the channels their
gates close for every one of `--drop_closed_images` training images
(`sanp_keras.thinning.drop_closed_channels`: smaller convolutions, the rest gated as
before; the same outputs wherever those channels stay closed): list a model twice,
under two labels, to see both.

Writes `<output>.json`, `<output>.md` and `<output>.png` (error against latency at the
first of `--threads`). Pause any trainer on the machine while it times.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import _results as results  # noqa: E402  (bench/ is on the path when run as a script)
import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import export  # noqa: E402
from sanp_keras import report  # noqa: E402
from sanp_keras import thinning  # noqa: E402
from sanp_keras.export import layer_choice  # noqa: E402

MODELS = flags.DEFINE_list("models", None, "label=source pairs; the first is the reference.")
DATASET = flags.DEFINE_string("dataset", "embedded", "Test images (sanp_keras.datasets.load).")
TEST_SUBSET = flags.DEFINE_integer("test_subset", None, "Only the first N test images.")
THREADS = flags.DEFINE_list("threads", ["1", "2"], "Thread counts (the plot: the first).")
RUNS = flags.DEFINE_integer("runs", 200, "Timed runs per model (median reported).")
WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed runs first.")
WORK_DIR = flags.DEFINE_string("work_dir", "runs/frontier", "Where the .tflite files go.")
OUTPUT = flags.DEFINE_string("output", "bench/results/frontier", "Output path stem.")
DROP_CLOSED = flags.DEFINE_list(
    "drop_closed", [], "Labels of gated models measured without the channels their gates "
    "close for every one of --drop_closed_images training images "
    "(thinning.drop_closed_channels): a model of its own, error and cost measured on it.")
DROP_CLOSED_IMAGES = flags.DEFINE_integer(
    "drop_closed_images", 5000, "Training images (drawn at random) --drop_closed finds the "
    "closed channels on.")


def parse_models(pairs):
    """`["a=x", "b=y"]` -> `[("a", "x"), ("b", "y")]`; a malformed pair, a repeated
    label or a source that is neither shipped nor a file is a ValueError naming it."""
    if not pairs:
        raise ValueError("--models: expected label=source pairs. Received: --models=")
    models = []
    for pair in pairs:
        label, eq, source = pair.partition("=")
        if not eq or not label or not source:
            raise ValueError(f"--models: expected label=source. Received: {pair!r}")
        if source not in sk.models.list_pretrained() and not os.path.isfile(source):
            raise ValueError(
                f"--models: {source!r} is neither a shipped model "
                f"({sk.models.list_pretrained()}) nor a file. Received: {pair!r}")
        models.append((label, source))
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--models: labels must be distinct. Received: {labels}")
    return models


def check_drop_closed(models, labels):
    """The labels of `--drop_closed`, each one of `models`' (a ValueError names others)."""
    unknown = sorted(set(labels) - {label for label, _ in models})
    if unknown:
        raise ValueError(f"--drop_closed: {unknown} not among the labels of --models "
                         f"{[label for label, _ in models]}.")
    return set(labels)


def load(source):
    if source in sk.models.list_pretrained():
        return sk.models.pretrained(source)
    return keras.models.load_model(source, compile=False)


def export_fastest_form(model, path, images, num_threads):
    """The `.tflite` a phone would run at `num_threads`: a dense file for a plain model,
    `kernels` with each layer's form measured at that thread count for a gated one.
    Returns (path, kind)."""
    if not sk.flops.gated_layers(model):
        return export.export_tflite(model, path, "masked", batch_size=1), "dense"
    plan = layer_choice.measured_plan(model, "kernels", images, num_threads=num_threads)
    return export.export_tflite(model, path, "kernels", calibration_data=images,
                                batch_size=1, layer_choice=plan,
                                speed_check=False), "kernels"


def measure(models, data, drop_closed=()):
    """One row per model: error, cost, export; then every file timed side by side.
    The models labelled in `drop_closed` lose the channels closed on the training
    images first (`thinning.drop_closed_channels`)."""
    test = datasets.pipeline(data.test, 256, training=False)
    calibration = datasets.normalized(data.test, 256)
    os.makedirs(WORK_DIR.value, exist_ok=True)
    threads = [int(t) for t in THREADS.value]
    rows, paths, reference_macs = [], {t: {} for t in threads}, None
    # Drawn at random (the sources list their images class by class), once for all.
    drawn = (datasets.normalized(data.subset(DROP_CLOSED_IMAGES.value).train)
             if drop_closed else None)
    for label, source in models:
        model = load(source)
        if reference_macs is None:
            reference_macs = sk.flops.dense_macs(model)
        dropped = None
        if label in drop_closed:
            model, dropped = thinning.drop_closed_channels(model, drawn)
            print(f"[frontier] {label}: closed channels removed, kept {dropped}", flush=True)
        result = report.evaluate(model, test, name=label, reference_macs=reference_macs)
        for t in threads:
            path, kind = export_fastest_form(
                model, os.path.join(WORK_DIR.value, f"{label}_{t}threads.tflite"),
                calibration, t)
            paths[t][label] = path
        rows.append({"label": label, "source": source, "export": kind,
                     "top1_error": result["top1_error"], "mean_macs": result["mean_macs"],
                     "dense_macs": result["dense_macs"], "flops_ratio": result["flops_ratio"],
                     "num_samples": result["num_samples"],
                     "timed_image_macs": float(sk.flops.measure(model, calibration[:1])
                                               ["mean_macs"]),
                     "latency_ms": {}})
        if dropped is not None:
            rows[-1]["closed_channels_removed"] = {
                "images": DROP_CLOSED_IMAGES.value, "kept": dropped}
        print(f"[frontier] {label}: {100 * result['top1_error']:.2f} % error, cost "
              f"{result['flops_ratio']:.3f}, exported as {kind}", flush=True)
    for threads in threads:
        timed = export.time_side_by_side(paths[threads], calibration[:1], threads,
                                         RUNS.value, WARMUP.value)
        for row in rows:
            row["latency_ms"][threads] = timed[row["label"]]
        print(f"[frontier] {threads} thread(s): {timed}", flush=True)
    return rows


def markdown(rows, description):
    reference = rows[0]
    threads = list(reference["latency_ms"])
    lines = ["# Error against batch-1 latency", "", f"Command: `{results.command_line()}`", "",
             description, "",
             "Cost: mean MACs per test image as a fraction of the reference's (gates "
             "counted). Latency: batch 1, median, all models timed side by side; speed-up "
             f"against `{reference['label']}`.", "",
             "| model | top-1 error | cost | export | "
             + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads) + " |",
             "|---|---|---|---|" + "---|" * len(threads)]
    for r in rows:
        cells = " | ".join(
            f"{r['latency_ms'][t]:.3f} ms ({reference['latency_ms'][t] / r['latency_ms'][t]:.2f}x)"
            for t in threads)
        lines.append(f"| {r['label']} | {100 * r['top1_error']:.2f} % | {r['flops_ratio']:.3f} "
                     f"| {r['export']} | {cells} |")
    lines += ["", "Sources: " + ", ".join(f"{r['label']} `{r['source']}`" for r in rows), ""]
    for r in rows:
        if "closed_channels_removed" in r:
            removed = r["closed_channels_removed"]
            lines += [f"{r['label']}: `{r['source']}` without the channels its gates closed "
                      f"for every one of {removed['images']} training images "
                      "(`thinning.drop_closed_channels`; kept / filters: " + ", ".join(
                          f"{name.removesuffix('.conv')} {kept}/{filters}"
                          for name, (kept, filters) in removed["kept"].items()) + ").", ""]
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = next(iter(rows[0]["latency_ms"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        x, y = r["latency_ms"][threads], 100 * r["top1_error"]
        thinned = "closed_channels_removed" in r  # beside its twin: labelled below
        ax.scatter([x], [y], color="C2" if thinned else "C0" if r["export"] == "kernels"
                   else "C1", marker="D" if thinned else "o", zorder=3)
        ax.annotate(f"{r['label']} ({r['flops_ratio']:.2f})", (x, y),
                    textcoords="offset points", xytext=(5, -11 if thinned else 4),
                    fontsize=8)
    ax.scatter([], [], color="C0", label="gated, kernels export")
    if any("closed_channels_removed" in r for r in rows):
        ax.scatter([], [], color="C2", marker="D",
                   label="gated, closed channels removed, kernels export")
    ax.scatter([], [], color="C1", label="plain model, dense export")
    ax.set_xlabel(f"batch-1 latency, {threads} thread{'s' if threads > 1 else ''} (ms)")
    ax.set_ylabel("top-1 error (%)")
    ax.set_title("Error against latency (cost as a fraction of dense MACs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    models = parse_models(MODELS.value)
    drop_closed = check_drop_closed(models, DROP_CLOSED.value)
    data = datasets.load(DATASET.value).subset(None, TEST_SUBSET.value)
    rows = measure(models, data, drop_closed)
    description = (f"Test images: {len(data.test)} of {data.description}. Machine: "
                   f"{os.cpu_count()} cores, shared: compare within this run only.")
    results.write(OUTPUT.value, {"results": rows, "runs": RUNS.value,
                                 "description": description}, markdown(rows, description))
    plot(rows, OUTPUT.value + ".png")


if __name__ == "__main__":
    app.run(main)
