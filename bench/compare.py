"""Every pruning method side by side: one table of error, cost and real batch-1 latency.

    python bench/compare.py --backbone=resnet20 --dataset=../shared/data/cifar10 \
        --pretrained=runs/protocol/dense/model.keras --budgets=0.5,0.35 \
        --train_subset=10000 --test_subset=5000 --warmup_epochs=1 --finetune_epochs=2 \
        --output_dir=runs/compare/resnet20 --results=bench/results/compare_resnet20

For one backbone and dataset, starting every method from the same trained dense
backbone (`--pretrained`, or trained here with `--backbone_epochs`), for each budget:

- sanp, fixed_k, static (the paper's Table 3), fbs: gated models from
  `examples/train_cifar.py --mode=...`, `--warmup_epochs` + `--finetune_epochs`;
- slimming (Network Slimming): L1 on the BN scales for `--warmup_epochs`, channels
  removed, `--finetune_epochs` of fine-tuning;
- thin: the backbone uniformly narrower to the budget, trained from scratch for
  `--backbone_epochs` + `--warmup_epochs` + `--finetune_epochs` on the same data;
- tfmot (if installed): magnitude pruning to `1 - budget` sparsity for the same
  fine-tuning epochs, in its own process (`_tfmot_prune.py`).

Then it exports each model (gated: the `masked`, `portable` and `kernels` kinds;
plain: one dense `.tflite`; tfmot: plain and sparse-encoded), times them side by side
at batch 1 (median of `--runs`, same LiteRT runtime, XNNPACK on) and keeps each
method's fastest. Writes `<results>.json` and `<results>.md`: top-1 error, mean and p95
MACs per sample, pruned %, latency and speed-up over dense, budget hit, and links to
each gated method's Figure 4 (in its run's `report/`). Runs are resumable and a finished
run is read back from its `report/report.json`.

The paper's protocol (CIFAR-10, full data, on a GPU), one command per backbone:

    python bench/compare.py --paper --backbone=resnet18 --dataset=cifar10 --data_dir=DIR

(`--paper` sets the budgets of the paper's Table 1 for the backbone, or its Table 3
ablation budget for ResNet-18 with `--paper_ablation`, no subsets, 160 backbone, 5
warm-up and 60 fine-tune epochs.)
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import _example  # bench/ is on the path when run as a script
import _results as results
from absl import app
from absl import flags

TFMOT_SCRIPT = os.path.join(os.path.dirname(__file__), "_tfmot_prune.py")
GATED = ("sanp", "fixed_k", "static", "fbs")
PLAIN = ("slimming", "thin")
METHODS = GATED + PLAIN + ("tfmot",)
# Budgets of the paper's Table 1 (CIFAR-10: 1 - pruned rate) and Table 3.
PAPER_BUDGETS = {"mcifarnet": [0.225], "vgg19": [0.336], "resnet18": [0.325]}
PAPER_ABLATION_BUDGET = 0.665


example = _example.load()  # defines the example's flags, which this script reuses
RESULTS = flags.DEFINE_string("results", None, "Output stem (default bench/results/compare_"
                              "<backbone>).")
BUDGETS = flags.DEFINE_list("budgets", ["0.5", "0.35"], "Budgets, fractions of dense MACs.")
METHODS_FLAG = flags.DEFINE_list("methods", list(METHODS), f"Any of {list(METHODS)}.")
TOLERANCE = flags.DEFINE_float("tolerance", 0.03, "Budget hit: |cost ratio - budget| below.")
RUNS = flags.DEFINE_integer("runs", 200, "Timed runs per export (median reported).")
WARMUP_RUNS = flags.DEFINE_integer("warmup_runs", 20, "Untimed runs first.")
THREADS = flags.DEFINE_integer("threads", 1, "Threads of the runtime when timing.")
KINDS = flags.DEFINE_list("kinds", ["masked", "portable", "kernels"],
                          "Export kinds tried for the gated methods (the fastest is kept).")
PAPER = flags.DEFINE_bool("paper", False, "The paper's protocol (see the docstring).")
PAPER_ABLATION = flags.DEFINE_bool("paper_ablation", False,
                                   "With --paper: the Table 3 ablation budget (ResNet-18).")
FLAGS = flags.FLAGS
FLAGS.set_default("dataset", "../shared/data/cifar10")
FLAGS.set_default("output_dir", "runs/compare")
FLAGS.set_default("backbone_epochs", 12)
FLAGS.set_default("finetune_epochs", 2)
# The recipe its committed results ran with (before the example started its gates at the
# budget, d115bd9, and distilled by default): they stay reproducible.
FLAGS.set_default("distill", 0.0)
FLAGS.set_default("gate_start", "open")


def _read(path):
    with open(path) as f:
        return json.load(f)


def train_method(method, budget, options, dense_model, out):
    """The evaluation result of one method at one budget (read back when finished)."""
    folder = os.path.join(out, f"{method}_{budget}")
    report = os.path.join(folder, "report", "report.json")
    if method == "tfmot":
        report = os.path.join(folder, "result.json")
    if os.path.exists(report):
        print(f"[compare] {method} at {budget}: finished, read back from {report}", flush=True)
        return _read(report)
    print(f"[compare] {method} at {budget}: training in {folder}", flush=True)
    if method == "tfmot":
        command = [sys.executable, TFMOT_SCRIPT, f"--dense_model={dense_model}",
                   f"--dataset={options['dataset']}", f"--budget={budget}",
                   f"--epochs={options['warmup_epochs'] + options['finetune_epochs']}",
                   f"--output_dir={folder}", f"--lr={options['finetune_lr']}"]
        for key in ("data_dir", "train_subset", "test_subset"):
            if options[key]:
                command.append(f"--{key}={options[key]}")
        subprocess.run(command, check=True)
        return _read(report)
    args = dict(options, mode=method, budget=budget, output_dir=folder,
                command=results.command_line())
    if method != "thin":
        args["pretrained"] = dense_model
    return example.run(**args)


def tfmot_available():
    return importlib.util.find_spec("tensorflow_model_optimization") is not None


def export_candidates(method, folder, calibration, kinds):
    """The `.tflite` files of one trained method, by export kind."""
    import keras

    from sanp_keras import export

    if method == "tfmot":
        return _read(os.path.join(folder, "result.json"))["exports"]
    source = os.path.join(folder, "model.keras")
    model = None
    paths = {}
    for kind in kinds if method in GATED else ["dense"]:
        path = os.path.join(folder, "tflite", f"{kind}.tflite")
        if os.path.exists(path) and os.path.getmtime(path) > os.path.getmtime(source):
            paths[kind] = path  # exported from this very model before
            continue
        model = model or keras.models.load_model(source)
        paths[kind] = export.export_tflite(
            model, path, "masked" if kind == "dense" else kind, batch_size=1,
            calibration_data=calibration if method in GATED else None, speed_check=False)
    return paths


def _label(method):
    return {"sanp": "SANP", "fixed_k": "FIXED-K", "static": "STATIC", "fbs": "FBS",
            "slimming": "Network Slimming", "thin": "thin dense", "tfmot": "tfmot magnitude",
            "dense": "dense"}[method]


def markdown(rows, protocol, command):
    lines = [
        f"# Pruning methods side by side: {protocol['backbone']}, {protocol['dataset']}", "",
        f"Command: `{command}`", "", protocol["description"], "",
        "MACs per test image (gates counted); pruned % and speed-up against the dense "
        "backbone; latency: batch 1, "
        f"{protocol['threads']} thread(s), median of {protocol['runs']} runs, fastest export "
        "of each method, all timed side by side in one run (LiteRT CompiledModel, XNNPACK).",
        "",
        "| method | budget | top-1 error | mean MACs (M) | p95 MACs (M) | pruned | budget hit "
        "| latency (ms) | export | speed-up | Figure 4 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = "-" if r["method"] == "dense" else f"{r['budget']:.2f}"
        hit = {True: "yes", False: "no", None: "-"}[r.get("budget_hit")]
        figure = f"[png]({r['figure4']})" if r.get("figure4") else "-"
        timing = "| - | - | -"
        if r.get("latency_ms"):
            timing = f"| {r['latency_ms']:.3f} | {r['export']} | {r['speedup']:.2f}x"
        lines.append(
            f"| {_label(r['method'])} | {budget} | {100 * r['top1_error']:.2f} % "
            f"| {r['mean_macs'] / 1e6:.2f} | {r['p95_macs'] / 1e6:.2f} "
            f"| {100 * r['pruned_fraction']:.1f} % | {hit} {timing} | {figure} |"
        )
    if protocol["notes"]:
        lines += [""] + [f"- {n}" for n in protocol["notes"]]
    return "\n".join(lines) + "\n"


def _row(method, budget, result, folder, tolerance):
    row = {
        "method": method, "budget": budget, "name": result["name"],
        "top1_error": result["top1_error"], "mean_macs": result["mean_macs"],
        "p95_macs": result["percentiles"]["p95"], "dense_macs": result["dense_macs"],
        "pruned_fraction": result["pruned_fraction"], "flops_ratio": result["flops_ratio"],
        "budget_hit": None, "folder": folder,
    }
    if method in GATED + PLAIN:
        row["budget_hit"] = abs(result["flops_ratio"] - budget) < tolerance
    if method == "tfmot":
        row["weight_sparsity"] = result["weight_sparsity"]
    if "landing" in result:
        row["landing"] = result["landing"]
    figure = os.path.join(folder, "report", "figure4_categories.png")
    if method in GATED and os.path.exists(figure):
        row["figure4"] = figure
    return row


def main(argv):
    del argv
    from sanp_keras import datasets
    from sanp_keras import export

    command = results.command_line()
    backbone = FLAGS.backbone
    budgets = [float(b) for b in BUDGETS.value]
    train_subset, test_subset = FLAGS.train_subset, FLAGS.test_subset
    epochs = (FLAGS.backbone_epochs, FLAGS.warmup_epochs, FLAGS.finetune_epochs)
    if PAPER.value:
        if backbone not in PAPER_BUDGETS:
            raise ValueError(f"--paper: the paper trains {sorted(PAPER_BUDGETS)}. "
                             f"Received: --backbone={backbone}")
        budgets = [PAPER_ABLATION_BUDGET] if PAPER_ABLATION.value else PAPER_BUDGETS[backbone]
        train_subset = test_subset = None
        epochs = (160, 5, 60)
    unknown = set(METHODS_FLAG.value) - set(METHODS)
    if unknown:
        raise ValueError(f"Unknown methods {sorted(unknown)}: expected some of {list(METHODS)}.")
    methods = [m for m in METHODS if m in METHODS_FLAG.value]
    if "tfmot" in methods and not tfmot_available():
        print("[compare] tensorflow-model-optimization is not installed "
              "(pip install -e '.[tfmot]'): tfmot left out.", flush=True)
        methods.remove("tfmot")
    out = FLAGS.output_dir
    stem = RESULTS.value or f"bench/results/compare_{backbone}"
    options = {
        "backbone": backbone, "dataset": FLAGS.dataset, "data_dir": FLAGS.data_dir,
        "download": FLAGS.download, "gate_speed": FLAGS.gate_speed,
        "land_budget": FLAGS.land_budget,
        "slimming_l1": FLAGS.slimming_l1, "backbone_epochs": epochs[0],
        "warmup_epochs": epochs[1], "finetune_epochs": epochs[2],
        "backbone_lr": FLAGS.backbone_lr, "warmup_lr": FLAGS.warmup_lr,
        "finetune_lr": FLAGS.finetune_lr, "batch_size": FLAGS.batch_size,
        "train_subset": train_subset, "test_subset": test_subset, "seed": FLAGS.seed,
        "export_kind": "none",  # each method is exported (and timed) further on
    }
    dense_model = FLAGS.pretrained
    if not dense_model:  # train the backbone on all the training data, once
        dense_dir = os.path.join(out, "dense_backbone")
        example.run(**dict(options, mode="dense", train_subset=None, test_subset=None,
                           output_dir=dense_dir, command=command))
        dense_model = os.path.join(dense_dir, "model.keras")
    start = time.time()

    rows = [_row("dense", 1.0, train_method("dense", 1.0, options, dense_model, out),
                 os.path.join(out, "dense_1.0"), TOLERANCE.value)]
    for budget in budgets:
        for method in methods:
            folder = os.path.join(out, f"{method}_{budget}")
            rows.append(_row(method, budget, train_method(method, budget, options,
                                                          dense_model, out),
                             folder, TOLERANCE.value))
            print(f"[compare] {len(rows)} runs done, {time.time() - start:.0f} s", flush=True)

    # Latency: every export of every method, timed side by side.
    data = datasets.load(FLAGS.dataset, FLAGS.data_dir).subset(train_subset, test_subset,
                                                               seed=FLAGS.seed)
    calibration = datasets.normalized(data.train, 256)
    image = datasets.normalized(data.test, 1)
    paths = {}
    for row in rows:
        candidates = export_candidates(row["method"], row["folder"], calibration, KINDS.value)
        for kind, path in candidates.items():
            paths[(row["method"], row["budget"], kind)] = path
    print(f"[compare] timing {len(paths)} exports side by side", flush=True)
    timed = export.time_side_by_side({f"{k[0]}|{k[1]}|{k[2]}": p for k, p in paths.items()},
                                     image, THREADS.value, RUNS.value, WARMUP_RUNS.value)
    all_latencies = {}
    for row in rows:
        mine = {key.split("|")[2]: ms for key, ms in timed.items()
                if key.startswith(f"{row['method']}|{row['budget']}|")}
        all_latencies[f"{row['method']}_{row['budget']}"] = mine
        row["export"] = min(mine, key=mine.get)
        row["latency_ms"] = mine[row["export"]]
    dense_ms = rows[0]["latency_ms"]
    for row in rows:
        row["speedup"] = dense_ms / row["latency_ms"]

    protocol = {
        "backbone": backbone, "dataset": data.description, "threads": THREADS.value,
        "runs": RUNS.value, "budgets": budgets, "epochs": epochs,
        "train_subset": train_subset, "test_subset": test_subset,
        "description": (
            f"Every method starts from the same dense backbone (`{dense_model}`). "
            f"Fine-tuning: {epochs[1]} + {epochs[2]} epochs (warm-up or sparsity, then "
            f"fine-tune; tfmot: {epochs[1] + epochs[2]} epochs of pruning) on "
            + (f"{train_subset} training images drawn at random" if train_subset
               else "all training images")
            + f"; thin dense: {sum(epochs)} epochs from scratch on the same images. "
            + ("SANP and STATIC end with one global gate threshold raised until their "
               "cost measured on 512 training images is at most the budget "
               "(`training.land_on_budget`; the cost before it is in the JSON). "
               if FLAGS.land_budget else "")
            + (f"Test: {test_subset} images drawn at random." if test_subset
               else "Test: all test images.")
        ),
        "notes": [
            f"Budget hit: |MACs ratio - budget| < {TOLERANCE.value}. FBS keeps the top k "
            "of its ReLU saliencies less those at 0, so it may land under its budget.",
        ],
    }
    if "tfmot" in methods:
        protocol["notes"].append(
            "tfmot: MACs are those of the non-zero weights (what an ideal sparse kernel "
            "would do); no budget hit is claimed, the runtime runs dense convolutions "
            "(see its latency; export `tflite_sparse` has the weights sparse-encoded).")
    for row in rows:  # Figure 4 of each gated method, kept next to the table
        if row.get("figure4"):
            for part in ("categories", "distribution"):
                source = os.path.join(row["folder"], "report", f"figure4_{part}.png")
                target = f"{stem}_figures/{row['method']}_{row['budget']}_{part}.png"
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
            row["figure4"] = os.path.relpath(
                f"{stem}_figures/{row['method']}_{row['budget']}_categories.png",
                os.path.dirname(stem) or ".")
    payload = {"protocol": protocol, "results": rows, "latency_ms": all_latencies}
    results.write(stem, payload, markdown(rows, protocol, command))


if __name__ == "__main__":
    app.run(main)
