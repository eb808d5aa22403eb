import keras
import numpy as np
import pytest
import tensorflow as tf

import sanp_keras as sk
from sanp_keras import flops


def _model(size=12):
    inputs = keras.Input((size, size, 3))  # layers take the global dtype policy
    h = sk.SPMConv2D(16, 3, padding="same", activation="relu", bn_momentum=0.9, name="c1")(inputs)
    h = sk.SPMConv2D(24, 3, strides=2, padding="same", activation="relu", bn_momentum=0.9,
                     name="c2")(h)
    h = sk.SPMConv2D(24, 3, padding="same", activation="relu", bn_momentum=0.9, name="c3")(h)
    outputs = keras.layers.Dense(2, dtype="float32")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, outputs)


def _data(n=512, seed=0):
    """Which of two colour channels is brighter on average: learnable with few channels."""
    rng = np.random.RandomState(seed)
    x = (rng.normal(size=(n, 12, 12, 3)) + rng.normal(size=(n, 1, 1, 3))).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > x[..., 1].mean(axis=(1, 2))).astype("int32")
    return x, y


def _set_rates(model, rate):
    for layer in flops.gated_layers(model):
        layer.active_rate.assign(np.full(layer.filters, rate, "float32"))


def test_lambda_follows_the_sign_and_size_of_the_gap_by_hand():
    model = _model()
    callback = sk.BudgetCallback(budget=0.5, alpha=2.0, integral_gain=0.0, window=1)
    callback.set_model(model)
    callback.on_train_begin()
    nodes = flops.trace(model)
    dense = flops.dense_macs(model)
    lambdas = {}
    for rate in (1.0, 0.8, 0.5, 0.3):
        _set_rates(model, rate)
        logs = {}
        callback.on_train_batch_end(0, logs)
        estimate = flops.expected_macs(nodes, {n: np.full(c, rate) for n, c in
                                               (("c1", 16), ("c2", 24), ("c3", 24))})
        gap = (estimate - 0.5 * dense) / dense
        assert logs["lambda"] == pytest.approx(2.0 * np.clip(gap, -1, 1))
        assert logs["flops_ratio"] == pytest.approx(estimate / dense)
        lambdas[rate] = logs["lambda"]
    assert lambdas[1.0] > lambdas[0.8] > 0  # over budget: sparser, more so further away
    assert lambdas[0.3] < 0  # under budget: denser
    # the layers carry lambda times their MACs share per channel
    c3 = model.get_layer("c3")
    share = flops.per_layer_dense_macs(model)["c3"] / dense
    assert c3.cost_weight.numpy() == pytest.approx(lambdas[0.3] * share / 24, rel=1e-5)
    # and a gradient gain that makes the mean push per channel gate_speed * lambda
    assert c3.cost_gain.numpy() == pytest.approx(callback.gate_speed * (16 + 24 + 24))


def test_integral_term_accumulates_near_the_budget_only():
    model = _model()
    callback = sk.BudgetCallback(budget=0.5, alpha=1.0, integral_gain=0.5, window=1)
    callback.set_model(model)
    callback.on_train_begin()
    _set_rates(model, 1.0)  # far above: no wind-up
    callback.on_train_batch_end(0)
    assert callback.integral == 0.0
    _set_rates(model, 0.72)  # about 0.52 of dense: close
    callback.on_train_batch_end(1)
    callback.on_train_batch_end(2)
    assert callback.integral > 0
    assert callback.lambda_ > callback.alpha * (callback.flops_ratio - 0.5)


def test_ramp_lowers_the_target_along_the_cubic_schedule():
    model = _model()
    callback = sk.BudgetCallback(budget=0.4, alpha=1.0, integral_gain=0.0, window=1,
                                 ramp_steps=10)
    callback.set_model(model)
    callback.on_train_begin()
    _set_rates(model, 1.0)  # every channel open: the cost is dense
    for step in range(1, 13):
        logs = {}
        callback.on_train_batch_end(step - 1, logs)
        left = max(0.0, 1.0 - step / 10)
        target = 0.4 + 0.6 * left**3  # Zhu & Gupta's eq. 1, by hand
        assert logs["target_ratio"] == pytest.approx(target)
        assert logs["lambda"] == pytest.approx(logs["flops_ratio"] - target)
    assert logs["target_ratio"] == pytest.approx(0.4)  # the budget once the ramp ends
    with pytest.raises(ValueError, match="ramp_steps=-1"):
        sk.BudgetCallback(budget=0.5, ramp_steps=-1)


def test_lambda_is_restored_from_the_layers_on_resume():
    model = _model()
    callback = sk.BudgetCallback(budget=0.5, alpha=2.0, integral_gain=0.0, window=1)
    callback.set_model(model)
    callback.on_train_begin()
    _set_rates(model, 1.0)
    callback.on_train_batch_end(0)
    resumed = sk.BudgetCallback(budget=0.5, alpha=2.0)
    resumed.set_model(model)
    resumed.on_train_begin()
    assert resumed.lambda_ == pytest.approx(callback.lambda_, rel=1e-5)


def test_layer_allocation_drives_each_layer_towards_fixed_k_keep_ratio():
    model = _model()
    callback = sk.BudgetCallback(budget=0.5, alpha=2.0, integral_gain=0.0, window=1,
                                 allocation="layer")
    callback.set_model(model)
    callback.on_train_begin()
    k = callback.keep_target
    nodes = flops.trace(model)
    uniform = {n: np.full(c, k) for n, c in (("c1", 16), ("c2", 24), ("c3", 24))}
    assert flops.expected_macs(nodes, uniform) == pytest.approx(0.5 * flops.dense_macs(model))
    rates = {"c1": 0.9, "c2": k, "c3": 0.2}  # over, on and under the target
    for name, rate in rates.items():
        model.get_layer(name).active_rate.assign(np.full(model.get_layer(name).filters,
                                                         rate, "float32"))
    callback.on_train_batch_end(0, {})
    lam = callback.layer_lambdas
    assert lam["c1"] == pytest.approx(2.0 * (0.9 - k))  # each its own gap, not the global
    assert lam["c2"] == pytest.approx(0.0, abs=1e-6) and lam["c3"] < 0
    for name in rates:  # every channel weighs alike: 1 / N
        assert model.get_layer(name).cost_weight.numpy() == pytest.approx(lam[name] / 64)
    resumed = sk.BudgetCallback(budget=0.5, alpha=2.0, allocation="layer")
    resumed.set_model(model)
    resumed.set_state(callback.get_state())
    resumed.on_train_begin()
    assert resumed.layer_lambdas == pytest.approx(lam)
    with pytest.raises(ValueError, match="allocation='per_sample'"):
        sk.BudgetCallback(budget=0.5, allocation="per_sample")


def test_fit_with_layer_allocation_keeps_every_layer_near_k():
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = sk.BudgetCallback(budget=0.5, allocation="layer", calibration_data=x[:256])
    model.fit(x, y, batch_size=32, epochs=12, verbose=0, callbacks=[callback])
    report = flops.measure(model, x)
    opened = {name: layer["active_ratio"] for name, layer in report["per_layer"].items()}
    assert all(abs(opened[name] - callback.keep_target) < 0.1 for name in ("c1", "c2", "c3"))
    # the outer term has moved the targets up: k alone undershoots (about 0.40 here)
    assert callback.keep_offset < 0 and abs(report["flops_ratio"] - 0.5) < 0.06


def test_fit_lands_on_the_budget_and_logs_lambda_and_flops_ratio(tmp_path):
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    csv = tmp_path / "log.csv"
    callback = sk.BudgetCallback(budget=0.6, calibration_data=x[:256])
    history = model.fit(x, y, batch_size=32, epochs=16, verbose=0,
                        callbacks=[callback, keras.callbacks.CSVLogger(str(csv))])
    assert {"lambda", "flops_ratio"} <= set(history.history)
    assert "lambda" in csv.read_text().splitlines()[0]
    measured = flops.measure(model, x)
    assert abs(measured["flops_ratio"] - 0.6) < 0.03
    assert history.history["accuracy"][-1] > 0.8  # it prunes without breaking the model


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("gate_gradient", ["task", "none"])
def test_every_gate_gradient_trains_under_mixed_precision(gate_gradient):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        x, y = _data(64)
        inputs = keras.Input((12, 12, 3))
        h = sk.SPMConv2D(8, 3, padding="same", activation="relu",
                         gate_gradient=gate_gradient)(inputs)
        outputs = keras.layers.Dense(2, dtype="float32")(
            keras.layers.GlobalAveragePooling2D()(h))
        model = keras.Model(inputs, outputs)
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=32, epochs=1, verbose=0,
                            callbacks=[sk.BudgetCallback(budget=0.5)])
        assert np.isfinite(history.history["loss"][-1])
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_fit_lands_on_the_budget_under_mixed_precision(policy):
    x, y = _data()
    model = _model()
    layer = model.get_layer("c2")
    assert layer.conv.compute_dtype == policy.split("_")[1]
    assert layer.gate.compute_dtype == "float32"  # the gate and its cost loss
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=16, verbose=0,
                        callbacks=[sk.BudgetCallback(budget=0.6, calibration_data=x[:256])])
    assert abs(flops.measure(model, x)["flops_ratio"] - 0.6) < 0.04
    assert history.history["accuracy"][-1] > 0.8


def test_fit_lands_on_the_budget_with_jit_compile():
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=True)
    history = model.fit(x, y, batch_size=32, epochs=16, verbose=0,
                        callbacks=[sk.BudgetCallback(budget=0.6, calibration_data=x[:256])])
    assert abs(flops.measure(model, x)["flops_ratio"] - 0.6) < 0.04
    assert history.history["accuracy"][-1] > 0.8


def test_hand_written_training_loop():
    x, y = _data(256)
    model = _model()
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    callback = sk.BudgetCallback(budget=0.5)
    callback.set_model(model)
    callback.on_train_begin()

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            loss = loss_fn(yb, logits) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    ratios, lambdas = [], []
    for epoch in range(16):
        for i in range(0, 256, 32):
            step(x[i : i + 32], y[i : i + 32])
            logs = {}
            callback.on_train_batch_end(i, logs)
            ratios.append(logs["flops_ratio"])
            lambdas.append(logs["lambda"])
    assert ratios[0] > 0.95 and lambdas[0] > 0
    assert min(ratios) < 0.7  # lambda pushed the cost down
    assert len(model.losses) == 3  # one cost term per gated layer


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget": 1.3}, r"budget=1.3"),
        ({"budget": 0.0}, r"budget=0.0"),
        ({}, "exactly one"),
        ({"budget": 0.5, "budget_mmacs": 3.0}, "exactly one"),
        ({"budget": 0.5, "weighting": "flops"}, "weighting='flops'"),
        ({"budget": 0.5, "alpha": -1}, "alpha=-1"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sk.BudgetCallback(**kwargs)


def test_budget_in_mmacs_and_models_without_gates():
    model = _model()
    callback = sk.BudgetCallback(budget_mmacs=0.2)  # the model costs 0.37 M
    callback.set_model(model)
    callback.on_train_begin()
    assert callback.budget_macs == 0.2e6
    too_big = sk.BudgetCallback(budget_mmacs=1e6)
    too_big.set_model(model)
    with pytest.raises(ValueError, match="budget_mmacs=1000000.0"):
        too_big.on_train_begin()
    plain = sk.models.create_model("resnet20", gated=False)
    callback = sk.BudgetCallback(budget=0.5)
    callback.set_model(plain)
    with pytest.raises(ValueError, match="no gated layer"):
        callback.on_train_begin()
