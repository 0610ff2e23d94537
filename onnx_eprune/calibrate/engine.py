"""Run parts of a network over the calibration batches, remembering what was computed.

The sequential mode needs, group after group, the inputs of that group's consumers in the
network pruned so far and in the original one. Re-running each network from its inputs
every time would cost one full pass per group; instead :class:`CachedNetwork` keeps the
tensors it computed (per batch), runs only the sub-graph between the nearest still-valid
cached tensors and the new targets, slices cached tensors when their channels are pruned,
and forgets tensors that a re-fitted layer made stale or that no later target needs. It
also keeps the *frontier* of each computed sub-graph (tensors that nodes outside it read,
such as a residual stream between blocks), so that the next stage starts there rather
than at the graph inputs.

Cached values live in memory up to a byte budget that all networks of a run share
(:class:`CacheSpace`) and beyond it in scratch files, read back one batch at a time, so that
resident memory does not grow with the number of calibration samples.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import onnx

from ..graph.model_io import node_reads
from .data import CalibrationData, model_inputs
from .scratch import ScratchFile
from .session import fixed_batch, make_session, run, unbatched_inputs


class Topology:
    """Who produces and who reads each tensor, by node index (fixed by the original graph)."""

    def __init__(self, model: onnx.ModelProto):
        self.producer: dict[str, int] = {}
        self.readers: dict[str, list[int]] = {}
        self.node_inputs: list[list[str]] = []
        for index, node in enumerate(model.graph.node):
            names = node_reads(node)
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


def submodel(model: onnx.ModelProto, topo: Topology, targets: list[str], available: dict[str, np.dtype]
             ) -> tuple[onnx.ModelProto | None, list[str]]:
    """A model computing ``targets`` from cached tensors (``available``: name -> dtype) and
    the graph inputs. Returns (None, []) when every target is already available.

    Only floating-point tensors are fed; integer and boolean ones (shape arithmetic) are
    computed again from their sources. onnxruntime's shape inference reads their values and
    lengths, which a fed input of unknown shape hides: a Resize whose ``sizes`` concatenates
    a fed shape with a computed one fails to load (torchvision's segmentation heads)."""
    fed = {name for name, dtype in available.items() if np.dtype(dtype).kind == "f"}
    nodes, used = topo.cut(targets, fed)
    # a target no node computes and no cache holds is an initializer (a constant graph
    # output, such as a detector's anchors, once normalisation folded it) or a graph input
    sourced = [t for t in targets if t not in fed and t not in topo.producer]
    if not nodes and not sourced:
        return None, []
    # an included multi-output node (Split) may recompute a cached tensor: use its own output
    used -= {o for i in nodes for o in topo.outputs[i]}
    graph = model.graph
    # inputs of the current nodes: a re-fit may have given a node a new bias initializer
    needed = {n for i in nodes for n in list(graph.node[i].input) + topo.node_inputs[i] if n} | set(sourced)
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


# Activations cached between passes (the original network's consumer inputs from the
# one-shot pass, each network's tensors from one sequential stage to the next) stay in
# memory up to this many bytes and go to scratch files beyond it, so that peak memory does
# not grow with the number of samples; past the disk share they are computed again.
CACHE_MEMORY_BYTES = 512 << 20
CACHE_DISK_SHARE = 0.5      # of the free space in the temporary directory
CACHE_DISK_BYTES = 64 << 30  # at most


class CacheSpace:
    """Bytes that cached tensors may take in memory and on disk, shared by every network of a
    run; tensors that fit neither are not cached (and computed again when needed)."""

    def __init__(self, memory_bytes: int, disk_bytes: int):
        self.memory_left = memory_bytes
        self.disk_left = disk_bytes
        self._dir: str | None = None
        self._files = 0

    @classmethod
    def default(cls) -> "CacheSpace":
        """CACHE_MEMORY_BYTES in memory, and scratch files in the temporary directory up to
        CACHE_DISK_SHARE of its free space."""
        try:
            free = shutil.disk_usage(tempfile.gettempdir()).free
        except OSError:
            free = 0
        return cls(CACHE_MEMORY_BYTES, int(min(CACHE_DISK_BYTES, CACHE_DISK_SHARE * free)))

    def new_file(self) -> str:
        if self._dir is None:
            remove_abandoned_scratch()
            self._dir = tempfile.mkdtemp(prefix=f"{_SCRATCH}{os.getpid()}@{socket.gethostname()}@")
        self._files += 1
        return os.path.join(self._dir, f"{self._files}.bin")

    def close(self) -> None:
        """Remove the scratch files (the run is over)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# Scratch folders are named onnx-eprune-cache-PID@HOST@XXXX (no host name holds an @): a
# run that ends removes its own; one that was killed (out of memory) cannot, and the next
# run on the host removes it.
_SCRATCH = "onnx-eprune-cache-"


def remove_abandoned_scratch() -> list[str]:
    """Remove the scratch folders that runs on this host left when killed (their process is
    gone); returns their paths. Only where a process can be probed without signalling it
    (POSIX)."""
    if os.name != "posix":
        return []
    host = socket.gethostname()
    removed = []
    for entry in os.scandir(tempfile.gettempdir()):
        parts = entry.name[len(_SCRATCH):].split("@") if entry.name.startswith(_SCRATCH) else []
        if len(parts) == 3 and parts[0].isdigit() and parts[1] == host and entry.is_dir(follow_symlinks=False) \
                and not _running(int(parts[0])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class StoredBatches:
    """The per-batch values of one tensor: a list in memory, or one scratch file."""

    def __init__(self, space: CacheSpace, nbytes: int, path: str | None):
        self.space = space
        self.bytes = nbytes                 # reserved in the space (memory when path is None)
        self.file = None if path is None else ScratchFile(path)
        self.values: list[np.ndarray] = []
        self.records: list[tuple[int, tuple[int, ...], np.dtype]] = []   # each batch's place on disk
        self.dtype: np.dtype | None = None

    @classmethod
    def reserve(cls, space: CacheSpace, estimate: int, memory: bool = True) -> "StoredBatches | None":
        """Room for ``estimate`` bytes, in memory if they fit (and ``memory``), else on disk;
        None if neither."""
        if memory and estimate <= space.memory_left:
            space.memory_left -= estimate
            return cls(space, estimate, None)
        if estimate <= space.disk_left:
            space.disk_left -= estimate
            return cls(space, estimate, space.new_file())
        return None

    def append(self, value: np.ndarray) -> None:
        self.dtype = value.dtype
        if self.file is None:
            self.values.append(value)
        else:
            self.records.append(self.file.append(value))

    def __len__(self) -> int:
        return len(self.values) if self.file is None else len(self.records)

    def __getitem__(self, b: int) -> np.ndarray:
        return self.values[b] if self.file is None else self.file.read(self.records[b])

    def transform(self, fn: Callable[[np.ndarray], np.ndarray]) -> "StoredBatches":
        """The values mapped through ``fn`` (channel slicing), in the same place; batch by
        batch, so that memory never holds the old and the new tensor whole."""
        if self.file is None:
            for b, value in enumerate(self.values):
                self.values[b] = fn(value)
            return self
        out = StoredBatches(self.space, self.bytes, self.space.new_file())  # takes over the reservation
        for b in range(len(self)):
            out.append(fn(self[b]))
        self.discard(release=False)
        return out

    def discard(self, release: bool = True) -> None:
        if release:
            if self.file is None:
                self.space.memory_left += self.bytes
            else:
                self.space.disk_left += self.bytes
        if self.file is not None:
            self.file.remove()
        self.values = []


class CachedNetwork:
    """One network (original or pruned) over the calibration batches, with a tensor cache."""

    def __init__(self, model: onnx.ModelProto, topo: Topology, data: CalibrationData, providers: list[str],
                 batch_size: int, space: CacheSpace, frontier: set[str] | None = None):
        """``frontier``: tensors that may be cached besides the targets when a sub-graph
        that computes them is run and later nodes read them. Only tensors whose channel
        layout the caller can slice belong here (never, say, a Shape output that counts the
        channels, which slicing could not update)."""
        self.model = model
        self.topo = topo
        self.data = data
        self.providers = providers
        self.batch_size = batch_size
        self.space = space
        self.frontier = frontier or set()
        # sub-graphs' reshapes may hold the model's fixed batch; inputs without a batch axis
        # are fed one sample at a time
        self.batch, self.unbatched = fixed_batch(model), unbatched_inputs(model)
        self.cache: dict[str, StoredBatches] = {}

    def compute(self, targets: list[str], keep: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """Yield, batch by batch, the values of ``targets``; cache them when ``keep`` (and
        when the cache space has room for them)."""
        available = {name: stored.dtype for name, stored in self.cache.items()}
        missing = [t for t in targets if t not in available]
        sub, feeds = submodel(self.model, self.topo, missing + self._frontier_of(missing, available) if keep
                              else missing, available)
        session = None if sub is None else make_session(sub, self.providers, batch=self.batch,
                                                        unbatched=self.unbatched)
        out_names = [o.name for o in sub.graph.output] if sub is not None else []
        fresh: dict[str, StoredBatches | None] = {}
        batches = self.data.batch_count(self.batch_size)
        for b, batch in enumerate(self.data.batches(self.batch_size)):
            values = {}
            if session is not None:
                inputs = {name: batch[name] if name in batch else self.cache[name][b] for name in feeds}
                samples = len(next(iter(batch.values())))
                values = dict(zip(out_names, run(session, out_names, inputs, samples)))
                if keep:
                    for name in out_names:
                        if b == 0:
                            fresh[name] = StoredBatches.reserve(self.space, values[name].nbytes * batches)
                        if fresh[name] is not None:
                            fresh[name].append(values[name])
            if keep and b == batches - 1:
                # before the last yield: a caller that stops calling next() there (zip with
                # another network's batches) must still find the values cached
                self.cache.update({name: stored for name, stored in fresh.items() if stored is not None})
            yield {t: values[t] if t in values else self.cache[t][b] for t in targets}

    def _frontier_of(self, missing: list[str], available: dict[str, np.dtype]) -> list[str]:
        """Frontier tensors computed on the way to ``missing`` and read beyond that sub-graph."""
        if not self.frontier or not missing:
            return []
        nodes = set(self.topo.cut(missing, set(available))[0])
        return sorted({o for i in nodes for o in self.topo.outputs[i]
                       if o in self.frontier and o not in missing
                       and any(r not in nodes for r in self.topo.readers.get(o, []))})

    def update(self, model: onnx.ModelProto, stale: set[str],
               slicers: dict[str, Callable[[np.ndarray], np.ndarray]]) -> None:
        """Switch to ``model``: drop stale cached tensors and slice the pruned ones."""
        self.model = model
        for name in list(self.cache):
            if name in stale:
                self.cache.pop(name).discard()
            elif name in slicers:
                self.cache[name] = self.cache[name].transform(slicers[name])

    def retain(self, future_targets: list[str]) -> None:
        """Forget cached tensors that no later target will be computed from."""
        _, used = self.topo.cut(future_targets, set(self.cache))
        for name in list(self.cache):
            if name not in used:
                self.cache.pop(name).discard()
