"""Run parts of a network over the calibration batches, remembering what was computed.

The sequential mode needs, group after group, the inputs of that group's consumers in the
network pruned so far and in the original one. Re-running each network from its inputs
every time would cost one full pass per group; instead :class:`CachedNetwork` keeps the
tensors it computed (per batch), runs only the sub-graph between the nearest still-valid
cached tensors and the new targets, slices cached tensors when their channels are pruned,
and forgets tensors that a re-fitted layer made stale or that no later target needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx

from .data import CalibrationData, model_inputs
from .session import make_session, run


class Topology:
    """Who produces and who reads each tensor, by node index (fixed by the original graph)."""

    def __init__(self, model: onnx.ModelProto):
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        self.node_inputs: list[list[str]] = []
        for index, node in enumerate(model.graph.node):
            names = [n for n in node.input if n] + sorted(_implicit_inputs(node))
            self.node_inputs.append(names)
            for name in names:
                self.readers.setdefault(name, []).append(index)
            for name in node.output:
                if name:
                    self.producer[name] = index
        self.outputs = [[o for o in node.output if o] for node in model.graph.node]

    def descendants(self, nodes: set[int]) -> set[str]:
        """Every tensor computed downstream of (and including the outputs of) ``nodes``."""
        seen: set[str] = set()
        stack = [o for n in nodes for o in self.outputs[n]]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for reader in self.readers.get(name, []):
                stack.extend(self.outputs[reader])
        return seen

    def cut(self, targets: list[str], available: set[str]) -> tuple[list[int], set[str]]:
        """Nodes needed to compute ``targets`` from ``available`` tensors, graph inputs and
        constants, and the available tensors actually used."""
        nodes: set[int] = set()
        used: set[str] = set()
        stack = list(targets)
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in available:
                used.add(name)
                continue
            node = self.producer.get(name)
            if node is None:  # graph input or initializer
                continue
            nodes.add(node)
            stack.extend(self.node_inputs[node])
        return sorted(nodes), used


def _implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names read inside a node's sub-graphs (If/Loop/Scan)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            produced = {o for n in g.node for o in n.output} | {i.name for i in g.input} | \
                {i.name for i in g.initializer}
            for n in g.node:
                names.update(i for i in n.input if i and i not in produced)
                names.update(_implicit_inputs(n) - produced)
    return names


def submodel(model: onnx.ModelProto, topo: Topology, targets: list[str], available: dict[str, np.dtype]
             ) -> tuple[onnx.ModelProto | None, list[str]]:
    """A model computing ``targets`` from cached tensors (``available``: name -> dtype) and
    the graph inputs. Returns (None, []) when every target is already available."""
    nodes, used = topo.cut(targets, set(available))
    if not nodes:
        return None, []
    # an included multi-output node (Split) may recompute a cached tensor: use its own output
    used -= {o for i in nodes for o in topo.outputs[i]}
    graph = model.graph
    # inputs of the current nodes: a re-fit may have given a node a new bias initializer
    needed = {n for i in nodes for n in list(graph.node[i].input) + topo.node_inputs[i] if n}
    graph_inputs = [vi for vi in model_inputs(model) if vi.name in needed]
    feeds = [vi.name for vi in graph_inputs] + sorted(used)
    sub = onnx.helper.make_graph(
        [graph.node[i] for i in nodes], "eprune_sub",
        list(graph_inputs) + [onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(available[name])), None) for name in sorted(used)],
        [onnx.ValueInfoProto(name=t) for t in targets],
        [init for init in graph.initializer if init.name in needed])
    m = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
    m.functions.extend(model.functions)
    return m, feeds


class CachedNetwork:
    """One network (original or pruned) over the calibration batches, with a tensor cache."""

    def __init__(self, model: onnx.ModelProto, topo: Topology, data: CalibrationData, providers: list[str],
                 batch_size: int):
        self.model = model
        self.topo = topo
        self.data = data
        self.providers = providers
        self.batch_size = batch_size
        self.cache: dict[str, list[np.ndarray]] = {}

    def compute(self, targets: list[str], keep: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Yield, batch by batch, the values of ``targets``; cache them when ``keep``."""
        available = {name: batches[0].dtype for name, batches in self.cache.items()}
        sub, feeds = submodel(self.model, self.topo, [t for t in targets if t not in available], available)
        session = make_session(sub, self.providers) if sub is not None else None
        out_names = [o.name for o in sub.graph.output] if sub is not None else []
        fresh: dict[str, list[np.ndarray]] = {name: [] for name in out_names}
        last = self.data.batch_count(self.batch_size) - 1
        for b, batch in enumerate(self.data.batches(self.batch_size)):
            values = {}
            if session is not None:
                inputs = {name: batch[name] if name in batch else self.cache[name][b] for name in feeds}
                values = dict(zip(out_names, run(session, out_names, inputs)))
                for name in out_names:
                    fresh[name].append(values[name])
            if keep and b == last:
                # before the last yield: a caller that stops calling next() there (zip with
                # another network's batches) must still find the values cached
                self.cache.update(fresh)
            yield {t: values[t] if t in values else self.cache[t][b] for t in targets}

    def update(self, model: onnx.ModelProto, stale: set[str],
               slicers: dict[str, Callable[[np.ndarray], np.ndarray]]) -> None:
        """Switch to ``model``: drop stale cached tensors and slice the pruned ones."""
        self.model = model
        for name in list(self.cache):
            if name in stale:
                del self.cache[name]
            elif name in slicers:
                self.cache[name] = [slicers[name](v) for v in self.cache[name]]

    def retain(self, future_targets: list[str]) -> None:
        """Forget cached tensors that no later target will be computed from."""
        _, used = self.topo.cut(future_targets, set(self.cache))
        for name in list(self.cache):
            if name not in used:
                del self.cache[name]
