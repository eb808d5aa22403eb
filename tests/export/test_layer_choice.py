"""layer_choice: each gated layer exported in its faster exact form, as timed."""

import keras
import numpy as np
import pytest

from sanp_keras import export
from sanp_keras import flops
from sanp_keras.export import layer_choice
from tests.export.test_export import _direct_model
from tests.export.test_export import _images
from tests.export.test_export import _op_names
from tests.export.test_export import _run

DYNAMIC = ("s2", "valid", "k", "fbs")  # the layers of _direct_model whose gates vary


def _custom_ops(path):
    ops = _op_names(path)
    return ops.count("SanpGatedConv2D") + ops.count("SanpSEGatedConv2D")


def test_layer_inputs_are_what_keras_feeds_each_layer():
    model = _direct_model()
    x = _images(model, n=3)
    got = layer_choice.layer_inputs(model, x)
    assert sorted(got) == sorted(layer.name for layer in flops.gated_layers(model))
    for name, value in got.items():
        want = keras.Model(model.inputs[0], model.get_layer(name).input)(x)
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind,slow", [("kernels", "kernel"), ("portable", "gathered")])
def test_measured_plan_takes_the_faster_form(kind, slow, monkeypatch, tmp_path):
    # A stand-in clock: the custom / gathered form is slower in layer "valid" only.
    def timer(path, custom_ops=False, num_threads=1):
        slower = ("_valid_" in path) == (f"_{slow}." in path)
        return lambda x, runs: 2.0 if slower else 1.0

    monkeypatch.setattr(layer_choice, "_timer", timer)
    model = _direct_model()
    x = _images(model)
    times = layer_choice.measure_forms(model, kind, x, samples=2, runs=1)
    assert sorted(times) == sorted(DYNAMIC)
    assert times["valid"]["dense" if kind == "portable" else "builtin"][0] == 2 * 1.0  # 2 samples
    plan = layer_choice.measured_plan(model, kind, x, samples=2, runs=1)
    if kind == "kernels":
        assert plan == {"s2": False, "valid": True, "k": False, "fbs": False}
    else:
        assert plan["valid"] == "dense"
        assert all(not isinstance(plan[n], str) for n in ("s2", "k", "fbs"))
    path = export.export_tflite(model, str(tmp_path / "m.tflite"), kind, calibration_data=x,
                                layer_choice=plan)
    if kind == "kernels":
        assert _custom_ops(path) == 3  # "valid" stayed a builtin convolution
    np.testing.assert_allclose(_run(kind, path, x[:2])["output"], model.predict(x[:2], verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_measured_plan_keeps_a_kernel_only_if_clearly_faster(monkeypatch):
    # Stand-in clock: the custom op is 5 % faster in layer "valid" (a tie: builtin wins,
    # KERNEL_MARGIN), 20 % faster elsewhere (kept).
    def timer(path, custom_ops=False, num_threads=1):
        kernel = "_kernel." in path
        return lambda x, runs: 1.0 if not kernel else 0.95 if "_valid_" in path else 0.8

    monkeypatch.setattr(layer_choice, "_timer", timer)
    model = _direct_model()
    plan = layer_choice.measured_plan(model, "kernels", _images(model), samples=1, runs=1)
    assert plan == {"s2": False, "valid": True, "k": False, "fbs": False}


def test_measured_plan_times_at_the_thread_count_it_is_asked_for(monkeypatch):
    # Stand-in clock: the custom op wins at 1 thread, the builtin form (XNNPACK on
    # both cores) at 2; each runner is created at the count asked for.
    seen = set()

    def timer(path, custom_ops=False, num_threads=1):
        seen.add(num_threads)
        kernel = "_kernel." in path
        return lambda x, runs: (0.5 if kernel else 1.0) * (num_threads if kernel else 1)

    monkeypatch.setattr(layer_choice, "_timer", timer)
    model = _direct_model()
    x = _images(model)
    assert layer_choice.measured_plan(model, "kernels", x, samples=1, runs=1) == {
        name: False for name in DYNAMIC}
    assert seen == {1}
    assert layer_choice.measured_plan(model, "kernels", x, samples=1, runs=1,
                                      num_threads=2) == {name: True for name in DYNAMIC}
    assert seen == {1, 2}
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"num_threads={bad!r}"):
            layer_choice.measure_forms(model, "kernels", x, num_threads=bad)


@pytest.mark.parametrize("kind", ["portable", "kernels"])
def test_measured_exports_match_keras(kind, tmp_path):
    export.build_kernels()
    model = _direct_model()
    x = _images(model)
    path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                calibration_data=x[:6], layer_choice="measured")
    np.testing.assert_allclose(_run(kind, path, x)["output"], model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_a_portable_layer_with_every_channel_static_needs_no_gather(tmp_path):
    model = _direct_model()
    x = _images(model)
    plan = {"s2": np.arange(12), "valid": np.arange(10)}  # as if always open
    path = export.export_tflite(model, str(tmp_path / "p.tflite"), "portable", layer_choice=plan)
    np.testing.assert_allclose(_run("portable", path, x)["output"], model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_layer_choice_refuses_bad_values_naming_them(tmp_path):
    model = _direct_model()
    with pytest.raises(ValueError, match="'fastest'"):
        export.export_tflite(model, str(tmp_path / "a.tflite"), "kernels", layer_choice="fastest")
    with pytest.raises(ValueError, match="calibration_data"):
        export.export_tflite(model, str(tmp_path / "a.tflite"), "portable",
                             layer_choice="measured")
    with pytest.raises(ValueError, match="'masked'"):
        layer_choice.measure_forms(model, "masked", _images(model))
