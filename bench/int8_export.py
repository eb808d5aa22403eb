"""int8 exports against float, side by side: agreement with the float Keras model and
batch-1 latency (LiteRT CompiledModel, XNNPACK), for gated models and their dense form.

For each model (a `.keras` file, a shipped name of `sanp_keras.models.list_pretrained`,
or `random`: ResNet-20 with gate weights randomized about half open, `_random_gates`):

- agreement on `--images` test images of the embedded sample: `export_tflite(...,
  quantize="int8")` of `masked`, `portable` and `kernels` against the float Keras model (gate
  decisions equal, top-1 equal, top-1 error of both), and the int8 dense model
  (`sanp_keras.strip(model)`, every gate removed) against the float dense one; and
  int8 `kernels` against int8 `masked` (the same int8 arithmetic: equal outputs);
- latency at each of `--threads`: dense float32, dense int8, and the gated kinds in
  float32 (`portable`, `kernels`) and int8 (`masked`, `portable`, `kernels`), timed in
  turn in one run (`export.time_side_by_side`). Theory: dense MACs / mean gated MACs.

Calibration: the first `--calibration_images` training images of the sample (not the
test images the agreement is measured on).

    python bench/int8_export.py \
        --models=random,resnet20_cifar10_sanp_kd_0.5,resnet20_cifar10_sanp_kd_0.33 \
        --output=bench/results/int8

Writes `<output>.json` and `<output>.md` with the command that produced them.
"""

import json
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import _random_gates  # noqa: E402  (bench/ is on the path when run as a script)
import _results as results  # noqa: E402
import sanp_keras as sk  # noqa: E402
from sanp_keras import datasets  # noqa: E402
from sanp_keras import export  # noqa: E402

MODELS = flags.DEFINE_list("models", ["random"], "Gated models: .keras paths, shipped "
                           "names (sanp_keras.models.list_pretrained) or 'random'.")
IMAGES = flags.DEFINE_integer("images", 1000, "Test images of the agreement check.")
CALIBRATION = flags.DEFINE_integer("calibration_images", 200,
                                   "Training images the int8 ranges are calibrated on.")
THREADS = flags.DEFINE_list("threads", ["1", "2"], "Thread counts.")
RUNS = flags.DEFINE_integer("runs", 200, "Timed runs per model (median reported).")
WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed runs first.")
MODELS_DIR = flags.DEFINE_string("models_dir", "runs/int8", "Where the .tflite files go.")
OUTPUT = flags.DEFINE_string("output", "bench/results/int8", "Output path stem.")
TIMED = ("dense_f32", "dense_int8", "portable_f32", "kernels_f32", "masked_int8",
         "portable_int8", "kernels_int8")


def load_model(name, images):
    if name == "random":
        keras.utils.set_random_seed(0)  # the squeeze weights, drawn by create_model
        return _random_gates.randomize_gates(sk.models.create_model("resnet20"), images[:256])
    if name in sk.models.list_pretrained():
        return sk.models.pretrained(name)
    return keras.models.load_model(name)


def error(logits, labels):
    return float(np.mean(np.argmax(logits, 1) != labels))


def export_all(model, calibration, folder):
    """Every file of one model: {name: path} to time, {kind: path} with decisions."""
    os.makedirs(folder, exist_ok=True)
    plain = sk.strip(model)
    paths = {
        "dense_f32": export.export_tflite(plain, f"{folder}/dense_f32.tflite", "masked",
                                          batch_size=1),
        "dense_int8": export.export_tflite(plain, f"{folder}/dense_int8.tflite", "masked",
                                           batch_size=1, quantize="int8",
                                           calibration_data=calibration),
    }
    for kind in ("portable", "kernels"):
        paths[f"{kind}_f32"] = export.export_tflite(
            model, f"{folder}/{kind}_f32.tflite", kind, calibration_data=calibration,
            speed_check=False)
    checked = {}
    for kind in ("masked", "portable", "kernels"):
        options = dict(calibration_data=calibration, quantize="int8", batch_size=1,
                       speed_check=False)  # timed side by side below
        paths[f"{kind}_int8"] = export.export_tflite(
            model, f"{folder}/{kind}_int8.tflite", kind, **options)
        checked[kind] = export.export_tflite(
            model, f"{folder}/{kind}_int8_decisions.tflite", kind, decisions=True, **options)
    return plain, paths, checked


def measure(name, test, calibration):
    model = load_model(name, calibration)
    x, labels = test
    stats = sk.flops.measure(model, x)
    folder = os.path.join(MODELS_DIR.value, os.path.basename(name).replace(".keras", ""),
                          "tflite")
    plain, paths, checked = export_all(model, calibration, folder)
    trained = name != "random"
    row = {"model": name, "flops_ratio": stats["flops_ratio"],
           "theoretical_speedup": stats["dense_macs"] / stats["mean_macs"],
           "agreement": {}, "latency_ms": {}}
    float_logits = model.predict(x, verbose=0, batch_size=100)
    row["error_f32"] = error(float_logits, labels) if trained else None
    report = os.path.join(os.path.dirname(name), "report", "report.json")
    if name.endswith(".keras") and os.path.exists(report):
        with open(report) as f:
            row["trained_by"] = json.load(f).get("command")
    outputs = {}
    for kind, path in checked.items():
        runner = export.KernelRunner(path) if kind == "kernels" else export.Interpreter(path)
        got = outputs[kind] = export.parity.run_all(runner, x, 1)
        agree = export.parity.compare(model, runner, x, 1)
        agree["error_int8"] = error(got["output"], labels) if trained else None
        row["agreement"][kind] = agree
        print(f"{name} {kind} int8: {export.parity.summary(agree)}", flush=True)
    # SanpGatedConv2DInt8 against the int8 graph it replaced, on every output
    row["kernels_vs_masked"] = {
        name: {"equal": float(np.mean(outputs["kernels"][name] == want)),
               "max_abs_diff": float(np.abs(outputs["kernels"][name] - want).max())}
        for name, want in outputs["masked"].items()}
    dense_got = export.parity.run_all(export.Interpreter(paths["dense_int8"]), x, 1)["output"]
    dense_float = plain.predict(x, verbose=0, batch_size=100)
    row["dense"] = {
        "top1_equal": float(np.mean(dense_got.argmax(1) == dense_float.argmax(1))),
        "error_f32": error(dense_float, labels) if trained else None,
        "error_int8": error(dense_got, labels) if trained else None}
    for threads in (int(t) for t in THREADS.value):
        row["latency_ms"][threads] = export.time_side_by_side(
            {k: paths[k] for k in TIMED}, x[:1], threads, RUNS.value, WARMUP.value)
        print(f"{name} {threads} thread(s): {row['latency_ms'][threads]}", flush=True)
    return row


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f} %"


def markdown(rows):
    lines = [
        "# int8 exports against float32 (LiteRT CompiledModel, XNNPACK, batch 1)", "",
        f"Command: `{results.command_line()}`", "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        "shared and noisy: compare figures within a row, measured side by side.", "",
        "Agreement of each int8 export with the float Keras model on the test images "
        "(gates float inside the int8 graph; error: top-1 on the sample's labels, '-' for "
        "untrained models):", "",
        "| model | MACs ratio | export | decisions equal | top-1 equal | error float | "
        "error int8 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["dense"]
        lines.append(f"| {r['model']} | 1.000 | dense int8 | - | {_pct(d['top1_equal'])} "
                     f"| {_pct(d['error_f32'])} | {_pct(d['error_int8'])} |")
        for kind, a in r["agreement"].items():
            lines.append(f"| {r['model']} | {r['flops_ratio']:.3f} | {kind} int8 "
                         f"| {_pct(a['decisions_equal'])} | {_pct(a['top1_equal'])} "
                         f"| {_pct(r['error_f32'])} | {_pct(a['error_int8'])} |")
    trained = [r for r in rows if r.get("trained_by")]
    if trained:
        lines += ["", "Models trained by:", ""] + [
            f"- {r['model']}: `{r['trained_by']}`" for r in trained]
    lines += ["", "Latency (median ms; in brackets the speed-up over the float32 dense model "
              "of the same row; theory: dense MACs / mean gated MACs):", "",
              "| model | theory | threads | " + " | ".join(TIMED) + " |",
              "|---|---|---|" + "---|" * len(TIMED)]
    for r in rows:
        for threads, t in r["latency_ms"].items():
            base = t["dense_f32"]
            cells = " | ".join(f"{t[k]:.3f} ({base / t[k]:.2f}x)" for k in TIMED)
            lines.append(f"| {r['model']} | {r['theoretical_speedup']:.2f}x | {threads} "
                         f"| {cells} |")
    lines += ["", "int8 `kernels` against int8 `masked` (share of output values equal, largest "
              "difference):", "", "| model | output | equal | max diff |", "|---|---|---|---|"]
    for r in rows:
        compared = r["kernels_vs_masked"]
        decisions = [e for name, e in compared.items() if name.startswith("decisions_")]
        if decisions:
            lines.append(f"| {r['model']} | decisions ({len(decisions)} layers) "
                         f"| {_pct(min(e['equal'] for e in decisions))} (least) "
                         f"| {max(e['max_abs_diff'] for e in decisions):.3g} |")
        e = compared["output"]
        lines.append(f"| {r['model']} | output | {_pct(e['equal'])} | {e['max_abs_diff']:.3g} |")
    lines += ["", "int8 gated against int8 dense (t_dense_int8 / t; theory: the same MACs "
              "ratio), and int8 against float32 `kernels`:", "",
              "| model | theory | threads | masked int8 | portable int8 | kernels int8 "
              "| kernels int8 vs kernels f32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for threads, t in r["latency_ms"].items():
            q = t["dense_int8"]
            lines.append(f"| {r['model']} | {r['theoretical_speedup']:.2f}x | {threads} "
                         f"| {q / t['masked_int8']:.2f}x | {q / t['portable_int8']:.2f}x "
                         f"| {q / t['kernels_int8']:.2f}x "
                         f"| {t['kernels_f32'] / t['kernels_int8']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    export.build_kernels()  # kernels_f32 is timed with them
    data = datasets.load("embedded")
    test = (datasets.normalized(data.test, IMAGES.value), data.test.labels[:IMAGES.value])
    calibration = datasets.normalized(data.train, CALIBRATION.value)
    rows = []
    for name in MODELS.value:
        rows.append(measure(name, test, calibration))
        results.write(OUTPUT.value, {"results": rows, "runs": RUNS.value,
                                     "warmup": WARMUP.value}, markdown(rows))


if __name__ == "__main__":
    app.run(main)
