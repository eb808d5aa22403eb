"""Evaluation report of a (gated) model: error, cost, and how it prunes.

    python -m sanp_keras.report --model runs/default/model.keras --dataset embedded \
        --output_dir runs/default/report
    python -m sanp_keras.report --compare runs/a/report/report.json runs/b/report/report.json \
        --output_dir runs/compare

writes `report.json`, `report.md` and PNG figures: per-layer active-channel ratios, the
paper's Figure 4 (per layer, channels never / sample-dependently / always pruned; the
distribution over samples of active channels), and with `--compare`, accuracy against
cost for several runs.
"""

import json
import os

import numpy as np

from sanp_keras import flops
from sanp_keras.export import parity


def evaluate(model, test_ds, name=None, reference_macs=None):
    """Top-1 error and the cost report of `model` on a dataset of `(image, label)` batches.

    Args:
        model: a gated or plain Keras model.
        test_ds: a dataset of `(image, label)` batches.
        name: the name in the report (default: the model's).
        reference_macs: the dense MACs to measure savings against, for a model that
            is itself smaller than its backbone (thin, slimmed); default: the model's.

    Returns:
        A dict: `name`, `top1_error`, `num_samples`, and every field of
        `sanp_keras.flops.measure` (`dense_macs`, `mean_macs`, `percentiles`,
        `pruned_fraction`, `per_layer`...), with `dense_macs`, `flops_ratio` and
        `pruned_fraction` relative to `reference_macs` when it is given.
    """
    correct, count = 0, 0
    for x, y in test_ds:
        logits = model(x, training=False)
        correct += int(np.sum(np.argmax(logits, axis=-1) == y.numpy()))
        count += int(y.shape[0])
    result = {"name": name or model.name, "top1_error": 1.0 - correct / count}
    result.update(flops.measure(model, test_ds))
    if reference_macs is not None:
        result["dense_macs"] = int(reference_macs)
        result["flops_ratio"] = result["mean_macs"] / reference_macs
        result["pruned_fraction"] = 1.0 - result["flops_ratio"]
    return result


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _gated_layers(result):
    return {k: v for k, v in result["per_layer"].items() if "channels" in v}


def plot_active_ratios(result, path):
    """Bar chart of the mean fraction of output channels each layer computes."""
    plt = _plt()
    layers = result["per_layer"]
    names = list(layers)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.bar(range(len(names)), [layers[n]["active_ratio"] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean active fraction of output channels")
    ax.set_title(f"{result['name']}: {100 * result['pruned_fraction']:.1f}% of MACs pruned")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_figure4(result, categories_path, distribution_path):
    """The paper's Figure 4: channel categories per layer, and active-channel spread."""
    plt = _plt()
    layers = _gated_layers(result)
    names = list(layers)
    if not names:
        return False
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    bottom = np.zeros(len(names))
    for key, color in (("never_pruned", "tab:green"), ("sample_dependent", "tab:orange"),
                       ("always_pruned", "tab:gray")):
        total = np.array([sum(layers[n]["channels"].values()) for n in names], dtype=float)
        share = np.array([layers[n]["channels"][key] for n in names]) / total
        ax.bar(x, share, bottom=bottom, color=color, label=key.replace("_", " "))
        bottom += share
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel("fraction of the layer's channels")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Channels never / sample-dependently / always pruned")
    fig.tight_layout()
    fig.savefig(categories_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    for i, n in enumerate(names):
        hist = np.asarray(layers[n]["active_histogram"], dtype=float)
        counts = np.arange(len(hist)) / (len(hist) - 1)  # fraction of channels active
        mean = np.sum(hist * counts) / hist.sum()
        lo = counts[np.searchsorted(np.cumsum(hist) / hist.sum(), 0.05)]
        hi = counts[np.searchsorted(np.cumsum(hist) / hist.sum(), 0.95)]
        ax.vlines(i, lo, hi, color="tab:blue", lw=3)
        ax.plot(i, mean, "o", color="black", ms=3)
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("active fraction per sample (5-95 %, mean)")
    ax.set_title("Distribution over samples of active channels")
    fig.tight_layout()
    fig.savefig(distribution_path, dpi=120)
    plt.close(fig)
    return True


def plot_accuracy_vs_cost(results, path):
    """Top-1 accuracy against mean MACs for several runs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(r["mean_macs"] / 1e6, 100 * (1 - r["top1_error"]), "o")
        ax.annotate(r["name"], (r["mean_macs"] / 1e6, 100 * (1 - r["top1_error"])),
                    fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("mean MACs per image (M)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result, command=None):
    """The report as Markdown text."""
    p = result["percentiles"]
    lines = [f"# {result['name']}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        "| top-1 error | mean MACs (M) | "
        + " | ".join(f"{k} (M)" for k in p) + " | dense (M) | pruned |",
        "|---" * (4 + len(p)) + "|",
        f"| {100 * result['top1_error']:.2f} % | {result['mean_macs'] / 1e6:.2f} | "
        + " | ".join(f"{v / 1e6:.2f}" for v in p.values())
        + f" | {result['dense_macs'] / 1e6:.2f} | {100 * result['pruned_fraction']:.1f} % |",
        "",
        f"{result['num_samples']} samples; {result['convention']}.",
        "",
        "| layer | dense MACs (M) | mean MACs (M) | active | never / sample-dep. / always pruned |",
        "|---|---|---|---|---|",
    ]
    for name, layer in result["per_layer"].items():
        c = layer.get("channels")
        cats = f"{c['never_pruned']} / {c['sample_dependent']} / {c['always_pruned']}" if c else "-"
        lines.append(
            f"| {name} | {layer['dense_macs'] / 1e6:.3f} | {layer['mean_macs'] / 1e6:.3f} "
            f"| {layer['active_ratio']:.2f} | {cats} |"
        )
    if "export" in result:
        e = result["export"]
        lines += ["", f"Exported to `{e['path']}` ({e['kind']}); against Keras on "
                  f"{e['check_images']} test images: {parity.summary(e)}."]
    return "\n".join(lines) + "\n"


def write_report(result, output_dir, command=None):
    """Writes `report.json`, `report.md` and the figures; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "json": os.path.join(output_dir, "report.json"),
        "markdown": os.path.join(output_dir, "report.md"),
        "active_ratios": os.path.join(output_dir, "active_ratios.png"),
        "figure4_categories": os.path.join(output_dir, "figure4_categories.png"),
        "figure4_distribution": os.path.join(output_dir, "figure4_distribution.png"),
    }
    with open(paths["json"], "w") as f:
        json.dump(dict(result, command=command), f, indent=2)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(result, command))
    plot_active_ratios(result, paths["active_ratios"])
    if not plot_figure4(result, paths["figure4_categories"], paths["figure4_distribution"]):
        del paths["figure4_categories"], paths["figure4_distribution"]
    return paths


def main(argv=None):
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a saved .keras model")
    parser.add_argument("--dataset", default="embedded",
                        help="embedded, cifar10, cifar100 or a folder (see sanp_keras.datasets)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--compare", nargs="*", default=None,
                        help="report.json files to plot accuracy against cost")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    command = "python -m sanp_keras.report " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.compare:
        results = []
        for path in args.compare:
            with open(path) as f:
                results.append(json.load(f))
        os.makedirs(args.output_dir, exist_ok=True)
        plot_accuracy_vs_cost(results, os.path.join(args.output_dir, "accuracy_vs_cost.png"))
    if args.model:
        import keras

        from sanp_keras import datasets

        model = keras.models.load_model(args.model)
        data = datasets.load(args.dataset, args.data_dir)
        test = datasets.pipeline(data.test, args.batch_size, training=False)
        result = evaluate(model, test, name=os.path.basename(args.model))
        paths = write_report(result, args.output_dir, command)
        print(markdown(result, command))
        print("wrote", ", ".join(paths.values()))
    if not args.model and not args.compare:
        parser.error("give --model, --compare, or both")


if __name__ == "__main__":
    main()
