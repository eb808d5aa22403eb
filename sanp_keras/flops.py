"""Cost accounting: dense MACs per layer, and the per-sample cost of a gated model.

Convention. Figures are MACs (multiply-accumulates), which is what the paper calls
"FLOPs" (hardware FLOPs are 2 x MACs):

- a convolution costs `k_h * k_w * C_in * H_out * W_out * C_out`; the paper's formula
  `(k*k*C_in + 1) * H*W*C_out` adds one per output for the bias, which
  `include_bias=True` adds to every convolution and dense layer;
- batch norm is folded into the convolution at inference and costs nothing; so do
  element-wise ops (ReLU, add, pooling, the saliency rescale);
- the classifier (Dense, or the 1x1 convolution of M-CifarNet) counts `in * out`;
- a depthwise convolution costs `k_h * k_w * H_out * W_out * C`.

With these, 32x32 inputs and 10 classes: M-CifarNet 174.3 M, VGG-19 (Network
Slimming) 398.1 M, ResNet-18 555.4 M, ResNet-20 40.6 M, ResNet-56 125.5 M.

Gated cost of one sample counts only active channels on BOTH sides (METHOD.md 4):
`k*k * active_in * H*W * active_out`, where the active input channels are those not
closed by upstream gates (see `graph.py`), plus the gate's own overhead
`H_in*W_in*C_in` (squeeze) `+ (C_in + 1) * hidden + (hidden + 1) * C_out` (two
fully-connected layers with biases). A STATIC gate's decisions are constants: no
overhead.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from sanp_keras import graph
from sanp_keras.layers.gated_depthwise_conv2d import GatedDepthwiseConv2D
from sanp_keras.layers.spm_conv2d import SPMConv2D

CONVENTION = (
    "MACs (= the paper's FLOPs): conv k*k*C_in*H*W*C_out (+H*W*C_out with "
    "include_bias), BN folded and free, element-wise ops free, classifier in*out, "
    "gate overhead counted per sample"
)


@dataclasses.dataclass
class CostedNode:
    """One call of a layer that does multiply-accumulates.

    Its cost for one sample, with `a_in` active input channels and `a_out` active
    output channels, is `unit * a_in * a_out + bias * a_out + overhead` (a depthwise
    convolution pairs channel c with itself: `unit * a_in_and_out`).
    """

    name: str
    kind: str  # "conv", "depthwise" or "dense"
    unit: int  # MACs per (input channel, output channel) pair
    bias: int  # extra MACs per active output channel with include_bias
    in_mask: object  # channel expression of the input
    out_mask: object  # channel expression of the computed outputs
    c_in: int
    c_out: int
    overhead: int = 0  # gate MACs per sample

    def dense_macs(self, include_bias=False):
        extra = self.bias * self.c_out if include_bias else 0
        if self.kind == "depthwise":
            return self.unit * self.c_out + extra
        return self.unit * self.c_in * self.c_out + extra

    def macs(self, a_in, a_out, include_bias=False):
        """Cost for active counts `a_in`, `a_out` (arrays or expectations)."""
        # a depthwise node's in_mask already pairs input c with output c
        cost = self.unit * (a_in if self.kind == "depthwise" else a_in * a_out)
        if include_bias:
            cost = cost + self.bias * a_out
        return cost + self.overhead


def _spatial(shape):
    return int(np.prod([d for d in shape[1:-1]]))


def trace(model):
    """The costed nodes of a functional or Sequential model, in topological order.

    Raises:
        ValueError: for a subclassed model, or a gated layer called more than once.
    """
    tracer = graph.ChannelTracer()
    nodes = []
    seen = set()
    for node in graph.model_nodes(model):
        layer = node.operation
        if not isinstance(
            layer,
            (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
             SPMConv2D, GatedDepthwiseConv2D),
        ):
            continue
        if isinstance(layer, (SPMConv2D, GatedDepthwiseConv2D)) and layer.name in seen:
            raise ValueError(
                f"Gated layer '{layer.name}' is called more than once in model "
                f"'{model.name}'; cost accounting needs one decision per layer."
            )
        seen.add(layer.name)
        x = node.input_tensors[0]
        y = node.output_tensors[0]
        c_in, c_out = int(x.shape[-1]), int(y.shape[-1])
        in_mask = tracer(x)
        if isinstance(layer, keras.layers.Dense):
            positions = int(np.prod(y.shape[1:-1] or [1]))
            nodes.append(
                CostedNode(layer.name, "dense", positions, positions, in_mask,
                           graph.Dense(c_out), c_in, c_out)
            )
            continue
        kh, kw = layer.kernel_size
        hw = _spatial(y.shape)
        if isinstance(layer, (keras.layers.DepthwiseConv2D, GatedDepthwiseConv2D)):
            out_mask = in_mask
            if isinstance(layer, GatedDepthwiseConv2D):
                out_mask = tracer(node.input_tensors[1])
            nodes.append(
                CostedNode(layer.name, "depthwise", kh * kw * hw, hw,
                           graph.Intersect((in_mask, out_mask)), out_mask, c_in, c_out)
            )
            continue
        out_mask = graph.Dense(c_out)
        overhead = 0
        if isinstance(layer, SPMConv2D) and layer.mode != "dense":
            out_mask = graph.Gate(layer.name, c_out)
            if layer.mode == "fbs":  # pooling + one linear layer
                overhead = _spatial(x.shape) * c_in + (c_in + 1) * c_out
            elif layer.mode != "static":  # pooling + the SE bottleneck
                hidden = layer.gate.hidden_units(c_in)
                overhead = (_spatial(x.shape) * c_in + (c_in + 1) * hidden
                            + (hidden + 1) * c_out)
        nodes.append(
            CostedNode(layer.name, "conv", kh * kw * hw, hw, in_mask, out_mask,
                       c_in, c_out, overhead)
        )
    return nodes


def dense_macs(model, include_bias=False):
    """MACs of one sample through the model with every channel computed, gates excluded.

    Args:
        model: a functional or Sequential Keras model, plain or gated.
        include_bias: add the paper's "+1" per output of every conv and dense layer.

    Returns:
        An int.
    """
    return int(sum(n.dense_macs(include_bias) for n in trace(model)))


def per_layer_dense_macs(model, include_bias=False):
    """Dict from layer name to its dense MACs, in topological order."""
    return {n.name: int(n.dense_macs(include_bias)) for n in trace(model)}


def expected_macs(nodes, rates, include_bias=False):
    """Estimated mean MACs per sample from per-channel open rates.

    Takes the input and output channels of a layer, and distinct gates, as independent,
    so that `E[a_in * a_out] ~ E[a_in] * E[a_out]`; `measure` gives the exact figure.

    Args:
        nodes: from `trace(model)`.
        rates: dict from gated layer name to its `(C_out,)` open rates.
    """
    total = 0.0
    for n in nodes:
        a_in = float(np.sum(graph.expected(n.in_mask, rates)))
        a_out = float(np.sum(graph.expected(n.out_mask, rates)))
        total += n.macs(a_in, a_out, include_bias)
    return total


def gated_layers(model):
    """The SPMConv2D layers of a model, in topological order."""
    return [
        node.operation
        for node in graph.model_nodes(model)
        if isinstance(node.operation, SPMConv2D)
    ]


def decision_function(model):
    """A function mapping a batch of inputs to every gate's inference decisions.

    It runs `model`'s graph on concrete tensors, in a `tf.function`, sharing its layers.

    Returns:
        A callable `f(x) -> dict` from the name of each non-dense SPMConv2D to its
        `(batch, filters)` 0/1 decisions. It is traced once, for any batch size (its
        inputs are cast to the model's input dtypes); `f.tracing_count()` says how
        many times it was.
    """
    functional = graph.as_functional(model)
    # One trace for every batch size: the batch dimension is left open.
    specs = keras.tree.map_structure(
        lambda t: tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype),
        functional._inputs_struct,
    )

    @tf.function(input_signature=[specs])
    def run(x):
        recorded = {}

        def call(layer, *args, **kwargs):
            if isinstance(layer, SPMConv2D) and layer.mode != "dense":
                wanted = kwargs.get("return_decisions", False)
                kwargs = {**kwargs, "return_decisions": True}
                y, recorded[layer.name] = layer(*args, **kwargs)
                return (y, recorded[layer.name]) if wanted else y
            return layer(*args, **kwargs)

        functional._run_through_graph(x, operation_fn=lambda op: op, call_fn=call)
        return recorded

    def decisions(x):
        return run(keras.tree.map_structure(lambda v, spec: tf.cast(v, spec.dtype), x, specs))

    decisions.tracing_count = run.experimental_get_tracing_count
    return decisions


def _batches(data, batch_size):
    """Yields input batches from a tf.data.Dataset or an array of images."""
    if isinstance(data, tf.data.Dataset):
        for element in data:
            if isinstance(element, (tuple, list)):
                element = element[0]
            elif isinstance(element, dict) and "image" in element:
                element = element["image"]
            yield element
        return
    array = np.asarray(data)
    if array.ndim != 4:
        raise ValueError(
            "Invalid value for argument `data`. Expected a tf.data.Dataset or an "
            f"array of images (N, H, W, C). Received: array of shape {array.shape}"
        )
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size]


def collect_decisions(model, data, batch_size=256, run=None):
    """Inference decisions of every gate over a dataset.

    Returns:
        `(decisions, count)`: dict from gated layer name to a `(count, filters)` boolean
        array, and the number of samples.
    """
    run = run or decision_function(model)
    chunks = {}
    count = 0
    for x in _batches(data, batch_size):
        count += int(x.shape[0])
        for name, b in run(tf.convert_to_tensor(x)).items():
            chunks.setdefault(name, []).append(b.numpy() > 0.5)
    if count == 0:
        raise ValueError("Invalid value for argument `data`: it holds no samples.")
    return {name: np.concatenate(parts) for name, parts in chunks.items()}, count


def layer_costs(nodes, decisions, count, include_bias=False):
    """Yields `(node, active_out, macs)` per costed node: the `(count, C_out)` computed
    output channels and the `(count,)` MACs of each sample."""
    for node in nodes:
        a_in = graph.evaluate(node.in_mask, decisions, count).sum(axis=1)  # (N,)
        a_out = graph.evaluate(node.out_mask, decisions, count)  # (N, C_out)
        yield node, a_out, node.macs(a_in, a_out.sum(axis=1), include_bias)


def per_sample_macs(nodes, decisions, count, include_bias=False):
    """`(count,)` MACs of each sample, from `collect_decisions`."""
    total = np.zeros(count)
    for _, _, cost in layer_costs(nodes, decisions, count, include_bias):
        total += cost
    return total


def mean_macs_function(model, include_bias=False):
    """A function `f(data) -> mean MACs per sample` of `model` as its gates stand now.

    The graph is traced and the decision function built once, so a caller that moves
    the gates' weights between calls (a bisection on a threshold, a controller)
    measures each setting without rebuilding them. A change to a Python attribute
    (`keep_ratio`) is not seen: it was fixed when the function was traced. `data` is
    what `measure` takes.
    """
    nodes = trace(model)
    run = decision_function(model)

    def mean_macs(data):
        decisions, count = collect_decisions(model, data, run=run)
        return float(np.mean(per_sample_macs(nodes, decisions, count, include_bias)))

    return mean_macs


def measure(model, data, batch_size=256, include_bias=False, percentiles=(5, 50, 95)):
    """Per-sample cost of a gated model over a dataset, in inference mode.

    Args:
        model: a functional or Sequential Keras model, gated or plain.
        data: a `tf.data.Dataset` of batches (`x`, `(x, y)` or `(x, y, w)`), or an
            array of images `(N, H, W, C)`.
        batch_size: batch size when `data` is an array.
        include_bias: count the paper's "+1" per output (see the module docstring).
        percentiles: percentiles of per-sample MACs to report.

    Returns:
        A dict with `dense_macs`, `mean_macs`, `std_macs`, `percentiles` (dict
        `"p5"`...), `flops_ratio` (mean / dense), `pruned_fraction` (1 - ratio),
        `num_samples`, `convention`, and `per_layer`: for each costed layer its
        `dense_macs`, `mean_macs`, `active_ratio` (mean fraction of output channels
        computed), and for gated layers `channels` (`never_pruned`,
        `sample_dependent`, `always_pruned` counts over the data) and
        `active_histogram` (`count[j]` = samples with `j` active channels).
    """
    nodes = trace(model)
    decisions, count = collect_decisions(model, data, batch_size)
    per_sample = np.zeros(count)
    per_layer = {}
    for node, a_out, cost in layer_costs(nodes, decisions, count, include_bias):
        per_sample += cost
        entry = {
            "kind": node.kind,
            "dense_macs": int(node.dense_macs(include_bias)),
            "mean_macs": float(np.mean(cost)),
            "active_ratio": float(a_out.mean()),
        }
        if graph.gate_names(node.out_mask):
            on = a_out.sum(axis=0)  # (C_out,) samples keeping each channel
            entry["channels"] = {
                "never_pruned": int(np.sum(on == count)),
                "sample_dependent": int(np.sum((on > 0) & (on < count))),
                "always_pruned": int(np.sum(on == 0)),
            }
            hist = np.bincount(a_out.sum(axis=1), minlength=node.c_out + 1)
            entry["active_histogram"] = hist.tolist()
        per_layer[node.name] = entry

    dense = float(sum(n.dense_macs(include_bias) for n in nodes))
    mean = float(per_sample.mean())
    return {
        "dense_macs": int(dense),
        "mean_macs": mean,
        "std_macs": float(per_sample.std()),
        "percentiles": {
            f"p{p:g}": float(np.percentile(per_sample, p)) for p in percentiles
        },
        "flops_ratio": mean / dense,
        "pruned_fraction": 1.0 - mean / dense,
        "num_samples": count,
        "convention": CONVENTION + (" (+1 bias counted)" if include_bias else ""),
        "per_layer": per_layer,
    }
