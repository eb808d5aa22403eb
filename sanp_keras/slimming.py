"""Network Slimming (Liu et al. 2017), the static channel-pruning baseline.

1. Train with an L1 penalty on the batch-norm scales, `loss + l1 * sum |gamma|`
   (paper eq. 1; `with_bn_l1`), which pushes unimportant channels' scales to zero.
2. Prune with one global threshold on `|gamma|` over all prunable channels (paper
   section 3.3): here the threshold is the lowest one whose pruned model costs at most
   `budget` of the dense MACs (`slim`), each layer keeping at least its largest-scale
   channel. The pruned channels are removed (`thinning.slice_channels`): the result is
   a plain, physically smaller model.
3. Fine-tune it without the penalty.

Only convolutions whose output reaches convolutions alone can lose channels
(`thinning.prunable_convs`): in a ResNet those are the first convolution of each block,
as in the paper's ResNet experiments (section 4.4).
"""

import math

import keras
import numpy as np

from sanp_keras import flops
from sanp_keras import graph
from sanp_keras import thinning
from sanp_keras.layers import _checks


def with_bn_l1(model, l1):
    """A copy of a plain model (same weights) with an L1 penalty on the prunable BN scales."""
    l1 = _checks.check_float_in("l1", l1, 0.0, math.inf, low_open=False, high_open=True)
    bns = {bn.name for bn in thinning.prunable_convs(model).values()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in bns:
            config["gamma_regularizer"] = keras.regularizers.serialize(keras.regularizers.L1(l1))
        return layer.__class__.from_config(config)

    functional = graph.as_functional(model)
    penalized = keras.models.clone_model(functional, clone_function=clone)
    penalized.set_weights(functional.get_weights())
    return penalized


def _without_bn_penalty(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.gamma_regularizer:
            layer.gamma_regularizer = None
            layer.gamma.regularizer = None
    return model


def bn_scales(model):
    """Dict conv name -> `|gamma|` of its batch norm, for the prunable convs."""
    return {name: np.abs(bn.gamma.numpy()) for name, bn in thinning.prunable_convs(model).items()}


def _keep(scales, threshold):
    """Channels with `|gamma| > threshold`; a layer keeps at least its largest one."""
    keep = {}
    for name, s in scales.items():
        index = np.flatnonzero(s > threshold)
        keep[name] = index if index.size else np.array([int(np.argmax(s))])
    return keep


def global_threshold(model, budget, reference_macs=None):
    """The lowest global `|gamma|` threshold whose pruned model meets `budget`.

    Args:
        model: a plain model (trained with `with_bn_l1`).
        budget: the largest MACs allowed, a fraction of `reference_macs`.
        reference_macs: the dense MACs (default: `model`'s own).

    Returns:
        `(threshold, keep, ratio)`: the threshold, dict conv name -> kept channel
        indices, and the pruned model's MACs over `reference_macs`.

    Raises:
        ValueError: if even one channel per prunable layer costs more than `budget`.
    """
    budget = _checks.check_float_in("budget", budget, 0.0, 1.0)
    reference = reference_macs or flops.dense_macs(model)
    scales = bn_scales(model)
    if not scales:
        raise ValueError(f"Model '{model.name}' has no prunable conv + batch norm.")

    def ratio(threshold):
        keep = _keep(scales, threshold)
        thin = thinning.slice_channels(model, keep, copy_weights=False)
        return flops.dense_macs(thin) / reference, keep

    candidates = np.concatenate([[-1.0], np.unique(np.concatenate(list(scales.values())))])
    low, high = 0, len(candidates) - 1  # ratio(candidates[high]): one channel per layer
    smallest, _ = ratio(candidates[high])
    if smallest > budget:
        raise ValueError(
            f"Network Slimming cannot meet budget={budget}: with one channel left in each "
            f"of the {len(scales)} prunable layers the model still costs {smallest:.3f} of "
            "the dense MACs (channels feeding residual adds cannot be removed)."
        )
    while low < high:  # the first candidate whose pruned model fits
        mid = (low + high) // 2
        if ratio(candidates[mid])[0] <= budget:
            high = mid
        else:
            low = mid + 1
    fits, keep = ratio(candidates[low])
    return float(candidates[low]), keep, fits


def allocation(model, budget, reference_macs=None):
    """The fraction of each prunable conv's channels Network Slimming keeps at `budget`.

    Dict conv name -> kept / filters, from `global_threshold` (one `|gamma|` threshold
    over all prunable convs, paper section 3.3). Layers it does not name keep all their
    channels. For a SANP model converted from `model` (its gated layers keep the convs'
    names), `training.start_at_keep_ratio(gated, allocation(model, budget), images)`
    starts the gates where Network Slimming would prune: an uneven allocation, the
    residual stream whole (`train_cifar --gate_start=slimming`).
    """
    _, keep, _ = global_threshold(model, budget, reference_macs)
    scales = bn_scales(model)
    return {name: index.size / scales[name].size for name, index in keep.items()}


def slim(model, budget, reference_macs=None):
    """Prunes a plain model with one global BN-scale threshold to `budget` of its MACs.

    Returns:
        `(slimmed, info)`: the physically smaller plain model (weights copied, no L1
        penalty left) and a dict with `threshold`, `flops_ratio` and `kept` (channels
        per pruned conv).
    """
    threshold, keep, ratio = global_threshold(model, budget, reference_macs)
    slimmed = _without_bn_penalty(thinning.slice_channels(model, keep))
    info = {"threshold": threshold, "flops_ratio": ratio,
            "kept": {name: int(index.size) for name, index in keep.items()}}
    return slimmed, info
