"""Flatbuffer surgery: gated convolutions of a masked TFLite model become custom ops.

The masked batch-1 graph computes every gated convolution as

    CONV_2D(x, filter, bias) -> MUL(., scale) [fused RELU / RELU6]

with `scale` (1, 1, 1, C_out) the gate's output. Each such pair is replaced by one
`SanpGatedConv2D` custom op with inputs (x, scale, filter, bias, params), which the C
kernel of `tflite/` computes over the open channels only. `params` is an int32
constant of shape (H_out, W_out, 8): its shape tells the kernel the output size at
prepare time, its first values [stride_h, stride_w, pad_top, pad_left, activation].
"""

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

CUSTOM_CODE = "SanpGatedConv2D"
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


def _custom_opcode(model):
    for index, code in enumerate(model.operatorCodes):
        if code.customCode in (CUSTOM_CODE, CUSTOM_CODE.encode()):
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CUSTOM
    code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = CUSTOM_CODE
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def gated_convs_to_custom_ops(flatbuffer, expected=None):
    """Returns `flatbuffer` with every CONV_2D -> MUL(scale) pair fused into a custom op.

    Args:
        flatbuffer: a batch-1 masked TFLite model (bytes).
        expected: the number of gated convolutions; a different count of matched
            pairs raises, rather than leaving some convolutions dense unnoticed.
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    subgraph = model.subgraphs[0]
    ops = subgraph.operators
    producer, consumers = {}, {}
    for index, op in enumerate(ops):
        for t in op.outputs:
            producer[int(t)] = index
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(index)
    graph_outputs = {int(t) for t in subgraph.outputs}
    replaced, removed = {}, set()
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
            if (consumers.get(int(conv_out)) != [m] or int(conv_out) in graph_outputs
                    or options.fusedActivationFunction != schema.ActivationFunctionType.NONE
                    or options.dilationHFactor != 1 or options.dilationWFactor != 1
                    or _is_constant(model, scale_t)
                    or list(scale_t.shape) != [1, 1, 1, c_out]
                    or mul.builtinOptions.fusedActivationFunction not in _ACTIVATIONS):
                continue
            out_t = subgraph.tensors[mul.outputs[0]]
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
                bias = _add_constant(model, subgraph, np.zeros(c_out, np.float32),
                                     f"sanp_bias_{m}")
            custom = schema.OperatorT()
            custom.opcodeIndex = _custom_opcode(model)
            custom.inputs = np.asarray(
                [conv.inputs[0], int(scale), conv.inputs[1], bias,
                 _add_constant(model, subgraph, params, f"sanp_params_{m}")], np.int32)
            custom.outputs = np.asarray(mul.outputs, np.int32)
            custom.builtinOptionsType = schema.BuiltinOptions.NONE
            custom.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
            replaced[m] = custom
            removed.add(c)
            break
    if expected is not None and len(replaced) != expected:
        raise RuntimeError(
            f"Found {len(replaced)} CONV_2D -> MUL(scale) pairs in the masked model, "
            f"expected {expected} gated convolutions: the converter changed the pattern."
        )
    subgraph.operators = [replaced.get(i, op) for i, op in enumerate(ops) if i not in removed]
    constants = sorted({int(subgraph.tensors[t].buffer) for op in replaced.values()
                        for t in op.inputs[2:]})
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
