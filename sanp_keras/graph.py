"""Which channels of a tensor can be non-zero, traced through a functional graph.

A channel closed by a gate is an all-zero map, and stays all-zero through
zero-preserving layers (ReLU, pooling, dropout, padding...). The next convolution can
then skip it on its input side (METHOD.md section 3). This module describes, for any
tensor of a functional model, its channels as an expression over gate decisions:

    Dense(n)              n channels, always computed
    Zero(n)               n channels, always zero (the padding of a ZeroPadShortcut)
    Gate(name, n)         the decisions of the SPMConv2D called `name`
    Concat(parts)         channel concatenation
    Union(parts)          elementwise merges (Add, Maximum...): zero only if all are
    Intersect(parts)      Multiply: zero if any part is

`evaluate` turns an expression into per-sample 0/1 masks from recorded decisions
(exact, used by `flops.measure`); `expected` turns it into per-channel probabilities
from per-channel open rates, taking gates as independent (used by the budget callback
during training).
"""

import dataclasses
import functools

import keras
import numpy as np

from sanp_keras.layers.gated_depthwise_conv2d import GatedDepthwiseConv2D
from sanp_keras.layers.spm_conv2d import SPMConv2D
from sanp_keras.layers.zero_pad_shortcut import ZeroPadShortcut


@dataclasses.dataclass(frozen=True)
class Dense:
    n: int


@dataclasses.dataclass(frozen=True)
class Zero:
    n: int


@dataclasses.dataclass(frozen=True)
class Gate:
    name: str
    n: int


@dataclasses.dataclass(frozen=True)
class Concat:
    parts: tuple


@dataclasses.dataclass(frozen=True)
class Union:
    parts: tuple


@dataclasses.dataclass(frozen=True)
class Intersect:
    parts: tuple


def width(expr):
    """Number of channels an expression describes."""
    if isinstance(expr, Concat):
        return sum(width(p) for p in expr.parts)
    if isinstance(expr, (Union, Intersect)):
        return width(expr.parts[0])
    return expr.n


def gate_names(expr):
    """Names of the gates an expression depends on."""
    if isinstance(expr, Gate):
        return {expr.name}
    if isinstance(expr, (Concat, Union, Intersect)):
        return set().union(*(gate_names(p) for p in expr.parts))
    return set()


def evaluate(expr, decisions, batch):
    """Per-sample masks, a `(batch, width)` boolean array.

    Args:
        expr: a channel expression.
        decisions: dict from gate name to a `(batch, n)` array of 0/1 decisions.
        batch: number of samples.
    """
    if isinstance(expr, Dense):
        return np.ones((batch, expr.n), dtype=bool)
    if isinstance(expr, Zero):
        return np.zeros((batch, expr.n), dtype=bool)
    if isinstance(expr, Gate):
        return np.asarray(decisions[expr.name]) > 0.5
    parts = [evaluate(p, decisions, batch) for p in expr.parts]
    if isinstance(expr, Concat):
        return np.concatenate(parts, axis=1)
    if isinstance(expr, Union):
        return np.logical_or.reduce(parts)
    return np.logical_and.reduce(parts)


def expected(expr, rates):
    """Per-channel probability of being computed, a `(width,)` float array.

    Args:
        expr: a channel expression.
        rates: dict from gate name to the `(n,)` fraction of samples that open each
            channel. Distinct gates are taken as independent.
    """
    if isinstance(expr, Dense):
        return np.ones(expr.n)
    if isinstance(expr, Zero):
        return np.zeros(expr.n)
    if isinstance(expr, Gate):
        return np.asarray(rates[expr.name], dtype=np.float64)
    parts = [expected(p, rates) for p in expr.parts]
    if isinstance(expr, Concat):
        return np.concatenate(parts)
    if isinstance(expr, Union):
        return 1.0 - np.prod([1.0 - p for p in parts], axis=0)
    return np.prod(parts, axis=0)


# Activations f with f(0) == 0: a closed channel stays closed through them.
ZERO_PRESERVING_ACTIVATIONS = frozenset(
    {
        "linear",
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "gelu",
        "silu",
        "swish",
        "hard_silu",
        "hard_swish",
        "mish",
        "tanh",
        "softsign",
    }
)

# Layers that map each channel to itself and zeros to zeros.
_PASSTHROUGH = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling2D,
    keras.layers.Identity,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
)
_UNION = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
)


def is_zero_preserving(activation):
    """Whether `activation(0) == 0` for a Keras activation function."""
    return getattr(activation, "__name__", None) in ZERO_PRESERVING_ACTIVATIONS


def is_passthrough(layer):
    """Whether `layer` maps each channel to itself and keeps zero channels zero."""
    if isinstance(layer, _PASSTHROUGH):
        return True
    if isinstance(layer, keras.layers.Activation):
        return is_zero_preserving(layer.activation)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return (
            not layer.use_bias
            and layer.depth_multiplier == 1
            and is_zero_preserving(layer.activation)
        )
    return False


def producer(tensor):
    """The `(layer, node)` that produced a KerasTensor of a functional graph."""
    layer, node_index, _ = tensor._keras_history
    return layer, layer._inbound_nodes[node_index]


class ChannelTracer:
    """Memoized channel expressions for the KerasTensors of one functional graph."""

    def __init__(self):
        self._memo = {}

    def __call__(self, tensor):
        key = id(tensor)
        if key not in self._memo:
            expr = self._trace(tensor)
            if width(expr) != tensor.shape[-1]:
                expr = Dense(tensor.shape[-1])
            self._memo[key] = expr
        return self._memo[key]

    def _trace(self, tensor):
        n = tensor.shape[-1]
        layer, node = producer(tensor)
        if node.is_input:
            return Dense(n)
        inputs = node.input_tensors
        if isinstance(layer, SPMConv2D):
            if layer.mode == "dense" or not is_zero_preserving(layer.activation):
                return Dense(n)
            return Gate(layer.name, n)
        if isinstance(layer, GatedDepthwiseConv2D):
            if not is_zero_preserving(layer.activation):
                return Dense(n)
            return self(inputs[1])
        if isinstance(layer, ZeroPadShortcut):
            before, after = layer.pad_widths(inputs[0].shape[-1])
            return Concat((Zero(before), self(inputs[0]), Zero(after)))
        if is_passthrough(layer):
            return self(inputs[0])
        if isinstance(layer, _UNION):
            return Union(tuple(self(t) for t in inputs))
        if isinstance(layer, keras.layers.Multiply):
            return Intersect(tuple(self(t) for t in inputs))
        if isinstance(layer, keras.layers.Concatenate):
            if layer.axis in (-1, len(tensor.shape) - 1):
                return Concat(tuple(self(t) for t in inputs))
            return Union(tuple(self(t) for t in inputs))
        return Dense(n)


def model_nodes(model):
    """The nodes of a functional model in topological order, inputs left out.

    Raises:
        ValueError: if `model` is not a functional or Sequential Keras model.
    """
    model = as_functional(model)
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def as_functional(model):
    """A functional view of a Functional or Sequential model; refuses the others."""
    if isinstance(model, keras.Sequential):
        if not model.built or not hasattr(model, "_functional") or model._functional is None:
            raise ValueError(
                f"Sequential model '{model.name}' has no defined input: give it a "
                "`keras.Input` (or build it) before converting or measuring it."
            )
        return model._functional
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        return model
    raise ValueError(
        "sanp_keras works on functional and Sequential Keras models; subclassed "
        f"models cannot be traced. Received: model of type {type(model).__name__}"
    )


def inline_nested(model):
    """The functional view of `model` with every nested functional or Sequential model
    (one used as a layer) replaced by its own layers, recursively: one flat graph.

    The layers are the same objects (weights shared with `model`); a nested model
    called twice contributes its layers twice, as a shared layer would. `model`'s
    functional view itself is returned when nothing is nested.

    Raises:
        ValueError: for a nested subclassed model (naming it), or when two different
            layers of the flat graph share a name (naming it and both owners).
    """
    functional = as_functional(model)
    if not any(isinstance(n.operation, keras.Model) for n in model_nodes(functional)):
        return functional
    _check_unique_names(functional, {})

    def call(operation, *args, **kwargs):
        if not isinstance(operation, keras.Model):
            return operation(*args, **kwargs)
        inner = as_functional(operation)
        outputs = inner._run_through_graph(
            inner._standardize_inputs(args[0]),
            operation_fn=lambda op: functools.partial(call, op),
        )
        if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
            return outputs[0]
        return outputs

    return keras.models.clone_model(functional, clone_function=lambda layer: layer,
                                    call_function=call)


def _check_unique_names(functional, seen):
    """Fills `seen` (name -> (layer, owner name)) with the layers of `functional` and
    of the models nested in it; raises if two different layers share a name."""
    for node in model_nodes(functional):
        layer = node.operation
        if isinstance(layer, keras.Model):
            try:
                inner = as_functional(layer)
            except ValueError as error:
                raise ValueError(f"Cannot inline nested model '{layer.name}': {error}") from None
            _check_unique_names(inner, seen)
            continue
        other, owner = seen.setdefault(layer.name, (layer, functional.name))
        if other is not layer:
            raise ValueError(
                f"Cannot flatten the nested models: two layers are named '{layer.name}' "
                f"(in '{owner}' and in '{functional.name}'). Rename one of them."
            )
