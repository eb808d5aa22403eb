"""Batch-1 latency of the exports, side by side in one run, and their parity with Keras.

For each backbone and budget, takes a gated model trained by the pipeline (a quick run
of `examples/train_cifar.py` on the embedded sample, trained here if missing), then
exports and times, through the same LiteRT runtime (CompiledModel, XNNPACK on):

- dense: the plain backbone (every gate stripped);
- thinned: the same architecture made statically narrower to the gated model's mean
  open channel counts (`_thinned.py`), the practical ceiling;
- masked, portable, kernels: the three `export_tflite` kinds;
- kernels_builtin_gates: `kernels` with each gate left in builtin ops
  (`gates_in_kernels=False`), which shows what computing them in the kernels saves.

Reports the median of `--runs` runs after `--warmup`, at 1, 2 and 4 threads, the realized
speed-up t_dense / t and its ratio to the theoretical one (dense MACs / mean gated
MACs). Parity: on `--parity_images` test images, the share of (sample, channel)
decisions and of top-1 labels equal to Keras, and the largest logit difference.

    python bench/latency.py --backbones=resnet20,mcifarnet,resnet18,vgg19 \
        --budgets=0.5,0.33,random --output=bench/results/latency

`--budgets=random` adds the held-out case: gates nobody trained (`randomized_model`).
`--source=shipped` times the converged models shipped with the package (`bench/
converged.sh`; `sk.models.pretrained("resnet20_cifar10_sanp_0.5")`...) instead of quick
runs:

    python bench/latency.py --source=shipped --backbones=resnet20 \
        --budgets=0.5,0.33,random --models_dir=runs/latency_shipped \
        --output=bench/results/latency_shipped

`--source=converged --method=fixed_k` times the converged runs of another method
committed under `checkpoints/converged/fixed_k_<budget>/` (FIXED-K, FBS...).

Writes `<output>.json` and `<output>.md` with the command that produced them. Rows
of an earlier run that this one does not measure again are kept (`--keep_rows`), each
naming the command that measured it: backbones can be measured one at a time.
"""

import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import _converged  # noqa: E402  (bench/ is on the path when run as a script)
import _example  # noqa: E402
import _random_gates  # noqa: E402
import _results as results  # noqa: E402
import _thinned  # noqa: E402
import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import export  # noqa: E402
from sanp_keras.export import layer_choice  # noqa: E402
from sanp_keras.models import shipped  # noqa: E402

example = _example.load()  # defines the example's flags too

BACKBONES = flags.DEFINE_list("backbones", ["resnet20", "mcifarnet", "resnet18", "vgg19"],
                              "Zoo backbones.")
BUDGETS = flags.DEFINE_list(
    "budgets", ["0.5", "0.33"],
    "Budgets, fractions of dense MACs; 'random': the freshly gated backbone with gate "
    "weights randomized so that about half its MACs are pruned, each layer's decisions "
    "varying with the sample (gates nobody trained, held out from the kernels' tuning).")
THREADS = flags.DEFINE_list("threads", ["1", "2", "4"], "Thread counts.")
RUNS = flags.DEFINE_integer("runs", 200, "Timed runs per model (median reported).")
WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed runs first.")
PARITY = flags.DEFINE_integer("parity_images", 1000, "Test images of the parity check.")
MODELS_DIR = flags.DEFINE_string("models_dir", "runs/latency", "Trained models, one per run.")
SOURCE = flags.DEFINE_enum(
    "source", "quick", ["quick", "shipped", "converged"],
    "The trained models timed: quick runs of the pipeline (trained here if missing, under "
    "--models_dir), the shipped SANP models, `sk.models.pretrained(<backbone>_cifar10_"
    "sanp_<budget>)`, or the converged ResNet-20 runs of another --method committed under "
    "checkpoints/converged/<method>_<budget>/ (bench/converged.sh).")
METHOD = flags.DEFINE_string(
    "method", "fixed_k",
    "--source=converged: the run's method, as bench/converged.sh names it (fixed_k, fbs, "
    "sanp_kd, sanp_start...).")
QUICK_EPOCHS = flags.DEFINE_list("quick_epochs", ["3", "1", "6"],
                                 "Backbone, warm-up and fine-tune epochs of the quick runs.")
OUTPUT = flags.DEFINE_string("output", "bench/results/latency", "Output path stem.")
QUICK_IMAGES = flags.DEFINE_integer(
    "quick_train_images", None,
    "Train the quick runs on only this many of the sample's 5,000 training images (the "
    "gates need training, not accuracy: this keeps ResNet-18 / VGG-19 within CPU reach).")
QUICK_BATCH = flags.DEFINE_integer(
    "quick_batch_size", 128,
    "Batch size of the quick runs: smaller gives a few-image run enough steps for its "
    "batch-norm statistics and its budget controller to settle.")
LAYER_CHOICE = flags.DEFINE_enum(
    "layer_choice", "measured", ["measured", "threshold"],
    "How each gated layer of `portable` / `kernels` picks its form (export_tflite's "
    "layer_choice): timed per layer, or by its share of MACs.")
QUICK_RECIPE = flags.DEFINE_enum(
    "quick_recipe", "paper", ["paper", "default"],
    "The fine-tune of the quick runs: the paper's (gates start open, no distillation: "
    "the recipe of the committed rows) or examples/train_cifar.py's defaults (distilled "
    "from the backbone, gates started at the budget). Give each its own --models_dir.")
TRAIN_ONLY = flags.DEFINE_bool("train_only", False, "Only train the missing quick runs.")
KEEP = flags.DEFINE_bool(
    "keep_rows", True,
    "Keep the rows of `<output>.json` that this run does not measure again (each row "
    "names the command that measured it), so backbones can be measured one at a time "
    "and an interrupted run loses nothing.")
FLAGS = flags.FLAGS
ORDER = ("resnet20", "mcifarnet", "resnet18", "vgg19")


RANDOM = "random"


def _budget(text):
    return RANDOM if text == RANDOM else float(text)


def randomized_model(backbone):
    """The gated `backbone` with gates nobody trained (`_random_gates`): about half
    its MACs pruned on the embedded test images, decisions varying per sample."""
    images = datasets.normalized(datasets.load("embedded").test, 256)
    return _random_gates.randomize_gates(sk.models.create_model(backbone), images)


def trained_model(backbone, budget):
    """The quick run's model for (backbone, budget), trained first if missing.

    A quick run is `examples/train_cifar.py` on the embedded sample: the dense
    backbone once per backbone, then SANP at each budget from it (resumable). The
    example's `--finetune_lr`, `--gate_speed` and `--clipnorm` pass through.
    """
    if budget == RANDOM:
        return randomized_model(backbone)
    if SOURCE.value == "shipped":
        return sk.models.pretrained(shipped.sanp_name(backbone, budget))
    if SOURCE.value == "converged":
        _check_converged_backbone(backbone)
        return _converged.load(METHOD.value, budget)
    b, w, f = (int(e) for e in QUICK_EPOCHS.value)
    dense = os.path.join(MODELS_DIR.value, f"{backbone}_dense")
    out = os.path.join(MODELS_DIR.value, f"{backbone}_{budget}")
    subset = QUICK_IMAGES.value
    options = {name: FLAGS[name].value for name in ("finetune_lr", "gate_speed", "clipnorm")}
    if not os.path.exists(os.path.join(out, "model.keras")):
        if not os.path.exists(os.path.join(dense, "model.keras")):
            example.run(backbone=backbone, mode="dense", dataset="embedded",
                        backbone_epochs=b, train_subset=subset, output_dir=dense,
                        batch_size=QUICK_BATCH.value, export_kind="none",
                        clipnorm=options["clipnorm"], command=results.command_line())
        example.run(backbone=backbone, budget=budget, dataset="embedded",
                    pretrained=os.path.join(dense, "model.keras"), warmup_epochs=w,
                    finetune_epochs=f, train_subset=subset, output_dir=out,
                    batch_size=QUICK_BATCH.value, export_kind="none",
                    command=results.command_line(), **options, **_recipe())
    return keras.models.load_model(os.path.join(out, "model.keras"))


def _recipe():
    """The quick run's fine-tune options that --quick_recipe sets."""
    if QUICK_RECIPE.value == "paper":
        return {"distill": 0.0, "gate_start": "open"}  # the recipe of the committed rows
    return {}  # the example's defaults


def export_all(model, images, folder):
    """The five models of one (backbone, budget) as .tflite files, batch 1.

    Returns (paths to time, as an app would ship them; paths of the gated kinds that
    also output every gate's decisions, for the parity check; the layer plans of
    portable and kernels).
    """
    os.makedirs(folder, exist_ok=True)
    paths = {
        "dense": export.export_tflite(sk.strip(model), f"{folder}/dense.tflite", "masked",
                                      batch_size=1),
        "thinned": export.export_tflite(_thinned.thinned_model(model, images),
                                        f"{folder}/thinned.tflite", "masked", batch_size=1),
    }
    with_decisions, plans = {}, {}
    for kind in ("masked", "portable", "kernels"):
        choice = LAYER_CHOICE.value
        if kind != "masked" and choice == "measured":
            print(f"timing both forms of each layer for {kind} ...", flush=True)
            choice = plans[kind] = layer_choice.measured_plan(model, kind, images)
        paths[kind] = export.export_tflite(
            model, f"{folder}/{kind}.tflite", kind, calibration_data=images, batch_size=1,
            layer_choice=choice, speed_check=False)  # timed side by side below
        with_decisions[kind] = export.export_tflite(
            model, f"{folder}/{kind}_decisions.tflite", kind, calibration_data=images,
            decisions=True, batch_size=1, layer_choice=choice)
    paths["kernels_builtin_gates"] = export.export_tflite(
        model, f"{folder}/kernels_builtin_gates.tflite", "kernels", calibration_data=images,
        batch_size=1, layer_choice=plans.get("kernels", LAYER_CHOICE.value),
        gates_in_kernels=False, speed_check=False)
    return paths, with_decisions, plans


def parity(model, path, images):
    """Decision and top-1 agreement with Keras, and the largest logit difference."""
    return export.parity.compare(model, export.KernelRunner(path), images)


def _check_converged_backbone(backbone):
    if backbone != "resnet20":
        raise ValueError("--source=converged: the converged runs are ResNet-20 ones; "
                         f"got --backbones including {backbone!r}.")


def timed_image_macs(model, images):
    """MACs of the gated model on the one image every latency is timed on (images[:1]):
    a sample's cost varies around the mean, so the speed-up to expect from that run
    is dense MACs / these."""
    return float(sk.flops.measure(model, images[:1])["mean_macs"])


def measure_one(backbone, budget, images):
    model = trained_model(backbone, budget)
    stats = sk.flops.measure(model, images)
    theoretical = stats["dense_macs"] / stats["mean_macs"]
    folder = os.path.join(MODELS_DIR.value, f"{backbone}_{budget}", "tflite")
    paths, with_decisions, plans = export_all(model, images[:256], folder)
    row = {"backbone": backbone, "budget": budget, "flops_ratio": stats["flops_ratio"],
           "dense_macs": stats["dense_macs"], "mean_macs": stats["mean_macs"],
           "theoretical_speedup": theoretical, "latency_ms": {}, "parity": {},
           "timed_image_macs": timed_image_macs(model, images),
           "command": results.command_line(), "layer_choice": LAYER_CHOICE.value}
    if plans:  # how many of the input-dependent layers each kind runs gated
        row["layers_gated"] = {
            "portable": sum(not isinstance(e, str) for e in plans["portable"].values()),
            "kernels": sum(not e for e in plans["kernels"].values()),
            "of": len(plans["kernels"])}
    if budget == RANDOM:
        row["model"] = {"command": None, "top1_error": None, "dataset": None,
                        "landing": None}
    elif SOURCE.value == "converged":
        folder = _converged.run_folder(METHOD.value, budget)
        trained = _converged.report(METHOD.value, budget)  # the model is loaded once, above
        row["model"] = {"checkpoint": os.path.relpath(folder), "command": trained["command"],
                        "top1_error": trained["top1_error"], "dataset": trained["dataset"],
                        "landing": None}
    elif SOURCE.value == "shipped":
        name = shipped.sanp_name(backbone, budget)
        spec = sk.models.describe_pretrained(name)  # how it was trained, what it reached
        row["model"] = {"shipped": name, "command": spec["command"],
                        "top1_error": spec["metrics"]["top1_error"],
                        "dataset": spec["metrics"]["images"], "landing": None}
    else:
        with open(os.path.join(MODELS_DIR.value, f"{backbone}_{budget}", "report",
                               "report.json")) as f:
            trained = json.load(f)  # how the quick run was made, and what it reached
        row["model"] = {key: trained.get(key) for key in ("command", "top1_error",
                                                          "dataset", "landing")}
    for kind in ("masked", "portable", "kernels"):
        row["parity"][kind] = parity(model, with_decisions[kind], images)
        print(f"{backbone} {budget} {kind} parity: {row['parity'][kind]}", flush=True)
    for threads in (int(t) for t in THREADS.value):
        row["latency_ms"][threads] = export.time_side_by_side(
            paths, images[:1], threads, RUNS.value, WARMUP.value)
        print(f"{backbone} {budget} {threads} thread(s): {row['latency_ms'][threads]}",
              flush=True)
    runner = export.KernelRunner(paths["kernels"], num_threads=1)
    inside, calls = runner.kernel_time(images[:1], RUNS.value)
    runner.close()
    row["kernels_inside_ms"] = inside  # 1 thread; the rest is builtin ops and runtime
    row["kernel_calls"] = calls
    return row


def markdown(rows):
    commands = list(dict.fromkeys(r.get("command", "(not recorded)") for r in rows))
    lines = [
        "# Batch-1 latency of the exports (LiteRT CompiledModel, XNNPACK)", "",
        "Command" + ("s (each row names its own)" if len(commands) > 1 else "") + ": "
        + ", ".join(f"`{c}`" for c in commands), "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        "shared and noisy: compare figures within a row, measured side by side.", "",
        "Speed-up = t_dense / t. Theory = dense MACs / mean gated MACs on the 1,000 test "
        "images (MACs ratio: its inverse); every latency is timed on the first of them, "
        "whose own cost can sit above or below that mean, so 'kernels of theory' divides "
        "by the theory of that image: dense MACs / its gated MACs (column 'timed image').",
        "",
        "| backbone | budget | MACs ratio | theory | timed image | threads | dense ms | thinned "
        "| masked | portable | kernels | kernels of theory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    several = len(commands) > 1
    for r in rows:
        for threads, t in r["latency_ms"].items():
            d = t["dense"]

            def cell(kind):
                return f"{t[kind]:.2f} ms ({d / t[kind]:.2f}x)"

            image = r["dense_macs"] / r.get("timed_image_macs", r["mean_macs"])
            lines.append(
                f"| {r['backbone']} | {r['budget']} | {r['flops_ratio']:.3f} "
                f"| {r['theoretical_speedup']:.2f}x | {image:.2f}x | {threads} | {d:.2f} "
                f"| {cell('thinned')} | {cell('masked')} | {cell('portable')} "
                f"| {cell('kernels')} | {d / t['kernels'] / image:.2f} |"
            )
    later = sorted({r["timed_image_macs_by"] for r in rows if "timed_image_macs_by" in r})
    if later:
        lines += ["", "The timed image's MACs of rows measured before they were recorded: "
                  + ", ".join(f"`{c}`" for c in later) + " (same models, same image)."]
    lines += ["", "Which layers run gated (of those whose gates vary with the input; the others "
              "are a dense CONV_2D times their gates, the form timed faster, or under "
              "'threshold' the one keeping > 55 % of its MACs), and where the time of "
              "`kernels` goes (1 thread): inside the sanp kernels, per run, and the rest "
              "(builtin ops: convolutions kept builtin, additions; and the runtime); the same "
              "model with its gates in builtin ops rather than in the custom ops, timed side by "
              "side (rows measured before it existed: -):", "",
              "| backbone | budget | layer choice | portable: layers gathered | kernels: custom-"
              "op calls | kernels ms | inside sanp kernels | rest | with builtin gates |"
              + (" measured by |" if several else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if several else "")]
    for r in rows:
        if "kernels_inside_ms" not in r or 1 not in r["latency_ms"]:
            continue
        total = r["latency_ms"][1]["kernels"]
        gated = r.get("layers_gated")
        portable = f"{gated['portable']} of {gated['of']}" if gated else "-"
        builtin_gates = r["latency_ms"][1].get("kernels_builtin_gates")
        builtin_gates = (f"{builtin_gates:.2f} ms ({builtin_gates / total:.2f}x)"
                         if builtin_gates else "-")
        lines.append(f"| {r['backbone']} | {r['budget']} | {r.get('layer_choice', 'threshold')} "
                     f"| {portable} "
                     f"| {r['kernel_calls']:.0f} | {total:.2f} | {r['kernels_inside_ms']:.2f} "
                     f"| {total - r['kernels_inside_ms']:.2f} | {builtin_gates} |"
                     + (f" command {commands.index(r['command']) + 1} |" if several else ""))
    lines += ["", "Models (SANP, trained by the command shown: quick runs of "
              "`examples/train_cifar.py`, top-1 error on the sample's 1,000 test images, or "
              "shipped converged models, top-1 error on the images named):", ""]
    for r in rows:
        m = r["model"]
        if r["budget"] == RANDOM:
            lines.append(f"- {r['backbone']} random: not trained, gate weights randomized "
                         "(`randomized_model`), about half the MACs pruned, decisions varying "
                         "with the sample")
            continue
        if m.get("checkpoint"):
            lines.append(f"- {r['backbone']} {r['budget']}: `{m['checkpoint']}`, "
                         f"{100 * m['top1_error']:.2f} % error on {m['dataset']}, by "
                         f"`{m['command']}`")
            continue
        if m.get("shipped"):
            lines.append(f"- {r['backbone']} {r['budget']}: shipped `{m['shipped']}`, "
                         f"{100 * m['top1_error']:.2f} % error on {m['dataset']}, by "
                         f"`{m['command']}`")
            continue
        lines.append(f"- {r['backbone']} {r['budget']}: {100 * m['top1_error']:.1f} % error, "
                     f"by `{m['command']}`")
    lines += ["", "Parity with Keras (decisions equal, top-1 equal, max logit difference, and "
              "the largest Keras logit, the scale of that difference):", "",
              "| backbone | budget | kind | decisions | top-1 | max diff | max abs logit |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        for kind, p in r["parity"].items():
            lines.append(f"| {r['backbone']} | {r['budget']} | {kind} "
                         f"| {100 * p['decisions_equal']:.3f} % | {100 * p['top1_equal']:.2f} % "
                         f"| {p['max_logit_diff']:.2e} | {p['max_abs_logit']:.3g} |")
    return "\n".join(lines) + "\n"


def previous_rows():
    """The rows of an earlier run's `<output>.json`, each with its command."""
    path = OUTPUT.value + ".json"
    if not os.path.exists(path):
        return []
    with open(path) as f:
        previous = json.load(f)
    rows = previous.get("results", [])
    for r in rows:
        r.setdefault("command", previous.get("command", "(not recorded)"))
        r["latency_ms"] = {int(k): v for k, v in r["latency_ms"].items()}
    return rows


def main(argv):
    del argv
    if TRAIN_ONLY.value:
        for backbone in BACKBONES.value:
            for budget in (float(b) for b in BUDGETS.value if b != RANDOM):
                trained_model(backbone, budget)
        return
    images = datasets.normalized(datasets.load("embedded").test, PARITY.value)
    rows = previous_rows() if KEEP.value else []
    for r in rows:  # rows measured before the timed image's MACs were recorded
        saved = os.path.join(MODELS_DIR.value, f"{r['backbone']}_{r['budget']}", "model.keras")
        if "timed_image_macs" not in r and os.path.exists(saved):
            r["timed_image_macs"] = timed_image_macs(keras.models.load_model(saved), images)
            r["timed_image_macs_by"] = results.command_line()
    if not BACKBONES.value:  # only the kept rows, completed
        results.write(OUTPUT.value, {"results": rows, "runs": RUNS.value,
                                     "warmup": WARMUP.value}, markdown(rows))
    start = time.time()
    for backbone in BACKBONES.value:
        for budget in (_budget(b) for b in BUDGETS.value):
            row = measure_one(backbone, budget, images)
            rows = [r for r in rows if (r["backbone"], r["budget"]) != (backbone, budget)]
            rows.append(row)
            rows.sort(key=lambda r: (ORDER.index(r["backbone"]) if r["backbone"] in ORDER
                                     else len(ORDER),
                                     1.0 if r["budget"] == RANDOM else -r["budget"]))
            results.write(OUTPUT.value, {"results": rows, "runs": RUNS.value,
                                         "warmup": WARMUP.value}, markdown(rows))
            print(f"[{time.time() - start:.0f} s]", file=sys.stderr, flush=True)


if __name__ == "__main__":
    app.run(main)
