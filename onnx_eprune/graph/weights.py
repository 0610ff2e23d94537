"""Read layer weights in the matrix form the solvers use."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .groups import ChannelGroup, Consumer, Producer, channel_major
from .model_io import tensor_array


def _array(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return numpy_helper.to_array(inits[name]).astype(np.float64)


def all_zero(inits: dict[str, onnx.TensorProto], name: str) -> bool:
    """Whether initializer ``name`` holds zeros only. A layer with such a weight computes its
    bias alone, whatever its input: losing input channels leaves its output as it was, with
    nothing to re-fit (the zero-initialised last convolution of a residual block, folded
    with its BatchNormalization, in an untrained export)."""
    tensor = inits.get(name)
    return tensor is not None and not np.any(tensor_array(tensor))


def consumer_matrix(inits: dict[str, onnx.TensorProto], cons: Consumer) -> tuple[np.ndarray, np.ndarray]:
    """``theta`` (M x D, columns channel-major like the input features) and ``bias`` (M,)
    of a consumer, with Gemm's alpha and beta folded in."""
    w = _array(inits, cons.weight)
    if cons.kind == "conv":
        theta = w.reshape(w.shape[0], -1)
    elif cons.kind == "convT":
        theta = transposed_to_conv(w).reshape(w.shape[1], -1)
    elif cons.kind == "gemm" and cons.gemm_trans_b:
        theta = w * cons.alpha
    else:
        theta = w.T * cons.alpha
    if cons.positions_last:
        theta = channel_major(theta, cons.s)
    M = theta.shape[0]
    bias = np.zeros(M)
    if cons.bias is not None:
        b = _array(inits, cons.bias).reshape(-1) * cons.beta
        bias = np.broadcast_to(b, (M,)).copy() if b.size in (1, M) else bias
    return theta, bias


def producer_rows(inits: dict[str, onnx.TensorProto], prod: Producer, channels: int) -> np.ndarray:
    """The weight rows of a producer that belong to its ``channels`` group channels (from
    ``prod.offset``, ``prod.factor`` rows per channel), flattened to (channels, -1)."""
    w = np.moveaxis(_array(inits, prod.weight), prod.weight_axis, 0)
    return w[prod.offset:prod.offset + channels * prod.factor].reshape(channels, -1)


def folded_producer_rows(nodes, inits: dict[str, onnx.TensorProto], group: ChannelGroup, prod: Producer
                         ) -> np.ndarray:
    """:func:`producer_rows`, each channel's row scaled as a BatchNormalization that reads
    the producer's output directly scales it (by ``scale / sqrt(var + epsilon)``): the
    filters of the network with that BatchNormalization folded in, as another exporter
    writes it, so that a ranking by filter norm does not depend on the exporter."""
    rows = producer_rows(inits, prod, group.channels)
    out = nodes[prod.node].output[0]
    for param in group.params:
        bn = nodes[param.node]
        if bn.op_type != "BatchNormalization" or bn.input[0] != out or param.tensor != bn.input[1] or \
                param.factor != 1 or prod.factor != 1:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        span = slice(param.offset, param.offset + group.channels)
        scale = _array(inits, bn.input[1]).reshape(-1)[span] / np.sqrt(_array(inits, bn.input[4]).reshape(-1)[span]
                                                                         + eps)
        return rows * scale[:, None]
    return rows


class BiasAdds:
    """The constants an exporter adds to layers' outputs as their biases (paddle2onnx's
    Conv + Add, tf2onnx's and PyTorch's MatMul + Add), read off ``graph`` with one pass over
    its nodes for every layer asked about."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.readers: dict[str, list[onnx.NodeProto]] = {}  # tensor -> the nodes that read it
        for node in graph.node:
            for name in dict.fromkeys(node.input):
                self.readers.setdefault(name, []).append(node)
        self.inits = {init.name: init for init in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def of(self, index: int, outputs: int, rank: int) -> str | None:
        """The bias constant of node ``index``'s output (``rank`` axes, ``outputs`` channels on
        axis 1): the other input of the one Add that alone reads the output, an initializer
        nothing else reads, that broadcasts one value per channel ((M,) or (1, M) for a
        matrix, (M, 1, 1) or (1, M, 1, 1) for a map). A re-fit's bias goes into it instead of
        a second bias before it; None when there is no such constant."""
        out = self.graph.node[index].output[0]
        readers = self.readers.get(out, [])
        if len(readers) != 1 or readers[0].op_type != "Add" or out in self.outputs:
            return None
        other = [name for name in readers[0].input if name != out]
        if len(other) != 1 or other[0] not in self.inits or len(self.readers.get(other[0], [])) != 1:
            return None
        dims = list(self.inits[other[0]].dims)
        if len(dims) > rank or rank < 2:
            return None
        aligned = [1] * (rank - len(dims)) + dims  # broadcasting aligns the last axes
        if aligned[1] != outputs or any(d != 1 for i, d in enumerate(aligned) if i != 1):
            return None
        return other[0]


def transposed_to_conv(w: np.ndarray) -> np.ndarray:
    """A ConvTranspose weight (C_in, C_out, *kernel) as the weight (C_out, C_in, *kernel) of
    the equivalent Conv: channel axes swapped, kernel flipped along every axis. Its own inverse."""
    flipped = (slice(None), slice(None)) + (slice(None, None, -1),) * (w.ndim - 2)
    return np.ascontiguousarray(np.swapaxes(w, 0, 1)[flipped])
