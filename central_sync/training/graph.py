"""ONNX surgery for head retraining: find a classifier's final linear layer, cut the graph at
its input (the embedding), and put a new linear layer with other weights in its place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

HEAD_WEIGHT = "retrained_head.weight"
HEAD_BIAS = "retrained_head.bias"


class GraphError(Exception):
    """The model's graph cannot be retrained this way; the message says why."""


@dataclass(frozen=True)
class HeadCut:
    """A classifier split at its final linear layer: `logits = embedding @ weight.T + bias`.

    `linear_output` is the tensor the linear layer writes: the model's output, or the input of
    a trailing Softmax that stays in place.
    """

    model: onnx.ModelProto
    embedding: str
    dim: int
    weight: np.ndarray  # [classes, dim], float32
    bias: np.ndarray  # [classes], float32
    linear_nodes: tuple[int, ...]  # indices of the nodes the new head replaces
    linear_output: str

    @property
    def classes(self) -> int:
        return int(self.weight.shape[0])


def cut_head(model: onnx.ModelProto) -> HeadCut:
    """Find the final linear layer of a one-output classifier (Gemm, or MatMul with an optional
    Add), possibly followed by a Softmax; GraphError says what was found instead."""
    graph = model.graph
    if len(graph.output) != 1:
        raise GraphError(f"the model has {len(graph.output)} outputs; head retraining takes a "
                         "classifier with one output (its class scores)")
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    index = producers.get(graph.output[0].name)
    if index is not None and graph.node[index].op_type == "Softmax":
        index = producers.get(graph.node[index].input[0])
    if index is None:
        raise GraphError("the model's output is not computed by any node")
    node = graph.node[index]
    if node.op_type == "Gemm":
        return _gemm_cut(model, index, constants)
    if node.op_type in ("Add", "MatMul"):
        return _matmul_cut(model, index, producers, constants)
    raise GraphError(f"the class scores come from a {node.op_type} node "
                     f"({node.name or 'unnamed'}); head retraining needs a final Gemm or MatMul "
                     "layer with constant weights")


def _gemm_cut(model: onnx.ModelProto, index: int, constants: dict[str, np.ndarray]) -> HeadCut:
    node = model.graph.node[index]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0):
        raise GraphError("the final Gemm transposes its input (transA=1); export the "
                         "classifier with a plain [batch, features] input")
    weight = _constant(constants, node.input[1], "weight")
    weight = weight.T if attrs.get("transB", 0) else weight  # now [dim, classes]
    if weight.ndim != 2:
        raise GraphError(f"the final Gemm's weight has shape {list(weight.shape)}, not 2-D")
    weight = (attrs.get("alpha", 1.0) * weight).T
    bias = np.zeros(weight.shape[0], dtype=np.float32)
    if len(node.input) > 2 and node.input[2]:
        bias = attrs.get("beta", 1.0) * _constant(constants, node.input[2], "bias")
    return _cut(model, node.input[0], weight, bias, (index,), node.output[0])


def _matmul_cut(model: onnx.ModelProto, index: int, producers: dict[str, int],
                constants: dict[str, np.ndarray]) -> HeadCut:
    graph = model.graph
    nodes, bias = (index,), np.zeros(0, dtype=np.float32)
    output = graph.node[index].output[0]
    if graph.node[index].op_type == "Add":
        add = graph.node[index]
        product, bias_name = (add.input[0], add.input[1]) if add.input[1] in constants \
            else (add.input[1], add.input[0])
        bias = _constant(constants, bias_name, "bias")
        if product not in producers or graph.node[producers[product]].op_type != "MatMul":
            raise GraphError("the class scores come from an Add that does not follow a MatMul; "
                             "head retraining needs a final Gemm or MatMul layer")
        index = producers[product]
        nodes = (index, nodes[0])
    matmul = graph.node[index]
    weight = _constant(constants, matmul.input[1], "weight")
    if weight.ndim != 2:
        raise GraphError(f"the final MatMul's weight has shape {list(weight.shape)}, not 2-D")
    _require_rank_2(model, matmul.input[0])
    if bias.size == 0:
        bias = np.zeros(weight.shape[1], dtype=np.float32)
    return _cut(model, matmul.input[0], weight.T, bias, nodes, output)


def _cut(model: onnx.ModelProto, embedding: str, weight: np.ndarray, bias: np.ndarray,
         nodes: tuple[int, ...], output: str) -> HeadCut:
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    bias = np.broadcast_to(np.asarray(bias, dtype=np.float32).reshape(-1), weight.shape[:1])
    return HeadCut(model, embedding, int(weight.shape[1]), weight, bias.copy(), nodes, output)


def _constant(constants: dict[str, np.ndarray], name: str, what: str) -> np.ndarray:
    if name not in constants:
        raise GraphError(f"the final layer's {what} {name!r} is not a constant of the model; "
                         "export it with its weights as initializers")
    value = constants[name]
    if value.dtype != np.float32:
        raise GraphError(f"the final layer's {what} is {value.dtype}; head retraining writes "
                         "float32 weights")
    return value


def _require_rank_2(model: onnx.ModelProto, tensor: str) -> None:
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in (*inferred.graph.value_info, *inferred.graph.input):
        if info.name == tensor:
            rank = len(info.type.tensor_type.shape.dim)
            if rank != 2:
                raise GraphError(f"the final MatMul's input {tensor!r} has rank {rank}; head "
                                 "retraining needs [batch, features]")
            return


def trunk(cut: HeadCut) -> onnx.ModelProto:
    """The frozen part alone: the model's input to the embedding [batch, dim]."""
    model = _without_head(cut)
    batch = model.graph.output[0].type.tensor_type.shape.dim[0]
    dim0 = batch.dim_param or (batch.dim_value if batch.dim_value > 0 else "batch")
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(
        cut.embedding, onnx.TensorProto.FLOAT, [dim0, cut.dim]))
    _prune(model)
    return model


def with_head(cut: HeadCut, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """The model with its final linear layer replaced: frozen trunk, then one Gemm giving
    `embedding @ weight.T + bias` under the original output name (a trailing Softmax kept)."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    bias = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if weight.ndim != 2 or weight.shape[1] != cut.dim or bias.shape != weight.shape[:1]:
        raise GraphError(f"a head of shape {list(weight.shape)} + {list(bias.shape)} does not "
                         f"fit embeddings of {cut.dim} values")
    model = _without_head(cut)
    graph = model.graph
    gemm = helper.make_node("Gemm", [cut.embedding, HEAD_WEIGHT, HEAD_BIAS], [cut.linear_output],
                            name="retrained_head", transB=1)
    position = min(cut.linear_nodes)
    graph.node.insert(position, gemm)
    graph.initializer.extend([numpy_helper.from_array(weight, HEAD_WEIGHT),
                              numpy_helper.from_array(bias, HEAD_BIAS)])
    classes = graph.output[0].type.tensor_type.shape.dim
    if len(classes) >= 2:
        classes[len(classes) - 1].Clear()
        classes[len(classes) - 1].dim_value = weight.shape[0]
    _prune(model)
    onnx.checker.check_model(model)
    return model


def _without_head(cut: HeadCut) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(cut.model)
    graph = model.graph
    for index in sorted(cut.linear_nodes, reverse=True):
        del graph.node[index]
    # Shapes recorded for tensors after the cut may no longer hold.
    stale = {cut.linear_output}
    kept = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing needs, then initializers nothing reads."""
    graph = model.graph
    needed = {out.name for out in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(_reads(node))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    constants = {init.name for init in graph.initializer}
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    # Older exports also list each initializer as a graph input: drop those no longer read.
    inputs = [info for info in graph.input if info.name in needed or info.name not in constants]
    del graph.input[:]
    graph.input.extend(inputs)


def _reads(node: onnx.NodeProto) -> set[str]:
    """The tensors a node reads, those its subgraphs (If, Loop, Scan) take from outside
    included."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        for graph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
            for inner in graph.node:
                names |= _reads(inner)
    return names
