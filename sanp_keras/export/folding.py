"""Gated layers reduced to plain arrays for export: conv + BN folded, gate weights.

An SPMConv2D at inference computes (METHOD.md section 3, eq. 4-6)

    y[c] = act( (W_c * x * gamma_c / sigma_c + beta_c - mu_c * gamma_c / sigma_c)
                * sigmoid(g[c]) * d[c] )

with sigma_c = sqrt(var_c + eps). Folding the batch norm into the convolution gives
`y[c] = act((W'_c * x + b'_c) * s[c])` with `s = d * sigmoid(g)` the per-sample
channel scale: zero for a pruned channel. The gate keeps its own small weights.
"""

import dataclasses

import numpy as np

from sanp_keras.layers import GatedDepthwiseConv2D
from sanp_keras.layers import SPMConv2D

ACTIVATIONS = {"linear": 0, "relu": 1, "relu6": 2}


@dataclasses.dataclass
class FoldedGate:
    """A SaliencyGate's inference weights (float32 arrays).

    mode: "sanp", "fixed_k", "static", "fbs" or "dense".
    squeeze_kernel (C_in, hidden), squeeze_bias (hidden,), excite_kernel
    (hidden, C_out), excite_bias (C_out,): the SE branch of sanp / fixed_k; fbs has
    only excite_kernel (C_in, C_out) and excite_bias, on mean |x|.
    static_scores (C_out,): static mode, computed once from its learned input.
    k: channels kept by fixed_k and fbs.
    rescale: "sigmoid" (a kept channel scaled by sigmoid(g)) or "none" (unscaled).
    """

    mode: str
    units: int
    squeeze_kernel: np.ndarray = None
    squeeze_bias: np.ndarray = None
    excite_kernel: np.ndarray = None
    excite_bias: np.ndarray = None
    static_scores: np.ndarray = None
    k: int = None
    rescale: str = "sigmoid"

    def scores(self, x):
        """NumPy oracle of g for a batch `x` (B, H, W, C_in): (B, C_out)."""
        batch = x.shape[0]
        if self.mode == "dense":
            return np.zeros((batch, self.units), np.float32)
        if self.mode == "static":
            return np.broadcast_to(self.static_scores, (batch, self.units))
        if self.mode == "fbs":
            s = np.abs(x).mean(axis=(1, 2))
            return np.maximum(s @ self.excite_kernel + self.excite_bias, 0.0)
        s = x.mean(axis=(1, 2))
        h = np.maximum(s @ self.squeeze_kernel + self.squeeze_bias, 0.0)
        return h @ self.excite_kernel + self.excite_bias


@dataclasses.dataclass
class FoldedDepthwise:
    """A GatedDepthwiseConv2D folded: kernel (kh, kw, C, 1), bias (C,).

    strides: (sh, sw); padding: "same" or "valid"; activation: a key of ACTIVATIONS.
    """

    name: str
    kernel: np.ndarray
    bias: np.ndarray
    strides: tuple
    padding: str
    activation: str


@dataclasses.dataclass
class FoldedConv(FoldedDepthwise):
    """A gated convolution with its batch norm folded in: the fields of FoldedDepthwise
    with kernel (kh, kw, C_in, C_out) and bias (C_out,), and its gate."""

    gate: FoldedGate = None

    @property
    def filters(self):
        return self.kernel.shape[-1]


def _activation_name(layer):
    name = getattr(layer.activation, "__name__", str(layer.activation))
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Layer '{layer.name}' has activation {name!r}; export supports "
            f"{sorted(ACTIVATIONS)} inside a gated layer (apply others as a separate layer)."
        )
    return name


def _fold_bn(kernel, bias, bn):
    """Folds inference batch norm into a kernel whose last axis is the channel axis."""
    if bn is None:
        return kernel, bias
    mean = np.asarray(bn.moving_mean, np.float64)
    var = np.asarray(bn.moving_variance, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros_like(mean)
    factor = gamma / np.sqrt(var + bn.epsilon)  # (C,)
    kernel = kernel.astype(np.float64) * factor
    bias = (bias.astype(np.float64) - mean) * factor + beta
    return kernel, bias


def fold_gate(gate):
    """The FoldedGate of a SaliencyGate."""
    folded = FoldedGate(mode=gate.mode, units=gate.units, rescale=gate.rescale)
    if gate.mode in ("sanp", "fixed_k"):
        folded.squeeze_kernel = np.asarray(gate.squeeze_kernel, np.float32)
        folded.squeeze_bias = np.asarray(gate.squeeze_bias, np.float32)
    if gate.mode in ("sanp", "fixed_k", "fbs"):
        folded.excite_kernel = np.asarray(gate.excite_kernel, np.float32)
        folded.excite_bias = np.asarray(gate.excite_bias, np.float32)
    if gate.mode == "static":
        folded.static_scores = np.asarray(gate.static_scores(), np.float32)
    if gate.mode in ("fixed_k", "fbs"):
        folded.k = gate.k
    return folded


def fold_conv(layer):
    """The FoldedConv of an SPMConv2D (conv + BN; the rescale stays per sample)."""
    if not isinstance(layer, SPMConv2D):
        raise TypeError(f"Expected an SPMConv2D, got {type(layer).__name__} '{layer.name}'.")
    kernel = np.asarray(layer.conv.kernel)
    bias = np.asarray(layer.conv.bias) if layer.conv.use_bias else np.zeros(layer.filters)
    kernel, bias = _fold_bn(kernel, bias, layer.bn)
    return FoldedConv(
        name=layer.name,
        kernel=kernel.astype(np.float32),
        bias=bias.astype(np.float32),
        strides=tuple(layer.strides),
        padding=layer.padding,
        activation=_activation_name(layer),
        gate=fold_gate(layer.gate),
    )


def fold_depthwise(layer):
    """The FoldedDepthwise of a GatedDepthwiseConv2D."""
    if not isinstance(layer, GatedDepthwiseConv2D):
        raise TypeError(
            f"Expected a GatedDepthwiseConv2D, got {type(layer).__name__} '{layer.name}'."
        )
    dw = layer.depthwise
    kernel = np.asarray(dw.kernel)  # (kh, kw, C, 1)
    channels = kernel.shape[2]
    bias = np.asarray(dw.bias) if dw.use_bias else np.zeros(channels)
    # The depthwise channel axis is axis 2: fold on a (kh, kw, 1, C) view.
    kernel, bias = _fold_bn(np.transpose(kernel, (0, 1, 3, 2)), bias, layer.bn)
    return FoldedDepthwise(
        name=layer.name,
        kernel=np.transpose(kernel, (0, 1, 3, 2)).astype(np.float32),
        bias=bias.astype(np.float32),
        strides=tuple(dw.strides),
        padding=dw.padding,
        activation=_activation_name(layer),
    )
