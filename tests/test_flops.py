import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import flops
from tests import oracle

# Paper table 1 and the issue: MACs of one 32x32 image, 10 classes.
REFERENCE_MMACS = {
    "mcifarnet": 174.3,
    "vgg19": 398.1,
    "resnet18": 555.4,
    "resnet20": 40.6,
    "resnet56": 125.5,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_MMACS))
def test_dense_macs_reproduce_reference_figures(name):
    plain = sk.models.create_model(name, gated=False)
    assert round(flops.dense_macs(plain) / 1e6, 1) == REFERENCE_MMACS[name]


def _mobilenetv2_macs(size=32, classes=10):
    """MobileNetV2's MACs counted by hand from its stage table."""
    from sanp_keras.models.mobilenet import HEAD, STAGES, STEM

    hw = size * size
    total, c_in = 9 * 3 * STEM * hw, STEM  # the 3x3 stem, stride 1
    for expansion, c_out, count, first_stride in STAGES:
        for i in range(count):
            hidden = c_in * expansion
            if expansion != 1:
                total += c_in * hidden * hw  # 1x1 expansion
            if i == 0 and first_stride == 2:
                size //= 2
                hw = size * size
            total += 9 * hidden * hw + hidden * c_out * hw  # depthwise, 1x1 projection
            c_in = c_out
    return total + c_in * HEAD * hw + HEAD * classes


def test_mobilenetv2_macs_match_a_count_from_its_stage_table():
    plain = sk.models.create_model("mobilenetv2", gated=False)
    assert flops.dense_macs(plain) == _mobilenetv2_macs() == 87_976_448  # the docstring's
    gated = sk.models.create_model("mobilenetv2")
    kinds = [type(layer).__name__ for layer in gated.layers]
    # stem, 16 expansions, 17 projections, head; every depthwise follows its expansion
    assert kinds.count("SPMConv2D") == 35 and kinds.count("GatedDepthwiseConv2D") == 17
    assert flops.dense_macs(gated) == flops.dense_macs(plain)


def test_dense_macs_formula_on_a_tiny_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)  # 9*3*64*4
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 9*16*4
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)  # 4*5
    model = keras.Model(inputs, outputs)
    assert flops.dense_macs(model) == 9 * 3 * 64 * 4 + 9 * 16 * 4 + 4 * 5
    # the paper's "+1": one more per output of every conv and dense layer
    assert flops.dense_macs(model, include_bias=True) == (
        flops.dense_macs(model) + 64 * 4 + 16 * 4 + 5
    )


def test_gated_model_has_the_dense_cost_of_its_backbone():
    plain = sk.models.create_model("resnet20", gated=False)
    assert flops.dense_macs(sk.convert(plain)) == flops.dense_macs(plain)


def _branchy_gated_model():
    """Gated convs (no activation, so a zero channel means a closed gate) feeding an
    add, a concatenation, a max-pool and a zero-pad shortcut, then a dense head."""
    kw = dict(padding="same", reduction=2, min_hidden=2)
    inputs = keras.Input((8, 8, 3))
    a = sk.SPMConv2D(6, 3, name="a", **kw)(inputs)
    b = sk.SPMConv2D(6, 3, name="b", **kw)(a)
    c = sk.SPMConv2D(6, 1, name="c", **kw)(a)
    s = keras.layers.Add(name="add")([b, c])
    p = keras.layers.MaxPooling2D(2, name="pool")(s)
    q = sk.ZeroPadShortcut(10, 1, name="pad")(p)
    d = sk.SPMConv2D(4, 3, name="d", **kw)(p)
    cat = keras.layers.Concatenate(name="cat")([q, d])
    e = sk.SPMConv2D(5, 3, strides=2, name="e", **kw)(cat)
    f = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(e))
    return oracle.randomize_model(keras.Model(inputs, f), seed=5)


def _images(n, seed):
    return oracle.images(n, seed)


def _brute_force_macs(model, x):
    """Per-sample MACs from the tensors themselves: a channel counts as active when it
    is not identically zero in that sample's feature map."""
    layers = [model.get_layer(n) for n in ("a", "b", "c", "d", "e", "head")]
    probe = keras.Model(model.input, [t for l in layers for t in (l.input, l.output)])
    values = [np.asarray(v) for v in probe(x, training=False)]
    total = np.zeros(len(x))
    for i, layer in enumerate(layers):
        x_in, y = values[2 * i], values[2 * i + 1]
        axes = tuple(range(1, x_in.ndim - 1))
        a_in = (np.abs(x_in).max(axis=axes) > 0).sum(axis=1) if axes else (x_in != 0).sum(1)
        if layer.name == "head":
            total += a_in * layer.units
            continue
        a_out = (np.abs(y).max(axis=(1, 2)) > 0).sum(axis=1)
        kh, kw = layer.kernel_size
        hw = y.shape[1] * y.shape[2]
        c_in = x_in.shape[-1]
        hidden = layer.gate.hidden_units(c_in)
        overhead = x_in.shape[1] * x_in.shape[2] * c_in + (c_in + 1) * hidden + (
            hidden + 1
        ) * layer.filters
        total += kh * kw * hw * a_in * a_out + overhead
    return total


def test_measure_equals_a_brute_force_count():
    model = _branchy_gated_model()
    x = _images(40, 0)
    expected = _brute_force_macs(model, x)
    result = flops.measure(model, x, batch_size=16, percentiles=(0, 50, 100))
    assert 0.2 < result["flops_ratio"] < 0.95  # the gates really prune here
    assert expected.min() < expected.max()  # and differently per sample
    np.testing.assert_allclose(result["mean_macs"], expected.mean(), rtol=1e-9)
    np.testing.assert_allclose(result["percentiles"]["p0"], expected.min())
    np.testing.assert_allclose(result["percentiles"]["p100"], expected.max())
    np.testing.assert_allclose(result["pruned_fraction"], 1 - expected.mean() / result["dense_macs"])


def test_decision_function_traces_once_for_every_batch_size_and_dtype():
    model = _branchy_gated_model()
    run = flops.decision_function(model)
    x = _images(7, 0)
    full = run(x)
    for n in (1, 2, 5):
        part = run(x[:n])
        for name, value in part.items():
            np.testing.assert_array_equal(value, np.asarray(full[name])[:n])
    run(np.clip(x, 0, 255).astype("uint8"))  # cast to the model's float input
    flops.collect_decisions(model, x, batch_size=3, run=run)  # batches of 3, 3, 1
    assert run.tracing_count() == 1


def test_measure_reports_per_layer_categories_and_histograms():
    model = _branchy_gated_model()
    x = _images(30, 1)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(30))).batch(7)
    result = flops.measure(model, ds)
    assert result["num_samples"] == 30
    layer = result["per_layer"]["b"]
    assert sum(layer["channels"].values()) == 6
    assert sum(layer["active_histogram"]) == 30
    assert len(layer["active_histogram"]) == 7
    assert "channels" not in result["per_layer"]["head"]
    np.testing.assert_allclose(
        sum(v["mean_macs"] for v in result["per_layer"].values()), result["mean_macs"]
    )


def test_expected_macs_is_exact_for_constant_decisions():
    model = _branchy_gated_model()
    x = _images(20, 0)
    run = flops.decision_function(model)
    decisions = {k: np.asarray(v) for k, v in run(x[:1]).items()}  # one sample
    rates = {k: v[0] for k, v in decisions.items()}
    exact = flops.measure(model, x[:1])["mean_macs"]
    assert flops.expected_macs(flops.trace(model), rates) == pytest.approx(exact)


def test_measure_rejects_bad_data_and_subclassed_models():
    model = _branchy_gated_model()
    with pytest.raises(ValueError, match=r"shape \(8, 8\)"):
        flops.measure(model, np.zeros((8, 8)))

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="type Sub"):
        flops.dense_macs(Sub())
