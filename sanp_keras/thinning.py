"""Physically smaller plain models: channels removed, or every layer made narrower.

Two static baselines of the comparison (issue 5) need a plain model (Conv2D +
BatchNormalization pairs, as `sanp_keras.convert` takes) with fewer channels:

- `slice_channels(model, keep)`: the same model with only the listed output channels
  of some convolutions, weights copied (Network Slimming prunes this way, Liu et al.
  2017, section 3.3). A convolution can lose channels on its own only if its output
  reaches nothing but convolutions and dense layers through per-channel layers
  (`prunable_convs`); one whose output meets a residual Add keeps its width.
- `uniform_width(model, width)`: every conv + BN pair (and zero-padded shortcut) with
  `round(width * filters)` channels and fresh weights, the "thin dense" baseline;
  `width_for_budget` finds the width whose dense MACs meet a budget.

A trained SANP model often keeps some channels closed for every input (an allocation
that is static in part); `drop_closed_channels(gated, images)` removes those from a
gated model the same way, gates and all, so that its export computes smaller
convolutions (what Network Slimming's model gets) and gates only what varies.

All are `keras.models.clone_model` with a `clone_function`, like `convert`.
"""

import keras
import numpy as np

from sanp_keras import flops
from sanp_keras import graph
from sanp_keras.convert import _consumer_map
from sanp_keras.convert import _is_channel_bn
from sanp_keras.layers import SPMConv2D
from sanp_keras.layers import _checks
from sanp_keras.layers.zero_pad_shortcut import ZeroPadShortcut

# Gate modes whose decision for a channel does not depend on how many channels the
# layer has (fixed_k and fbs keep a number of channels per sample: k would change).
THRESHOLD_MODES = ("sanp", "static")


def conv_bn_pairs(model):
    """Dict from conv name to its batch norm, for every `Conv2D` feeding exactly one BN."""
    nodes = graph.model_nodes(model)
    consumers = _consumer_map(nodes)
    pairs = {}
    for node in nodes:
        if type(node.operation) is not keras.layers.Conv2D or node.operation.groups != 1:
            continue
        after = consumers.get(id(node.output_tensors[0]), [])
        if len(after) == 1 and _is_channel_bn(after[0].operation):
            pairs[node.operation.name] = after[0].operation
    return pairs


def _weightless_passthrough(layer):
    return graph.is_passthrough(layer) and not layer.weights


def _reaches_only_slicable(tensor, consumers, gated=False):
    """Whether every path from `tensor` ends in a Conv2D / Dense input (not an Add, a
    concatenation or a depthwise convolution); with `gated`, an SPMConv2D's too."""
    for node in consumers.get(id(tensor), []):
        layer = node.operation
        if type(layer) is keras.layers.Conv2D and layer.groups == 1:
            continue
        if type(layer) is keras.layers.Dense or (gated and type(layer) is SPMConv2D):
            continue
        if _weightless_passthrough(layer) and _reaches_only_slicable(
            node.output_tensors[0], consumers, gated
        ):
            continue
        return False
    return True


def prunable_convs(model):
    """Dict conv name -> BN layer of the convs whose output channels can be removed.

    A conv qualifies if its BN's output reaches only convolutions and dense layers
    (through ReLU, dropout, pooling and other weightless per-channel layers): removing
    a channel then removes a slice of each consumer's kernel and nothing else. Convs
    whose output is added to a shortcut do not (the Add fixes their width).
    """
    nodes = graph.model_nodes(model)
    consumers = _consumer_map(nodes)
    pairs = conv_bn_pairs(model)
    out = {}
    for node in nodes:
        bn = pairs.get(node.operation.name)
        if bn is None:
            continue
        bn_node = consumers[id(node.output_tensors[0])][0]
        if consumers.get(id(bn_node.output_tensors[0])) and _reaches_only_slicable(
            bn_node.output_tensors[0], consumers
        ):
            out[node.operation.name] = bn
    return out


def _check_keep(model, keep):
    prunable = prunable_convs(model)
    layers = {n.operation.name: n.operation for n in graph.model_nodes(model)}
    for name, index in keep.items():
        if name not in prunable:
            raise ValueError(
                f"Cannot remove channels of layer '{name}': it is not a conv + batch norm "
                f"whose output reaches only convolutions. Prunable: {sorted(prunable)}"
            )
        index = np.asarray(index)
        filters = layers[name].filters
        if index.ndim != 1 or index.size < 1 or np.any(index < 0) or np.any(index >= filters):
            raise ValueError(
                f"Invalid channels for layer '{name}' ({filters} filters): expected 1 to "
                f"{filters} distinct indices in [0, {filters}). Received: {index.tolist()}"
            )
        if np.unique(index).size != index.size:
            raise ValueError(f"Repeated channels for layer '{name}': {index.tolist()}")


def slice_channels(model, keep, copy_weights=True):
    """The plain model with only the channels `keep[name]` of each listed conv.

    Args:
        model: a functional or Sequential plain model.
        keep: dict from conv name (see `prunable_convs`) to the sorted indices of the
            output channels it keeps (at least one).
        copy_weights: copy the matching slices of every weight (False: fresh weights,
            enough to count MACs).

    Returns:
        A new functional model whose outputs equal `model`'s with the removed
        channels' batch-norm outputs set to zero.
    """
    _check_keep(model, keep)
    keep = {name: np.sort(np.asarray(index)) for name, index in keep.items()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in keep:
            config["filters"] = int(keep[layer.name].size)
        return layer.__class__.from_config(config)

    functional = graph.as_functional(model)
    thin = keras.models.clone_model(functional, clone_function=clone)
    if copy_weights:
        _copy_sliced_weights(functional, thin, keep)
    return thin


def _copy_sliced_weights(source, target, keep):
    """Copies each layer's weights, slicing channel axes along the kept channels."""
    new_layers = {layer.name: layer for layer in target.layers}
    index_of = {}  # id(tensor) -> kept channel indices of that tensor (None: all)
    for node in graph.model_nodes(source):
        layer = node.operation
        inputs = node.input_tensors
        in_index = index_of.get(id(inputs[0])) if inputs else None
        out_index = None
        weights = [w.numpy() for w in layer.weights]
        if isinstance(layer, SPMConv2D):
            out_index = keep.get(layer.name)
            weights = [_slice_gated_weight(layer, w, v, in_index, out_index)
                       for w, v in zip(layer.weights, weights)]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            out_index = keep.get(layer.name)
            kernel = weights[0]
            if in_index is not None:
                kernel = np.take(kernel, in_index, axis=-2)
            if out_index is not None:
                kernel = np.take(kernel, out_index, axis=-1)
                weights[1:] = [np.take(w, out_index, axis=-1) for w in weights[1:]]
            weights[0] = kernel
        elif _is_channel_bn(layer):
            out_index = in_index
            if in_index is not None:
                weights = [np.take(w, in_index, axis=-1) for w in weights]
        elif in_index is not None:
            out_index = in_index  # a weightless per-channel layer (checked by _check_keep)
        for t in node.output_tensors:
            index_of[id(t)] = out_index
        if weights:
            new_layers[layer.name].set_weights(weights)


def _slice_gated_weight(layer, variable, value, in_index, out_index):
    """One weight of an SPMConv2D sliced along its kept input / output channels."""
    role = variable.path.split("/", 1)[1] if "/" in variable.path else variable.path
    if role.endswith("conv/kernel"):  # (k, k, C_in, C_out)
        if in_index is not None:
            value = np.take(value, in_index, axis=-2)
        return value if out_index is None else np.take(value, out_index, axis=-1)
    if role.endswith(("gate/squeeze_kernel", "gate/static_input")) or (
        layer.mode == "fbs" and role.endswith("gate/excite_kernel")  # (C_in, C_out)
    ):
        if in_index is not None:
            value = np.take(value, in_index, axis=0)
        if out_index is not None and role.endswith("excite_kernel"):
            value = np.take(value, out_index, axis=-1)
        return value
    if role.endswith("gate/squeeze_bias") or value.ndim == 0:  # hidden units; scalars
        return value
    # conv/bias, bn/*, gate/excite_kernel, gate/excite_bias, active_rate: (..., C_out)
    return value if out_index is None else np.take(value, out_index, axis=-1)


def _scaled(filters, width):
    return max(1, int(round(filters * width)))


def uniform_width(model, width):
    """The plain model with every conv + BN pair `width` times as wide, fresh weights.

    Zero-padded shortcuts (`ZeroPadShortcut`) are widened with them, so residual adds
    still match. The classifier (a layer without a batch norm) keeps its width.
    """
    width = _checks.check_float_in("width", width, 0.0, 1.0)
    pairs = conv_bn_pairs(model)

    def clone(layer):
        config = layer.get_config()
        if layer.name in pairs:
            config["filters"] = _scaled(layer.filters, width)
        elif isinstance(layer, ZeroPadShortcut):
            config["filters"] = _scaled(layer.filters, width)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(graph.as_functional(model), clone_function=clone)


def width_for_budget(model, budget):
    """The largest width (to 1e-3) whose `uniform_width` model costs <= `budget` x dense.

    Returns:
        `(width, ratio)`: the width and its dense MACs over `model`'s.
    """
    budget = _checks.check_float_in("budget", budget, 0.0, 1.0)
    dense = flops.dense_macs(model)

    def ratio(width):
        return flops.dense_macs(uniform_width(model, width)) / dense

    low, high = 0.0, 1.0
    while high - low > 1e-3:
        mid = (low + high) / 2
        low, high = (mid, high) if ratio(mid) <= budget else (low, mid)
    width = max(low, 1e-3)
    return width, ratio(width)


def sliceable_gated_layers(model):
    """Names of the SPMConv2D layers whose output channels can be removed.

    As for `prunable_convs`: the layer's output reaches only convolutions (plain or
    gated) and dense layers through weightless per-channel layers. Its gate must
    decide each channel by a threshold (`THRESHOLD_MODES`).
    """
    nodes = graph.model_nodes(model)
    consumers = _consumer_map(nodes)
    return [
        node.operation.name
        for node in nodes
        if isinstance(node.operation, SPMConv2D)
        and node.operation.mode in THRESHOLD_MODES
        and consumers.get(id(node.output_tensors[0]))
        and _reaches_only_slicable(node.output_tensors[0], consumers, gated=True)
    ]


def drop_closed_channels(model, data, batch_size=256):
    """The gated model without the channels its gates closed for every sample of `data`.

    A channel whose gate is closed outputs exactly zero, so removing it (its slice of
    the convolution, batch norm and gate, and the matching input slice of every
    consumer's kernel and saliency branch, paper eq. 5) leaves the model's outputs
    unchanged on every input that closes it: on `data` the returned model equals
    `model` (to float rounding), decisions included. On an input that would have
    opened a removed channel it computes the model with that channel closed (and
    where that channel was the layer's best, which a gate always keeps open, with
    the best of the remaining ones open instead). What
    remains is gated as before, with smaller convolutions: a trained SANP network
    whose allocation is static in part then exports like a slimmed one.

    Only layers in `sliceable_gated_layers` lose channels (an output added to a
    shortcut keeps its width), and each keeps at least the channels `data` opened
    (never fewer than one). A consumer keeps its saliency branch's hidden width.

    Args:
        model: a gated model (`SPMConv2D` layers).
        data: calibration images (N, H, W, C) or a tf.data.Dataset; the more
            varied, the fewer inputs the thinner model treats differently.
        batch_size: batch size of the pass over `data` (arrays).

    Returns:
        `(thin, kept)`: the new functional model and a dict layer name ->
        `(kept, filters)` for every layer that lost channels.

    Raises:
        ValueError: if `model` has no gated layer whose channels can be removed.
    """
    sliceable = sliceable_gated_layers(model)
    if not sliceable:
        raise ValueError(
            f"Model '{model.name}' has no SPMConv2D layer in mode {THRESHOLD_MODES} whose "
            "output reaches only convolutions: no channel can be removed."
        )
    decisions, _ = flops.collect_decisions(model, data, batch_size=batch_size)
    keep = {}
    for name in sliceable:
        index = np.flatnonzero(decisions[name].any(axis=0))
        if 0 < index.size < decisions[name].shape[1]:
            keep[name] = index
    functional = graph.as_functional(model)
    layers = {n.operation.name: n.operation for n in graph.model_nodes(functional)}
    # A consumer of a thinned layer keeps its saliency branch's hidden width, which
    # SaliencyGate derives from its input width.
    hidden = {name: layer.gate.squeeze_kernel.shape[-1] for name, layer in layers.items()
              if isinstance(layer, SPMConv2D) and hasattr(layer.gate, "squeeze_kernel")}

    def clone(layer):
        config = layer.get_config()
        if layer.name in keep:
            config["filters"] = int(keep[layer.name].size)
        if layer.name in hidden:
            config["min_hidden"] = int(hidden[layer.name])
        return layer.__class__.from_config(config)

    thin = keras.models.clone_model(functional, clone_function=clone)
    _copy_sliced_weights(functional, thin, keep)
    return thin, {name: (int(index.size), layers[name].filters)
                  for name, index in keep.items()}
