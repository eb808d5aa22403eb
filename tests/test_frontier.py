"""bench/frontier.py on two tiny models: every figure against an independent measure."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import datasets
from sanp_keras import flops
from tests import oracle

ROOT = os.path.join(os.path.dirname(__file__), "..")
TEST_IMAGES = 64


def _tiny_gated():
    inputs = keras.Input((32, 32, 3))
    x = sk.SPMConv2D(16, 3, padding="same", activation="relu")(inputs)
    x = sk.SPMConv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = sk.SPMConv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _frontier(tmp_path, models, *flags, check=True):
    command = [sys.executable, "bench/frontier.py", "--dataset=embedded",
               f"--test_subset={TEST_IMAGES}", "--threads=1", "--runs=3", "--warmup=1",
               f"--models={models}", f"--work_dir={tmp_path}/work",
               f"--output={tmp_path}/frontier", *flags]
    return subprocess.run(command, cwd=ROOT, check=check, capture_output=True, text=True,
                          timeout=1200)


def test_frontier_measures_error_cost_and_latency_of_each_model(tmp_path):
    rng = np.random.default_rng(0)
    gated = _tiny_gated()
    for layer in flops.gated_layers(gated):  # decisions that vary per sample
        kernel = rng.normal(0, 1.0, layer.gate.excite_kernel.shape)
        bias = rng.normal(0.0, 1.0, layer.gate.excite_bias.shape)
        kernel[:, :4], bias[:4] = 0.0, -1.0  # and 4 channels of each closed for good
        layer.gate.excite_kernel.assign(kernel)
        layer.gate.excite_bias.assign(bias)
    plain = oracle.randomize_batch_norm(sk.strip(gated))
    gated.save(tmp_path / "gated.keras")
    plain.save(tmp_path / "plain.keras")
    _frontier(tmp_path, f"dense={tmp_path}/plain.keras,gated={tmp_path}/gated.keras,"
              f"thin={tmp_path}/gated.keras", "--drop_closed=thin",
              "--drop_closed_images=256")

    table = json.loads((tmp_path / "frontier.json").read_text())
    rows = {r["label"]: r for r in table["results"]}
    data = datasets.load("embedded").subset(None, TEST_IMAGES)
    x, y = datasets.normalized(data.test), data.test.labels
    for label, model in (("dense", plain), ("gated", gated)):
        error = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) != y))
        assert rows[label]["top1_error"] == pytest.approx(error), label
        assert rows[label]["latency_ms"]["1"] > 0
    assert rows["dense"]["export"] == "dense" and rows["gated"]["export"] == "kernels"
    assert rows["dense"]["flops_ratio"] == pytest.approx(1.0)
    measured = flops.measure(gated, x)
    assert rows["gated"]["mean_macs"] == pytest.approx(measured["mean_macs"], rel=1e-6)
    assert 0.1 < rows["gated"]["flops_ratio"] < 0.95
    # the same model without the channels closed for good: the same predictions and
    # open channels, smaller convolutions (each gate's cost shrinks with its input)
    assert rows["thin"]["top1_error"] == rows["gated"]["top1_error"]
    opened, _ = flops.collect_decisions(gated, datasets.normalized(data.subset(256).train))
    assert rows["thin"]["closed_channels_removed"]["kept"] == {
        name: [int(d.any(axis=0).sum()), d.shape[1]] for name, d in opened.items()}
    assert all(kept <= filters - 4
               for kept, filters in rows["thin"]["closed_channels_removed"]["kept"].values())
    assert 0.97 < rows["thin"]["mean_macs"] / rows["gated"]["mean_macs"] < 1.0
    assert "closed_channels_removed" not in rows["gated"]
    markdown = (tmp_path / "frontier.md").read_text()
    assert "| dense | " in markdown and "(1.00x)" in markdown and "Command: `" in markdown
    assert "thin: `" in markdown and "without the channels its gates closed" in markdown
    assert (tmp_path / "frontier.png").stat().st_size > 1000


def test_frontier_refuses_a_source_it_cannot_load(tmp_path):
    result = _frontier(tmp_path, "dense=nowhere.keras", check=False)
    assert result.returncode != 0
    assert "'nowhere.keras' is neither a shipped model" in result.stderr
    result = _frontier(tmp_path, "dense=resnet20_cifar10", "--drop_closed=sanp", check=False)
    assert result.returncode != 0
    assert "--drop_closed: ['sanp'] not among the labels of --models ['dense']" in result.stderr
