"""The CPU protocol: ResNet-20 on CIFAR-10 (JPEG), dense then SANP at two budgets.

    python bench/cifar_protocol.py --dataset=../shared/data/cifar10 \
        --output_dir=runs/protocol --results=bench/results/cifar_protocol

Trains the dense backbone once, then fine-tunes SANP from that checkpoint at each
budget (fraction of dense MACs) with the recipe of `examples/train_cifar.py`, and writes
`<results>.json` and `<results>.md`: top-1 error, mean MACs, pruned %, and whether the
budget was hit. Sized for about two hours on 2 CPU cores (ResNet-20 takes about 4
minutes per CIFAR-10 epoch there); every stage is resumable, so the same command
continues an interrupted protocol.
"""

import os

import _example  # bench/ is on the path when run as a script
import _results as results
from absl import app
from absl import flags



example = _example.load()  # defines the example's flags, which this script reuses
RESULTS = flags.DEFINE_string("results", "bench/results/cifar_protocol", "Output stem.")
BUDGETS = flags.DEFINE_list("budgets", ["0.5", "0.35"], "Budgets, fractions of dense MACs.")
TOLERANCE = flags.DEFINE_float("tolerance", 0.03, "Budget hit: |cost ratio - budget| below.")
FLAGS = flags.FLAGS
FLAGS.set_default("dataset", "../shared/data/cifar10")
FLAGS.set_default("output_dir", "runs/protocol")
FLAGS.set_default("backbone_epochs", 12)
FLAGS.set_default("finetune_epochs", 4)


def run(data, output_dir, budgets, backbone_epochs, warmup_epochs, finetune_epochs,
        tolerance, command):
    dense_dir = os.path.join(output_dir, "dense")
    rows = [example.run(dataset=data, mode="dense", backbone_epochs=backbone_epochs,
                        output_dir=dense_dir, command=command, export_kind="none")]
    for budget in budgets:
        rows.append(example.run(
            dataset=data, mode="sanp", budget=budget,
            pretrained=os.path.join(dense_dir, "model.keras"),
            warmup_epochs=warmup_epochs, finetune_epochs=finetune_epochs,
            output_dir=os.path.join(output_dir, f"sanp_{budget}"), command=command,
            export_kind="none", distill=0.0, gate_start="open",  # its results' recipe
        ))
    for row in rows:
        row["budget_hit"] = abs(row["flops_ratio"] - row["budget"]) < tolerance
    return rows


def markdown(rows, command):
    lines = [
        "# ResNet-20, CIFAR-10 (JPEG), CPU protocol", "", f"Command: `{command}`", "",
        "| model | budget | top-1 error | mean MACs (M) | pruned | budget hit |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['budget']:.2f} | {100 * r['top1_error']:.2f} % "
            f"| {r['mean_macs'] / 1e6:.2f} | {100 * r['pruned_fraction']:.1f} % "
            f"| {'yes' if r['budget_hit'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    command = results.command_line()
    rows = run(FLAGS.dataset, FLAGS.output_dir, [float(b) for b in BUDGETS.value],
               FLAGS.backbone_epochs, FLAGS.warmup_epochs, FLAGS.finetune_epochs,
               TOLERANCE.value, command)
    summary = [{k: r[k] for k in ("name", "budget", "top1_error", "mean_macs", "dense_macs",
                                  "pruned_fraction", "flops_ratio", "budget_hit")}
               for r in rows]
    results.write(RESULTS.value, {"results": summary}, markdown(rows, command))


if __name__ == "__main__":
    app.run(main)
