"""TensorFlow inference graphs of a gated model, one per export kind.

Each builder re-runs the Keras functional graph on concrete tensors, in a
`tf.function`, and replaces every SPMConv2D / GatedDepthwiseConv2D by folded weights
(`folding.py`) and plain TF ops that the TFLite converter maps to builtin ops:

- `masked`: the dense convolution times the per-sample channel scale, any batch.
- `portable` (batch 1): each convolution computed only over its live input channels
  and its open output channels. Channels open for every calibration sample go
  through a static CONV_2D (XNNPACK); the others are gathered at run time and
  multiplied as one matrix product. Exact for every input: a channel that
  calibration saw always open is still multiplied by its gate.
- `kernels` (batch 1): the masked graph, whose CONV_2D + MUL pairs `patching.py`
  then replaces by custom ops run by the C kernels in `tflite/` (static gates, known
  at export, give a thinned builtin convolution instead).
"""

import tempfile

import numpy as np
import tensorflow as tf

from sanp_keras import flops
from sanp_keras import graph
from sanp_keras.export import folding
from sanp_keras.layers import GatedDepthwiseConv2D
from sanp_keras.layers import SPMConv2D

KINDS = ("portable", "masked", "kernels")
GATE_SCOPE = "sanp_gate"  # every gate's ops are named under it (quantize.py keeps them float)


def gate_scale(x, gate):
    """The gate at inference, in TF ops: (decisions, scale), each (B, C_out).

    scale = d * sigmoid(g) (METHOD.md eq. 5-6), d * g for fbs, d for a gate with
    `rescale="none"`; d = 1[g > 0], the
    best channel always open (sanp, static); the top k scores (fixed_k; fbs: those
    above 0, and the best); all ones (dense). Its ops are named under GATE_SCOPE.
    """
    with tf.name_scope(GATE_SCOPE):
        return _gate_scale(x, gate)


def _gate_scale(x, gate):
    if gate.mode == "dense":
        ones = tf.ones((tf.shape(x)[0], gate.units), x.dtype)
        return ones, ones
    if gate.mode == "static":
        g = tf.broadcast_to(tf.constant(gate.static_scores)[None], (tf.shape(x)[0], gate.units))
    elif gate.mode == "fbs":
        s = tf.reduce_mean(tf.abs(x), axis=(1, 2))  # (B, C_in)
        g = tf.nn.relu(tf.matmul(s, gate.excite_kernel) + gate.excite_bias)  # (B, C_out)
    else:
        s = tf.reduce_mean(x, axis=(1, 2))  # (B, C_in)
        h = tf.nn.relu(tf.matmul(s, gate.squeeze_kernel) + gate.squeeze_bias)  # (B, hidden)
        g = tf.matmul(h, gate.excite_kernel) + gate.excite_bias  # (B, C_out)
    if gate.mode in ("fixed_k", "fbs"):
        kth = tf.math.top_k(g, gate.k, sorted=True).values[:, -1:]  # (B, 1)
        won = g >= kth
        if gate.mode == "fixed_k":
            d = tf.cast(won, x.dtype)
            return d, d if gate.rescale == "none" else d * tf.sigmoid(g)
        won = tf.logical_and(won, g > 0)  # fbs: the top k with a non-zero score
    else:
        won = g > 0
    best = tf.one_hot(tf.argmax(g, axis=-1), gate.units, dtype=x.dtype)
    d = tf.maximum(tf.cast(won, x.dtype), best)
    if gate.mode == "fbs":
        return d, d * g
    return d, d if gate.rescale == "none" else d * tf.sigmoid(g)


def _channels(v, rank):
    """(B, C) to (B, 1, ..., 1, C) of `rank` dims, which the converter folds into the
    broadcast of the op using it (`v[:, None, None, :]` costs a RESHAPE and a
    STRIDED_SLICE; masked_conv keeps that form: `patching.py` keys on its shape)."""
    return tf.reshape(v, (-1, *([1] * (rank - 2)), v.shape[-1]))


def _activate(y, name):
    if name == "relu":
        return tf.nn.relu(y)
    if name == "relu6":
        return tf.nn.relu6(y)
    return y


def _conv(x, kernel, bias, folded):
    y = tf.nn.conv2d(x, kernel, folded.strides, folded.padding.upper())
    return tf.nn.bias_add(y, bias)


def masked_conv(x, folded, always_on=None):
    """Dense convolution times the channel scale. Returns (y, decisions)."""
    y = _conv(x, folded.kernel, folded.bias, folded)  # (B, H', W', C_out)
    if folded.gate.mode == "dense":
        return _activate(y, folded.activation), None
    d, scale = gate_scale(x, folded.gate)
    return _activate(y * scale[:, None, None, :], folded.activation), d


def _same_padding(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def _patches(x, kernel_size, strides, padding):
    """im2col of a batch-1 map with a dynamic channel count: (H' * W', kh * kw * C).

    One GATHER of the padded map's pixels with a constant index, rather than a slice
    per tap: fewer ops for the runtime to re-prepare when the channel count changes.
    """
    (kh, kw), (sh, sw) = kernel_size, strides
    _, height, width, _ = x.shape
    if padding == "same":
        out_h, pad_h = _same_padding(height, kh, sh)
        out_w, pad_w = _same_padding(width, kw, sw)
        if any(pad_h) or any(pad_w):
            x = tf.pad(x, [[0, 0], list(pad_h), list(pad_w), [0, 0]])
    else:
        out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    padded_w = x.shape[2]
    pixels = tf.reshape(x, (x.shape[1] * padded_w, -1))  # (Hp * Wp, C)
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        return pixels, (out_h, out_w)
    rows = np.arange(out_h)[:, None, None, None] * sh + np.arange(kh)[None, None, :, None]
    cols = np.arange(out_w)[None, :, None, None] * sw + np.arange(kw)[None, None, None, :]
    index = (rows * padded_w + cols).reshape(-1).astype(np.int32)  # (H' W' kh kw,)
    taps = tf.gather(pixels, index)  # (H' * W' * kh * kw, C)
    return tf.reshape(taps, (out_h * out_w, -1)), (out_h, out_w)


def portable_conv(x, folded, always_on=None):
    """Batch-1 convolution over live inputs and open outputs. Returns (y, decisions).

    always_on: indices of the output channels computed by a static convolution
    (open for every calibration sample); the rest are gathered per sample. The
    string "dense" keeps the whole layer a dense CONV_2D times its gates (faster for
    a layer that prunes little).
    """
    if folded.gate.mode == "dense" or (isinstance(always_on, str) and always_on == "dense"):
        return masked_conv(x, folded)
    c_in, c_out = folded.kernel.shape[2], folded.filters
    static = np.asarray(sorted(always_on if always_on is not None else []), np.int64)
    if folded.gate.mode == "static":  # decisions known now: closed channels vanish
        open_now = np.flatnonzero(folded.gate.static_scores > 0)
        if open_now.size == 0:
            open_now = np.array([int(np.argmax(folded.gate.static_scores))])
        static, dynamic = open_now, np.array([], np.int64)
    else:
        dynamic = np.setdiff1d(np.arange(c_out), static)
    if static.size == c_out:  # every channel static: the dense form, nothing to scatter
        return masked_conv(x, folded)
    d, scale = gate_scale(x, folded.gate)  # (1, C_out) x2
    kh, kw = folded.kernel.shape[:2]
    height, width = x.shape[1], x.shape[2]
    if folded.padding == "same":
        out_h, out_w = -(-height // folded.strides[0]), -(-width // folded.strides[1])
    else:
        out_h = (height - kh) // folded.strides[0] + 1
        out_w = (width - kw) // folded.strides[1] + 1
    pixels = out_h * out_w

    columns = [tf.zeros((pixels, 1), x.dtype)]  # column 0: a pruned channel
    position = np.zeros(c_out, np.int64)  # where each output channel is found
    if static.size:
        y_static = _conv(x, folded.kernel[..., static], folded.bias[static], folded)
        columns.append(tf.reshape(y_static, (pixels, static.size)))
        position[static] = 1 + np.arange(static.size)
    if dynamic.size:
        d_dyn = tf.gather(d[0], dynamic)  # (|D|,)
        opened = tf.cast(d_dyn > 0, tf.int32)
        out_idx = tf.concat([tf.cast(tf.where(opened > 0)[:, 0], tf.int32), [0]], 0)  # (k+1,)
        # Live input channels: a channel that is zero everywhere contributes nothing.
        live = tf.reduce_max(tf.abs(x[0]), axis=(0, 1)) > 0  # (C_in,)
        in_idx = tf.cast(tf.where(live)[:, 0], tf.int32)
        x_idx = tf.concat([in_idx, [0]], 0)  # a dummy input keeps the size >= 1 ...
        w_idx = tf.concat([in_idx, [c_in]], 0)  # ... and meets a zero weight row
        kernel = np.concatenate(
            [folded.kernel[..., dynamic], np.zeros((kh, kw, 1, dynamic.size), np.float32)],
            axis=2,
        )  # (kh, kw, C_in + 1, |D|)
        w = tf.gather(tf.gather(tf.constant(kernel), w_idx, axis=2), out_idx, axis=3)
        w = tf.reshape(w, (-1, tf.shape(out_idx)[0]))  # (kh*kw*(k_in+1), k+1)
        patches, _ = _patches(tf.gather(x, x_idx, axis=3), (kh, kw), folded.strides,
                              folded.padding)  # (H'W', kh*kw*(k_in+1))
        y_dyn = tf.matmul(patches, w) + tf.gather(folded.bias[dynamic], out_idx)
        columns.append(y_dyn)
        rank = tf.cumsum(opened) - 1  # index of each open channel among the open ones
        first = 1 + static.size
        dyn_position = tf.where(opened > 0, first + rank, 0)  # (|D|,)
        order = np.concatenate([static, dynamic])
        inverse = np.argsort(order)
        static_position = tf.constant(position[static].astype(np.int32))
        position_t = tf.gather(tf.concat([static_position, dyn_position], 0), inverse)
    else:
        position_t = tf.constant(position.astype(np.int32))
    table = tf.concat(columns, axis=1)  # (H'W', 1 + |A| + k + 1)
    y = tf.reshape(tf.gather(table, position_t, axis=1), (1, out_h, out_w, c_out))
    return _activate(y * _channels(scale, 4), folded.activation), d


def kernels_conv(x, folded, builtin=False):
    """The masked form, that `patching.py` turns into a custom op.

    A static gate is known at export: that layer becomes a statically thinned builtin
    convolution. With `builtin`, the layer stays a dense CONV_2D (XNNPACK) times its
    scale, which is faster for a layer that prunes little: its scale is given the
    shape (1, 1, C) rather than (1, 1, 1, C), which `patching.py` leaves alone.
    """
    if folded.gate.mode == "static":
        return portable_conv(x, folded)
    if not builtin or folded.gate.mode == "dense":
        return masked_conv(x, folded)
    y = _conv(x, folded.kernel, folded.bias, folded)
    d, scale = gate_scale(x, folded.gate)
    return _activate(y * scale[:, None, :], folded.activation), d


def depthwise(x, decisions, folded):
    """A GatedDepthwiseConv2D: dense depthwise, masked by its producer's decisions."""
    y = tf.nn.depthwise_conv2d(
        x, folded.kernel, (1, *folded.strides, 1), folded.padding.upper()
    )
    y = tf.nn.bias_add(y, folded.bias) * _channels(tf.cast(decisions, x.dtype), 4)
    return _activate(y, folded.activation)


def inference_function(model, kind, plan=None, decisions=False, batch_size=None):
    """A `tf.function` computing `model`'s inference output with the `kind` graph.

    Args:
        model: a built Keras model holding SPMConv2D layers.
        kind: one of KINDS.
        plan: dict from SPMConv2D name to a per-layer choice: for portable, the output
            channels open for every calibration sample; for kernels, True to keep the
            layer a builtin convolution.
        decisions: also return every gate's decisions.
        batch_size: of the input signature; portable and kernels need 1.

    Returns:
        (function, input_signature). The function returns a dict: "output" (the
        model's output) and, with `decisions`, "decisions_NNN" (B, C_out) for the
        NNN-th non-dense SPMConv2D in `flops.gated_layers` order.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown export kind {kind!r}; expected one of {KINDS}.")
    functional = graph.as_functional(model)
    conv_fn = {"portable": portable_conv, "masked": masked_conv, "kernels": kernels_conv}[kind]
    plan = plan or {}
    folded = {}
    for layer in functional._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, SPMConv2D):
            folded[layer.name] = folding.fold_conv(layer)
        elif isinstance(layer, GatedDepthwiseConv2D):
            folded[layer.name] = folding.fold_depthwise(layer)
    shape = tuple(functional.inputs[0].shape)
    if kind != "masked" and batch_size != 1:
        if batch_size is not None:
            raise ValueError(f"Export kind {kind!r} is batch 1; got batch_size={batch_size!r}.")
        batch_size = 1
    signature = [tf.TensorSpec((batch_size, *shape[1:]), tf.float32, name="image")]
    recorded = {}

    def call(layer, *args, **kwargs):
        if isinstance(layer, SPMConv2D):
            y, d = conv_fn(args[0], folded[layer.name], plan.get(layer.name))
            if d is not None:
                recorded[layer.name] = d
            if kwargs.get("return_decisions", False):
                if d is None:
                    d = tf.ones((tf.shape(y)[0], layer.filters), y.dtype)
                return y, d
            return y
        if isinstance(layer, GatedDepthwiseConv2D):
            x, decisions = args[0]
            return depthwise(x, decisions, folded[layer.name])
        kwargs.pop("training", None)
        return layer(*args, **kwargs)

    gated = [layer.name for layer in flops.gated_layers(functional) if layer.mode != "dense"]

    @tf.function(input_signature=signature)
    def run(image):
        recorded.clear()
        out = functional._run_through_graph(image, operation_fn=lambda op: op, call_fn=call)
        result = {"output": out}
        if decisions:
            result.update({f"decisions_{i:03d}": recorded[n] for i, n in enumerate(gated)})
        return result

    return run, signature


def convert(function, signature, weights=(), quantize=None, calibration_data=None):
    """TFLite flatbuffer of a tf.function, builtin ops only (a Flex op fails loudly).

    weights: variables the function reads, tracked so that saving can freeze them.
    quantize: None (float32) or "int8" (post-training, ranges calibrated on
        `calibration_data`, gates float: `quantize.int8_flatbuffer`).
    """
    module = tf.Module()
    module.run = function
    module.weights = list(weights)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=function.get_concrete_function(*signature))
        if quantize == "int8":
            from sanp_keras.export import quantize as quantization

            return quantization.int8_flatbuffer(tmp, calibration_data, signature[0].shape[0])
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()
