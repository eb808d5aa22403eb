"""Physically smaller models: channel slicing, uniform width, Network Slimming."""

import os
import tempfile

import keras
import numpy as np
import pytest

import sanp_keras as sk
from sanp_keras import flops
from sanp_keras import slimming
from sanp_keras import thinning
from tests import oracle


def _conv_macs_oracle(model):
    """MACs counted by hand from the layers' shapes: k*k*C_in*C_out*H_out*W_out per conv,
    C_in*C_out per dense layer (an independent count of what flops.dense_macs reports)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += kh * kw * c_in * c_out * h * w
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def test_prunable_convs_are_those_whose_output_reaches_only_convolutions():
    resnet = sk.models.create_model("resnet20", gated=False)
    # the second conv of every block meets the residual Add; the first does not
    assert sorted(thinning.prunable_convs(resnet)) == sorted(
        f"stage{s}.block{b}.conv1.conv" for s in (1, 2, 3) for b in (1, 2, 3))
    vgg = sk.models.create_model("vgg19", gated=False)  # the last one feeds pool -> Dense
    assert len(thinning.prunable_convs(vgg)) == len(thinning.conv_bn_pairs(vgg)) == 16


@pytest.mark.parametrize("name", ["resnet20", "mcifarnet"])
def test_sliced_model_equals_the_original_with_the_removed_channels_zeroed(name):
    model = oracle.randomize_batch_norm(sk.models.create_model(name, gated=False))
    rng = np.random.RandomState(1)
    prunable = thinning.prunable_convs(model)
    keep = {n: np.sort(rng.choice(model.get_layer(n).filters,
                                  rng.randint(1, model.get_layer(n).filters), replace=False))
            for n in prunable}
    thin = thinning.slice_channels(model, keep)
    x = oracle.images(3, 0, size=32)
    for n, bn in prunable.items():  # reference: batch-norm outputs of removed channels 0
        gamma, beta, mean, var = bn.get_weights()
        mask = np.zeros_like(gamma)
        mask[keep[n]] = 1.0
        bn.set_weights([gamma * mask, beta * mask, mean, var])
    np.testing.assert_allclose(thin(x), model(x), atol=2e-5)
    assert thin.count_params() < model.count_params()
    assert flops.dense_macs(thin) == _conv_macs_oracle(thin) < flops.dense_macs(model)


def test_slicing_refuses_bad_channel_lists_naming_them():
    model = sk.models.create_model("resnet20", gated=False)
    with pytest.raises(ValueError, match="stage1.block1.conv2.conv.*not a conv"):
        thinning.slice_channels(model, {"stage1.block1.conv2.conv": [0]})
    with pytest.raises(ValueError, match=r"Received: \[16\]"):
        thinning.slice_channels(model, {"stage1.block1.conv1.conv": [16]})
    with pytest.raises(ValueError, match="Repeated"):
        thinning.slice_channels(model, {"stage1.block1.conv1.conv": [1, 1]})


@pytest.mark.parametrize("budget", [0.5, 0.35])
def test_uniform_width_meets_the_budget_and_keeps_residual_widths_equal(budget):
    model = sk.models.create_model("resnet20", gated=False)
    width, ratio = thinning.width_for_budget(model, budget)
    thin = thinning.uniform_width(model, width)
    assert ratio == flops.dense_macs(thin) / flops.dense_macs(model)
    assert budget - 0.03 < ratio <= budget
    assert flops.dense_macs(thin) == _conv_macs_oracle(thin)
    x = oracle.images(2, 0, size=32)
    assert thin(x).shape == (2, 10)  # the adds matched: every stage scaled alike
    with pytest.raises(ValueError, match="Received: width=1.5"):
        thinning.uniform_width(model, 1.5)


def test_bn_l1_penalty_is_l1_times_the_sum_of_prunable_scales():
    model = oracle.randomize_batch_norm(sk.models.create_model("resnet20", gated=False))
    penalized = slimming.with_bn_l1(model, 1e-3)
    x = oracle.images(2, 0, size=32)
    np.testing.assert_allclose(penalized(x), model(x), atol=1e-6)  # same weights
    want = 1e-3 * sum(np.abs(bn.gamma.numpy()).sum()
                      for bn in thinning.prunable_convs(model).values())
    np.testing.assert_allclose(float(sum(penalized.losses)), want, rtol=1e-5)


@pytest.mark.parametrize("budget", [0.5, 0.35])
def test_slimming_prunes_the_smallest_scales_to_the_budget(budget):
    model = oracle.randomize_batch_norm(sk.models.create_model("resnet20", gated=False), seed=3)
    slimmed, info = slimming.slim(slimming.with_bn_l1(model, 1e-4), budget)
    dense = flops.dense_macs(model)
    # physically smaller, and its MACs are what the counter says
    assert slimmed.count_params() < model.count_params()
    assert flops.dense_macs(slimmed) == _conv_macs_oracle(slimmed)
    assert info["flops_ratio"] == flops.dense_macs(slimmed) / dense
    assert budget - 0.03 < info["flops_ratio"] <= budget
    # one global threshold: every kept scale is above it, every removed one not
    for name, bn in thinning.prunable_convs(model).items():
        scales = np.abs(bn.gamma.numpy())
        assert info["kept"][name] == max(1, int(np.sum(scales > info["threshold"])))
    assert not sum(slimmed.losses)  # the penalty is gone for fine-tuning
    with pytest.raises(ValueError, match="cannot meet budget=0.01"):
        slimming.slim(model, 0.01)


def _gated_with_closed_channels(name, seed=0):
    """A gated zoo model with random weights whose sliceable layers close a third of
    their channels for every input (a constant negative score): the others vary."""
    # reduction 4: a thinner input would give the saliency branch fewer hidden units
    model = oracle.randomize_model(sk.models.create_model(name, gated=True, reduction=4), seed)
    rng = np.random.RandomState(seed)
    for layer_name in thinning.sliceable_gated_layers(model):
        gate = model.get_layer(layer_name).gate
        closed = rng.permutation(gate.units)[: gate.units // 3]
        kernel, bias = gate.excite_kernel.numpy(), gate.excite_bias.numpy()
        kernel[:, closed], bias[closed] = 0.0, -1.0  # g = -1 whatever the input
        gate.excite_kernel.assign(kernel)
        gate.excite_bias.assign(bias)
    return model


@pytest.mark.parametrize("name", ["resnet20", "mcifarnet"])
def test_dropping_closed_channels_keeps_the_outputs_on_the_calibration_images(name):
    model = _gated_with_closed_channels(name)
    x = oracle.images(16, 3, size=32)
    before, _ = flops.collect_decisions(model, x)
    thin, kept = thinning.drop_closed_channels(model, x)
    after, _ = flops.collect_decisions(thin, x)
    assert kept, "some layer should have lost channels"
    for layer_name, (count, filters) in kept.items():
        opened = np.flatnonzero(before[layer_name].any(axis=0))
        assert (count, filters) == (opened.size, model.get_layer(layer_name).filters)
        assert count <= filters - filters // 3
        np.testing.assert_array_equal(after[layer_name], before[layer_name][:, opened])
    for layer_name in before.keys() - kept.keys():  # unchanged widths, same decisions
        np.testing.assert_array_equal(after[layer_name], before[layer_name])
    expected = np.asarray(model(x))  # random weights: logits up to ~1e4
    np.testing.assert_allclose(thin(x), expected, atol=1e-5 * np.abs(expected).max())
    assert flops.dense_macs(thin) < flops.dense_macs(model)
    # the mean cost counts the same open channels (each gate's own cost included)
    ratio = flops.measure(thin, x)["mean_macs"] / flops.measure(model, x)["mean_macs"]
    assert 0.97 < ratio <= 1.0


def test_dropping_closed_channels_leaves_residual_outputs_and_saves():
    model = _gated_with_closed_channels("resnet20")
    assert sorted(thinning.sliceable_gated_layers(model)) == sorted(
        f"stage{s}.block{b}.conv1.conv" for s in (1, 2, 3) for b in (1, 2, 3))
    x = oracle.images(8, 4, size=32)
    thin, _ = thinning.drop_closed_channels(model, x)
    for layer in thin.layers:  # the stream (stem, conv2s) keeps its width
        if isinstance(layer, sk.SPMConv2D) and not layer.name.endswith("conv1.conv"):
            assert layer.filters == model.get_layer(layer.name).filters
        if isinstance(layer, sk.SPMConv2D):  # saliency branches keep their hidden width
            assert (layer.gate.squeeze_kernel.shape[-1]
                    == model.get_layer(layer.name).gate.squeeze_kernel.shape[-1])
    path = os.path.join(tempfile.mkdtemp(), "thin.keras")
    thin.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(x), thin(x), atol=1e-6)


def test_dropping_closed_channels_refuses_models_it_cannot_thin():
    fixed_k = sk.models.create_model("resnet20", gated=True, mode="fixed_k")
    with pytest.raises(ValueError, match=r"no SPMConv2D layer in mode \('sanp', 'static'\)"):
        thinning.drop_closed_channels(fixed_k, oracle.images(2, 0, size=32))
