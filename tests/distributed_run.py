"""Run by `tests/test_distribute.py` in a process of its own: two logical CPU devices
must be configured before TensorFlow starts, which the test process has done long ago.

Prints one JSON line: `active_rate` of a gated layer after one mirrored step next to
the open rates of the whole batch and of each replica's half, and the cost a tiny
gated CNN lands on (budget 0.5) on one device and under `MirroredStrategy`.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sanp_keras as sk  # noqa: E402
from sanp_keras import flops  # noqa: E402
from tests.callbacks.test_budget import _data  # noqa: E402
from tests.callbacks.test_budget import _model  # noqa: E402


# One strategy for the whole process: a second instance's collectives clash with the
# first one's ("Shape mismatch in the collective instance").
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def active_rate_of_one_step():
    """`active_rate` after one step on a batch whose halves open different channels."""
    rng = np.random.RandomState(0)
    x = rng.normal(size=(8, 6, 6, 3)).astype("float32")
    x[:4] += 3.0  # replica 0's half
    with MIRRORED.scope():
        inputs = keras.Input((6, 6, 3))
        h = sk.SPMConv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
        outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.SGD(0.0),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    gate = model.get_layer("c1").gate
    for w in (gate.squeeze_kernel, gate.excite_kernel):  # scores that vary per sample
        w.assign(rng.normal(0, 1.0, w.shape))
    for w in (gate.squeeze_bias, gate.excite_bias):
        w.assign(np.zeros(w.shape))
    model.fit(x, np.zeros(8, "int32"), batch_size=8, epochs=1, verbose=0, shuffle=False)
    run = flops.decision_function(model)
    rate = {name: np.asarray(run(part)["c1"]).mean(0).tolist()
            for name, part in (("batch", x), ("first_half", x[:4]), ("second_half", x[4:]))}
    rate["active_rate"] = model.get_layer("c1").active_rate.numpy().tolist()
    return rate


def landed_cost(strategy):
    keras.utils.set_random_seed(0)
    x, y = _data()
    with strategy.scope():
        model = _model()
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=16, verbose=0,
                        callbacks=[sk.BudgetCallback(budget=0.5, calibration_data=x[:256])])
    return {"cost": flops.measure(model, x)["flops_ratio"],
            "accuracy": history.history["accuracy"][-1],
            "replicas": strategy.num_replicas_in_sync}


if __name__ == "__main__":
    print(json.dumps({
        "one_step": active_rate_of_one_step(),
        "single": landed_cost(tf.distribute.get_strategy()),
        "mirrored": landed_cost(MIRRORED),
    }))
