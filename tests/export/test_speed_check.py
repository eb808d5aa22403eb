"""export_tflite's speed check: an export slower than the dense model is never silent."""

import warnings

import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import export
from sanp_keras.export import speed_check
from tests import oracle


def _wide_open_model():
    """One large gated layer (32x32x32 -> 32) with every gate wide open: gathering its
    channels per sample costs several times XNNPACK's dense convolution and skips nothing."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", name="stem")(inputs)
    x = sk.SPMConv2D(32, 3, padding="same", activation="relu", name="open")(x)
    outputs = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = oracle.randomize_model(keras.Model(inputs, outputs), seed=3)
    model.get_layer("open").gate.excite_bias.assign(np.full(32, 50.0))
    return model


def test_a_gated_export_slower_than_dense_warns_with_its_speed(tmp_path):
    model = _wide_open_model()
    x = oracle.images(4, 0, size=32)
    gather_all = {"open": np.arange(0)}  # no channel static: gathered per sample
    with pytest.warns(UserWarning, match=r"ran 0\.\d\dx the speed of the dense model"):
        export.export_tflite(model, str(tmp_path / "p.tflite"), "portable",
                             calibration_data=x, layer_choice=gather_all)
    # the measurement itself, against the dense reference timed beside it
    speedup, times = speed_check.speedup_over_dense(model, str(tmp_path / "p.tflite"), x[:1])
    assert speedup == pytest.approx(times["dense"] / times["export"])
    assert speedup < 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all without the check
        export.export_tflite(model, str(tmp_path / "q.tflite"), "portable",
                             calibration_data=x, layer_choice=gather_all, speed_check=False)


def test_the_dense_reference_is_the_stripped_model(tmp_path):
    model = _wide_open_model()
    x = oracle.images(2, 1, size=32)
    path = speed_check.dense_reference(model, str(tmp_path))
    got = export.Interpreter(path)(x[:1])
    want = sk.strip(model).predict(x[:1], verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_without_the_kernel_library_the_check_says_it_did_not_time(tmp_path, monkeypatch):
    model = _wide_open_model()
    x = oracle.images(2, 1, size=32)
    monkeypatch.setenv("SANP_TFLITE_LIB", str(tmp_path / "missing.so"))
    with pytest.warns(UserWarning, match="not timed against the dense model"):
        export.export_tflite(model, str(tmp_path / "p.tflite"), "portable", calibration_data=x)
