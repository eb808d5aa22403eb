"""Where a `kernels` model's time goes: every gated layer timed alone, in both forms.

For one quick-run model of `bench/latency.py` (`runs/latency/<backbone>_<budget>`) and
the image every latency there is timed on (test image 0), each layer whose gates vary
with the input is exported alone (`layer_choice.one_layer_flatbuffer`) as the sanp
custom op and as the builtin dense CONV_2D times its gates, and timed side by side on
its real input. Reported per layer: the live input and open output channels on that
image, the MACs the kernel computes (H' W' kh kw x live x open) against the dense
layer's, the custom-op model's latency, the time inside the kernel (the rest is the
gate's builtin ops and the runtime), and the builtin model's latency.

    python bench/layer_times.py --backbone=resnet20 --budget=0.33 \
        --output=bench/results/layer_times_resnet20_0.33

`--source=shipped` times the shipped converged model instead
(`sk.models.pretrained("resnet20_cifar10_sanp_0.33")`), `--source=converged
--method=fixed_k` a converged run of another method committed under
`checkpoints/converged/fixed_k_<budget>/` (ResNet-20).

Writes `<output>.json` and `<output>.md` with the command that produced them.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import _converged  # noqa: E402  (bench/ is on the path when run as a script)
import _results as results  # noqa: E402
import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras.export import builders  # noqa: E402
from sanp_keras.export import folding  # noqa: E402
from sanp_keras.export import layer_choice  # noqa: E402
from sanp_keras.export import runners  # noqa: E402
from sanp_keras.models import shipped  # noqa: E402

BACKBONE = flags.DEFINE_string("backbone", "resnet20", "Zoo backbone of the quick run.")
BUDGET = flags.DEFINE_string("budget", "0.33", "Budget of the quick run.")
MODELS_DIR = flags.DEFINE_string("models_dir", "runs/latency", "bench/latency.py's models.")
RUNS = flags.DEFINE_integer("runs", 200, "Timed runs per form (median reported).")
SOURCE = flags.DEFINE_enum("source", "quick", ["quick", "shipped", "converged"],
                           "A quick run of bench/latency.py, the shipped SANP model, or a "
                           "converged ResNet-20 run of --method (checkpoints/converged/).")
METHOD = flags.DEFINE_string("method", "fixed_k", "--source=converged: the run's method "
                             "(fixed_k, fbs, sanp_kd...), as bench/converged.sh names it.")
OUTPUT = flags.DEFINE_string("output", None, "Output path stem (default: "
                             "bench/results/layer_times_<backbone>_<budget>).")


def layer_row(layer, x, workdir, runs):
    """Times one gated layer on x (1, H, W, C_in) as a custom op and as a builtin conv."""
    folded = folding.fold_conv(layer)
    forms = layer_choice.write_forms("kernels", folded, None, x.shape[1:], workdir, "layer")
    paths = {form: path for form, (path, _) in forms.items()}
    times = runners.time_side_by_side(paths, x, 1, runs)
    kernel = runners.KernelRunner(paths["kernel"])
    inside, _ = kernel.kernel_time(x, runs)
    _, out_h, out_w, _ = kernel.run(x)["output"].shape
    kernel.close()
    decisions, _ = builders.gate_scale(x, folded.gate)  # (1, C_out)
    opened = int(np.count_nonzero(decisions.numpy()))
    live = int(np.count_nonzero(np.abs(x[0]).max(axis=(0, 1)) > 0))
    per_pair = out_h * out_w * folded.kernel.shape[0] * folded.kernel.shape[1]
    return {"layer": layer.name, "input": list(x.shape[1:]), "live_inputs": live,
            "open_outputs": opened, "filters": folded.filters,
            "macs": per_pair * live * opened,
            "dense_macs": per_pair * x.shape[3] * folded.filters,
            "kernel_us": times["kernel"] * 1e3, "inside_kernel_us": inside * 1e3,
            "builtin_us": times["builtin"] * 1e3}


def markdown(rows, totals, title, command):
    lines = [f"# {title}: gated layers timed alone (1 thread, test image 0)", "",
             f"Command: `{command}`", "",
             "| layer | input | live in | open out | MACs (k) | dense MACs (k) "
             "| custom op | inside kernel | builtin | faster |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        faster = "kernel" if r["kernel_us"] < r["builtin_us"] else "builtin"
        lines.append(
            f"| {r['layer']} | {'x'.join(map(str, r['input']))} | {r['live_inputs']} "
            f"| {r['open_outputs']} / {r['filters']} | {r['macs'] / 1e3:.0f} "
            f"| {r['dense_macs'] / 1e3:.0f} | {r['kernel_us']:.1f} us "
            f"| {r['inside_kernel_us']:.1f} us | {r['builtin_us']:.1f} us | {faster} |")
    lines += ["", f"Totals: MACs {totals['macs'] / 1e6:.2f} M of "
              f"{totals['dense_macs'] / 1e6:.2f} M; custom op {totals['kernel_us']:.0f} us "
              f"(inside the kernel {totals['inside_kernel_us']:.0f} us), builtin {totals['builtin_us']:.0f} us, "
              f"the faster of each layer {totals['best_us']:.0f} us. A one-layer model's "
              "latency includes the runtime's cost of one invocation.", ""]
    return "\n".join(lines)


def main(argv):
    del argv
    name = f"{BACKBONE.value}_{BUDGET.value}"
    if SOURCE.value == "shipped":
        path = shipped.sanp_name(BACKBONE.value, BUDGET.value)
        model = sk.models.pretrained(path)  # a ValueError listing the shipped ones
        name = path
    elif SOURCE.value == "converged":
        if BACKBONE.value != "resnet20":
            raise ValueError("--source=converged: the converged runs are ResNet-20 ones; got "
                             f"--backbone={BACKBONE.value!r}.")
        path = os.path.relpath(_converged.run_folder(METHOD.value, BUDGET.value))
        model = _converged.load(METHOD.value, BUDGET.value)
        name = f"{BACKBONE.value}_{_converged.run_name(METHOD.value, BUDGET.value)}"
    else:
        path = os.path.join(MODELS_DIR.value, name, "model.keras")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No quick run at {path}: train it with `python bench/latency.py "
                f"--backbones={BACKBONE.value} --budgets={BUDGET.value} --train_only`.")
        model = keras.models.load_model(path)
    runners.build_kernels()
    x = datasets.normalized(datasets.load("embedded").test, 1)
    inputs = layer_choice.layer_inputs(model, x)
    layers = [g for g in sk.flops.gated_layers(model) if g.mode in layer_choice.DYNAMIC_MODES]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, layer in enumerate(layers):
            rows.append(layer_row(layer, inputs[layer.name], tmp, RUNS.value))
            print(f"[{index + 1}/{len(layers)}] {rows[-1]}", flush=True)
    totals = {key: sum(r[key] for r in rows) for key in
              ("macs", "dense_macs", "kernel_us", "inside_kernel_us", "builtin_us")}
    totals["best_us"] = sum(min(r["kernel_us"], r["builtin_us"]) for r in rows)
    stem = OUTPUT.value or f"bench/results/layer_times_{name}"
    results.write(stem, {"model": path, "rows": rows, "totals": totals},
                  markdown(rows, totals, name if SOURCE.value != "quick"
                           else f"{BACKBONE.value} at {BUDGET.value}",
                           results.command_line()))


if __name__ == "__main__":
    app.run(main)
