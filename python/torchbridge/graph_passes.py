"""The TorchScript graph passes of the C++ runtime's variants (rowwise.cpp), mirrored in Python:
rewrite_channels_last and rewrite_rowwise put torchbridge's kernels in place of the aten operators
they take, under the same conditions, so that RuntimeMirror runs what the runtime runs."""

from __future__ import annotations

from typing import Any

import torch


def _float_constant(value, dim: int) -> bool:
    node = value.node()
    if node.kind() != "prim::Constant" or not node.hasAttribute("value") or node.kindOf("value") != "t":
        return False
    tensor = node.t("value")
    return (
        tensor.device.type == "cpu"
        and tensor.dtype == torch.float32
        and tensor.dim() == dim
        and tensor.layout == torch.strided
        and tensor.is_contiguous()
    )


#: Operators the "rowwise" variant replaces whatever their operands: aten name -> (inputs, the
#: torchbridge operator of the same schema, whose kernel takes small inputs and is ATen's otherwise).
SAME_SCHEMA = {
    "aten::layer_norm": (6, "torchbridge::layer_norm"),
    "aten::gelu": (2, "torchbridge::gelu"),
    "aten::scaled_dot_product_attention": (8, "torchbridge::attention"),
}


#: Operators the "channels_last" variant replaces, as SAME_SCHEMA does for "rowwise": activations
#: and global average pooling.
CHANNELS_LAST_SAME_SCHEMA = {
    "aten::silu": (1, "torchbridge::silu"),
    "aten::silu_": (1, "torchbridge::silu_"),
    "aten::adaptive_avg_pool2d": (2, "torchbridge::adaptive_avg_pool2d"),
}


def _replace(graph, node, kind: str) -> None:
    replacement = graph.create(kind, list(node.inputs()), node.outputsSize())
    replacement.insertBefore(node)
    for old, new in zip(node.outputs(), replacement.outputs()):
        new.setType(old.type())
        old.replaceAllUsesWith(new)
    node.destroy()


def _channels_last_same_schema(node) -> str | None:
    entry = CHANNELS_LAST_SAME_SCHEMA.get(node.kind())
    if entry and len(list(node.inputs())) == entry[0] and node.outputsSize() == 1:
        return entry[1]
    return None


_MISSING = object()  # an operand that is not a constant


def _constant(value) -> Any:
    return value.toIValue() if value.node().kind() == "prim::Constant" else _MISSING


def _constant_none(value) -> bool:
    return value.node().kind() == "prim::Constant" and value.type().kind() == "NoneType"


def _packed_linear(node) -> bool:
    """Whether an aten::linear node has a float constant weight and a float constant bias or none:
    what torchbridge::packed_linear takes with that weight packed once."""
    inputs = list(node.inputs())
    return (
        node.kind() == "aten::linear"
        and len(inputs) == 3
        and node.outputsSize() == 1
        and _float_constant(inputs[1], 2)
        and (_constant_none(inputs[2]) or _float_constant(inputs[2], 1))
    )


def _pointwise_conv(node) -> bool:
    """Whether an aten::conv2d node is a 1x1 convolution (stride 1, no padding, one group) of a
    constant float weight and a constant bias or none: what torchbridge::pointwise_conv takes."""
    inputs = list(node.inputs())
    if node.kind() != "aten::conv2d" or len(inputs) != 7 or node.outputsSize() != 1:
        return False
    weight, bias = inputs[1], inputs[2]
    return (
        _float_constant(weight, 4)
        and tuple(weight.toIValue().shape[2:]) == (1, 1)
        and (_constant_none(bias) or _float_constant(bias, 1))
        and [_constant(value) for value in inputs[3:]] == [[1, 1], [0, 0], [1, 1], 1]
    )


def _conv2d_constants(node):
    """An aten::conv2d node's (weight value, stride, padding, dilation, groups) where it has one
    output, a constant float bias or none, stride, padding and dilation constant pairs and groups a
    constant int (conv_constants in rowwise.cpp); None otherwise."""
    inputs = list(node.inputs())
    if node.kind() != "aten::conv2d" or len(inputs) != 7 or node.outputsSize() != 1:
        return None
    if not (_constant_none(inputs[2]) or _float_constant(inputs[2], 1)):
        return None
    stride, padding, dilation, groups = (_constant(value) for value in inputs[3:])
    if not all(isinstance(v, list) and len(v) == 2 for v in (stride, padding, dilation)) or not isinstance(groups, int):
        return None
    return inputs[1], stride, padding, dilation, groups


def _depthwise_conv(node) -> bool:
    """Whether an aten::conv2d node is a depthwise convolution (groups = channels, a multiple of 8,
    one filter each) of a constant float weight of finite values and a constant bias or none, with
    constant stride and padding and no dilation: what torchbridge::depthwise_conv takes."""
    conv = _conv2d_constants(node)
    if conv is None or not _float_constant(conv[0], 4):
        return False
    weight, _, _, dilation, groups = conv
    channels, per_group = weight.toIValue().shape[:2]
    return (
        per_group == 1 and channels % 8 == 0 and dilation == [1, 1] and groups == channels
        and bool(torch.isfinite(weight.toIValue()).all())
    )


def _stem_conv(node) -> bool:
    """Whether an aten::conv2d node is a CNN's first convolution (groups 1, up to STEM_MAX_CHANNELS
    input channels and STEM_MAX_TAPS taps, kh x kw x C_in) of a constant float weight (any layout)
    and a constant bias or none, with constant stride and padding and no dilation: what the pass gives
    torchbridge::stem_conv."""
    from torchbridge import _C

    conv = _conv2d_constants(node)
    if conv is None or conv[0].node().kind() != "prim::Constant":
        return False
    weight, _, _, dilation, groups = conv
    tensor = weight.toIValue()  # in any layout (the variant made it channels-last): the pass packs a copy
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu" or tensor.dtype != torch.float32:
        return False
    if tensor.dim() != 4 or tensor.layout != torch.strided:
        return False
    _, channels, kh, kw = tensor.shape
    small = channels <= _C.STEM_MAX_CHANNELS and channels * kh * kw <= _C.STEM_MAX_TAPS
    return small and dilation == [1, 1] and groups == 1


def _replace_depthwise(graph, node, kind: str = "torchbridge::depthwise_conv") -> None:
    """`node` (input, weight, bias, stride, padding, ...) becomes `kind`(input, weight, packed, bias,
    stride, padding), `packed` a new constant: for torchbridge::depthwise_conv the weight as (kh,
    kw, C), for torchbridge::stem_conv as pack_stem_weight packs it."""
    inputs = list(node.inputs())
    ops = torch.ops.torchbridge
    pack = ops.pack_depthwise_weight if kind == "torchbridge::depthwise_conv" else ops.pack_stem_weight
    with graph.insert_point_guard(node):
        packed = graph.insertConstant(pack(inputs[1].toIValue()))
    replacement = graph.create(kind, [inputs[0], inputs[1], packed, *inputs[2:5]], 1)
    replacement.insertBefore(node)
    replacement.output().setType(node.output().type())
    node.output().replaceAllUsesWith(replacement.output())
    node.destroy()


def _replace_with_packed(graph, node, kind: str) -> None:
    """`node` (input, weight, bias, ...) becomes `kind`(input, weight, packed, bias), `packed` a new
    constant: the constant weight as a (rows, columns) matrix (a 1x1 convolution's too), packed once."""
    inputs = list(node.inputs())
    weight = inputs[1].toIValue()
    with graph.insert_point_guard(node):
        matrix = weight.reshape(weight.shape[0], weight.shape[1]).contiguous()
        packed = graph.insertConstant(torch.ops.torchbridge.pack_linear_weight(matrix))
    replacement = graph.create(kind, [inputs[0], inputs[1], packed, inputs[2]], 1)
    replacement.insertBefore(node)
    replacement.output().setType(node.output().type())
    node.output().replaceAllUsesWith(replacement.output())
    node.destroy()


#: ATen's fused operators for a whole transformer layer or attention block (nn.TransformerEncoderLayer's
#: and nn.MultiheadAttention's inference fast paths) -> (torchbridge's operator of the same operands
#: and the weights packed, inputs, outputs, the linear layers' weights by operand, the operands that
#: are the module's tensors as a range): fused_layers() in rowwise.cpp.
FUSED_LAYERS = {
    "aten::_transformer_encoder_layer_fwd": ("torchbridge::encoder_layer", 20, 1, (3, 5, 14, 16), range(3, 18)),
    "aten::_native_multi_head_attention": ("torchbridge::multi_head_attention", 13, 2, (5, 7), range(5, 9)),
}


def _fused_layer(node) -> str | None:
    """torchbridge's operator for a node of FUSED_LAYERS whose weights are float constants (a mask,
    which a scripted model computes, goes to ATen's operator at run time); None for other nodes."""
    fused = FUSED_LAYERS.get(node.kind())
    if fused is None or node.inputsSize() != fused[1] or node.outputsSize() != fused[2]:
        return None
    return fused[0] if all(_float_constant(node.inputsAt(i), 2) for i in fused[3]) else None


def _replace_fused_layer(graph, node) -> None:
    """`node` becomes torchbridge's operator of the same operands and its weights packed, a new
    constant list."""
    kind, _, outputs, weights, _ = FUSED_LAYERS[node.kind()]
    inputs = list(node.inputs())
    with graph.insert_point_guard(node):
        packed = graph.insertConstant([torch.ops.torchbridge.pack_linear_weight(inputs[i].toIValue()) for i in weights])
    replacement = graph.create(kind, [*inputs, packed], outputs)
    replacement.insertBefore(node)
    for old, new in zip(node.outputs(), replacement.outputs()):
        new.setType(old.type())
        old.replaceAllUsesWith(new)
    node.destroy()


def _all_nodes(block):
    """Every node of a block, those in the blocks of control flow too (all_nodes in rowwise.cpp)."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _all_nodes(inner)


def fold_fused_layer_weights(module) -> int:
    """fold_fused_layer_weights in rowwise.cpp: freezing leaves nn.MultiheadAttention's
    in_proj_weight and in_proj_bias as attributes of a scripted module; in each node of
    FUSED_LAYERS in `module`'s forward (in any block), each tensor operand that is such an attribute
    becomes a constant of its value, so that the passes can pack it. Returns how many operands it
    folded."""
    graph = module.graph
    inputs = list(graph.inputs())
    self = inputs[0] if inputs else None

    def resolve(value):
        names = []
        while value is not self and value.node().kind() == "prim::GetAttr" and value.node().inputsSize() == 1:
            names.append(value.node().s("name"))
            value = value.node().inputsAt(0)
        if value is not self or not names:
            return None
        current = module._c
        for name in reversed(names):
            if not isinstance(current, torch._C.ScriptModule) or not current.hasattr(name):
                return None
            current = current.getattr(name)
        return current

    folded = 0
    for node in list(_all_nodes(graph.block())):
        fused = FUSED_LAYERS.get(node.kind())
        if fused is None or node.inputsSize() != fused[1]:
            continue
        for i in fused[4]:
            if node.inputsAt(i).node().kind() != "prim::GetAttr":
                continue
            attribute = resolve(node.inputsAt(i))
            if isinstance(attribute, torch.Tensor):
                with graph.insert_point_guard(node):
                    node.replaceInput(i, graph.insertConstant(attribute.detach()))
                folded += 1
    return folded


def rewrite_channels_last(graph) -> int:
    """The runtime's pass for "channels_last" (rewrite_channels_last in rowwise.cpp), on a frozen
    graph: each operator of CHANNELS_LAST_SAME_SCHEMA becomes its torchbridge counterpart, each 1x1
    convolution of a constant float weight torchbridge::pointwise_conv, given that weight packed once as a
    (C_out, C) matrix, each depthwise convolution that _depthwise_conv accepts
    torchbridge::depthwise_conv, given its weight packed as (kh, kw, C), each convolution that
    _stem_conv accepts (a CNN's first) torchbridge::stem_conv, and each linear layer of a
    float constant weight (the classifier head) torchbridge::packed_linear and each encoder layer
    torchbridge::encoder_layer and each attention block torchbridge::multi_head_attention, as
    rewrite_rowwise does; in any block of the graph. Returns how many."""
    from torchbridge import _C  # noqa: F401  (registers the torchbridge operators)

    found = []
    for node in _all_nodes(graph.block()):
        if kind := _channels_last_same_schema(node):
            found.append((node, kind))
        elif _packed_linear(node):
            found.append((node, "torchbridge::packed_linear"))
        elif fused := _fused_layer(node):
            found.append((node, fused))
        elif _pointwise_conv(node):
            found.append((node, "torchbridge::pointwise_conv"))
        elif _depthwise_conv(node):
            found.append((node, "torchbridge::depthwise_conv"))
        elif _stem_conv(node):
            found.append((node, "torchbridge::stem_conv"))
    for node, kind in found:
        if kind in ("torchbridge::pointwise_conv", "torchbridge::packed_linear"):
            _replace_with_packed(graph, node, kind)
        elif kind in ("torchbridge::encoder_layer", "torchbridge::multi_head_attention"):
            _replace_fused_layer(graph, node)
        elif kind in ("torchbridge::depthwise_conv", "torchbridge::stem_conv"):
            _replace_depthwise(graph, node, kind)
        else:
            _replace(graph, node, kind)
    return len(found)


def rewrite_rowwise(graph) -> int:
    """The runtime's pass for "rowwise" (rewrite_rowwise in rowwise.cpp), on a frozen graph: each
    aten::linear whose weight (and bias, if any) is a float constant becomes
    torchbridge::packed_linear on that weight packed once (pack_linear_weight), each aten::lstm
    with constant parameters torchbridge::rowwise_lstm, each node of FUSED_LAYERS (of constant
    weights) torchbridge's operator, given the weights packed, and the operators of
    SAME_SCHEMA their torchbridge counterparts; in any block of the graph. Returns how many."""
    from torchbridge import _C  # noqa: F401  (registers the torchbridge operators)

    found = []
    for node in _all_nodes(graph.block()):
        inputs = list(node.inputs())
        if _packed_linear(node):
            found.append((node, "torchbridge::packed_linear"))  # with the weight packed once
        elif fused := _fused_layer(node):
            found.append((node, fused))
        elif (
            node.kind() == "aten::lstm"
            and len(inputs) == 9
            and node.outputsSize() == 3
            and inputs[1].type().kind() == "ListType"  # lstm.input, not lstm.data
            and inputs[2].node().kind() == "prim::Constant"
        ):
            found.append((node, "torchbridge::rowwise_lstm"))
        elif node.kind() in SAME_SCHEMA and len(inputs) == SAME_SCHEMA[node.kind()][0] and node.outputsSize() == 1:
            found.append((node, SAME_SCHEMA[node.kind()][1]))
    for node, kind in found:
        if kind == "torchbridge::packed_linear":
            _replace_with_packed(graph, node, kind)
        elif kind in ("torchbridge::encoder_layer", "torchbridge::multi_head_attention"):
            _replace_fused_layer(graph, node)
        elif kind == "torchbridge::rowwise_lstm":
            _replace_lstm(graph, node)
        else:
            _replace(graph, node, kind)
    return len(found)


def _packed_lstm_weights(node) -> list[torch.Tensor]:
    """packed_lstm_weights in rowwise.cpp: for an aten::lstm node of constant parameters, each layer's
    and direction's input and recurrent weights packed, in that order; empty where they are not
    float matrices in the layout the kernel takes."""
    inputs = list(node.inputs())
    params, has_biases = _constant(inputs[2]), _constant(inputs[3])
    if not isinstance(params, list) or not isinstance(has_biases, bool):
        return []
    per_layer = 4 if has_biases else 2
    if len(params) % per_layer:
        return []
    packed = []
    for i in range(0, len(params), per_layer):
        w_ih, w_hh = params[i], params[i + 1]
        plain = all(
            isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.layout == torch.strided
            and w.device.type == "cpu" and not w.requires_grad and w.dim() == 2
            for w in (w_ih, w_hh)
        )
        if not plain or w_ih.shape[0] != w_hh.shape[0] or w_hh.shape[0] != 4 * w_hh.shape[1]:
            return []
        packed += [torch.ops.torchbridge.pack_linear_weight(w.contiguous()) for w in (w_ih, w_hh)]
    return packed


def _replace_lstm(graph, node) -> None:
    """`node` (aten::lstm.input) becomes torchbridge::rowwise_lstm of the same operands and its
    weights packed, a new constant."""
    weights = _packed_lstm_weights(node)
    if weights:
        with graph.insert_point_guard(node):
            packed = graph.insertConstant(weights)
    else:  # an empty list of tensors: a constant would not know its type
        empty = graph.create("prim::ListConstruct", [], 1)
        empty.output().setType(torch._C.ListType(torch._C.TensorType.get()))
        empty.insertBefore(node)
        packed = empty.output()
    replacement = graph.create("torchbridge::rowwise_lstm", [*node.inputs(), packed], node.outputsSize())
    replacement.insertBefore(node)
    for old, new in zip(node.outputs(), replacement.outputs()):
        new.setType(old.type())
        old.replaceAllUsesWith(new)
    node.destroy()


def has_rowwise_ops(module) -> bool:
    """Whether a TorchScript module calls aten::linear, aten::lstm or an operator of SAME_SCHEMA
    anywhere in forward (submodules inlined): what the "rowwise" variant rewrites."""
    graph = module.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    return any(graph.findAllNodes(kind) for kind in ("aten::linear", "aten::lstm", *SAME_SCHEMA))
