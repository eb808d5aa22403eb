"""Every `keras.applications` model, built with `weights=None` at a small input, through
the whole user path: `convert`, one training step under `BudgetCallback`, `strip`, a
`.keras` round trip with `safe_mode` and the `masked` and `portable` TFLite exports.

The suite runs the two MobileNets phones run (about two minutes each on 2 cores); every
other application is marked `large` (`pytest -m large tests/test_applications.py`: about
an hour and a half on 2 cores; the largest ones need several GB of memory).
"""

import warnings

import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import export
from sanp_keras import flops
from tests import oracle

# The smallest input each application builds at, where 32x32 is too small.
_INPUT_SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
# Run in the suite; the others are `large`.
_IN_SUITE = ("MobileNetV2", "MobileNetV3Small")
# Applications whose convolutions have no batch norm of their own, or only grouped or
# depthwise ones, where nothing can be gated: `convert` must say so and change nothing.
_UNGATED = ("ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny",
            "ConvNeXtXLarge", "VGG16", "VGG19")


def _application_names():
    return sorted(name for name in dir(keras.applications)
                  if name[0].isupper() and callable(getattr(keras.applications, name)))


def _params():
    return [pytest.param(name, marks=() if name in _IN_SUITE else pytest.mark.large)
            for name in _application_names()]


def _build(name):
    size = _INPUT_SIZES.get(name, 32)
    try:
        return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                                 classes=10)
    except Exception as error:  # noqa: BLE001 - any build failure is reported as a skip
        pytest.skip(f"keras.applications.{name} does not build at {size}x{size} here: "
                    f"{type(error).__name__}: {error}")


def _half_open(model, seed=7):
    """Gate weights randomized so that about half the channels open, per sample."""
    rng = np.random.RandomState(seed)
    for layer in flops.gated_layers(model):
        gate = layer.gate
        gate.excite_kernel.assign(rng.normal(0, 0.3, gate.excite_kernel.shape))
        gate.excite_bias.assign(rng.normal(0, 0.3, gate.excite_bias.shape))


def _assert_close(got, want):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("name", _params())
def test_application_converts_trains_strips_saves_and_exports(name, tmp_path):
    model = _build(name)
    x = oracle.images(4, seed=0, size=model.inputs[0].shape[1])
    want = model.predict(x, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dense = sk.convert(model, mode="dense")
    _assert_close(dense.predict(x, verbose=0), want)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same "stays dense" warnings as above
        gated = sk.convert(model)
    gated_names = [layer.name for layer in flops.gated_layers(gated)]
    if name in _UNGATED:
        assert not gated_names
        assert any("stays dense" in str(w.message) for w in caught) or name.startswith("VGG")
        return
    assert gated_names, f"{name}: no convolution was gated"
    _assert_close(sk.strip(gated).predict(x, verbose=0), want)

    gated.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    history = gated.fit(x, np.arange(len(x)) % 10, epochs=1, batch_size=len(x), verbose=0,
                        callbacks=[sk.BudgetCallback(budget=0.5)])
    assert np.isfinite(history.history["loss"][-1])

    _half_open(gated)
    got = gated.predict(x, verbose=0)
    path = str(tmp_path / f"{name}.keras")
    gated.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    _assert_close(loaded.predict(x, verbose=0), got)

    for kind in ("masked", "portable"):
        file = export.export_tflite(gated, str(tmp_path / f"{name}_{kind}.tflite"), kind,
                                    calibration_data=x, decisions=True)
        result = export.parity.check_file(gated, file, kind, x)
        assert result["decisions_equal"] == 1.0, (kind, export.parity.summary(result))
        assert result["top1_equal"] == 1.0, (kind, export.parity.summary(result))
        assert result["max_logit_diff"] <= 1e-4 * max(1.0, result["max_abs_logit"]), kind
        assert 0.1 < result["open_share"] < 0.9, (kind, result["open_share"])  # gates vary
