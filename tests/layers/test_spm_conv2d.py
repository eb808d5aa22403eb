import keras
import numpy as np
import pytest
import tensorflow as tf

from sanp_keras import SPMConv2D
from tests import oracle


def _x(n=6, h=8, c=5, seed=0):
    return np.random.RandomState(seed).normal(size=(n, h, h, c)).astype("float32")


def _random_layer(x, **kwargs):
    layer = SPMConv2D(**{"filters": 12, "kernel_size": 3, "reduction": 2, **kwargs})
    layer.build(x.shape)
    oracle.randomize(layer, np.random.RandomState(7))
    return layer


def _weights(layer):
    return {w.path.split("/", 1)[1]: w.numpy() for w in layer.weights}


def test_basics_shapes_weights_config():
    layer = SPMConv2D(12, 3, strides=2, padding="same")
    y = layer(_x())
    assert y.shape == (6, 4, 4, 12)
    assert layer.compute_output_shape((None, 8, 8, 5)) == (None, 4, 4, 12)
    # conv kernel, BN gamma/beta, gate W1 c1 W2 c2 trainable
    assert len(layer.trainable_weights) == 7
    clone = SPMConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("strides, padding", [(1, "valid"), (2, "same"), (1, "same")])
def test_inference_matches_numpy_oracle(strides, padding):
    x = _x()
    layer = _random_layer(x, strides=strides, padding=padding, activation="relu")
    w = _weights(layer)
    y = np.asarray(layer(x, training=False))
    conv = oracle.conv2d(x, w["conv/kernel"], strides, padding)
    bn = oracle.batch_norm(conv, w["bn/gamma"], w["bn/beta"], w["bn/moving_mean"],
                           w["bn/moving_variance"], 1e-3)
    g = oracle.gate_scores(x, w["gate/squeeze_kernel"], w["gate/squeeze_bias"],
                           w["gate/excite_kernel"], w["gate/excite_bias"])
    b = oracle.inference_decisions(g)
    expected = np.maximum(bn * (b * oracle.sigmoid(g))[:, None, None, :], 0.0)
    np.testing.assert_allclose(y, expected, atol=1e-4)
    assert 0.1 < b.mean() < 0.9  # the random gates close some channels, not all


def test_decisions_exactly_binary_and_closed_channels_exactly_zero():
    x = _x()
    layer = _random_layer(x)
    y, b = layer(x, training=False, return_decisions=True)
    y, b = np.asarray(y), np.asarray(b)
    assert set(np.unique(b)) == {0.0, 1.0}
    closed = b == 0  # (N, C)
    assert np.all(y.transpose(0, 3, 1, 2)[closed] == 0.0)
    assert np.all(np.abs(y.transpose(0, 3, 1, 2)[~closed]).sum(axis=(1, 2)) > 0)


def test_dense_mode_is_the_plain_conv_bn():
    x = _x()
    layer = _random_layer(x, mode="dense")
    w = _weights(layer)
    bn = oracle.batch_norm(oracle.conv2d(x, w["conv/kernel"]), w["bn/gamma"], w["bn/beta"],
                           w["bn/moving_mean"], w["bn/moving_variance"], 1e-3)
    np.testing.assert_allclose(layer(x, training=False), bn, atol=1e-4)
    assert not layer.gate.weights


def test_gradients_reach_the_gate_including_closed_channels():
    x = _x()
    layer = _random_layer(x)
    # g = c2 exactly: even channels closed for every sample, odd ones open
    layer.gate.excite_kernel.assign(np.zeros_like(layer.gate.excite_kernel.numpy()))
    layer.gate.excite_bias.assign(np.where(np.arange(12) % 2 == 0, -4.0, 4.0).astype("float32"))
    _, b = layer(x, training=False, return_decisions=True)
    np.testing.assert_array_equal(np.asarray(b), np.tile([0.0, 1.0], (6, 6)))
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.square(y - 1.0))
    grads = tape.gradient(loss, layer.gate.trainable_weights)
    assert all(g is not None for g in grads)
    bias_grad = grads[-1].numpy()
    assert np.all(bias_grad[::2] != 0.0)  # the closed channels can reopen
    assert np.all(bias_grad[1::2] != 0.0)


def test_training_adds_the_cost_loss_and_records_active_rate():
    x = _x()
    layer = _random_layer(x)
    layer.cost_weight.assign(0.5)
    layer(x, training=True)
    assert len(layer.losses) == 1
    w = _weights(layer)
    g = oracle.gate_scores(x, w["gate/squeeze_kernel"], w["gate/squeeze_bias"],
                           w["gate/excite_kernel"], w["gate/excite_bias"])
    np.testing.assert_allclose(float(layer.losses[0]), 0.5 * oracle.sigmoid(g).mean(0).sum(),
                               rtol=1e-4)
    np.testing.assert_allclose(layer.active_rate.numpy(), oracle.inference_decisions(g).mean(0),
                               atol=1e-6)
    layer(x, training=False)
    assert layer.losses == []  # inference adds nothing


def test_fit_with_jit_compile_and_a_functional_model():
    inputs = keras.Input((8, 8, 3))
    h = SPMConv2D(8, 3, padding="same", activation="relu")(inputs)
    h = SPMConv2D(8, 3, strides=2, padding="same", activation="relu")(h)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    x = _x(n=16, c=3)
    history = model.fit(x, np.arange(16) % 2, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data_format": "channels_first"}, "data_format='channels_first'"),
        ({"groups": 2}, "groups=2"),
        ({"dilation_rate": 2}, "dilation_rate=2"),
        ({"reduction": 0}, "reduction=0"),
        ({"mode": "soft"}, "mode='soft'"),
        ({"filters": -3}, "filters=-3"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SPMConv2D(**{"filters": 4, "kernel_size": 3, **kwargs})


def test_input_must_be_rank_four():
    with pytest.raises(ValueError, match="rank 4"):
        SPMConv2D(4, 3)(keras.ops.ones((2, 8, 3)))


def test_rescale_none_keeps_open_channels_unscaled_and_closed_ones_zero():
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 5)).astype("float32")
    dense = SPMConv2D(8, 3, padding="same", activation="relu", mode="dense")
    unscaled = SPMConv2D(8, 3, padding="same", activation="relu", gate_rescale="none")
    dense(x), unscaled(x)
    unscaled.conv.set_weights(dense.conv.get_weights())
    unscaled.bn.set_weights(dense.bn.get_weights())
    bias = np.full(8, 5.0, "float32")
    bias[[1, 6]] = -5.0  # two channels closed for every sample
    unscaled.gate.excite_bias.assign(bias)
    expected = np.array(dense(x, training=False))
    expected[..., [1, 6]] = 0.0
    np.testing.assert_allclose(np.asarray(unscaled(x, training=False)), expected, atol=1e-6)
    restored = SPMConv2D.from_config(unscaled.get_config())
    assert restored.gate.rescale == "none"
    with pytest.raises(ValueError, match="rescale='tanh'"):
        SPMConv2D(8, 3, gate_rescale="tanh")


def test_cost_floor_spares_the_highest_scoring_channels_from_the_cost_push():
    x = _x()
    pushes = {}
    for floor in (0.0, 0.25):
        layer = _random_layer(x, cost_floor=floor)
        layer.cost_weight.assign(1.0)
        layer.cost_gain.assign(1.0)
        w = _weights(layer)
        with tf.GradientTape() as tape:
            layer(x, training=True)
            cost = layer.losses[0]
        pushes[floor] = tape.gradient(cost, layer.gate.excite_bias).numpy()  # (12,)
        # the value is the paper's term whatever the floor
        g = oracle.gate_scores(x, w["gate/squeeze_kernel"], w["gate/squeeze_bias"],
                               w["gate/excite_kernel"], w["gate/excite_bias"])
        np.testing.assert_allclose(float(cost), oracle.sigmoid(g).mean(0).sum(), rtol=1e-4)
    top3 = np.argsort(-g.mean(0))[:3]  # ceil(0.25 * 12) channels of highest mean score
    np.testing.assert_allclose(pushes[0.0], np.ones(12), rtol=1e-5)  # gain 1, batch mean
    expected = np.ones(12)
    expected[top3] = 0.0
    np.testing.assert_allclose(pushes[0.25], expected, rtol=1e-5)
    assert SPMConv2D.from_config(layer.get_config()).cost_floor == 0.25
    with pytest.raises(ValueError, match="cost_floor=1.5"):
        SPMConv2D(8, 3, cost_floor=1.5)


def _input_gradients(layer, x):
    """Gradients of the cost loss and of the output w.r.t. the input and the gate's
    first kernel, one training call with a fixed seed."""
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x, training=True)
        cost = layer.losses[0]
        task = tf.reduce_sum(y * y)
    grads = {
        "cost_x": tape.gradient(cost, x),
        "cost_gate": tape.gradient(cost, layer.gate.squeeze_kernel),
        "task_x": tape.gradient(task, x),
        "task_gate": tape.gradient(task, layer.gate.squeeze_kernel),
    }
    return {k: (np.zeros(x.shape) if v is None else v.numpy()) for k, v in grads.items()}


def test_gate_gradient_decides_which_losses_reach_the_layer_input():
    x = _x()
    grads = {}
    for choice in ("all", "task", "none"):
        layer = _random_layer(x, gate_gradient=choice, noise_stddev=0.0,
                              discrete_fraction=0.0, seed=3)
        layer.cost_weight.assign(1.0)
        grads[choice] = _input_gradients(layer, x)
    # the gate's weights learn from both losses whatever the choice
    for choice, g in grads.items():
        assert np.abs(g["cost_gate"]).max() > 0, choice
        assert np.abs(g["task_gate"]).max() > 0, choice
        np.testing.assert_allclose(g["cost_gate"], grads["all"]["cost_gate"], rtol=1e-5)
        np.testing.assert_allclose(g["task_gate"], grads["all"]["task_gate"], rtol=1e-5)
    # the paper: the cost loss reaches the features through the gate's input
    assert np.abs(grads["all"]["cost_x"]).max() > 1e-4
    # task: the cost stops at the gate, the task gradient is the paper's
    np.testing.assert_array_equal(grads["task"]["cost_x"], 0.0)
    np.testing.assert_allclose(grads["task"]["task_x"], grads["all"]["task_x"], rtol=1e-5)
    # none: the input gets the convolution's gradient only, which differs
    np.testing.assert_array_equal(grads["none"]["cost_x"], 0.0)
    assert np.abs(grads["none"]["task_x"] - grads["all"]["task_x"]).max() > 1e-5
    assert SPMConv2D.from_config(layer.get_config()).gate_gradient == "none"
    with pytest.raises(ValueError, match="gate_gradient='both'"):
        SPMConv2D(8, 3, gate_gradient="both")
