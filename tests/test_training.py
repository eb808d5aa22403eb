import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import sanp_keras as sk
from sanp_keras import flops
from sanp_keras import slimming
from sanp_keras import training
from tests import oracle
from tests.callbacks.test_budget import _data
from tests.callbacks.test_budget import _model

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _compile(model):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))


class _RecordLambda(keras.callbacks.Callback):
    def __init__(self, budget):
        super().__init__()
        self.budget = budget
        self.at_begin = None

    def on_train_begin(self, logs=None):
        self.at_begin = self.budget.lambda_


def test_stage_resumes_after_the_last_finished_epoch_with_the_same_lambda(tmp_path):
    x, y = _data(256)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    stage = str(tmp_path / "stage")
    first = sk.BudgetCallback(budget=0.5)
    training.fit_stage(stage, _model, _compile, ds, epochs=1, budget=first, verbose=0)
    state = training.read_state(stage)
    assert state["epoch"] == 1 and os.listdir(stage).count("ckpt-1.keras") == 1
    lam = state["budget"]["lambda"]
    assert lam == pytest.approx(first.lambda_) and lam != 0

    # "rerun": a new callback, the same stage, two epochs in all
    second = sk.BudgetCallback(budget=0.5)
    recorder = _RecordLambda(second)
    original_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        assert kwargs["initial_epoch"] == 1  # continues at epoch 2
        kwargs["callbacks"] = kwargs["callbacks"] + [recorder]
        return original_fit(self, *args, **kwargs)

    keras.Model.fit = fit
    try:
        training.fit_stage(stage, _model, _compile, ds, epochs=2, budget=second, verbose=0)
    finally:
        keras.Model.fit = original_fit
    assert recorder.at_begin == pytest.approx(lam)
    assert training.read_state(stage)["epoch"] == 2
    assert sorted(f for f in os.listdir(stage) if f.endswith(".keras")) == ["ckpt-2.keras"]
    with open(os.path.join(stage, "log.csv")) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    # a finished stage is skipped
    model = training.fit_stage(stage, _model, _compile, ds, epochs=2, verbose=0)
    assert isinstance(model, keras.Model)


def test_a_snapshot_without_optimizer_resumes_at_the_schedule_step_it_ended_on(tmp_path):
    x, y = _data(256)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 8 steps an epoch
    stage, copy = str(tmp_path / "stage"), str(tmp_path / "copy")

    def cosine(model):
        lr = keras.optimizers.schedules.CosineDecay(0.05, 8 * 3)
        model.compile(keras.optimizers.SGD(lr, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    trained = training.fit_stage(stage, _model, cosine, ds, epochs=1, verbose=0)
    path = training.snapshot_stage(stage, copy)
    assert os.path.getsize(path) < os.path.getsize(os.path.join(stage, "ckpt-1.keras"))
    assert training.read_state(copy)["epoch"] == 1
    resumed = []
    original_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        resumed.append((kwargs["initial_epoch"], int(self.optimizer.iterations.numpy()),
                        [w.copy() for w in self.get_weights()]))
        return original_fit(self, *args, **kwargs)

    keras.Model.fit = fit
    try:
        model = training.fit_stage(copy, _model, cosine, ds, epochs=2, verbose=0)
    finally:
        keras.Model.fit = original_fit
    (epoch, step, weights), = resumed
    assert epoch == 1 and step == 8
    for w, t in zip(weights, trained.get_weights()):
        np.testing.assert_array_equal(w, t)
    assert int(model.optimizer.iterations.numpy()) == 16
    assert training.read_state(copy)["epoch"] == 2
    with pytest.raises(ValueError, match="no state.json"):
        training.snapshot_stage(str(tmp_path / "nothing"), copy)


def test_a_diverging_stage_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    x, y = _data(256)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)  # 8 steps an epoch
    stage = str(tmp_path / "stage")

    def explode_in_epoch_2(model):
        lr = keras.optimizers.schedules.PiecewiseConstantDecay([8], [0.05, 1e30])
        model.compile(keras.optimizers.SGD(lr),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    with pytest.raises(FloatingPointError, match=r"stage.*epoch 2.*ckpt-1\.keras"):
        training.fit_stage(stage, _model, explode_in_epoch_2, ds, epochs=3, verbose=0)
    state = training.read_state(stage)
    assert state["epoch"] == 1 and np.isfinite(state["logs"]["loss"])
    assert sorted(f for f in os.listdir(stage) if f.endswith(".keras")) == ["ckpt-1.keras"]
    kept = keras.models.load_model(os.path.join(stage, "ckpt-1.keras"))
    assert all(np.isfinite(w).all() for w in kept.get_weights())


def test_frozen_backbone_survives_save_and_load(tmp_path):
    model = sk.convert(sk.models.create_model("resnet20", gated=False))
    training.set_backbone_trainable(model, False)
    trainable = {w.path for w in model.trainable_weights}
    assert trainable and all("gate" in p for p in trainable)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert {w.path for w in loaded.trainable_weights} == trainable


def test_fixed_k_keep_ratio_meets_the_budget():
    plain = sk.models.create_model("mcifarnet", gated=False)
    ratio = training.fixed_k_keep_ratio(sk.convert(plain, mode="fixed_k"), 0.4)
    gated = sk.convert(plain, mode="fixed_k", keep_ratio=ratio)
    x = np.random.RandomState(0).uniform(size=(4, 32, 32, 3)).astype("float32")
    measured = flops.measure(gated, x)["flops_ratio"]
    assert abs(measured - 0.4) < 0.02  # rounding k to whole channels
    assert 0.55 < ratio < 0.7  # a chain: cost ~ keep^2


@pytest.mark.parametrize("mode", ["fixed_k", "fbs"])
def test_calibrated_keep_ratio_meets_the_budget_through_residual_adds(mode):
    # Trained-like gates that agree across layers: the union at each Add is smaller
    # than independence predicts, so the analytic ratio alone comes out cheap.
    plain = sk.models.create_model("resnet20", gated=False)
    ratio = training.fixed_k_keep_ratio(sk.convert(plain, mode=mode), 0.5)
    gated = sk.convert(plain, mode=mode, keep_ratio=ratio)
    for layer in flops.gated_layers(gated):
        layer.gate.excite_bias.assign(np.linspace(2.0, 1.0, layer.filters))  # same order
    x = oracle.images(16, 0, size=32)
    calibrated, measured = training.calibrate_keep_ratio(gated, 0.5, x, fill=False)
    assert 0.48 < measured <= 0.5  # the nearest step of whole channels under the budget
    assert abs(flops.measure(gated, x)["flops_ratio"] - measured) < 1e-9  # it stays set
    assert all(g.gate.keep_ratio == calibrated for g in flops.gated_layers(gated))
    # filled one channel at a time: within 0.01 of the budget (the band), under
    filled, landed = training.calibrate_keep_ratio(gated, 0.5, x)
    assert filled == calibrated and measured <= landed <= 0.5 and landed > 0.49
    assert abs(flops.measure(gated, x)["flops_ratio"] - landed) < 1e-9
    ks = [g.gate.k for g in flops.gated_layers(gated)]
    shared = [max(1, round(calibrated * g.filters)) for g in flops.gated_layers(gated)]
    assert all(k in (s, s + 1) for k, s in zip(ks, shared))  # at most one channel more


def test_land_keep_ratio_lowers_k_to_the_budget_counting_every_top_k_channel():
    from tests.test_convert import _mixed_model  # a residual Add, a concatenation

    gated = sk.convert(_mixed_model(), mode="fbs", keep_ratio=0.8)
    layers = flops.gated_layers(gated)
    for layer in layers:  # a third of the scores under zero: FBS closes those too
        layer.gate.excite_bias.assign(np.linspace(1.0, -0.5, layer.filters))
    x = oracle.images(16, 1)
    as_is = flops.measure(gated, x)["flops_ratio"]
    ks = [g.gate.k for g in layers]
    before, after = training.land_keep_ratio(gated, 0.6, x)
    assert before > as_is + 0.05  # every top-k channel counted, the zero scores too
    assert after <= 0.6 < before and flops.measure(gated, x)["flops_ratio"] <= after
    lowered = [k - g.gate.k for k, g in zip(ks, layers)]
    assert min(lowered) >= 0 and max(lowered) >= 1
    assert training.land_keep_ratio(gated, 0.9, x) == (after, after)  # under: nothing moves
    with pytest.raises(ValueError, match="no fixed_k or fbs gates"):
        training.land_keep_ratio(sk.convert(_mixed_model(), mode="sanp"), 0.5, x)


def _random_gates(model, seed, center):
    """Gates whose scores vary over samples and channels, around `center`."""
    rng = np.random.default_rng(seed)
    for layer in flops.gated_layers(model):
        gate = layer.gate
        gate.excite_kernel.assign(rng.normal(0, 0.5, gate.excite_kernel.shape))
        gate.excite_bias.assign(rng.normal(center, 1.0, gate.excite_bias.shape))


@pytest.mark.parametrize("mode", ["sanp", "static"])
def test_land_on_budget_raises_one_threshold_to_the_budget(mode, tmp_path):
    gated = sk.convert(sk.models.create_model("resnet20", gated=False), mode=mode)
    _random_gates(gated, 0, 2.0)
    x = oracle.images(16, 0, size=32)
    before = flops.measure(gated, x)["flops_ratio"]
    assert before > 0.45  # over the budget
    scores = [g.gate.static_scores().numpy() if mode == "static" else None
              for g in flops.gated_layers(gated)]
    bias = [g.gate.excite_bias.numpy().copy() for g in flops.gated_layers(gated)]
    delta, measured_before, after = training.land_on_budget(gated, 0.35, x)
    assert delta > 0 and abs(measured_before - before) < 1e-9
    assert 0.34 < after <= 0.35
    # Independent check: the saved model's cost, measured afresh, is the one reported.
    gated.save(tmp_path / "landed.keras")
    loaded = keras.models.load_model(tmp_path / "landed.keras")
    assert abs(flops.measure(loaded, x)["flops_ratio"] - after) < 1e-9
    # One threshold: the channels whose bias lies under it moved down by delta, just
    # under it; the others, and so their scale sigmoid(g), as they were.
    for layer, old, score in zip(flops.gated_layers(loaded), bias, scores):
        closed = old < delta
        new = layer.gate.excite_bias.numpy()
        np.testing.assert_allclose(new[closed], old[closed] - delta, atol=1e-6)
        np.testing.assert_array_equal(new[~closed], old[~closed])
        if mode == "static":
            np.testing.assert_allclose(layer.gate.static_scores().numpy(),
                                       np.where(closed, score - delta, score), atol=1e-5)
    assert 0 < np.mean(np.concatenate(bias) < delta) < 0.9


def test_land_on_budget_moves_only_the_layers_named():
    gated = sk.convert(sk.models.create_model("resnet20", gated=False), mode="sanp")
    _random_gates(gated, 0, 2.0)
    x = oracle.images(16, 0, size=32)
    names = [g.name for g in flops.gated_layers(gated) if g.name.endswith("conv1.conv")]
    bias = {g.name: g.gate.excite_bias.numpy().copy() for g in flops.gated_layers(gated)}
    delta, before, after = training.land_on_budget(gated, 0.4, x, layers=names)
    assert delta > 0 and before > 0.45 and 0.39 <= after <= 0.4
    measured = flops.measure(gated, x)
    assert abs(measured["flops_ratio"] - after) < 1e-9
    for layer in flops.gated_layers(gated):
        new = layer.gate.excite_bias.numpy()
        if layer.name in names:
            assert np.any(new != bias[layer.name])
        else:
            np.testing.assert_array_equal(new, bias[layer.name])
    with pytest.raises(ValueError, match=r"\['stem.bn'\] are not sanp or static"):
        training.land_on_budget(gated, 0.4, x, layers=["stem.bn"])


def test_land_on_budget_reopens_a_model_under_the_band_and_rejects_the_impossible():
    plain = sk.models.create_model("resnet20", gated=False)
    gated = sk.convert(plain, mode="sanp")
    _random_gates(gated, 1, 0.5)
    x = oracle.images(8, 0, size=32)
    cost = flops.measure(gated, x)["flops_ratio"]
    bias = [g.gate.excite_bias.numpy().copy() for g in flops.gated_layers(gated)]
    assert training.land_on_budget(gated, cost, x) == (0.0, cost, cost)  # on it: as it is
    for layer, old in zip(flops.gated_layers(gated), bias):
        np.testing.assert_array_equal(layer.gate.excite_bias.numpy(), old)
    with pytest.raises(ValueError, match="budget=0.005"):
        training.land_on_budget(gated, 0.005, x)  # a layer keeps at least one channel
    for layer, old in zip(flops.gated_layers(gated), bias):  # and it is left unchanged
        np.testing.assert_array_equal(layer.gate.excite_bias.numpy(), old)
    # Far under the budget: one negative shift of every gate reopens channels into the
    # band, and the cost measured afresh is the one reported.
    target = min(1.0, cost + 0.15)
    delta, before, after = training.land_on_budget(gated, target, x, tolerance=0.01)
    assert delta < 0 and before == cost and target - 0.01 <= after <= target
    assert abs(flops.measure(gated, x)["flops_ratio"] - after) < 1e-9
    for layer, old in zip(flops.gated_layers(gated), bias):
        np.testing.assert_allclose(layer.gate.excite_bias.numpy(), old - delta, atol=1e-6)
    with pytest.raises(ValueError, match="has no sanp or static gates"):
        training.land_on_budget(sk.convert(plain, mode="fixed_k"), 0.5, x)


def test_start_at_keep_ratio_shifts_each_layer_to_keep_k_of_its_channels():
    plain = sk.models.create_model("resnet20", gated=False)
    gated = sk.convert(plain, mode="sanp")
    _random_gates(gated, 2, 2.0)  # mostly open, each layer around its own level
    for i, layer in enumerate(flops.gated_layers(gated)):
        layer.gate.excite_bias.assign(layer.gate.excite_bias.numpy() + 0.3 * (i % 4))
    x = oracle.images(16, 0, size=32)
    bias = {g.name: g.gate.excite_bias.numpy().copy() for g in flops.gated_layers(gated)}
    result = training.start_at_keep_ratio(gated, 0.4, x)
    measured = flops.measure(gated, x)["per_layer"]  # independent: measured afresh
    for layer in flops.gated_layers(gated):
        delta, fraction = result[layer.name]
        assert abs(fraction - measured[layer.name]["active_ratio"]) < 1e-9
        assert abs(fraction - 0.4) <= 1.5 / layer.filters  # k, to a channel or so
        old, new = bias[layer.name], layer.gate.excite_bias.numpy()
        closed = old < delta  # moved just under the threshold, in their order
        assert delta > 0 and 0 < closed.sum() < layer.filters
        np.testing.assert_allclose(new[closed], old[closed] - delta, atol=1e-6)
        np.testing.assert_array_equal(new[~closed], old[~closed])  # kept: as they were
    deltas = [delta for delta, _ in result.values()]
    assert max(deltas) - min(deltas) > 0.2  # one threshold per layer, not one for all
    with pytest.raises(ValueError, match="has no sanp or static gates"):
        training.start_at_keep_ratio(sk.convert(plain, mode="fixed_k"), 0.5, x)
    with pytest.raises(ValueError, match="keep_ratio=1.5"):
        training.start_at_keep_ratio(gated, 1.5, x)


def test_start_at_slimming_allocation_keeps_slimming_channels_and_the_stream_open():
    plain = oracle.randomize_batch_norm(sk.models.create_model("resnet20", gated=False), 3)
    ratios = slimming.allocation(plain, 0.5)
    _, info = slimming.slim(plain, 0.5)  # the reference: the channels it removes
    assert {name: round(r * slimming.bn_scales(plain)[name].size) for name, r in
            ratios.items()} == info["kept"]
    assert len(set(np.round(list(ratios.values()), 2))) > 3  # uneven, not one k for all
    gated = sk.convert(plain, mode="sanp", seed=1)
    assert training.order_gates(gated) == 19
    x = oracle.images(16, 0, size=32)
    bias = {g.name: g.gate.excite_bias.numpy().copy() for g in flops.gated_layers(gated)}
    result = training.start_at_keep_ratio(gated, ratios, x)
    assert set(result) == set(ratios)  # the blocks' inner convs only
    decisions, _ = flops.collect_decisions(gated, x)
    kept = slimming.global_threshold(plain, 0.5)[1]
    for layer in flops.gated_layers(gated):
        if layer.name not in ratios:  # the residual stream and stem: as they were, open
            np.testing.assert_array_equal(layer.gate.excite_bias.numpy(), bias[layer.name])
            assert np.mean(decisions[layer.name]) == 1.0
            continue
        assert abs(result[layer.name][1] - ratios[layer.name]) <= 1.5 / layer.filters
        # the channels open in most samples are Network Slimming's, to a channel or so
        opened = set(np.flatnonzero(np.mean(decisions[layer.name], axis=0) > 0.5))
        assert len(opened ^ set(kept[layer.name])) <= 2, layer.name
    with pytest.raises(ValueError, match=r"\['stem.bn'\] are not sanp or static"):
        training.start_at_keep_ratio(gated, {"stem.bn": 0.5}, x)
    name = next(iter(ratios))
    with pytest.raises(ValueError, match=r"keep_ratio\['.*'\]=-0.5"):
        training.start_at_keep_ratio(gated, {name: -0.5}, x)


@pytest.mark.parametrize("mode", ["sanp", "static", "fixed_k", "fbs"])
def test_order_gates_deals_the_starting_scores_by_batch_norm_scale(mode):
    gated = sk.convert(sk.models.create_model("resnet20", gated=False), mode=mode, seed=3)
    rng = np.random.default_rng(0)
    gammas = {}
    for layer in flops.gated_layers(gated):
        gammas[layer.name] = rng.normal(0, 1, layer.filters).astype("float32")  # signs too
        layer.bn.gamma.assign(gammas[layer.name])
    drawn = {g.name: g.gate.excite_bias.numpy().copy() for g in flops.gated_layers(gated)}
    assert training.order_gates(gated, "random") == 0
    for layer in flops.gated_layers(gated):  # "random": the gates as drawn
        np.testing.assert_array_equal(layer.gate.excite_bias.numpy(), drawn[layer.name])
    assert training.order_gates(gated) == len(flops.gated_layers(gated)) == 19
    for layer in flops.gated_layers(gated):
        bias, importance = layer.gate.excite_bias.numpy(), np.abs(gammas[layer.name])
        # the same order as |gamma|, spread evenly over bias_init +- bias_spread = [2, 4]
        # (FBS: fbs_bias_init +- 0.1 = [0.9, 1.1])
        low, high = (0.9, 1.1) if mode == "fbs" else (2.0, 4.0)
        np.testing.assert_array_equal(np.argsort(bias), np.argsort(importance))
        np.testing.assert_allclose(np.sort(bias), np.linspace(low, high, layer.filters),
                                   atol=1e-6)
    with pytest.raises(ValueError, match="order='l1'"):
        training.order_gates(gated, "l1")


@pytest.mark.parametrize("kill_after_epoch", [1])
def test_kill_9_then_rerun_resumes(tmp_path, kill_after_epoch):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "examples", "train_cifar.py"),
           "--train_subset=128", "--test_subset=64", "--batch_size=64",
           "--backbone_epochs=3", "--warmup_epochs=1", "--finetune_epochs=1",
           "--pretrained=none",  # train stage 1, rather than start from the shipped backbone
           f"--output_dir={out}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = out / "1_backbone" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= kill_after_epoch:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["epoch"]
    assert done < 3
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"[1_backbone] resuming after epoch {done}." in rerun.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert {"top1_error", "mean_macs", "pruned_fraction", "per_layer"} <= set(report)
