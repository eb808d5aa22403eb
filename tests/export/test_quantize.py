"""export_tflite(quantize="int8"): full-integer graphs with float gates, against Keras."""

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import sanp_keras as sk
from sanp_keras import export
from sanp_keras import flops
from sanp_keras.export import quantize
from tests.export.test_export import _direct_model
from tests.export.test_export import _images
from tests.export.test_export import _varied
from tests.test_convert import _mixed_model


def _gated():
    return _varied(sk.convert(_mixed_model(), mode="sanp"), seed=7)


def _ops(path):
    """[(op name, input dtypes, output dtypes, scale counts, shapes of the inputs)]."""
    interpreter = Interpreter(model_path=path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():  # noqa: SLF001
        inputs = [tensors[i] for i in op["inputs"] if i >= 0]
        ops.append((op["op_name"], [np.dtype(t["dtype"]).name for t in inputs],
                    [np.dtype(tensors[i]["dtype"]).name for i in op["outputs"]],
                    [len(t["quantization_parameters"]["scales"]) for t in inputs],
                    [tuple(t["shape"]) for t in inputs]))
    return ops


def test_bad_arguments_are_refused_with_their_value(tmp_path):
    model = _gated()
    x = _images(model)
    with pytest.raises(ValueError, match="quantize='int4'"):
        export.export_tflite(model, str(tmp_path / "m.tflite"), "masked", quantize="int4",
                             calibration_data=x)
    with pytest.raises(ValueError, match="calibration_data"):
        export.export_tflite(model, str(tmp_path / "m.tflite"), "masked", quantize="int8")
    with pytest.raises(ValueError, match=r"shape \(8, 8, 3\)"):
        quantize.representative_dataset(x[0], 1)


@pytest.mark.parametrize("kind", ["masked", "portable"])
def test_int8_graph_quantizes_convolutions_and_keeps_gates_float(kind, tmp_path):
    model = _gated()
    x = _images(model, n=32)
    path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                calibration_data=x[:16], quantize="int8")
    ops = _ops(path)
    convs = [op for op in ops if op[0] == "CONV_2D"]
    assert convs
    for _, inputs, outputs, scales, shapes in convs:
        assert inputs[:2] == ["int8", "int8"] and outputs == ["int8"]
        assert inputs[2] == "int32"  # bias
        assert scales[1] == shapes[1][0]  # one weight scale per output channel
    # The gates' squeeze / excite products and thresholds are float; nothing else is.
    float_ops = {op[0] for op in ops if "float32" in op[1] and op[0] != "QUANTIZE"}
    assert {"FULLY_CONNECTED", "GREATER"} <= float_ops
    assert not {"CONV_2D", "ADD", "DEPTHWISE_CONV_2D"} & float_ops, float_ops
    # Float feeds and outputs, as the float export.
    runner = export.Interpreter(path)
    assert runner.run(x[:1])["output"].dtype == np.float32


@pytest.mark.parametrize("kind", ["masked", "portable"])
@pytest.mark.parametrize("build", [_gated, _direct_model], ids=["mixed", "direct"])
def test_int8_follows_the_float_model(kind, build, tmp_path):
    model = build()
    x = _images(model, n=48)
    # Calibrated on the test images too: an image outside the calibrated ranges is
    # clipped, which is the data's business; this pins the arithmetic.
    test = x[24:]
    path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                calibration_data=x, quantize="int8",
                                decisions=True)
    got = export.parity.run_all(export.Interpreter(path), test, 1)
    want = model.predict(test, verbose=0)
    decisions = flops.decision_function(model)(test)
    names = [layer.name for layer in flops.gated_layers(model) if layer.mode != "dense"]
    equal = np.concatenate([got[f"decisions_{i:03d}"] == np.asarray(decisions[n])
                            for i, n in enumerate(names)], axis=1)  # (B, all channels)
    # Tiny random models hold many near-threshold scores (and FBS / FIXED-K ties): the
    # bound is loose; bench/int8_export.py measures trained models.
    assert equal.mean() >= 0.95
    same = equal.all(axis=-1)  # (B,): samples whose every decision agrees
    assert same.mean() >= 0.25
    diff = np.abs(got["output"] - want).max(axis=1)[same]
    assert diff.max() <= 0.1 * np.abs(want).max(), diff


def test_int8_masked_and_portable_agree(tmp_path):
    model = _gated()
    x = _images(model, n=32)
    got = {}
    for kind in ("masked", "portable"):
        path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                    calibration_data=x[:16], quantize="int8", batch_size=1,
                                    decisions=True)
        got[kind] = export.parity.run_all(export.Interpreter(path), x[16:], 1)
    masked, portable = got["masked"], got["portable"]
    names = [k for k in masked if k.startswith("decisions_")]
    agree = np.mean([np.mean(masked[n] == portable[n]) for n in names])
    assert agree >= 0.97, agree
    scale = np.abs(masked["output"]).max()
    np.testing.assert_allclose(portable["output"], masked["output"], atol=0.05 * scale)


def test_plain_model_int8_is_the_dense_comparison(tmp_path):
    model = sk.strip(_gated())
    x = _images(model, n=32)
    path = export.export_tflite(model, str(tmp_path / "dense.tflite"), "masked",
                                calibration_data=x[:16], quantize="int8", batch_size=1)
    assert all(op[0] != "FULLY_CONNECTED" or op[1][0] == "int8" for op in _ops(path))
    got = export.parity.run_all(export.Interpreter(path), x[16:], 1)["output"]
    want = model.predict(x[16:], verbose=0)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


@pytest.fixture(scope="module")
def kernels_built():
    return export.build_kernels()


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_kernels_equal_the_int8_masked_model(threads, tmp_path, kernels_built):
    """SanpGatedConv2DInt8 against the int8 masked graph it replaces: the same
    quantization (every gated layer is a custom op, none thinned), the same bytes."""
    model = _gated()
    x = _images(model, n=32)
    got = {}
    for kind in ("masked", "kernels"):
        path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                    calibration_data=x, quantize="int8", batch_size=1,
                                    decisions=True)
        runner = (export.KernelRunner(path, library=kernels_built, num_threads=threads)
                  if kind == "kernels" else export.Interpreter(path))
        got[kind] = export.parity.run_all(runner, x, 1)
    ops = [op[0] for op in _ops(str(tmp_path / "kernels.tflite"))]
    assert ops.count("SanpGatedConv2DInt8") >= 4  # export_tflite checks the exact count
    for name, want in got["masked"].items():
        np.testing.assert_array_equal(got["kernels"][name], want, err_msg=name)


def test_int8_kernels_follow_the_float_model(tmp_path, kernels_built):
    """With strides, valid padding, relu6, FIXED-K, FBS and a static gate (thinned, so
    the int8 graph differs from the masked one): close to the float model."""
    model = _direct_model()
    x = _images(model, n=48)
    path = export.export_tflite(model, str(tmp_path / "kernels.tflite"), "kernels",
                                calibration_data=x, quantize="int8", decisions=True)
    assert "SanpGatedConv2DInt8" in {op[0] for op in _ops(path)}
    result = export.parity.compare(model, export.KernelRunner(path, library=kernels_built),
                                   x[24:])
    assert result["decisions_equal"] >= 0.95, result
