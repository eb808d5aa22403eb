"""examples/export_tflite.py: the export a user runs on a trained model, thinned first."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

import sanp_keras as sk
from sanp_keras import flops

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXAMPLE = os.path.abspath(os.path.join(ROOT, "examples", "export_tflite.py"))


def _run(*args):
    """The example's `run(*args)` in a process of its own (its absl flags would clash
    with train_cifar's, loaded by other tests): its result dict, or the error's text."""
    code = ("import importlib.util, json, sys\n"
            f"spec = importlib.util.spec_from_file_location('export_tflite', {EXAMPLE!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "try:\n"
            "    print('RESULT', json.dumps(module.run(*json.loads(sys.argv[1]))))\n"
            "except ValueError as error:\n"
            "    print('ERROR', error)\n")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=True,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    line = next(line for line in done.stdout.splitlines()
                if line.startswith(("RESULT ", "ERROR ")))
    kind, _, text = line.partition(" ")
    return json.loads(text) if kind == "RESULT" else text


def _gated_closing_four_channels_for_good(path):
    inputs = keras.Input((32, 32, 3))
    x = sk.SPMConv2D(16, 3, padding="same", activation="relu")(inputs)
    x = sk.SPMConv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    rng = np.random.default_rng(0)
    for layer in flops.gated_layers(model):
        kernel = rng.normal(0, 1.0, layer.gate.excite_kernel.shape)
        bias = rng.normal(1.0, 1.0, layer.gate.excite_bias.shape)
        kernel[:, :4], bias[:4] = 0.0, -1.0
        layer.gate.excite_kernel.assign(kernel)
        layer.gate.excite_bias.assign(bias)
    model.save(path)
    return model


def test_export_drops_the_channels_closed_for_good_and_checks_the_thinner_model(tmp_path):
    path = str(tmp_path / "gated.keras")
    model = _gated_closing_four_channels_for_good(path)
    # run(model_path, kind, output, dataset, data_dir, calibration_images, check_images,
    #     threads, layer_choice, drop_closed_images)
    result = _run(path, "masked", None, "embedded", None, 16, 16, 1, "measured", 64)
    removed = result["closed_channels_removed"]
    assert removed["images"] == 64 and removed["top1_equal_to_trained"] == 1.0
    for layer in flops.gated_layers(model):
        kept, filters = removed["kept"][layer.name]
        assert filters == layer.filters and kept <= filters - 4
    assert result["decisions_equal"] == 1.0 and result["top1_equal"] == 1.0
    assert "Received: -1" in _run(path, "masked", None, "embedded", None, 16, 16, 1,
                                  "measured", -1)
