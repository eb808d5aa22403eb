import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import flops
from tests import oracle
from tests.test_convert import _images
from tests.test_convert import _mixed_model


def _randomize_gates(model):
    rng = np.random.RandomState(0)
    for layer in model.layers:
        if isinstance(layer, sk.SPMConv2D) and layer.gate.weights:
            oracle.randomize(layer.gate, rng)


@pytest.mark.parametrize("mode", ["sanp", "static", "fixed_k", "fbs"])
def test_save_load_gives_identical_outputs_and_decisions(mode, tmp_path):
    gated = sk.convert(_mixed_model(), mode=mode, reduction=2, keep_ratio=0.5)
    _randomize_gates(gated)  # static: a random learned input, varied scores
    path = tmp_path / "gated.keras"
    gated.save(path)
    loaded = keras.models.load_model(path)  # safe_mode is on by default
    x = _images(16)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), gated.predict(x, verbose=0))
    before = flops.decision_function(gated)(x)
    after = flops.decision_function(loaded)(x)
    assert before.keys() == after.keys() and len(before) == 6
    for name in before:
        np.testing.assert_array_equal(after[name].numpy(), before[name].numpy())
    assert 0 < np.mean([b.numpy().mean() for b in before.values()]) < 1


def test_zoo_model_round_trips_with_its_shortcut_layers(tmp_path):
    model = sk.models.create_model("resnet20")
    path = tmp_path / "resnet20.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.RandomState(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
