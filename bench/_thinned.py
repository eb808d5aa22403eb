"""The statically thinned dense model: the practical ceiling of a gated model's speed.

Each convolution keeps as many output channels as its gate opens on average (METHOD.md
Figure 4 counts), and every later layer shrinks its inputs to match. Convolutions
joined by an identity shortcut (an Add) must share a width: such a group keeps the mean
size of the union of its members' open channels. A depthwise convolution (which follows
its producer's gate) takes the thinned width of its input. Weights are random: this
model is for latency only.
"""

import keras
import numpy as np

from sanp_keras import flops
from sanp_keras import graph
from sanp_keras.layers import SPMConv2D
from sanp_keras.layers import ZeroPadShortcut


class _Groups:
    """Union-find over gate names."""

    def __init__(self):
        self.parent = {}

    def find(self, a):
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            a = self.parent[a]
        return a

    def join(self, names):
        names = list(names)
        for other in names[1:]:
            self.parent[self.find(other)] = self.find(names[0])


def _direct_gates(expr):
    """Gates whose channels reach an Add in place (not through a zero-padded shortcut)."""
    if isinstance(expr, graph.Gate):
        return {expr.name}
    if isinstance(expr, graph.Union):
        return set().union(*(_direct_gates(p) for p in expr.parts))
    return set()


def thinned_widths(model, images):
    """Per SPMConv2D name, its thinned width; per ZeroPadShortcut name, its padded width."""
    decisions, _ = flops.collect_decisions(model, images)
    tracer, groups = graph.ChannelTracer(), _Groups()
    adds = []
    for node in graph.model_nodes(model):
        if isinstance(node.operation, SPMConv2D):
            groups.find(node.operation.name)
        if isinstance(node.operation, keras.layers.Add):
            members = set().union(*(_direct_gates(tracer(t)) for t in node.input_tensors))
            groups.join(members)
            adds.append((node, members))
    width = {}
    for root in {groups.find(n) for n in groups.parent}:
        names = [n for n in groups.parent if groups.find(n) == root and n in decisions]
        if not names:  # dense-mode layers keep their width
            continue
        union = np.zeros_like(decisions[names[0]])
        for n in names:
            union |= decisions[n]
        w = max(1, int(round(union.sum(axis=1).mean())))
        width.update({n: w for n in names})
    padded = {}
    for node, members in adds:
        for t in node.input_tensors:
            layer, _ = graph.producer(t)
            if isinstance(layer, ZeroPadShortcut) and members:
                padded[layer.name] = width[next(iter(members))]
    return width, padded


def thinned_model(model, images):
    """A dense model of `model`'s architecture at the thinned widths (random weights)."""
    width, padded = thinned_widths(model, images)
    functional = graph.as_functional(model)

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, SPMConv2D):
            config.update(filters=width.get(layer.name, layer.filters), mode="dense")
        if isinstance(layer, ZeroPadShortcut):
            config.update(filters=padded.get(layer.name, layer.filters))
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if isinstance(layer, ZeroPadShortcut):  # never pad below the thinned input
            layer.filters = max(layer.filters, args[0].shape[-1])
        return layer(*args, **kwargs)

    return keras.models.clone_model(functional, clone_function=clone, call_function=call)
