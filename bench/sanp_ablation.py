"""What costs SANP its accuracy: short fine-tunes from one backbone, one setting changed
at a time, side by side.

    python bench/sanp_ablation.py --pretrained=BACKBONE.keras \
        --dataset=../shared/data/cifar10 --budget=0.33 --train_subset=10000 \
        --test_subset=5000 --warmup_epochs=1 --finetune_epochs=3 \
        --configs="paper;fixed_k:mode=fixed_k;slow:gate_speed=0.01" \
        --output_dir=runs/ablation --results=bench/results/sanp_ablation

Each config is `name` or `name:flag=value,flag=value` with flags of
`examples/train_cifar.py` (`mode`, `gate_speed`, `gate_noise`, `discrete_fraction`,
`gate_rescale`, `finetune_lr`, `warmup_lr`, `distill`...); a config with no override runs
the recipe's defaults with the paper's open start (`gate_start=open`) (`--cost_weighting=uniform` is the paper's eq. 9, `macs` ours). The data is loaded once and every run starts
from the same backbone, images, held-out split and seed. Writes `<results>.json` and
`<results>.md`: top-1 error and mean cost on the test images, the landing, and the
controller's cost at the end of each fine-tune epoch (how far it swings). Runs are
resumable (each is a `train_cifar.py` run in `<output_dir>/<name>`); a finished run is
read back from its `report/report.json`, or, where `<output_dir>` is gone (a fresh
machine), from the row of the same name and overrides in `<results>.json` if that file
was written by the same command up to `--configs`: add configs to a committed table
without training its rows again.
"""

import csv
import json
import os

import _example  # bench/ is on the path when run as a script
import _results as results
from absl import app
from absl import flags

from sanp_keras import datasets

example = _example.load()  # defines the example's flags, which this script reuses
CONFIGS = flags.DEFINE_string(
    "configs", "paper", "Semicolon-separated `name` or `name:flag=value,...` (see above).")
RESULTS = flags.DEFINE_string("results", "bench/results/sanp_ablation", "Output stem.")
FLAGS = flags.FLAGS
FLAGS.set_default("output_dir", "runs/ablation")
FLAGS.set_default("export", "none")
FLAGS.set_default("gate_start", "open")  # the paper's recipe is the baseline of every config
FLAGS.set_default("distill", 0.0)
RUN_FLAGS = ("backbone", "budget", "gate_speed", "cost_weighting", "allocation", "budget_ramp",
             "land_budget", "mode", "warmup_epochs", "finetune_epochs", "warmup_lr",
             "finetune_lr", "batch_size", "clipnorm", "weight_decay", "lr_warmup_epochs",
             "distill", "distill_temperature", "gate_noise", "discrete_fraction",
             "gate_rescale", "cost_floor", "gate_gradient", "gate_start", "calibration_images", "seed")


def parse_configs(text):
    """`"a;b:x=1,y=z"` -> `[("a", {}), ("b", {"x": 1, "y": "z"})]`, values typed as the
    example's flags are; an unknown flag or a malformed item is a ValueError naming it."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, rest = item.partition(":")
        overrides = {}
        for pair in filter(None, rest.split(",")):
            key, eq, value = pair.partition("=")
            if not eq or key not in RUN_FLAGS:
                raise ValueError(
                    f"Invalid config {item!r}: expected flag=value with a flag among "
                    f"{list(RUN_FLAGS)}. Received: {pair!r}")
            flag, kept = FLAGS[key], FLAGS[key].value
            flag.parse(value)  # typed and checked by absl, then restored
            overrides[key] = flag.value
            flag.value = kept
        configs.append((name, overrides))
    if len({name for name, _ in configs}) != len(configs):
        raise ValueError(f"Config names must be distinct. Received: configs={text!r}")
    return configs


def controller_trace(run_dir):
    """The controller's cost ratio at the end of each fine-tune epoch, from log.csv."""
    path = os.path.join(run_dir, "3_finetune", "log.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(row["flops_ratio"]) for row in csv.DictReader(f)
                if row.get("flops_ratio")]


def open_per_layer(result):
    """{layer: mean fraction of its output channels open on the test images}, from a
    report (1.0 for the convolutions whose outputs are not gated)."""
    return {name: round(layer["active_ratio"], 3)
            for name, layer in result.get("per_layer", {}).items()}


def _without_configs(command):
    return [arg for arg in command.split(" ") if not arg.startswith("--configs=")]


def committed_rows(stem, command):
    """{name: row} of `<stem>.json` if it was written by `command` up to `--configs`."""
    path = stem + ".json"
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        saved = json.load(f)
    if _without_configs(saved.get("command", "")) != _without_configs(command):
        return {}
    return {row["name"]: row for row in saved.get("results", [])}


def run(configs, command):
    committed = committed_rows(RESULTS.value, command)
    if all(committed.get(name, {}).get("overrides") == overrides
           for name, overrides in configs):
        data = None
    else:
        data = datasets.load(FLAGS.dataset, FLAGS.data_dir, download=FLAGS.download)
        data = data.subset(FLAGS.train_subset, FLAGS.test_subset, seed=FLAGS.seed)
    rows = []
    for name, overrides in configs:
        out = os.path.join(FLAGS.output_dir, name)
        saved = os.path.join(out, "report", "report.json")
        row = committed.get(name)
        if not os.path.exists(saved) and row and row["overrides"] == overrides:
            print(f"[{name}] done, read back from {RESULTS.value}.json.")
            rows.append(row)
            continue
        if os.path.exists(saved):
            with open(saved) as f:
                result = json.load(f)
            print(f"[{name}] done, read back from {saved}.")
        else:
            options = {key: FLAGS[key].value for key in RUN_FLAGS}
            options.update(overrides)
            print(f"[{name}] {overrides or 'the defaults'}")
            result = example.run(dataset=data, pretrained=FLAGS.pretrained, output_dir=out,
                                 export_kind="none", command=command, **options)
        rows.append({
            "name": name, "overrides": overrides, "mode": result["mode"],
            "top1_error": result["top1_error"], "flops_ratio": result["flops_ratio"],
            "landing": result.get("landing"), "controller": controller_trace(out),
            "open_per_layer": open_per_layer(result),
        })
    return rows


def markdown(rows, command):
    lines = [
        "# What costs SANP its accuracy: short fine-tunes side by side", "",
        f"Command: `{command}`", "",
        f"Budget {FLAGS.budget}; every run from the same backbone, data and seed. Cost: "
        "mean MACs on the test images as a fraction of dense; landing: cost on the "
        "held-out training images before and after the global threshold; controller: "
        "its cost estimate at the end of each fine-tune epoch; layers < 10 % open: "
        "convolutions with under a tenth of their output channels open on average "
        "(all layers, output-ungated ones included).", "",
        "| config | changed | top-1 error | cost (test) | landing | controller per epoch "
        "| layers < 10 % open |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        landing = r["landing"]
        landed = (f"{landing['flops_ratio_before']:.3f} -> {landing['flops_ratio_after']:.3f}"
                  if landing else "-")
        changed = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(defaults)"
        trace = " ".join(f"{c:.2f}" for c in r["controller"]) or "-"
        starved = sum(ratio < 0.1 for ratio in r["open_per_layer"].values())
        lines.append(f"| {r['name']} | {changed} | {100 * r['top1_error']:.2f} % "
                     f"| {r['flops_ratio']:.3f} | {landed} | {trace} "
                     f"| {starved} of {len(r['open_per_layer'])} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if not FLAGS.pretrained:
        raise app.UsageError("--pretrained: the trained plain backbone (.keras) to start from.")
    command = results.command_line()
    rows = run(parse_configs(CONFIGS.value), command)
    results.write(RESULTS.value, {"results": rows}, markdown(rows, command))


if __name__ == "__main__":
    app.run(main)
