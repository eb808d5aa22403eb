"""export_tflite: every kind against the Keras model, on tiny models with varied gates."""

import os
import platform
import shutil
import subprocess

import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import export
from sanp_keras import flops
from tests import oracle
from tests.test_convert import _mixed_model

KINDS = ("masked", "portable", "kernels")


def _direct_model():
    """SPMConv2D used directly: strides, valid padding, bias, 5x5, in-layer relu / relu6,
    and one layer per gate mode (FBS included)."""
    inputs = keras.Input((9, 9, 3))
    x = sk.SPMConv2D(12, 3, strides=2, padding="same", activation="relu", name="s2")(inputs)
    x = sk.SPMConv2D(10, 3, padding="valid", use_bias=True, activation="relu6", name="valid")(x)
    x = sk.SPMConv2D(9, 5, padding="same", mode="fixed_k", keep_ratio=0.4, name="k")(x)
    x = sk.SPMConv2D(9, 3, padding="same", mode="fbs", keep_ratio=0.6, activation="relu",
                     name="fbs")(x)
    x = sk.SPMConv2D(8, 1, mode="static", activation="relu", name="static")(x)
    x = sk.SPMConv2D(6, 3, padding="same", mode="dense", name="dense")(x)
    outputs = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return oracle.randomize_model(keras.Model(inputs, outputs), seed=5)


def _varied(model, seed):
    """`model` with gate weights drawn so that about half the channels open, a different
    half per sample."""
    rng = np.random.RandomState(seed)
    for layer in flops.gated_layers(model):
        layer.gate.excite_kernel.assign(rng.normal(0, 1.0, layer.gate.excite_kernel.shape))
        layer.gate.excite_bias.assign(rng.normal(0, 1.0, layer.gate.excite_bias.shape))
    return model


def _images(model, n=12, seed=0):
    return oracle.images(n, seed, size=model.inputs[0].shape[1])


@pytest.fixture(scope="module")
def kernels_built():
    return export.build_kernels()


def _run(kind, path, x, library=None):
    if kind == "kernels":
        runner = export.KernelRunner(path, library=library)
    else:
        runner = export.Interpreter(path)
    return export.parity.run_all(runner, x, None if kind == "masked" else 1)


def _unscaled_model():
    """The mixed model gated with gate_rescale="none" (kept channels unscaled)."""
    return sk.convert(_mixed_model(), mode="sanp", gate_rescale="none")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("build", [_mixed_model, _direct_model, _unscaled_model],
                         ids=["mixed", "direct", "unscaled"])
def test_export_matches_keras(kind, build, tmp_path, kernels_built):
    model = sk.convert(build(), mode="sanp") if build is _mixed_model else build()
    if build is not _direct_model:  # give the converted gates varied decisions
        _varied(model, seed=7)
    x = _images(model)
    path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                calibration_data=x[:6], decisions=True)
    got = _run(kind, path, x, kernels_built)
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(got["output"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    decisions = flops.decision_function(model)(x)
    names = [layer.name for layer in flops.gated_layers(model) if layer.mode != "dense"]
    agree = [got[f"decisions_{i:03d}"] == np.asarray(decisions[n]) for i, n in enumerate(names)]
    assert np.concatenate([a.ravel() for a in agree]).all()
    opened = np.concatenate([np.asarray(decisions[n]).ravel() for n in names])
    assert 0.1 < opened.mean() < 0.9  # the gates really prune, and not everything
    if build is _unscaled_model and kind == "kernels":
        # The kernels' own gate scales by sigmoid(g): unscaled gates stay builtin ops
        # feeding the custom convolutions.
        ops = _op_names(path)
        assert "SanpGatedConv2D" in ops and "SanpSEGatedConv2D" not in ops


def _op_names(path):
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        fb = schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [fb.operatorCodes[op.opcodeIndex] for op in fb.subgraphs[0].operators]
    return [c.customCode.decode() if isinstance(c.customCode, bytes) else c.customCode
            or names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in codes]


def _custom_output_counts(path):
    """{number of outputs} of the model's custom ops."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        fb = schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)
    return {len(op.outputs) for op in fb.subgraphs[0].operators
            if fb.operatorCodes[op.opcodeIndex].customCode}


def test_kernels_model_holds_custom_ops_and_needs_no_builtin_conv(tmp_path):
    model = _direct_model()
    ops = _op_names(export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels"))
    assert ops.count("SanpSEGatedConv2D") == 2  # the sanp layers, their gate in the kernel
    assert ops.count("SanpGatedConv2D") == 2  # fixed_k and fbs: gate in builtin ops
    assert ops.count("CONV_2D") == 2  # static (thinned at export) and dense stay builtin
    assert ops.count("TOPK_V2") == 2 and "LOGISTIC" in ops  # the fixed_k / fbs gates


@pytest.mark.parametrize("plan", [None, {"a": True, "b": False}], ids=["custom", "a_builtin"])
def test_se_gates_leave_the_graph_for_the_kernels(plan, tmp_path, kernels_built):
    """A model of sanp layers keeps no gate op: custom ops compute every gate (a layer
    kept a builtin CONV_2D gets a SanpSEGate op), and the decisions outputs, rewired
    from the removed gate ops, still match Keras. The residual ADD (+ ReLU) after `b`
    is fused into b's op, and the result still matches Keras. Without decision outputs
    the ops make no decisions tensor."""
    inputs = keras.Input((8, 8, 3))
    x = sk.SPMConv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    y = sk.SPMConv2D(8, 3, padding="same", name="b")(x)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = oracle.randomize_model(keras.Model(inputs, outputs), seed=3)
    for decisions in (False, True):
        path = export.export_tflite(model, str(tmp_path / f"k{decisions}.tflite"), "kernels",
                                    decisions=decisions, layer_choice=plan or "threshold")
        ops = _op_names(path)
        assert ops.count("SanpSEGatedConv2D") == (1 if plan else 2)
        assert ops.count("SanpSEGate") == (1 if plan else 0)
        assert ops.count("CONV_2D") == (1 if plan else 0)
        assert not {"LOGISTIC", "ARG_MAX", "ONE_HOT", "GREATER"} & set(ops)
        assert ops.count("MEAN") == ops.count("FULLY_CONNECTED") == 1  # the head only
        assert "ADD" not in ops  # fused into b's op (plan: `a` builtin, `b` custom)
        assert _custom_output_counts(path) == {2 if decisions else 1}  # unread: left out
    x = _images(model)
    got = _run("kernels", path, x, kernels_built)
    want = flops.decision_function(model)(x)
    for i, name in enumerate(("a", "b")):
        np.testing.assert_array_equal(got[f"decisions_{i:03d}"], np.asarray(want[name]))
        assert 0 < np.asarray(want[name]).mean() < 1  # gates that really choose
    np.testing.assert_allclose(got["output"], model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["own_relu", "read_twice"])
def test_residual_add_stays_builtin_where_fusing_would_change_the_result(variant, tmp_path,
                                                                          kernels_built):
    """The ADD after a sanp layer is fused only when the layer has no activation of its
    own and the ADD is its output's only reader."""
    inputs = keras.Input((8, 8, 3))
    x = sk.SPMConv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    y = sk.SPMConv2D(8, 3, padding="same", name="b",
                     activation="relu" if variant == "own_relu" else None)(x)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    if variant == "read_twice":
        x = keras.layers.Concatenate()([x, y])
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = oracle.randomize_model(keras.Model(inputs, outputs), seed=3)
    path = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels")
    assert _op_names(path).count("ADD") == 1
    x = _images(model)
    got = _run("kernels", path, x, kernels_built)["output"]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_kernel_time_counts_one_call_per_custom_op_and_runs(tmp_path, kernels_built):
    model = _direct_model()
    path = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels")
    runner = export.KernelRunner(path, library=kernels_built)
    inside, calls = runner.kernel_time(_images(model, 1), runs=5)
    assert calls == 4  # the four custom ops, once per run
    assert inside > 0


def test_portable_model_has_builtin_ops_only_and_runs_in_the_stock_interpreter(tmp_path):
    from ai_edge_litert import schema_py_generated as schema

    model = _direct_model()
    path = export.export_tflite(model, str(tmp_path / "p.tflite"), "portable",
                                calibration_data=_images(model))
    with open(path, "rb") as f:
        fb = schema.ModelT.InitFromPackedBuf(bytearray(f.read()), 0)
    assert all(max(c.builtinCode, c.deprecatedBuiltinCode) != 32 for c in fb.operatorCodes)
    x = _images(model, n=1)
    np.testing.assert_allclose(export.Interpreter(path)(x), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_a_layer_with_every_gate_closed_keeps_its_best_channel(tmp_path, kernels_built):
    inputs = keras.Input((6, 6, 3))
    x = sk.SPMConv2D(8, 3, padding="same", activation="relu", name="closed")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    gate = model.get_layer("closed").gate
    gate.excite_bias.assign(np.full(8, -50.0))  # every score far below zero
    x = _images(model, n=3)
    want = model.predict(x, verbose=0)
    for kind in KINDS:
        path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                    decisions=True)
        got = _run(kind, path, x, kernels_built)
        np.testing.assert_allclose(got["output"], want, rtol=1e-4, atol=1e-5)
        assert (got["decisions_000"].sum(axis=1) == 1).all()


def test_export_refuses_bad_arguments_naming_them(tmp_path):
    model = _direct_model()
    with pytest.raises(ValueError, match="'fast'"):
        export.export_tflite(model, str(tmp_path / "a.tflite"), kind="fast")
    with pytest.raises(ValueError, match="batch_size=4"):
        export.export_tflite(model, str(tmp_path / "a.tflite"), "portable", batch_size=4)


def test_kernel_runner_refuses_a_wrong_input(tmp_path, kernels_built):
    model = _direct_model()
    path = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels")
    runner = export.KernelRunner(path, library=kernels_built)
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8, 3\)"):
        runner(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(RuntimeError, match="not_a_model"):
        export.KernelRunner(str(tmp_path / "not_a_model.tflite"), library=kernels_built)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_kernel_fuzz_under_address_sanitizer():
    """Random shapes, gates and malformed tensors, ASan + UBSan: zero findings, on
    every instruction-set variant this CPU runs (generic everywhere), each on 1, 2 and 3
    threads with every call split."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "tflite")
    result = subprocess.run(["make", "-C", root, "fuzz", "FUZZ_ITERATIONS=1000"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    isas = ["generic"] + (["avx2", "avx512"] if platform.machine() == "x86_64" else [])
    for isa in isas:
        if f"{isa}: not run by this CPU, skipped" in result.stdout and isa != "generic":
            continue
        for threads in ("1 thread", "2 threads", "3 threads"):  # the threaded paths too
            assert f"{isa}, {threads}: 1000 cases, 0 failures" in result.stdout, result.stdout


def test_kernels_export_keeps_little_pruned_layers_builtin(tmp_path):
    model = _direct_model()
    x = _images(model)
    # "s2" prunes nothing (every gate wide open), "valid" keeps 2 channels of 10.
    model.get_layer("s2").gate.excite_bias.assign(np.full(12, 50.0))
    model.get_layer("valid").gate.excite_bias.assign(np.r_[np.full(8, -50.0), 50.0, 50.0])
    plan = export.builtin_layers(model, x)
    assert plan["s2"] and not plan["valid"]
    path = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels", calibration_data=x)
    ops = _op_names(path)
    gated = [n for n in ("s2", "valid", "k", "fbs") if not plan[n]]
    assert ops.count("SanpGatedConv2D") + ops.count("SanpSEGatedConv2D") == len(gated)
    assert ops.count("SanpSEGate") == 1  # the gate of "s2", a builtin CONV_2D
    np.testing.assert_allclose(export.KernelRunner(path)(x[:1]),
                               model.predict(x[:1], verbose=0), rtol=1e-4, atol=1e-4)


def test_portable_without_calibration_data_keeps_dense_convolutions_and_says_so(tmp_path):
    model = _varied(sk.convert(_mixed_model(), mode="sanp"), seed=7)
    x = _images(model)
    with pytest.warns(UserWarning, match="without calibration_data: every gated layer"):
        plain = export.export_tflite(model, str(tmp_path / "p.tflite"), "portable",
                                     decisions=True)
    masked = export.export_tflite(model, str(tmp_path / "m.tflite"), "masked", batch_size=1,
                                  decisions=True)
    calibrated = export.export_tflite(model, str(tmp_path / "c.tflite"), "portable",
                                      calibration_data=x, decisions=True)
    convs = [sorted(n for n in _op_names(p) if "CONV" in n) for p in (plain, masked)]
    assert convs[0] == convs[1]  # the dense convolutions of the masked reference
    assert not any("GATHER" in n for n in _op_names(plain))
    assert any("GATHER" in n for n in _op_names(calibrated))  # layers that prune gather
    for path in (plain, calibrated):
        result = export.parity.check_file(model, path, "portable", x)
        assert result["decisions_equal"] == 1.0 and result["top1_equal"] == 1.0
        assert result["max_logit_diff"] < 1e-4


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_c_program_runs_a_kernels_model_through_litert_s_c_api(tmp_path, kernels_built):
    """tflite/run_model.c: the calls an app's JNI layer makes (options, custom ops
    registered with LiteRtAddCustomOpKernelOption, CompiledModel) give Keras's logits."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "tflite")
    built = subprocess.run(["make", "-C", root, "program"], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    model = _direct_model()
    x = _images(model, n=1)
    path = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels")
    x.astype(np.float32).tofile(tmp_path / "x.f32")
    done = subprocess.run([os.path.join(root, "build", "run_model"), path,
                           str(tmp_path / "x.f32"), "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [l for l in done.stdout.splitlines() if l.startswith("output ")]
    got = np.array([float(v) for v in line.split()[1:]])
    np.testing.assert_allclose(got, model.predict(x, verbose=0)[0], rtol=1e-4, atol=1e-4)


def test_kernels_at_two_threads_equal_one_thread_and_keras(tmp_path, kernels_built):
    model = _varied(sk.convert(_mixed_model(), mode="sanp"), seed=3)
    x = _images(model)
    path = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels", decisions=True)
    previous = export.runners.set_parallel_min_macs(0, kernels_built)  # split every layer
    try:
        outs = {n: export.parity.run_all(export.KernelRunner(path, num_threads=n), x)
                for n in (1, 2)}
        result = export.parity.compare(model, export.KernelRunner(path, num_threads=2), x)
    finally:
        export.runners.set_parallel_min_macs(previous, kernels_built)
    for name in outs[1]:
        np.testing.assert_allclose(outs[2][name], outs[1][name], rtol=1e-5, atol=1e-6)
    assert result["decisions_equal"] == 1.0 and result["top1_equal"] == 1.0
    assert result["max_logit_diff"] < 1e-3 and 0.1 < result["open_share"] < 0.9


def test_kernels_equal_keras_for_every_split_of_threads_with_xnnpack(tmp_path, kernels_built):
    """The kernels' pool and XNNPACK's at different counts (the runner's choice on few
    cores: XNNPACK at 1, the kernels' pool spinning at 2) compute the same."""
    model = _varied(sk.convert(_mixed_model(), mode="sanp"), seed=3)
    x = _images(model)
    path = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels", decisions=True)
    previous = export.runners.set_parallel_min_macs(0, kernels_built)  # split every layer
    try:
        for ours, theirs in ((2, 1), (1, 2), (2, 2), (3, 1)):
            runner = export.KernelRunner(path, num_threads=ours, runtime_threads=theirs)
            result = export.parity.compare(model, runner, x)
            runner.close()
            assert result["decisions_equal"] == 1.0 and result["top1_equal"] == 1.0, (ours, theirs)
            assert result["max_logit_diff"] < 1e-3, (ours, theirs)
    finally:
        export.runners.set_parallel_min_macs(previous, kernels_built)


def test_xnnpack_runs_one_thread_beside_the_kernels_where_the_cores_cannot_hold_both(
        tmp_path, kernels_built):
    threads_for = export.runners.runtime_threads_for
    assert threads_for(2, sanp_kernels=True, cores=2) == 1  # 3 threads on 2 cores
    assert threads_for(2, sanp_kernels=True, cores=3) == 2
    assert threads_for(4, sanp_kernels=True, cores=8) == 4
    assert threads_for(2, sanp_kernels=False, cores=2) == 2  # no custom ops: XNNPACK's all
    assert threads_for(1, sanp_kernels=True, cores=1) == 1
    model = _varied(sk.convert(_mixed_model(), mode="sanp"), seed=3)
    kernels = export.export_tflite(model, str(tmp_path / "k.tflite"), "kernels")
    masked = export.export_tflite(model, str(tmp_path / "m.tflite"), "masked", batch_size=1)
    assert export.runners.uses_sanp_kernels(kernels)
    assert not export.runners.uses_sanp_kernels(masked)
    runner = export.KernelRunner(kernels, num_threads=2)
    assert (runner.num_threads, runner.runtime_threads) == (2, threads_for(2, True))
    runner.close()
    assert export.KernelRunner(masked, num_threads=2).runtime_threads == 2
    with pytest.raises(ValueError, match="runtime_threads=0"):
        export.KernelRunner(kernels, runtime_threads=0)


def test_mobilenetv2_exports_match_keras_with_depthwise_layers_following_their_gates(
        tmp_path, kernels_built):
    plain = oracle.randomize_batch_norm(sk.models.create_model("mobilenetv2", gated=False))
    model = sk.convert(plain)
    rng = np.random.RandomState(0)
    for layer in flops.gated_layers(model):  # about half open, per sample
        layer.gate.excite_kernel.assign(rng.normal(0, 1.0, layer.gate.excite_kernel.shape))
        layer.gate.excite_bias.assign(rng.normal(0, 0.3, layer.gate.excite_bias.shape))
    x = oracle.images(6, seed=1, size=32)
    for kind in KINDS:
        path = export.export_tflite(model, str(tmp_path / f"{kind}.tflite"), kind,
                                    calibration_data=x, decisions=True)
        result = export.parity.check_file(model, path, kind, x)
        assert result["decisions_equal"] == 1.0 and result["top1_equal"] == 1.0, kind
        assert result["max_abs_logit"] > 1e-2, result  # a scale the difference is checked at
        assert result["max_logit_diff"] <= 1e-4 * max(1.0, result["max_abs_logit"]), kind
        assert 0.2 < result["open_share"] < 0.8, kind
