"""Flatbuffer surgery: gated convolutions of a masked TFLite model become custom ops.

The masked batch-1 graph computes every gated convolution as

    CONV_2D(x, filter, bias) -> MUL(., scale) [fused RELU / RELU6]

with `scale` (1, 1, 1, C_out) the gate's output. Each such pair is replaced by one
`SanpGatedConv2D` custom op with inputs (x, scale, filter, bias, params), which the C
kernel of `tflite/` computes over the open channels only. `params` is an int32
constant of shape (H_out, W_out, 8): its shape tells the kernel the output size at
prepare time, its first values [stride_h, stride_w, pad_top, pad_left, activation].

A layer whose SE gate (mode "sanp") is given in `se_gates` becomes a
`SanpSEGatedConv2D` instead, with inputs (x, gate, filter, bias, params) and outputs
(y, decisions): the kernel computes the gate from x itself (`gate` holds its weights,
`se_gate_tensor`), every use of the graph's decisions is rewired to the op's, and the
gate's builtin ops, now unused, are removed: about twelve tiny ops less per layer, each
of which costs the runtime more than its arithmetic. A layer kept a builtin convolution
(`CONV_2D -> MUL(scale)` with scale (1, 1, C_out)) whose gate is in `se_gates` keeps
its convolution, and its gate becomes one `SanpSEGate` op (x, gate) -> (scale,
decisions), likewise rewired.

A residual block's `ADD(y, shortcut)` [fused RELU / RELU6] after a SanpSEGatedConv2D
with no activation of its own, the ADD being y's only reader, is fused into the op:
the shortcut becomes its sixth input and the ADD's activation its activation (applied
after the addition). One partition of builtin ops less between two custom ops, whose
runtime cost exceeds the addition's (`_fuse_residual_adds`).
"""

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

CUSTOM_CODE = "SanpGatedConv2D"
SE_CUSTOM_CODE = "SanpSEGatedConv2D"
GATE_CUSTOM_CODE = "SanpSEGate"
PARAM_COUNT = 8
ALIGNMENT = 64
_ACTIVATIONS = {
    schema.ActivationFunctionType.NONE: 0,
    schema.ActivationFunctionType.RELU: 1,
    schema.ActivationFunctionType.RELU6: 2,
}


def _builtin(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _is_constant(model, tensor):
    buffer = model.buffers[tensor.buffer] if tensor.buffer else None
    return buffer is not None and (buffer.data is not None and len(buffer.data) > 0
                                   or bool(buffer.size))


def _constant_bytes(model, tensor):
    buffer = model.buffers[tensor.buffer] if tensor.buffer else None
    if buffer is None or buffer.data is None:
        return None
    return np.asarray(buffer.data, np.uint8).tobytes()


def _same_padding(size, kernel, stride):
    out = -(-size // stride)
    return max((out - 1) * stride + kernel - size, 0) // 2


def _add_constant(model, subgraph, array, name):
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(array.tobytes(), np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = np.asarray(array.shape, np.int32)
    tensor.type = {np.dtype(np.float32): schema.TensorType.FLOAT32,
                   np.dtype(np.int32): schema.TensorType.INT32}[array.dtype]
    tensor.buffer = len(model.buffers) - 1
    tensor.name = name
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _opcodes(model, *names):
    """The indices of the operator codes of the custom ops named (none created)."""
    return {i for i, code in enumerate(model.operatorCodes)
            if code.customCode in {*names, *(name.encode() for name in names)}}


def _custom_opcode(model, name=CUSTOM_CODE):
    """The index of the custom op's operator code, added if the model has none."""
    found = _opcodes(model, name)
    if found:
        return min(found)
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CUSTOM
    code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = name
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def se_gate_tensor(gate):
    """The `gate` input of SanpSEGatedConv2D for a FoldedGate of mode "sanp":
    (hidden + 1, C_in + 1 + C_out) float32, row j < hidden [W1[:, j], b1[j], W2[j, :]],
    the last row [0, ..., 0, b2] (tflite/sanp_gated_conv.h)."""
    w1, b1 = gate.squeeze_kernel, gate.squeeze_bias  # (C_in, hidden), (hidden,)
    w2, b2 = gate.excite_kernel, gate.excite_bias  # (hidden, C_out), (C_out,)
    c_in, hidden = w1.shape
    table = np.zeros((hidden + 1, c_in + 1 + w2.shape[1]), np.float32)
    table[:hidden, :c_in] = w1.T
    table[:hidden, c_in] = b1
    table[:hidden, c_in + 1:] = w2
    table[hidden, c_in + 1:] = b2
    return table


def filter_key(kernel):
    """How `gated_convs_to_custom_ops` finds a layer's CONV_2D: the bytes of its folded
    (kh, kw, C_in, C_out) kernel in TFLite's (C_out, kh, kw, C_in) layout."""
    return np.ascontiguousarray(np.transpose(kernel, (3, 0, 1, 2)), np.float32).tobytes()


def se_gates_of(folded_convs):
    """The `se_gates` of `gated_convs_to_custom_ops` for FoldedConvs: every "sanp"
    layer whose kernel no other of them shares (two layers, one filter: both keep
    their gate in builtin ops, exact either way). The kernels' gate scales by
    sigmoid(g): a gate with `rescale="none"` stays in builtin ops."""
    gates, seen = {}, set()
    for folded in folded_convs:
        if folded.gate.mode != "sanp" or folded.gate.rescale != "sigmoid":
            continue
        key = filter_key(folded.kernel)
        if key in seen:
            gates.pop(key, None)
        else:
            gates[key] = folded.gate
        seen.add(key)
    return gates


_SHAPE_OPS = (schema.BuiltinOperator.RESHAPE, schema.BuiltinOperator.STRIDED_SLICE,
              schema.BuiltinOperator.EXPAND_DIMS)


def _gate_decisions(model, ops, producer, scale):
    """The decisions tensor d of the gate whose scale (d * sigmoid(g), reshaped) is
    `scale`, or None where the graph does not have that form."""
    index = producer.get(scale)
    while index is not None and _builtin(model, ops[index]) in _SHAPE_OPS:
        index = producer.get(int(ops[index].inputs[0]))
    if index is None or _builtin(model, ops[index]) != schema.BuiltinOperator.MUL:
        return None
    a, b = (int(t) for t in ops[index].inputs)
    for d, sig in ((a, b), (b, a)):
        made_by = producer.get(sig)
        if (made_by is not None
                and _builtin(model, ops[made_by]) == schema.BuiltinOperator.LOGISTIC):
            return d
    return None


def _custom_op(model, name, inputs, outputs):
    op = schema.OperatorT()
    op.opcodeIndex = _custom_opcode(model, name)
    op.inputs = np.asarray(inputs, np.int32)
    op.outputs = np.asarray(outputs, np.int32)
    op.builtinOptionsType = schema.BuiltinOptions.NONE
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    return op


def _add_tensor(subgraph, shape, name):
    """A new float32 tensor that an operator makes; returns its index."""
    tensor = schema.TensorT()
    tensor.shape = np.asarray(shape, np.int32)
    tensor.type = schema.TensorType.FLOAT32
    tensor.buffer = 0
    tensor.name = name
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _drop_unused_ops(subgraph):
    """Removes the operators none of whose outputs is read (by an operator or as a
    graph output), until none is left."""
    ops = list(subgraph.operators)
    while True:
        read = {int(t) for t in subgraph.outputs}
        read.update(int(t) for op in ops for t in op.inputs if t >= 0)
        alive = [op for op in ops if any(int(t) in read for t in op.outputs)]
        if len(alive) == len(ops):
            break
        ops = alive
    subgraph.operators = ops


def _rewire(model, subgraph, old_to_new):
    """Every reader of a tensor in `old_to_new` (operators, graph and signature
    outputs) reads its replacement instead."""
    def swap(indices):
        return np.asarray([old_to_new.get(int(t), int(t)) for t in indices], np.int32)

    for op in subgraph.operators:
        op.inputs = swap(op.inputs)
    subgraph.outputs = swap(subgraph.outputs)
    for signature in model.signatureDefs or []:
        for tensor_map in signature.outputs or []:
            tensor_map.tensorIndex = old_to_new.get(tensor_map.tensorIndex,
                                                    tensor_map.tensorIndex)


def _check_order(model, subgraph):
    """Every operator input is a graph input, a constant or made by an earlier operator."""
    made = {int(t) for t in subgraph.inputs}
    for op in subgraph.operators:
        for t in op.inputs:
            t = int(t)
            if t >= 0 and t not in made and not _is_constant(model, subgraph.tensors[t]):
                raise RuntimeError(f"Tensor {subgraph.tensors[t].name!r} is read before it "
                                   "is made: the custom-op rewiring broke the graph's order.")
        made.update(int(t) for t in op.outputs)


def _fuse_residual_adds(model, subgraph):
    """Fuses into each SanpSEGatedConv2D (five inputs, activation NONE) the ADD that is
    the only reader of its output, when the ADD's other operand has the same shape and
    is made before the op: the op's sixth input becomes that operand, its activation
    the ADD's, its output the ADD's."""
    ops = subgraph.operators
    position = {int(t): i for i, op in enumerate(ops) for t in op.outputs}
    readers = {}
    for index, op in enumerate(ops):
        for t in op.inputs:
            readers.setdefault(int(t), []).append(index)
    graph_outputs = {int(t) for t in subgraph.outputs}
    se_codes = _opcodes(model, SE_CUSTOM_CODE)
    fused = set()
    for index, op in enumerate(ops):
        if op.opcodeIndex not in se_codes or len(op.inputs) != 5:
            continue
        y = int(op.outputs[0])
        params = np.frombuffer(_constant_bytes(model, subgraph.tensors[op.inputs[4]]),
                               np.int32).reshape(-1)
        if params[4] != 0 or y in graph_outputs or len(readers.get(y, [])) != 1:
            continue
        add = ops[readers[y][0]]
        if (_builtin(model, add) != schema.BuiltinOperator.ADD or len(add.inputs) != 2
                or add.builtinOptions.fusedActivationFunction not in _ACTIVATIONS):
            continue
        other = int(add.inputs[1]) if int(add.inputs[0]) == y else int(add.inputs[0])
        if (other == y or position.get(other, -1) >= index
                or list(subgraph.tensors[other].shape) != list(subgraph.tensors[y].shape)):
            continue
        params = params.copy()  # the op's own constant (made for it), rewritten in place
        params[4] = _ACTIVATIONS[add.builtinOptions.fusedActivationFunction]
        model.buffers[subgraph.tensors[op.inputs[4]].buffer].data = np.frombuffer(
            params.tobytes(), np.uint8)
        op.inputs = np.asarray([*op.inputs, other], np.int32)
        op.outputs = np.asarray([int(add.outputs[0]), *op.outputs[1:]], np.int32)
        fused.add(readers[y][0])
    subgraph.operators = [op for i, op in enumerate(ops) if i not in fused]


def _drop_unread_decisions(model, subgraph):
    """Leaves out the decisions output of each SE op that nothing reads (a model without
    decision outputs or depthwise layers): the dispatcher makes a buffer for every tensor
    of a call, a fraction of a microsecond each."""
    read = {int(t) for t in subgraph.outputs}
    read.update(int(t) for op in subgraph.operators for t in op.inputs if t >= 0)
    se_codes = _opcodes(model, SE_CUSTOM_CODE, GATE_CUSTOM_CODE)
    for op in subgraph.operators:
        if op.opcodeIndex in se_codes and len(op.outputs) == 2 and int(op.outputs[1]) not in read:
            op.outputs = np.asarray(op.outputs[:1], np.int32)


def _graph_index(ops):
    """(producer, consumers): the operator making each tensor, those reading it."""
    producer, consumers = {}, {}
    for index, op in enumerate(ops):
        for t in op.outputs:
            producer[int(t)] = index
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(index)
    return producer, consumers


def _conv_constants(model, subgraph, conv, mul, out_t, m, bias_dtype):
    """(bias, params) tensor indices of the custom op replacing CONV_2D `conv` and the
    MUL `mul` after it: the convolution's bias (zeros of `bias_dtype` where it has
    none) and the params constant (stride, padding, the MUL's activation)."""
    options = conv.builtinOptions
    x_t, filter_t = subgraph.tensors[conv.inputs[0]], subgraph.tensors[conv.inputs[1]]
    _, height, width, _ = (int(v) for v in x_t.shape)
    _, out_h, out_w, _ = (int(v) for v in out_t.shape)
    kh, kw = int(filter_t.shape[1]), int(filter_t.shape[2])
    pad_top = pad_left = 0
    if options.padding == schema.Padding.SAME:
        pad_top = _same_padding(height, kh, options.strideH)
        pad_left = _same_padding(width, kw, options.strideW)
    params = np.zeros((out_h, out_w, PARAM_COUNT), np.int32)
    params.flat[:5] = [options.strideH, options.strideW, pad_top, pad_left,
                       _ACTIVATIONS[mul.builtinOptions.fusedActivationFunction]]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else -1
    if bias < 0:
        bias = _add_constant(model, subgraph, np.zeros(int(filter_t.shape[0]), bias_dtype),
                             f"sanp_bias_{m}")
    return bias, _add_constant(model, subgraph, params, f"sanp_params_{m}")


def gated_convs_to_custom_ops(flatbuffer, expected=None, se_gates=None):
    """Returns `flatbuffer` with every CONV_2D -> MUL(scale) pair fused into a custom op.

    Args:
        flatbuffer: a batch-1 masked TFLite model (bytes).
        expected: the number of gated convolutions; a different count of matched
            pairs raises, rather than leaving some convolutions dense unnoticed.
        se_gates: dict from `filter_key(folded kernel)` to the FoldedGate (mode
            "sanp") of that convolution: those pairs become SanpSEGatedConv2D ops
            computing their gate in the kernel. The others keep the gate in builtin ops.
    """
    se_gates = se_gates or {}
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    subgraph = model.subgraphs[0]
    ops = subgraph.operators
    producer, consumers = _graph_index(ops)
    graph_outputs = {int(t) for t in subgraph.outputs}
    replaced, removed, rewired, inserted = {}, set(), {}, {}
    for m, mul in enumerate(ops):
        if _builtin(model, mul) != schema.BuiltinOperator.MUL:
            continue
        for conv_out, scale in (tuple(mul.inputs), tuple(mul.inputs)[::-1]):
            c = producer.get(int(conv_out))
            if c is None or _builtin(model, ops[c]) != schema.BuiltinOperator.CONV_2D:
                continue
            conv = ops[c]
            options = conv.builtinOptions
            x_t, filter_t = subgraph.tensors[conv.inputs[0]], subgraph.tensors[conv.inputs[1]]
            scale_t = subgraph.tensors[int(scale)]
            c_out = int(filter_t.shape[0])
            gate = se_gates.get(_constant_bytes(model, filter_t))
            if gate is not None and list(scale_t.shape) == [1, 1, c_out]:  # builtin form
                decisions = _gate_decisions(model, ops, producer, int(scale))
                if decisions is not None:
                    table = _add_constant(model, subgraph, se_gate_tensor(gate), f"sanp_gate_{m}")
                    rewired[int(scale)] = _add_tensor(subgraph, [1, 1, c_out], f"sanp_scale_{m}")
                    rewired[decisions] = _add_tensor(subgraph, [1, c_out], f"sanp_decisions_{m}")
                    inserted[c] = _custom_op(model, GATE_CUSTOM_CODE, [conv.inputs[0], table],
                                             [rewired[int(scale)], rewired[decisions]])
                break
            if (consumers.get(int(conv_out)) != [m] or int(conv_out) in graph_outputs
                    or options.fusedActivationFunction != schema.ActivationFunctionType.NONE
                    or options.dilationHFactor != 1 or options.dilationWFactor != 1
                    or _is_constant(model, scale_t)
                    or list(scale_t.shape) != [1, 1, 1, c_out]
                    or mul.builtinOptions.fusedActivationFunction not in _ACTIVATIONS):
                continue
            out_t = subgraph.tensors[mul.outputs[0]]
            bias, params = _conv_constants(model, subgraph, conv, mul, out_t, m, np.float32)
            inputs = [conv.inputs[0], int(scale), conv.inputs[1], bias, params]
            decisions = _gate_decisions(model, ops, producer, int(scale))
            if gate is not None and decisions is not None:  # the gate in the kernel
                table = se_gate_tensor(gate)
                c_in = int(x_t.shape[3])
                if table.shape[1] != c_in + 1 + c_out:
                    raise ValueError(f"The gate of the CONV_2D at operator {c} has "
                                     f"{table.shape[1]} columns; expected {c_in + 1 + c_out}.")
                inputs[1] = _add_constant(model, subgraph, table, f"sanp_gate_{m}")
                rewired[decisions] = _add_tensor(subgraph, [1, c_out], f"sanp_decisions_{m}")
                replaced[m] = _custom_op(model, SE_CUSTOM_CODE, inputs,
                                         [*mul.outputs, rewired[decisions]])
            else:
                replaced[m] = _custom_op(model, CUSTOM_CODE, inputs, mul.outputs)
            removed.add(c)
            break
    if expected is not None and len(replaced) != expected:
        raise RuntimeError(
            f"Found {len(replaced)} CONV_2D -> MUL(scale) pairs in the masked model, "
            f"expected {expected} gated convolutions: the converter changed the pattern."
        )
    new_ops = []
    for i, op in enumerate(ops):
        if i in inserted:  # a gate op, just before its convolution
            new_ops.append(inserted[i])
        if i not in removed:
            new_ops.append(replaced.get(i, op))
    subgraph.operators = new_ops
    if rewired:
        _rewire(model, subgraph, rewired)
        _drop_unused_ops(subgraph)
    _fuse_residual_adds(model, subgraph)
    _drop_unread_decisions(model, subgraph)
    _check_order(model, subgraph)
    se_codes = _opcodes(model, SE_CUSTOM_CODE)  # their second input is the gate's table
    constants = sorted({int(subgraph.tensors[t].buffer) for op in replaced.values()
                        for t in op.inputs[2:5]}
                       | {int(subgraph.tensors[op.inputs[1]].buffer) for op in replaced.values()
                          if op.opcodeIndex in se_codes}
                       | {int(subgraph.tensors[op.inputs[1]].buffer) for op in inserted.values()})
    return _pack_with_aligned_buffers(model, constants)


def _pack(model):
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _pack_with_aligned_buffers(model, buffer_indices, alignment=ALIGNMENT):
    """Packs `model` with the listed buffers stored after the flatbuffer, aligned.

    LiteRT hands a custom kernel its constant inputs as host-memory tensor buffers,
    which must be 64-byte aligned; data inside a flatbuffer is not. TFLite's buffer
    offset format (`Buffer.offset` from the file start, as for models over 2 GB) lets
    each constant start on an aligned offset of the file, which the runtime maps at an
    aligned address.
    """
    blobs = {}
    for index in buffer_indices:
        buffer = model.buffers[index]
        blobs[index] = np.asarray(buffer.data, np.uint8).tobytes()
        buffer.data = None
        buffer.offset, buffer.size = 1, len(blobs[index])  # placeholders: same packed size
    head = _pack(model)
    position, layout = len(head), {}
    for index, blob in blobs.items():
        position = -(-position // alignment) * alignment
        layout[index] = position
        position += len(blob)
    for index in blobs:
        model.buffers[index].offset = layout[index]
    packed = bytearray(_pack(model))
    if len(packed) != len(head):
        raise RuntimeError("Buffer offsets changed the flatbuffer's size; cannot align.")
    for index, blob in blobs.items():
        packed.extend(b"\0" * (layout[index] - len(packed)))
        packed.extend(blob)
    return bytes(packed)


INT8_CUSTOM_CODE = "SanpGatedConv2DInt8"
QUANT_COUNT = 8  # [x, y, s, out] (scale, zero point) pairs, then the filter's scales


def _per_tensor(tensor, what):
    """(scale, zero point) of a per-tensor int8 quantized tensor."""
    q = tensor.quantization
    if (tensor.type != schema.TensorType.INT8 or q is None or q.scale is None
            or len(q.scale) != 1):
        raise ValueError(f"The int8 graph's {what} {tensor.name!r} is not quantized per "
                         "tensor to int8: the int8 kernels cannot take it.")
    return float(q.scale[0]), float(q.zeroPoint[0])


def _int8_quant(subgraph, x, y, s, out, filt):
    """The `quant` input of SanpGatedConv2DInt8 (tflite/sanp_gated_conv.h)."""
    values = []
    for tensor, what in ((x, "input"), (y, "convolution output"), (s, "gate scale"),
                         (out, "output")):
        values.extend(_per_tensor(tensor, what))
    q = filt.quantization
    c_out = int(filt.shape[0])
    scales = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)
    zeros = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [])
    if (filt.type != schema.TensorType.INT8 or scales.size not in (1, c_out)
            or np.any(zeros != 0) or (scales.size > 1 and q.quantizedDimension != 0)):
        raise ValueError(f"The filter {filt.name!r} is not symmetric int8, per output "
                         "channel: the int8 kernels cannot take it.")
    return np.concatenate([np.asarray(values, np.float32),
                           np.broadcast_to(scales, (c_out,))]).astype(np.float32)


def int8_gated_convs_to_custom_ops(flatbuffer, expected=None):
    """Returns an int8 TFLite model (`quantize.int8_flatbuffer` of the `kernels` graph)
    with every CONV_2D -> MUL(QUANTIZE(scale)) fused into a SanpGatedConv2DInt8 op.

    Its inputs: x (int8), the gate's float scale (1, C_out) (the QUANTIZE's input, before
    the shape ops that make it (1, 1, 1, C_out): the kernel quantizes it as that op
    does), filter (int8, per-channel), bias (int32), params (as SanpGatedConv2D's) and
    quant (float32, QUANT_COUNT + C_out: the quantization of x, of the convolution's
    output, of the scale and of the output, then the filter's scales). The gates stay builtin float ops. `expected`: as in
    `gated_convs_to_custom_ops`.
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    subgraph = model.subgraphs[0]
    ops = subgraph.operators
    producer, consumers = _graph_index(ops)
    graph_outputs = {int(t) for t in subgraph.outputs}
    replaced, removed = {}, set()
    for m, mul in enumerate(ops):
        if _builtin(model, mul) != schema.BuiltinOperator.MUL or len(mul.inputs) != 2:
            continue
        for conv_out, scale_q in (tuple(mul.inputs), tuple(mul.inputs)[::-1]):
            c, qz = producer.get(int(conv_out)), producer.get(int(scale_q))
            while qz is not None and _builtin(model, ops[qz]) in _SHAPE_OPS:  # (1, C) -> 4-D
                qz = producer.get(int(ops[qz].inputs[0]))
            if (c is None or qz is None
                    or _builtin(model, ops[c]) != schema.BuiltinOperator.CONV_2D
                    or _builtin(model, ops[qz]) != schema.BuiltinOperator.QUANTIZE):
                continue
            conv, options = ops[c], ops[c].builtinOptions
            x_t, filter_t = subgraph.tensors[conv.inputs[0]], subgraph.tensors[conv.inputs[1]]
            scale = int(ops[qz].inputs[0])
            scale_t = subgraph.tensors[scale]
            c_out = int(filter_t.shape[0])
            if (consumers.get(int(conv_out)) != [m] or int(conv_out) in graph_outputs
                    or x_t.type != schema.TensorType.INT8
                    or scale_t.type != schema.TensorType.FLOAT32
                    or list(scale_t.shape) not in ([1, c_out], [1, 1, 1, c_out])
                    or list(subgraph.tensors[int(scale_q)].shape) != [1, 1, 1, c_out]
                    or options.fusedActivationFunction != schema.ActivationFunctionType.NONE
                    or options.dilationHFactor != 1 or options.dilationWFactor != 1
                    or mul.builtinOptions.fusedActivationFunction not in _ACTIVATIONS):
                continue
            out_t = subgraph.tensors[mul.outputs[0]]
            quant = _int8_quant(subgraph, x_t, subgraph.tensors[int(conv_out)],
                                subgraph.tensors[int(scale_q)], out_t, filter_t)
            bias, params = _conv_constants(model, subgraph, conv, mul, out_t, m, np.int32)
            replaced[m] = _custom_op(model, INT8_CUSTOM_CODE, [
                conv.inputs[0], scale, conv.inputs[1], bias, params,
                _add_constant(model, subgraph, quant, f"sanp_quant_{m}")], mul.outputs)
            removed.add(c)
            break
    if expected is not None and len(replaced) != expected:
        raise RuntimeError(
            f"Found {len(replaced)} CONV_2D -> MUL(QUANTIZE(scale)) triples in the int8 "
            f"model, expected {expected} gated convolutions: the converter changed the "
            "pattern.")
    subgraph.operators = [replaced.get(i, op) for i, op in enumerate(ops) if i not in removed]
    _drop_unused_ops(subgraph)  # the QUANTIZE of each scale
    _check_order(model, subgraph)
    constants = sorted({int(subgraph.tensors[t].buffer) for op in replaced.values()
                        for t in op.inputs[2:6]})
    return _pack_with_aligned_buffers(model, constants)
