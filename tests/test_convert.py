import warnings

import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import flops
from tests import oracle


def _conv_bn(x, filters, kernel, name, strides=1, act=True):
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if act else x


def _mixed_model():
    """Residual add, a concatenation of two branches, a MobileNetV2 inverted residual,
    a plain conv with bias and a dense head."""
    inputs = keras.Input((8, 8, 3))
    x = _conv_bn(inputs, 8, 3, "stem")
    y = _conv_bn(x, 8, 3, "res", act=False)
    x = keras.layers.ReLU(name="res_out")(keras.layers.Add(name="res_add")([x, y]))
    left = _conv_bn(x, 4, 1, "left")
    right = _conv_bn(x, 6, 3, "right")
    x = keras.layers.Concatenate(name="cat")([left, right])  # 10 channels
    # inverted residual: expand 1x1 -> depthwise 3x3 -> project 1x1, + shortcut
    e = _conv_bn(x, 24, 1, "expand")
    e = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(e)
    e = keras.layers.BatchNormalization(name="dw_bn")(e)
    e = keras.layers.ReLU(6.0, name="dw_relu")(e)
    e = _conv_bn(e, 10, 1, "project", act=False)
    x = keras.layers.Add(name="ir_add")([x, e])
    x = keras.layers.Conv2D(5, 1, name="with_bias")(x)  # no batch norm: stays dense
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return oracle.randomize_model(keras.Model(inputs, outputs), seed=3)


def _images(n=12, seed=0):
    return oracle.images(n, seed)


def test_dense_conversion_equals_the_original():
    model = _mixed_model()
    x = _images()
    dense = sk.convert(model, mode="dense")
    np.testing.assert_allclose(dense.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    kinds = {layer.name: type(layer).__name__ for layer in dense.layers}
    assert kinds["stem_conv"] == "SPMConv2D" and "stem_bn" not in kinds
    assert kinds["dw"] == "GatedDepthwiseConv2D" and "dw_bn" not in kinds
    assert kinds["with_bias"] == "Conv2D"


def test_strip_inverts_convert_with_the_same_outputs():
    model = _mixed_model()
    x = _images()
    gated = sk.convert(model, reduction=2)
    plain = sk.strip(gated)
    assert not any(isinstance(l, (sk.SPMConv2D, sk.GatedDepthwiseConv2D)) for l in plain.layers)
    assert flops.dense_macs(plain) == flops.dense_macs(model)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_depthwise_follows_the_expansion_gate():
    gated = sk.convert(_mixed_model(), reduction=2)
    expand = gated.get_layer("expand_conv")
    oracle.randomize(expand.gate, np.random.RandomState(0))
    x = _images(20)
    _, decisions = expand.output  # called with return_decisions: the depthwise reads them
    probe = keras.Model(gated.input, [decisions, gated.get_layer("dw").output])
    b, d = (np.asarray(v) for v in probe(x, training=False))
    closed = b == 0  # (N, 24)
    assert 0 < closed.mean() < 1
    assert np.all(np.abs(d).max(axis=(1, 2))[closed] == 0)  # depthwise skipped too
    assert np.all(np.abs(d).max(axis=(1, 2))[~closed] > 0)
    report = flops.measure(gated, x)
    assert report["per_layer"]["dw"]["active_ratio"] == pytest.approx(1 - closed.mean())
    # the projection (1x1, 8x8, 24 -> 10, gate fully open) skips the closed channels on
    # its input side; its gate costs 8*8*24 + 25*12 + 13*10 MACs (hidden = 24 / 2)
    a_in = (~closed).sum(axis=1).mean()
    expected = 64 * a_in * 10 + 64 * 24 + 25 * 12 + 13 * 10
    assert report["per_layer"]["project_conv"]["mean_macs"] == pytest.approx(expected)


def test_sequential_models_convert():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    x = _images()
    dense = sk.convert(model, mode="dense")
    assert sum(isinstance(l, sk.SPMConv2D) for l in dense.layers) == 1
    np.testing.assert_allclose(dense.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_gate_options_and_mode_reach_every_layer():
    gated = sk.convert(_mixed_model(), mode="fixed_k", keep_ratio=0.25, reduction=4)
    layers = [l for l in gated.layers if isinstance(l, sk.SPMConv2D)]
    assert len(layers) == 6
    assert all(l.mode == "fixed_k" and l.gate.keep_ratio == 0.25 and l.gate.reduction == 4
               for l in layers)


def test_subclassed_models_are_refused_naming_the_type():
    class MyNet(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="type MyNet"):
        sk.convert(MyNet())


def _grouped_model():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, groups=2, use_bias=False, name="grouped")(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, x)


def test_ungateable_layers_stay_dense_with_a_warning_or_raise():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gated = sk.convert(_grouped_model())
    assert any("'grouped'" in str(w.message) and "groups=2" in str(w.message) for w in caught)
    assert type(gated.get_layer("grouped")).__name__ == "Conv2D"
    with pytest.raises(ValueError, match="'grouped'.*groups=2"):
        sk.convert(_grouped_model(), on_unsupported="raise")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "half"}, "mode='half'"),
        ({"on_unsupported": "ignore"}, "on_unsupported='ignore'"),
        ({"temperature": 2}, "temperature"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sk.convert(_mixed_model(), **kwargs)


def _hard_swish(x):
    return x * keras.ops.relu6(x + 3.0) / 6.0  # bare keras.ops operations in the graph


def _ops_model():
    """MobileNetV3's pattern: `keras.ops` arithmetic (no layers) between the pairs."""
    inputs = keras.Input((8, 8, 3))
    x = _hard_swish(_conv_bn(inputs, 8, 3, "a", act=False))
    x = _hard_swish(_conv_bn(x, 8, 3, "b", act=False))
    x = keras.ops.mean(x, axis=(1, 2))
    return oracle.randomize_model(keras.Model(inputs, keras.layers.Dense(3, name="head")(x)),
                                  seed=1)


def _nested_model(inner_name="inner"):
    """A functional block used as a layer, itself holding a Sequential block."""
    seq = keras.Sequential([keras.Input((8, 8, 8)),
                            keras.layers.Conv2D(8, 1, use_bias=False, name="seq_conv"),
                            keras.layers.BatchNormalization(name="seq_bn")], name="seq_block")
    block_in = keras.Input((8, 8, 8))
    y = keras.layers.ReLU(name="seq_relu")(seq(_conv_bn(block_in, 8, 3, inner_name)))
    block = keras.Model(block_in, keras.layers.Add(name="block_add")([block_in, y]),
                        name="block")
    inputs = keras.Input((8, 8, 3))
    x = block(_conv_bn(inputs, 8, 3, "stem"))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return oracle.randomize_model(keras.Model(inputs, keras.layers.Dense(3, name="head")(x)),
                                  seed=2)


def _shared_and_multi_io_model():
    """Two inputs, two outputs, one conv + BN pair called twice."""
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    x = keras.layers.Concatenate(name="cat")([_conv_bn(a, 4, 3, "ca"), _conv_bn(b, 4, 3, "cb")])
    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="shared_conv")
    bn = keras.layers.BatchNormalization(name="shared_bn")
    x = keras.layers.ReLU(name="r1")(bn(conv(x)))
    x = keras.layers.ReLU(name="r2")(bn(conv(x)))
    p = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = [keras.layers.Dense(3, name="h1")(p), keras.layers.Dense(2, name="h2")(p)]
    return oracle.randomize_model(keras.Model([a, b], outputs), seed=4)


def _assert_same_outputs(a, b, x):
    for u, v in zip(keras.tree.flatten(a.predict(x, verbose=0)),
                    keras.tree.flatten(b.predict(x, verbose=0))):
        np.testing.assert_allclose(u, v, atol=1e-5)


@pytest.mark.parametrize("build", [_ops_model, _nested_model])
def test_ops_and_nested_models_convert_strip_and_train(build):
    model = build()
    x = _images()
    _assert_same_outputs(sk.convert(model, mode="dense"), model, x)
    gated = sk.convert(model, reduction=2)
    expected = {"a_conv", "b_conv"} if build is _ops_model else {"stem_conv", "inner_conv",
                                                                   "seq_conv"}
    assert {layer.name for layer in flops.gated_layers(gated)} == expected
    _assert_same_outputs(sk.strip(gated), model, x)
    gated.compile("sgd", "sparse_categorical_crossentropy")
    gated.fit(x, np.zeros(len(x)), epochs=1, verbose=0,
              callbacks=[sk.BudgetCallback(0.5, calibration_data=x)])
    assert np.isfinite(gated.evaluate(x, np.zeros(len(x)), verbose=0))


def test_shared_layers_stay_dense_and_multi_io_models_convert():
    model = _shared_and_multi_io_model()
    x = [_images(seed=0), _images(seed=1)]
    with pytest.warns(UserWarning, match="'shared_conv' stays dense: it is called more than"):
        gated = sk.convert(model, reduction=2)
    assert {layer.name for layer in flops.gated_layers(gated)} == {"ca_conv", "cb_conv"}
    _assert_same_outputs(sk.strip(gated), model, x)
    with pytest.warns(UserWarning, match="shared_conv"):
        _assert_same_outputs(sk.convert(model, mode="dense"), model, x)


def test_a_name_clash_between_nested_models_is_refused_naming_the_layer():
    model = _nested_model(inner_name="stem")  # the block's conv is named like the stem's
    with pytest.raises(ValueError, match="two layers are named 'stem_conv'.*'block'"):
        sk.convert(model)


class _Doubler(keras.layers.Layer):
    """A custom layer whose constructor needs an argument its config does not hold."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor


class _Subclassed(keras.Model):
    def call(self, x):
        return x * 2.0


@pytest.mark.parametrize("layer, message", [
    (_Doubler(np.array([2.0], "float32"), name="doubler"), r"Cannot copy layer 'doubler' \(_Doubler\)"),
    (_Subclassed(name="sub"), "Cannot inline nested model 'sub'.*subclassed"),
])
def test_constructs_convert_cannot_copy_are_refused_naming_the_layer(layer, message):
    inputs = keras.Input((8, 8, 3))
    x = layer(_conv_bn(inputs, 4, 3, "a"))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match=message):
        sk.convert(model)
