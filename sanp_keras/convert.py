"""Existing model -> gated model (`convert`), and back (`strip`).

Both are built on `keras.models.clone_model(..., clone_function=, call_function=)`,
the documented hook for replacing layers of a functional model:

- every `Conv2D` whose output feeds exactly one channel-axis `BatchNormalization`
  becomes one `SPMConv2D` carrying both layers' weights (the batch norm's node then
  maps to its input); a `Conv2D` without a batch norm after it (a classifier, a
  convolution with bias) stays dense by design;
- every `DepthwiseConv2D` whose input channels are exactly those of such a converted
  convolution (through ReLU, padding, dropout...) becomes a `GatedDepthwiseConv2D`
  that follows that convolution's decisions (MobileNetV2's inverted residual);
- every other layer is cloned with its weights. Convolutions that cannot be gated
  (groups, dilation, an activation before the batch norm, shared weights) stay dense,
  with a warning that names them and says why, or an error with
  `on_unsupported="raise"`.

`convert(model, mode="dense")` gives a gated model whose outputs equal the original's;
`strip(convert(model))` gives back a plain model with the original's outputs.
"""

import warnings

import keras

from sanp_keras import graph
from sanp_keras.layers import _batch_norm
from sanp_keras.layers._checks import check_mode
from sanp_keras.layers.gated_depthwise_conv2d import GatedDepthwiseConv2D
from sanp_keras.layers.spm_conv2d import SPMConv2D

_GATE_OPTIONS = (
    "reduction",
    "min_hidden",
    "keep_ratio",
    "noise_stddev",
    "discrete_fraction",
    "gate_bias_init",
    "gate_bias_spread",
    "gate_rescale",
    "cost_floor",
    "gate_gradient",
    "seed",
)


def _consumer_map(nodes):
    """Dict from `id(tensor)` to the nodes that take that tensor as an input."""
    consumers = {}
    for node in nodes:
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
    return consumers


def _is_channel_bn(layer):
    return isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 3)


_NO_BN = "its output does not feed exactly one BatchNormalization"


def _why_not_gated(layer, consumers):
    """Reason a Conv2D cannot become an SPMConv2D, or None if it can."""
    if layer.data_format != "channels_last":
        return "it is channels_first"
    if layer.groups != 1:
        return f"it is grouped (groups={layer.groups})"
    if tuple(layer.dilation_rate) != (1, 1):
        return f"it is dilated (dilation_rate={tuple(layer.dilation_rate)})"
    if len(consumers) != 1 or not _is_channel_bn(consumers[0].operation):
        return _NO_BN
    if getattr(layer.activation, "__name__", "linear") != "linear":
        return "it applies an activation before its batch norm"
    return None


def _plan(model, on_unsupported):
    """Which conv/BN/depthwise layers to replace.

    Returns:
        `(pairs, depthwise)`: dict conv name -> its bn layer, and dict depthwise name ->
        `(name of the conv whose decisions it follows, its bn layer or None)`.
    """
    pairs, depthwise = {}, {}
    nodes = graph.model_nodes(model)
    consumer_map = _consumer_map(nodes)
    calls = {}
    for node in nodes:
        calls[node.operation.name] = calls.get(node.operation.name, 0) + 1
    bn_source = {}
    for node in nodes:
        layer = node.operation
        if type(layer) is not keras.layers.Conv2D:
            continue
        consumers = consumer_map.get(id(node.output_tensors[0]), [])
        reason = _why_not_gated(layer, consumers)
        if reason is None and calls[layer.name] > 1:
            reason = "it is called more than once (shared weights)"
        if reason is None and calls[consumers[0].operation.name] > 1:
            reason = "its batch norm is called more than once"
        if reason == _NO_BN:
            continue  # a classifier or bias convolution: dense by design
        if reason is not None:
            if on_unsupported == "raise":
                raise ValueError(f"Cannot gate layer '{layer.name}': {reason}.")
            warnings.warn(
                f"sanp_keras.convert: layer '{layer.name}' stays dense: {reason}.",
                stacklevel=3,
            )
            continue
        bn = consumers[0].operation
        pairs[layer.name] = bn
        bn_source[id(consumers[0].output_tensors[0])] = layer.name

    for node in nodes:
        layer = node.operation
        if type(layer) is not keras.layers.DepthwiseConv2D:
            continue
        if layer.depth_multiplier != 1 or tuple(layer.dilation_rate) != (1, 1):
            continue
        source = _gated_source(node.input_tensors[0], bn_source)
        if source is None or calls[layer.name] > 1:
            continue
        consumers = consumer_map.get(id(node.output_tensors[0]), [])
        bn = None
        if len(consumers) == 1 and _is_channel_bn(consumers[0].operation):
            bn = consumers[0].operation
            if calls[bn.name] > 1:
                continue
        depthwise[layer.name] = (source, bn)
    return pairs, depthwise


def _gated_source(tensor, bn_source):
    """Name of the converted conv whose channels `tensor` carries one-to-one, if any."""
    while True:
        if id(tensor) in bn_source:
            return bn_source[id(tensor)]
        layer, node = graph.producer(tensor)
        if node.is_input or not graph.is_passthrough(layer):
            return None
        tensor = node.input_tensors[0]


def _layers_by_name(functional):
    """The layers called in a functional model, by name (names are unique in a model)."""
    return {n.operation.name: n.operation for n in graph.model_nodes(functional)}


def _copy_weights(source, target):
    target.set_weights([w.numpy() for w in source.weights])


def convert(model, mode="sanp", on_unsupported="warn", **gate_options):
    """Turns a functional or Sequential model into a gated one with the same weights.

    Args:
        model: a functional or Sequential Keras model with `Conv2D` +
            `BatchNormalization` pairs.
        mode: `"sanp"`, `"fixed_k"`, `"static"`, `"fbs"` or `"dense"` (every gate open: the
            outputs equal the original's).
        on_unsupported: `"warn"` (a convolution that cannot be gated stays dense, with
            a warning naming it and why) or `"raise"` (a `ValueError` instead).
        **gate_options: passed to every `SPMConv2D`: `reduction`, `min_hidden`,
            `keep_ratio`, `noise_stddev`, `discrete_fraction`, `gate_bias_init`,
            `gate_bias_spread`, `gate_rescale`, `cost_floor`, `gate_gradient`, `seed`.

    Returns:
        A new functional `keras.Model`; the original is left untouched.

    Raises:
        ValueError: for a subclassed model (naming its type), an unknown mode or gate
            option, or an ungateable layer with `on_unsupported="raise"`.
    """
    check_mode(mode)
    if on_unsupported not in ("warn", "raise"):
        raise ValueError(
            "Invalid value for argument `on_unsupported`. Expected 'warn' or 'raise'. "
            f"Received: on_unsupported={on_unsupported!r}"
        )
    unknown = set(gate_options) - set(_GATE_OPTIONS)
    if unknown:
        raise ValueError(
            f"Unknown gate option(s) {sorted(unknown)}. Expected some of "
            f"{list(_GATE_OPTIONS)}. Received: {gate_options}"
        )
    functional = graph.inline_nested(model)  # nested models become their layers
    pairs, depthwise = _plan(functional, on_unsupported)
    fused_bns = {id(bn) for bn in pairs.values()}
    fused_bns |= {id(bn) for _, bn in depthwise.values() if bn is not None}
    needs_decisions = {source for source, _ in depthwise.values()}
    clones, decisions = {}, {}

    def clone(layer):
        if id(layer) in clones:
            return clones[id(layer)]
        if id(layer) in fused_bns:
            new = layer  # never called: its node maps to its input
        elif layer.name in pairs:
            config = layer.get_config()
            new = SPMConv2D(
                filters=config["filters"],
                kernel_size=config["kernel_size"],
                strides=config["strides"],
                padding=config["padding"],
                use_bias=config["use_bias"],
                kernel_initializer=config["kernel_initializer"],
                kernel_regularizer=config["kernel_regularizer"],
                mode=mode,
                name=layer.name,
                **_batch_norm.config(pairs[layer.name]),
                **gate_options,
            )
        elif layer.name in depthwise:
            config = layer.get_config()
            new = GatedDepthwiseConv2D(
                kernel_size=config["kernel_size"],
                strides=config["strides"],
                padding=config["padding"],
                use_bias=config["use_bias"],
                depthwise_regularizer=config["depthwise_regularizer"],
                name=layer.name,
                **_batch_norm.config(depthwise[layer.name][1]),
            )
        elif not isinstance(layer, keras.layers.Layer):
            new = layer  # a bare `keras.ops` operation (`x + 3`): stateless, reused
        else:
            new = _copy_layer(layer)
        clones[id(layer)] = new
        return new

    originals = _layers_by_name(functional)

    def call(new, *args, **kwargs):
        if id(new) in fused_bns:
            return args[0]
        if isinstance(new, SPMConv2D):
            if new.name in needs_decisions:
                y, decisions[new.name] = new(*args, return_decisions=True, **kwargs)
            else:
                y = new(*args, **kwargs)
            conv = originals[new.name]
            _copy_weights(conv, new.conv)
            if new.bn is not None:
                _copy_weights(pairs[new.name], new.bn)
            return y
        if isinstance(new, GatedDepthwiseConv2D):
            source, bn = depthwise[new.name]
            y = new([args[0], decisions[source]], **kwargs)
            _copy_weights(originals[new.name], new.depthwise)
            if bn is not None:
                _copy_weights(bn, new.bn)
            return y
        y = new(*args, **kwargs)
        if _has_weights(new):
            _copy_weights(originals[new.name], new)
        return y

    return keras.models.clone_model(functional, clone_function=clone, call_function=call)


def _copy_layer(layer):
    """A fresh layer of the same class and config (weights copied later)."""
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception as error:  # a custom layer whose config does not round-trip
        raise ValueError(
            f"Cannot copy layer '{layer.name}' ({type(layer).__name__}): "
            f"`from_config(get_config())` fails with {type(error).__name__}: {error}. "
            "Give the layer a `get_config` that returns its constructor's arguments."
        ) from error


def _has_weights(operation):
    """Whether a graph operation carries weights (bare `keras.ops` ones never do)."""
    return isinstance(operation, keras.layers.Layer) and bool(operation.weights)


def strip(model):
    """The inverse of `convert`: a plain model with every gate removed.

    Each `SPMConv2D` becomes `Conv2D` (+ `BatchNormalization`) (+ `Activation`), each
    `GatedDepthwiseConv2D` a `DepthwiseConv2D` (+ `BatchNormalization`), with the same
    weights; the result computes what the gated model computes with every gate open
    and no rescaling (its `mode="dense"` output).
    """
    functional = graph.as_functional(model)
    originals = _layers_by_name(functional)
    clones = {}

    def clone(layer):
        if id(layer) not in clones:
            if isinstance(layer, (SPMConv2D, GatedDepthwiseConv2D)):
                clones[id(layer)] = layer  # replaced by plain layers in `call`
            elif not isinstance(layer, keras.layers.Layer):
                clones[id(layer)] = layer  # a bare `keras.ops` operation
            else:
                clones[id(layer)] = _copy_layer(layer)
        return clones[id(layer)]

    def call(layer, *args, **kwargs):
        if isinstance(layer, SPMConv2D):
            y = _plain_layers(layer, layer.conv, keras.layers.Conv2D, args[0])
            # a node that returned decisions gets a placeholder for them: the only
            # consumer of decisions is a GatedDepthwiseConv2D, stripped as well
            return (y, y) if kwargs.get("return_decisions") else y
        if isinstance(layer, GatedDepthwiseConv2D):
            return _plain_layers(layer, layer.depthwise, keras.layers.DepthwiseConv2D, args[0][0])
        y = layer(*args, **kwargs)
        if _has_weights(layer):
            _copy_weights(originals[layer.name], layer)
        return y

    return keras.models.clone_model(functional, clone_function=clone, call_function=call)


def _plain_layers(layer, core, core_class, x):
    """`core` (+ batch norm) (+ activation) of a gated layer as plain layers."""
    plain = core_class.from_config(core.get_config() | {"name": layer.name})
    y = plain(x)
    _copy_weights(core, plain)
    if layer.bn is not None:
        bn = keras.layers.BatchNormalization.from_config(
            layer.bn.get_config() | {"name": f"{layer.name}.bn"}
        )
        y = bn(y)
        _copy_weights(layer.bn, bn)
    if getattr(layer.activation, "__name__", "linear") != "linear":
        y = keras.layers.Activation(layer.activation, name=f"{layer.name}.act")(y)
    return y
