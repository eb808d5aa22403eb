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
