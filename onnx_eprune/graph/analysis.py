"""Channel-group analysis: which channels of which tensors must be removed together.

Every non-constant tensor gets a *layout*: the list of channel segments along its channel
axis (axis 1, or where a Transpose moved it: TensorFlow exports compute between convolutions
in NHWC, with Transposes around every Conv). A segment names a channel *space* (the channels one producer creates) and
how many features each channel spans there (``factor``: 1 for NCHW tensors, H*W behind a
Flatten). Pass-through ops copy layouts, Concat joins them, element-wise ops on two
activations unite their spaces (a union-find), producers (Conv/Gemm/MatMul outputs) create
new spaces, and consumers (Conv/Gemm/MatMul inputs) record which features belong to which
space. Anything not understood freezes the spaces it touches, with the reason.

The result, a ``groups.GraphAnalysis``, lists ``ChannelGroup`` objects (one per union of
spaces) and ``Consumer`` objects; the layouts and their union-find are in ``layout``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from .contrib import CONTRIB_UNARY, MS_DOMAIN, NCHWC_DOMAIN
from .groups import (QUANTIZED, ChannelGroup, Consumer, GraphAnalysis, GroupCount, ParamSlice, Producer, ShapeParam,
                     SliceBound, SplitSizes, node_label)
from .geometry import conv_geometry, implicit_padding, transposed_geometry
from .layout import Segment, Spaces, couple, flatten, offsets
from .model_io import (fixed_batch, implicit_inputs, onnx_opset, overridable_initializers, probe_batch,
                       unbatched_inputs)

# Ops that act on each element independently: channel c in is channel c out.
ELEMENTWISE_UNARY = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout",
    "ThresholdedRelu", "Shrink", "Clip", "Cast", "Swish", "Tan", "Atan", "Asin", "Acos", "Sinh", "Cosh", "Asinh",
    "Acosh", "Atanh", "Not", "IsNaN", "IsInf",
})
# Ops that mix values only within one channel's spatial plane.
SPATIAL_POOLS = frozenset({
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
})
# Widest consumer input (channels x kernel taps, or x positions behind a Flatten) whose
# statistics are gathered: its float64 Gram matrix alone takes 2 GiB.
MAX_CONSUMER_FEATURES = 16384
# Walks over the graph at most: each may find Split/Slice cuts or multiplier blocks that
# the next aligns (FastViT's stages, each a channel multiplier deeper, take five).
MAX_WALKS = 10
ELEMENTWISE_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean", "Mod", "Greater",
                                "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1"})
# Ops that carry a one-element value read from a Shape (a channel count) on unchanged:
# ``count_targets`` follows a count forward through them, ``shape_entry`` back
SHAPE_VALUE_COPIES = frozenset({"Cast", "Identity", "Squeeze", "Unsqueeze"})
# Ops that normalize along one axis (before opset 13: over every axis from it on)
AXIS_NORMALIZERS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
# Ops whose first input must hold its channels on axis 1 (NCHW or (N, features)); MatMul
# reads its last axis (op_MatMul), Flatten any (op_Flatten).
CHANNELS_FIRST = SPATIAL_POOLS | {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization",
                                  "GroupNormalization", "GridSample", "Gemm"}
# Ops that may read a map flattened channels last (``_Analyzer.position_major``): the
# layers that consume it, and element-wise ops on it alone, which keep its order, or on
# such maps and constants per feature (Keras' BatchNormalization of the flattened
# features), which are cut position by position.
POSITION_MAJOR_READERS = ELEMENTWISE_UNARY | {"Gemm", "MatMul"}
POSITION_MAJOR_AFFINE = ELEMENTWISE_BINARY | {"BatchNormalization", "PRelu"}
# Ops that may read a tensor whose batch and channel axes are swapped (``_Analyzer.batch_axes``:
# tf2onnx's space-to-batch around a Keras dilated convolution on an input of unknown size):
# element-wise ops, the padding and crop around it, the blocks it moves between the
# batch and the space, and the Transposes that swap the axes back
SWAPPED_READERS = ELEMENTWISE_UNARY | ELEMENTWISE_BINARY | {"Pad", "Slice", "SpaceToDepth", "DepthToSpace",
                                                            "Transpose"}

# the QOperator format's layers (onnxruntime's quantize_static with QuantFormat.QOperator)
QUANTIZED_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger"})
OPAQUE = "opaque"  # layout of a non-constant tensor whose channels we cannot follow


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Analyzer:
    """One walk over the graph. ``cuts`` (origin key -> channel positions) splits the
    channels an op creates into several spaces, so that Split/Slice on the channel axis
    see whole spaces; a walk that meets a cut it was not given records it in ``new_cuts``
    and :func:`analyze` walks again. ``blocks`` (origin key -> k) has a producer's outputs
    go k adjacent rows per channel, so that they can be added to a channel multiplier's
    outputs (``new_blocks`` records the ones a walk finds it needs)."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                 cuts: dict[str, set[int]] | None = None, blocks: dict[str, int] | None = None,
                 probed: dict[str, np.ndarray] | None = None):
        self.graph = model.graph
        self.opset = onnx_opset(model)
        self.probed = probed or {}   # computed tensor -> its value at the probed shapes
        self.cuts = cuts or {}
        self.blocks = blocks or {}
        self.origin: dict[int, tuple[str, int]] = {}    # space -> (origin key, first channel there)
        self.new_cuts: list[tuple[int, int]] = []       # (space, position within the space)
        self.new_blocks: dict[str, int] = {}            # origin key -> rows per channel it should get
        self.shapes = shapes
        # a default the caller may override is no constant (fold_constants leaves it alone too)
        self.overridable = overridable_initializers(model)
        self.init_by_name = {init.name: init for init in self.graph.initializer
                             if init.name not in self.overridable}
        self.consts: dict[str, np.ndarray | None] = dict.fromkeys(self.init_by_name)  # constant tensors
        self.layouts: dict[str, object] = {}
        self.axes: dict[str, int] = {}   # channel axis of a tensor, where it is not 1
        # a map flattened channels last (Keras' Flatten of an NHWC map) -> its positions P:
        # feature p * C + c holds position p of channel c, where its layout's ``factor`` P
        # otherwise means channel-major entries
        self.position_major: dict[str, int] = {}
        # batch axis of a tensor, where a Transpose moved it from axis 0 (see SWAPPED_READERS)
        self.batch_axes: dict[str, int] = {}
        self.spaces = Spaces()
        self.producers: dict[int, list[Producer]] = {}
        self.params: dict[int, list[ParamSlice]] = {}
        self.shape_params: dict[int, list[ShapeParam]] = {}
        self.consumers: list[Consumer] = []
        self.split_sizes: list[SplitSizes] = []
        self.slice_bounds: list[SliceBound] = []
        self.group_counts: list[GroupCount] = []
        # what each node reads: its inputs, and what its sub-graphs read from this scope
        self.reads = [[*node.input, *sorted(implicit_inputs(node))] for node in self.graph.node]
        self.use_count: dict[str, int] = {}
        self.consumer_nodes: dict[str, list[onnx.NodeProto]] = {}
        for node, names in zip(self.graph.node, self.reads):
            for name in names:
                self.use_count[name] = self.use_count.get(name, 0) + 1
                self.consumer_nodes.setdefault(name, []).append(node)
        self.producer_node = {name: node for node in self.graph.node for name in node.output}
        # a weight several Convs apply -> (its first application's input layout, output layout)
        self.tied: dict[str, tuple[list[Segment], list[Segment]]] = {}
        self.graph_outputs = {out.name for out in self.graph.output}
        self.graph_inputs = {inp.name for inp in self.graph.input if inp.name not in self.consts}
        # a batch of any size: the shapes were probed at one sample, so a constant 1 where
        # the batch size goes (a Slice to the first sample) cuts the batch all the same
        self.batched = not unbatched_inputs(model)
        self.free_batch = fixed_batch(model) is None and self.batched
        self.probe_samples = probe_batch(model)  # the samples the shapes were probed with
        self.batch_cut: dict[str, str] = {}  # tensor -> the op after which its first axis is no batch
        # a GroupNorm's grouped tensors (see group_norm) -> (its input, channels per group)
        self.group_norms: dict[str, tuple[str, int]] = {}
        # the nodes of a GroupNorm over a split channel axis (see split_group_norm) -> its
        # input, channels per group and the axis that indexes its groups
        self.split_norm_nodes: dict[int, tuple[str, int, int]] = {}
        # a Reshape target computed from channel counts (see counts_into_targets) -> the
        # tensors whose counts it reads; the Reshapes that read it, once followed
        self.count_reads: dict[str, set[str]] = {}
        self.counted: set[int] = set()

    # -- helpers -----------------------------------------------------------------------
    def weights_reason(self, label: str, names: list[str | None]) -> str | None:
        """Why ``label`` cannot be pruned through its weight operands ``names`` (None: all
        are initializers). Quantized weights get their own reason (see ``QUANTIZED``)."""
        missing = [n for n in names if n is not None and n not in self.init_by_name]
        if not missing:
            return None
        if any(getattr(self.producer_node.get(n), "op_type", "") == "DequantizeLinear" for n in missing):
            return f"{label} has {QUANTIZED} (DequantizeLinear)"
        inputs = [n for n in missing if n in self.overridable]
        if inputs:
            return f"{label}'s weight {inputs[0]!r} is also a graph input, which the caller may override"
        return f"{label} has non-constant weights"

    def value(self, name: str) -> np.ndarray | None:
        """Numeric value of a constant initializer (None when not an initializer)."""
        init = self.init_by_name.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def known(self, name: str) -> np.ndarray | None:
        """The value of a constant: an initializer's, or, for one computed from constants
        and shapes alone, its value at the probed shapes (TensorFlow-style "same" padding
        computes its pads from the input's size); None for any other tensor. A Shape op
        that reads a prunable channel count freezes it, so such a value does not change
        when channels go."""
        if name in self.init_by_name:
            return self.value(name)
        return self.probed.get(name) if name in self.consts else None

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.consts

    def layout(self, name: str):
        if name in self.layouts:
            return self.layouts[name]
        return None if self.is_const(name) else OPAQUE

    def axis(self, name: str) -> int:
        """The channel axis of tensor ``name``."""
        return self.axes.get(name, 1)

    def batch_axis(self, name: str) -> int:
        """The batch axis of tensor ``name``: 0 unless a Transpose moved it."""
        return self.batch_axes.get(name, 0)

    def keep_batch_axis(self, node: onnx.NodeProto) -> None:
        """The outputs of ``node``, which reads a tensor whose batch a Transpose moved, keep
        its batch and channel axes where they keep its rank (a Transpose sets its own), so
        that a Transpose further on moves them where they are, followed or frozen."""
        x = next(n for n in node.input if self.batch_axis(n))
        rank = len(self.shapes.get(x, ()))
        for name in node.output:
            if name and len(self.shapes.get(name, ())) == rank:
                self.batch_axes[name] = self.batch_axis(x)
                if self.axis(x) != 1:
                    self.axes[name] = self.axis(x)

    def misreads_moved_batch(self, node: onnx.NodeProto) -> bool:
        """Whether ``node`` reads a tensor whose batch a Transpose moved other than as
        :data:`SWAPPED_READERS` do: the swapped tensor as its first input (all its
        activations, for an element-wise op of two); the batch behind block axes, with the
        channels last, only as a Reshape's input. A Transpose decides for itself."""
        moved = [n for n in node.input if self.batch_axis(n)]
        if not moved or node.op_type == "Transpose":
            return False
        if not self.swapped(moved[0]):
            return node.op_type != "Reshape" or moved[0] != node.input[0]
        acts = [n for n in node.input if n and not self.is_const(n)]
        return node.op_type not in SWAPPED_READERS or moved[0] != node.input[0] \
            or node.op_type in ELEMENTWISE_BINARY and len(moved) != len(acts)

    def swapped(self, name: str) -> bool:
        """Whether tensor ``name`` holds its batch on axis 1 and its channels on axis 0."""
        return self.batch_axis(name) == 1 and self.axis(name) == 0

    def channels(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        axis = self.axis(name)
        return shape[axis] if shape is not None and len(shape) > axis else None

    def axes_of(self, node: onnx.NodeProto) -> np.ndarray | None:
        """The ``axes`` of a Squeeze / Unsqueeze / Reduce op: its attribute, or its constant
        second input (newer opsets); None when absent or not constant."""
        axes = _attrs(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.value(node.input[1])
        return axes

    def slice_inputs(self, node: onnx.NodeProto) -> tuple | None:
        """(starts, ends, axes, steps) of a Slice (axes, steps None when absent), from its
        inputs (opset >= 10) or attributes; None when a bound it has is not constant."""
        if len(node.input) == 1:
            attrs = _attrs(node)
            starts, ends = attrs.get("starts"), attrs.get("ends")
            return None if starts is None or ends is None else (starts, ends, attrs.get("axes"), None)
        names = list(node.input[1:5]) + [""] * (5 - len(node.input))
        values = [self.value(n) if n else None for n in names]
        if values[0] is None or values[1] is None or any(n and v is None for n, v in zip(names, values)):
            return None
        return tuple(values)

    def crops_other_axes(self, node: onnx.NodeProto, x: str) -> bool:
        """Whether a Slice whose bounds are computed at run time (a crop to a size read from a
        Shape: tf2onnx's transposed convolution on inputs of unknown size) names constant
        axes that are neither the batch's nor ``x``'s channels', which it then passes on
        whatever the bounds."""
        if len(node.input) < 4 or not node.input[3]:
            return False
        axes = self.value(node.input[3])
        rank = len(self.shapes[x])
        return axes is not None and not {self.batch_axis(x), self.axis(x)} & {int(a) % rank for a in np.ravel(axes)}

    def frozen_reasons(self, layout) -> list[str]:
        """The reasons recorded on the spaces of ``layout`` themselves, each once, in order."""
        if not isinstance(layout, list):
            return []
        return list(dict.fromkeys(r for seg in layout for r in self.spaces.frozen.get(seg.space, [])))

    def freeze_layout(self, layout, reason: str) -> None:
        if isinstance(layout, list):
            for seg in layout:
                self.spaces.freeze(seg.space, reason)

    def opaque_output(self, name: str, reason: str) -> None:
        """Give an output we cannot follow a fresh frozen space, so couplings see it."""
        c = self.channels(name)
        self.layouts[name] = OPAQUE if c is None else self.create(f"t:{name}", c, None, reason)

    def create(self, key: str, size: int, producer: Producer | None, reason: str | None = None) -> list[Segment]:
        """The layout of ``size`` new channels: one space, or several where cuts fall; where
        ``blocks`` has the key, channels of k adjacent rows each (``size / k`` of them)."""
        k = self.blocks.get(key, 1)
        size //= k
        bounds = [0] + sorted(c for c in self.cuts.get(key, ()) if 0 < c < size) + [size]
        layout = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            sid = self.spaces.new(stop - start, reason)
            self.origin[sid] = (key, start)
            if producer is not None:
                self.producers.setdefault(sid, []).append(replace(producer, offset=start * k, factor=k))
            layout.append(Segment(sid, 0, stop - start, k))
        return layout

    def request_blocks(self, a: list[Segment], b: list[Segment]) -> bool:
        """Two layouts an element-wise op adds that hold the same entries but with other
        factors (a channel multiplier's outputs, m per input channel, and an ordinary
        Conv's): where the one with fewer entries per channel is a producer's whole output
        as it created it, record that its rows should go in blocks of the other's factor,
        so that the next walk can couple the two. Whether it did."""
        if len(a) != len(b):
            return False
        wanted = {}
        for sa, sb in zip(a, b):
            if sa.length * sa.factor != sb.length * sb.factor:
                return False
            if sa.factor == sb.factor:
                continue
            lo, hi = (sa, sb) if sa.factor < sb.factor else (sb, sa)
            key, start = self.origin.get(lo.space, (None, 0))
            whole = lo.start == 0 and lo.length == self.spaces.size[lo.space] and start == 0
            if key is None or not self.producers.get(lo.space) or not whole or self.cuts.get(key) \
                    or hi.factor % lo.factor or lo.factor != self.blocks.get(key, 1):
                return False
            wanted[key] = hi.factor
        for key, k in wanted.items():
            self.new_blocks.setdefault(key, k)
        return bool(wanted)

    def take(self, layout: list[Segment], a: int, b: int) -> list[Segment]:
        """Channels ``[a, b)`` of a layout; records a cut where a space is split."""
        out, off = [], 0
        for seg in layout:
            lo, hi = max(a, off), min(b, off + seg.length)
            if lo < hi:
                if lo > off:
                    self.new_cuts.append((seg.space, seg.start + lo - off))
                if hi < off + seg.length:
                    self.new_cuts.append((seg.space, seg.start + hi - off))
                out.append(Segment(seg.space, seg.start + lo - off, hi - lo, seg.factor))
            off += seg.length
        return out

    def freeze_all(self, node: onnx.NodeProto, index: int, reason: str) -> None:
        for name in self.reads[index]:  # what a sub-graph reads, too
            self.freeze_layout(self.layout(name), reason)
        acts = {n for n in node.input if n and not self.is_const(n)}
        src = next(iter(acts)) if len(acts) == 1 else None
        for name in node.output:
            if name:
                # an op that keeps its one input's shape (a LayerNormalization over NHWC's
                # last axis) keeps its channel axis too, so that a Transpose back to NCHW
                # puts the frozen channels where the other operands of a Concat hold theirs
                if src is not None and self.shapes.get(name) is not None \
                        and self.shapes.get(name) == self.shapes.get(src) and self.axis(src) != 1:
                    self.axes[name] = self.axis(src)
                self.opaque_output(name, reason)

    def wholly_frozen(self, name: str) -> bool:
        """Whether every channel of tensor ``name`` is frozen already (a graph input, the
        output of an op the analysis does not follow)."""
        layout = self.layout(name)
        return isinstance(layout, list) and all(self.spaces.is_frozen(seg.space) for seg in layout)

    def add_param(self, layout, node_index: int, tensor: str, axis: int, reason_node: str,
                  act: str | None = None, divisor: int = 1) -> bool:
        """Record a per-channel constant to slice with the layout of activation ``act`` (one
        entry per block of ``divisor`` channels: a GroupNorm's per-group scale); freeze if
        shared."""
        if self.use_count.get(tensor, 0) > 1:
            self.freeze_layout(layout, f"per-channel constant {tensor!r} of {reason_node} is shared")
            return False
        # behind a channels-last flatten the channels interleave, position by position
        interleave = sum(seg.length for seg in layout) if act in self.position_major else 0
        offset = 0
        for seg in layout:  # else in entries, not channels: a flattened layout has ``factor`` per channel
            self.params.setdefault(seg.space, []).append(
                ParamSlice(node_index, tensor, axis, offset // divisor, seg.factor, interleave, divisor))
            offset += seg.length if interleave else seg.length * seg.factor
        return True

    def follow_count(self, layout: list[Segment], param: ShapeParam) -> None:
        """The shape entry ``param`` (of a Reshape target, a Resize's sizes) follows the
        channels of ``layout``: when they go, the rewrite writes there the features of
        ``param.output`` that stay (divided by ``param.per``)."""
        for seg in layout:
            self.shape_params.setdefault(seg.space, []).append(param)

    # -- the walk ----------------------------------------------------------------------
    def run(self) -> GraphAnalysis:
        for inp in self.graph.input:
            if inp.name in self.consts:
                continue
            c = self.channels(inp.name)
            self.layouts[inp.name] = OPAQUE if c is None else self.create(f"in:{inp.name}", c, None, "graph input")
        for index, node in enumerate(self.graph.node):
            if all(self.is_const(n) for n in self.reads[index]) and node.op_type != "Shape":
                # pure constant arithmetic (shape computations, folded weights)
                for name in node.output:
                    self.consts[name] = None
                continue
            self.visit(node, index)
            for name in node.output:  # every output must end up with a layout
                if name and name not in self.layouts and name not in self.consts:
                    self.opaque_output(name, f"output {name!r} of {node.op_type}")
            self.follow_batch_cut(node, index)
        for target, sources in self.count_reads.items():
            if any(id(r) not in self.counted for r in self.consumer_nodes.get(target, [])):
                for z in sources:  # a Reshape of a constant by it was never followed
                    self.freeze_layout(self.layout(z), "its channel count is read by a Shape op")
        for out in self.graph.output:
            self.freeze_layout(self.layout(out.name), "reaches a graph output")
        return self.collect()

    def visit(self, node: onnx.NodeProto, index: int) -> None:
        """Give the outputs of ``node``, which reads an activation, their layouts."""
        if index in self.split_norm_nodes:
            self.split_norm_step(node, index)
            return
        if node.domain in ("", "ai.onnx"):
            handler = getattr(self, f"op_{node.op_type}", None)
        else:
            handler = self.unary if node.domain == MS_DOMAIN and node.op_type in CONTRIB_UNARY else None
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            handler = None
        if any(self.batch_axis(n) for n in node.input):
            self.keep_batch_axis(node)
        if handler is None:
            if node.op_type in QUANTIZED_OPS:
                reason = f"op {node.op_type} has {QUANTIZED}"
            elif node.domain == NCHWC_DOMAIN:
                reason = (f"op {node.op_type} is in onnxruntime's NCHWc layout (a model saved at level "
                          "ORT_ENABLE_ALL, for the CPU it ran on): prune the original or one saved at "
                          "ORT_ENABLE_EXTENDED")
            else:
                reason = f"op {node.op_type} is not understood by the channel analysis"
            self.freeze_all(node, index, reason)
            return
        if self.misreads_moved_batch(node):
            moved = next(n for n in node.input if self.batch_axis(n))
            self.freeze_all(node, index, f"{node_label(node, index)} reads a tensor whose batch and channel axes are "
                            "swapped (tf2onnx's space-to-batch around a dilated convolution), where the analysis "
                            "follows only element-wise ops, Pad, crops, SpaceToDepth, DepthToSpace and the Transpose "
                            "that swaps the axes back" if self.swapped(moved) else
                            f"{node_label(node, index)} reads a tensor whose batch a Transpose moved behind other "
                            "axes (tf2onnx's SpaceToBatchND), where the analysis follows only the Transposes and "
                            "the Reshapes that merge them into the batch again")
            return
        if node.op_type in CHANNELS_FIRST and self.axis(node.input[0]) != 1:
            self.reread_channels_first(node, index)
        flat = [n for n in node.input if n in self.position_major]
        acts = [n for n in node.input if n and not self.is_const(n)]
        if flat and not (node.op_type in POSITION_MAJOR_READERS or node.op_type == "Reshape"
                         or node.op_type in POSITION_MAJOR_AFFINE
                         and set(acts) <= set(flat) and len({self.position_major[n] for n in flat}) == 1):
            self.freeze_all(node, index, f"{node_label(node, index)} reads a map flattened channels last "
                            "(position by position: Keras' Flatten of an NHWC map), where the analysis follows only "
                            "element-wise ops on such maps and constants, Reshapes into its channel blocks and the "
                            "Gemm or MatMul that reads it")
            return
        handler(node, index)
        if flat and node.op_type not in ("Gemm", "MatMul") and node.output[0] in self.layouts \
                and self.layouts[node.output[0]] is self.layouts.get(flat[0]):
            self.position_major[node.output[0]] = self.position_major[flat[0]]

    def cut_batch(self, node: onnx.NodeProto, index: int, reason: str) -> None:
        """``node`` changes the batch axis (keeps some samples, or sets the batch size): its
        channels freeze, and so do those of every tensor computed from its outputs, whose
        rows are no longer one per sample (:meth:`follow_batch_cut`)."""
        self.freeze_all(node, index, reason)
        for name in node.output:
            if name:
                self.batch_cut[name] = f"{node_label(node, index)} ({reason})"

    def follow_batch_cut(self, node: onnx.NodeProto, index: int) -> None:
        """Freeze the outputs of ``node`` where it reads a tensor whose batch was cut."""
        cut = next((self.batch_cut[n] for n in self.reads[index] if n in self.batch_cut), None)
        if cut is None:
            return
        for name in node.output:
            if name and name not in self.batch_cut:
                self.batch_cut[name] = cut
                self.freeze_layout(self.layout(name), f"computed after {cut}: no row per sample")

    def sets_batch(self, v: int, probed: int) -> bool:
        """Whether a constant ``v`` given as a tensor's first dimension (a Reshape target's,
        a Resize's size) makes it other than the batch of ``probed`` samples it had."""
        return v not in (0, -1, probed) or (self.free_batch and v > 0)

    def reread_channels_first(self, node: onnx.NodeProto, index: int) -> None:
        """An op that needs channels on axis 1 reads a tensor whose followed channels sit on
        another axis (e.g. an NHWC graph input, whose channel axis the analysis cannot know,
        transposed to NCHW): those channels are frozen, and the tensor is read afresh as
        frozen channels on axis 1, so that the op's own output channels stay prunable."""
        x = node.input[0]
        old = self.layout(x)
        # channels already frozen for a cause (a graph input, NHWC) keep naming it
        known = self.frozen_reasons(old)
        reason = f"{node_label(node, index)} reads them on axis 1, not on axis {self.axis(x)}"
        self.freeze_layout(old, reason)
        self.axes.pop(x)
        c = self.channels(x)
        self.layouts[x] = OPAQUE if c is None else self.create(f"t:{x}", c, None, "; ".join(known) or reason)

    def passthrough(self, node: onnx.NodeProto, src: str, axis: int | None = None) -> object:
        """The first output carries the layout of ``src`` (on channel axis ``axis``, by
        default the axis of ``src``)."""
        layout = self.layout(src)
        axis = self.axis(src) if axis is None else axis
        for name in node.output[:1]:
            self.layouts[name] = layout
            if axis != 1:
                self.axes[name] = axis
        return layout

    # -- producers and consumers -------------------------------------------------------
    def op_Conv(self, node: onnx.NodeProto, index: int) -> None:
        x, w = node.input[0], node.input[1]
        b = node.input[2] if len(node.input) > 2 and node.input[2] else None
        layout = self.layout(x)
        reason = self.weights_reason(node_label(node, index), [w, b])
        if reason:
            self.freeze_all(node, index, reason)
            return
        wshape = tuple(self.init_by_name[w].dims)
        attrs = _attrs(node)
        group = int(attrs.get("group", 1))
        cin = self.channels(x)
        out = node.output[0]
        label = node_label(node, index)
        if not self.channels_first_conv(x, wshape) or cin is None or not isinstance(layout, list):
            self.freeze_all(node, index, f"{label}: only 1-D, 2-D and 3-D convolutions on channels-first tensors "
                                         "are handled")
            return
        if group == 1 and self.use_count.get(w, 0) > 1:
            self.tie_conv(node, index, layout, wshape, cin)
        elif group == 1:
            geometry = conv_geometry(attrs, wshape, self.shapes[x][2:], self.shapes.get(out))
            self.add_consumer(node, index, "conv", x, out, w, b, wshape[0], cin, math.prod(wshape[2:]), layout,
                              conv=geometry)
            self.layouts[out] = self.create(f"n:{index}", wshape[0], Producer(index, "conv", w, 0, b))
        elif wshape[1] * group == cin and wshape[0] % cin == 0:
            self.pass_groups(node, index, layout, w, b, wshape[1], wshape[0] // cin)
        else:
            self.freeze_all(node, index, f"{label}: grouped convolution (group={group}) with {wshape[0]} outputs "
                                         f"for {cin} inputs is not pruned")

    def tie_conv(self, node: onnx.NodeProto, index: int, layout: list[Segment], wshape: tuple[int, ...],
                 cin: int) -> None:
        """A Conv whose weight other Convs apply too (one module applied to several inputs:
        a detector's head on every pyramid level). Its applications keep the same input
        channels and the same output channels: their inputs are coupled, and every
        application produces the first one's output spaces (each a producer, so that its
        own bias copy and its MACs follow). Only where every reader of the weight is such a
        Conv reading it as its weight, and not one applied to its own outputs (checked in
        :meth:`collect`); otherwise the channels it touches freeze."""
        x, w, out = node.input[0], node.input[1], node.output[0]
        b = node.input[2] if len(node.input) > 2 and node.input[2] else None
        label = node_label(node, index)
        readers = self.consumer_nodes.get(w, [])
        if any(r.op_type != "Conv" or list(r.input[1:2]) != [w] or w in r.input[2:]
               or int(_attrs(r).get("group", 1)) != 1 for r in readers) or len(readers) != self.use_count[w] \
                or (b is not None and self.use_count.get(b, 0) > 1):
            self.freeze_all(node, index, f"{label}: its weights are shared by several nodes")
            return
        producer = Producer(index, "conv", w, 0, b)
        first = w not in self.tied
        if first:
            self.tied[w] = (layout, self.create(f"n:{index}", wshape[0], producer))
        first_in, first_out = self.tied[w]
        if not first and not couple(self.spaces, first_in, layout, self.new_cuts):
            reason = f"{label}: the inputs of the layers sharing weight {w!r} do not align"
            for frozen in (first_in, layout, first_out):
                self.freeze_layout(frozen, reason)
            self.opaque_output(out, reason)
            return
        geometry = conv_geometry(_attrs(node), wshape, self.shapes[x][2:], self.shapes.get(out))
        self.add_consumer(node, index, "conv", x, out, w, b, wshape[0], cin, math.prod(wshape[2:]), layout,
                          conv=geometry)
        if not first:  # create() made the first application the producer of these spaces
            for seg, off in offsets(first_out):
                self.producers.setdefault(seg.space, []).append(replace(producer, offset=off * seg.factor,
                                                                        factor=seg.factor))
        self.layouts[out] = first_out

    def channels_first_conv(self, x: str, wshape: tuple[int, ...]) -> bool:
        """Whether a convolution with weight shape ``wshape`` reads ``x`` as 1-, 2- or 3-D
        maps with the channels on axis 1 (the input's rank is the weight's, its sizes known)."""
        shape = self.shapes.get(x)
        return 3 <= len(wshape) <= 5 and shape is not None and len(shape) == len(wshape) and self.axis(x) == 1

    def pass_groups(self, node: onnx.NodeProto, index: int, layout: list[Segment], w: str, b: str | None,
                    width: int, multiplier: int = 1) -> None:
        """A depthwise (``width`` 1) or grouped Conv / ConvTranspose whose groups of
        ``width`` input channels each write ``multiplier * width`` outputs: the outputs of
        a group read only that group's inputs, so both sides are one set of channels,
        removable a whole group at a time (weight and bias lose the group's rows along axis
        0). With a channel multiplier, input channel c stands for outputs ``c * multiplier``
        to ``c * multiplier + multiplier - 1`` (the output layout's ``factor``)."""
        label = node_label(node, index)
        if self.use_count.get(w, 0) > 1 or (b is not None and self.use_count.get(b, 0) > 1):
            self.freeze_all(node, index, f"{label}: grouped weights are shared")
            return
        if any(off % width or seg.length % width for seg, off in offsets(layout)):
            self.freeze_all(node, index, f"{label}: its groups of {width} channels straddle channel groups")
            return
        # a depthwise Conv keeps a channel's entries adjacent (its m outputs per input too),
        # a wider conv group would interleave several channels' entries
        if width > 1 and any(seg.factor != 1 for seg in layout):
            self.freeze_all(node, index, f"{label}: its input channels are already multiplied")
            return
        for seg in layout:
            self.spaces.require_unit(seg.space, width)
        out = [Segment(seg.space, seg.start, seg.length, seg.factor * multiplier) for seg in layout]
        self.add_param(out, index, w, 0, label)
        if b is not None:
            self.add_param(out, index, b, 0, label)
        self.layouts[node.output[0]] = out

    def op_ConvTranspose(self, node: onnx.NodeProto, index: int) -> None:
        """A producer of its output channels (weight axis 1) and a consumer of its input
        channels (weight axis 0), read as the Conv it equals (see ``geometry.transposed_geometry``);
        grouped with as many outputs as inputs, a pass-through (:meth:`pass_groups`)."""
        x, w = node.input[0], node.input[1]
        b = node.input[2] if len(node.input) > 2 and node.input[2] else None
        label = node_label(node, index)
        out = node.output[0]
        reason = self.weights_reason(label, [w, b])
        if reason:
            self.freeze_all(node, index, reason)
            return
        wshape = tuple(self.init_by_name[w].dims)
        layout = self.layout(x)
        group = int(_attrs(node).get("group", 1))
        if not self.channels_first_conv(x, wshape) or not isinstance(layout, list) or self.channels(x) != wshape[0]:
            self.freeze_all(node, index, f"{label}: only 1-D, 2-D and 3-D ConvTranspose on channels-first tensors "
                                         "is pruned")
            return
        if group > 1 and wshape[1] * group == wshape[0]:  # e.g. a depthwise bilinear upsampling
            self.pass_groups(node, index, layout, w, b, wshape[1])
            return
        if group > 1:
            self.freeze_all(node, index, f"{label}: grouped ConvTranspose (group={group}) with "
                                         f"{wshape[1] * group} outputs for {wshape[0]} inputs is not pruned")
            return
        if self.use_count.get(w, 0) > 1 or (b is not None and self.use_count.get(b, 0) > 1):
            self.freeze_all(node, index, f"{label}: its weights are shared by several nodes")
            return
        geometry = transposed_geometry(_attrs(node), wshape, self.shapes[x][2:], self.shapes.get(out))
        if geometry is None:
            why = ("the padding that its output_shape or auto_pad stands for is not known at the probed size"
                   if implicit_padding(_attrs(node)) else "its output size at the probed input does not follow from "
                   "its pads")
            self.freeze_layout(layout, f"{label}: {why} (its inputs are not pruned)")
        else:
            self.add_consumer(node, index, "convT", x, out, w, b, wshape[1], wshape[0], math.prod(wshape[2:]),
                              layout, conv=geometry)
        self.layouts[out] = self.create(f"n:{index}", wshape[1], Producer(index, "conv", w, 1, b))

    def add_consumer(self, node, index, kind, x, out, w, b, m, cin, s, layout, conv=None,
                     trans_b=True, alpha=1.0, beta=1.0) -> None:
        label = node_label(node, index)
        if self.use_count.get(w, 0) > 1 and w not in self.tied:
            self.freeze_layout(layout, f"weight {w!r} of {label} is shared by several nodes")
            return
        # a Conv behind a channel multiplier reads ``factor`` adjacent tensor channels per
        # channel, whose taps are adjacent in its weight too: ``factor * kh * kw`` features
        factor = layout[0].factor if kind == "conv" and layout else 1
        expected = factor if kind in ("conv", "convT") else s
        if any(seg.factor != expected for seg in layout):
            self.freeze_layout(layout, f"{label}: input channels do not map to contiguous features")
            return
        self.consumers.append(Consumer(
            node=index, name=label, kind=kind, input=x, output=out, weight=w, bias=b,
            in_channels=cin // factor, out_channels=m, s=s * factor, conv=conv, gemm_trans_b=trans_b,
            alpha=alpha, beta=beta, factor=factor, positions_last=x in self.position_major,
            segments=[(seg.space, off, seg.length) for seg, off in offsets(layout)]))

    def op_Gemm(self, node: onnx.NodeProto, index: int) -> None:
        a, w = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        attrs = _attrs(node)
        label = node_label(node, index)
        layout = self.layout(a)
        reason = "Gemm with transA" if attrs.get("transA", 0) else self.weights_reason(label, [w, c])
        if reason:
            self.freeze_all(node, index, reason if reason.startswith(label) else f"{label}: {reason}")
            return
        wshape = tuple(self.init_by_name[w].dims)
        trans_b = bool(attrs.get("transB", 0))
        m, d = (wshape[0], wshape[1]) if trans_b else (wshape[1], wshape[0])
        bias_ok = c is None or _bias_vector_len(self.init_by_name[c].dims) in (m, 1)
        if not isinstance(layout, list) or not bias_ok:
            self.freeze_all(node, index, f"{label}: Gemm input or bias layout not understood")
            return
        cin = sum(seg.length for seg in layout)
        factor = layout[0].factor if layout else 1
        if cin * factor != d:
            self.freeze_all(node, index, f"{label}: Gemm input features do not match its weight")
            return
        self.add_consumer(node, index, "gemm", a, node.output[0], w, c, m, cin, factor, layout,
                          trans_b=trans_b, alpha=float(attrs.get("alpha", 1.0)), beta=float(attrs.get("beta", 1.0)))
        bias = c if c is not None and _bias_vector_len(self.init_by_name[c].dims) == m else None
        prod = Producer(index, "gemm", w, 0 if trans_b else 1, bias)
        self.layouts[node.output[0]] = self.create(f"n:{index}", m, prod)

    def op_MatMul(self, node: onnx.NodeProto, index: int) -> None:
        a, w = node.input[0], node.input[1]
        label = node_label(node, index)
        layout = self.layout(a)
        shape_a = self.shapes.get(a)
        quantized = self.weights_reason(label, [w])
        if quantized and QUANTIZED in quantized:  # the remedy (prune the float model) goes with it
            self.freeze_all(node, index, quantized)
            return
        if w in self.init_by_name and len(self.init_by_name[w].dims) == 2 and shape_a is not None \
                and len(shape_a) > 2 and self.axis(a) == len(shape_a) - 1:
            self.frozen_linear(node, index, w, f"{label}: MatMul of a {len(shape_a)}-D activation (channels last)")
            return
        if w not in self.init_by_name or len(self.init_by_name[w].dims) != 2 or not isinstance(layout, list) \
                or shape_a is None or len(shape_a) != 2:
            self.freeze_all(node, index, f"{label}: only MatMul of a 2-D activation by a constant matrix is handled")
            return
        if self.axis(a) != 1:  # a 2-D MatMul reads its features on axis 1
            self.reread_channels_first(node, index)
            layout = self.layout(a)
        d, m = tuple(self.init_by_name[w].dims)
        cin = sum(seg.length for seg in layout)
        factor = layout[0].factor if layout else 1
        if cin * factor != d:
            self.freeze_all(node, index, f"{label}: MatMul input features do not match its weight")
            return
        self.add_consumer(node, index, "matmul", a, node.output[0], w, None, m, cin, factor, layout, trans_b=False)
        self.layouts[node.output[0]] = self.create(f"n:{index}", m, Producer(index, "matmul", w, 1, None))

    def frozen_linear(self, node: onnx.NodeProto, index: int, w: str, reason: str) -> None:
        """A layer on the last axis that the statistics cannot follow (a Linear on NHWC
        pixels): its inputs and outputs keep their channels, and its output channels are a
        group of its own that names it, frozen for ``reason``."""
        self.freeze_all(node, index, reason)
        out = node.output[0]
        self.layouts[out] = self.create(f"n:{index}", int(self.init_by_name[w].dims[1]),
                                        Producer(index, "matmul", w, 1, None), reason)
        self.axes[out] = len(self.shapes[out]) - 1 if out in self.shapes else 1

    # -- pass-through ops --------------------------------------------------------------
    def unary(self, node: onnx.NodeProto, index: int) -> None:
        for extra in node.input[1:]:  # Clip min/max, Dropout ratio: must be constants
            if extra and not self.is_const(extra):
                self.freeze_all(node, index, f"{node.op_type} with a non-constant parameter")
                return
        if node.op_type == "Cast":
            to = _attrs(node).get("to")
            if to not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.BFLOAT16):
                self.freeze_all(node, index, "Cast to a non-float type")
                return
        if node.op_type == "Dropout" and self.secondary_output_used(node):
            self.freeze_all(node, index, "Dropout mask is read by a node or is a graph output")
            return
        self.passthrough(node, node.input[0])

    def pool(self, node: onnx.NodeProto, index: int) -> None:
        if self.secondary_output_used(node):
            self.freeze_all(node, index, "MaxPool indices are read by a node or are a graph output")
            return
        self.passthrough(node, node.input[0])

    def secondary_output_used(self, node: onnx.NodeProto) -> bool:
        """Whether an output after the first (MaxPool's Indices, Dropout's mask) is read or
        leaves the graph: it has the input's channels too (MaxPool's indices even encode
        the channel count), and the pass-through follows only the first output."""
        return any(out and (self.consumer_nodes.get(out) or out in self.graph_outputs) for out in node.output[1:])

    def op_BatchNormalization(self, node: onnx.NodeProto, index: int) -> None:
        layout = self.layout(node.input[0])
        label = node_label(node, index)
        params = node.input[1:5]
        if len(node.output) > 1 and any(o for o in node.output[1:]) or not isinstance(layout, list) \
                or not all(p in self.init_by_name for p in params):
            self.freeze_all(node, index, f"{label}: BatchNormalization in training mode or with non-constant parameters")
            return
        for p in params:
            if not self.add_param(layout, index, p, 0, label, node.input[0]):
                return
        self.passthrough(node, node.input[0])

    def op_InstanceNormalization(self, node: onnx.NodeProto, index: int) -> None:
        if node.input[0] in self.group_norms:
            self.group_norm_scale(node, index)
            return
        layout = self.layout(node.input[0])
        label = node_label(node, index)
        if not isinstance(layout, list) or not all(p in self.init_by_name for p in node.input[1:3]):
            self.freeze_all(node, index, f"{label}: InstanceNormalization with non-constant parameters")
            return
        for p in node.input[1:3]:
            if not self.add_param(layout, index, p, 0, label):
                return
        self.passthrough(node, node.input[0])

    def group_norm(self, node: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.NodeProto, int] | None:
        """PyTorch's GroupNorm as its TorchScript exporter writes it, from its first Reshape
        ``node``: ``Reshape(InstanceNormalization(Reshape(x, [0, G, -1]), scale, bias),
        Shape(x))``, a scale and bias of G constants (the per-channel affine Mul and Add
        follow). Each of the G groups of C/G adjacent channels is normalised over its own
        entries, so a group kept whole is normalised as before: channels go a whole group
        at a time. Returns (the InstanceNormalization, the Reshape back, C/G), or None where
        ``node`` does not start one."""
        x, target = node.input[0], node.input[1] if len(node.input) > 1 else ""
        shape_in, spec, layout = self.shapes.get(x), self.value(target), self.layout(x)
        if node.op_type != "Reshape" or shape_in is None or len(shape_in) < 3 or self.axis(x) != 1 \
                or spec is None or np.size(spec) != 3 or self.use_count.get(target, 0) != 1 \
                or not isinstance(layout, list) or any(seg.factor != 1 for seg in layout):
            return None
        batch, groups, rest = (int(v) for v in np.ravel(spec))
        channels = shape_in[1]
        if groups < 1 or channels % groups or self.sets_batch(batch, shape_in[0]) \
                or rest not in (-1, int(np.prod(shape_in[1:], dtype=np.int64)) // groups):
            return None
        norm = self.only_reader(node.output[0], "InstanceNormalization")
        back = self.only_reader(norm.output[0], "Reshape") if norm is not None else None
        if back is None or not all(p in self.init_by_name and self.shapes.get(p) == (groups,)
                                   for p in norm.input[1:3]):
            return None
        shape = self.producer_node.get(back.input[1])
        if shape is None or shape.op_type != "Shape" or shape.input[0] != x \
                or _shape_range(shape, len(shape_in)) != (0, len(shape_in)):
            return None
        return norm, back, channels // groups

    def only_reader(self, name: str, op: str) -> onnx.NodeProto | None:
        """The one node that reads ``name`` (no graph output), as its first input, where it
        is a standard ``op``."""
        readers = self.consumer_nodes.get(name, [])
        if len(readers) != 1 or name in self.graph_outputs:
            return None
        reader = readers[0]
        return reader if reader.op_type == op and reader.domain in ("", "ai.onnx") and reader.input[0] == name \
            and name not in reader.input[1:] else None

    def group_blocks(self, node: onnx.NodeProto, index: int, x: str, width: int) -> bool:
        """The channels of ``x`` (a layout) go in blocks of ``width``, a GroupNorm's groups;
        False, with ``node`` frozen, where a group holds channels of two channel groups or
        all of x's channels."""
        layout = self.layout(x)
        if width >= sum(seg.length for seg in layout):
            # one group (PoolFormer's GroupNorm(1, C), a LayerNorm over C, H and W): every
            # channel is normalised with all the others, so none can go alone
            self.freeze_all(node, index, "GroupNorm with one group (each channel normalised with all the others)")
            return False
        if any(off % width or seg.length % width for seg, off in offsets(layout)):
            self.freeze_all(node, index, f"GroupNorm whose groups of {width} channels straddle channel groups")
            return False
        for seg in layout:
            self.spaces.require_unit(seg.space, width)
        return True

    def op_GroupNormalization(self, node: onnx.NodeProto, index: int) -> None:
        """GroupNormalization (opset 21: a scale and bias per channel), whose groups of C/G
        adjacent channels go whole (:meth:`group_norm`); its ``num_groups`` follows them."""
        x, params = node.input[0], node.input[1:3]
        shape, layout, label = self.shapes.get(x), self.layout(x), node_label(node, index)
        groups = int(_attrs(node).get("num_groups", 0))
        if shape is None or len(shape) < 3 or not isinstance(layout, list) or any(seg.factor != 1 for seg in layout) \
                or groups < 1 or shape[1] % groups \
                or not all(p in self.init_by_name and self.shapes.get(p) == (shape[1],) for p in params):
            self.freeze_all(node, index, f"{label}: GroupNormalization without a constant scale and bias per channel")
            return
        if not self.group_blocks(node, index, x, shape[1] // groups):
            return
        for p in params:
            if not self.add_param(layout, index, p, 0, label):
                return
        self.group_counts.append(GroupCount(index, x, shape[1] // groups))
        self.passthrough(node, x)

    def group_norm_start(self, node: onnx.NodeProto, index: int, width: int) -> None:
        """The first Reshape of a GroupNorm (:meth:`group_norm`) over ``x``: x's channels go
        in blocks of ``width`` (C/G), and the target's G follows the kept groups."""
        x = node.input[0]
        if not self.group_blocks(node, index, x, width):
            return
        self.follow_count(self.layout(x), ShapeParam(index, node.input[1], 1, x, per=width))
        self.group_norms[node.output[0]] = (x, width)
        self.layouts[node.output[0]] = OPAQUE  # its G axis is followed by the scale and the Reshape back

    def group_norm_scale(self, node: onnx.NodeProto, index: int) -> None:
        """The InstanceNormalization of a GroupNorm: its scale and bias hold one entry per group."""
        x, width = self.group_norms[node.input[0]]
        for p in node.input[1:3]:
            if not self.add_param(self.layout(x), index, p, 0, node_label(node, index), divisor=width):
                return
        self.group_norms[node.output[0]] = (x, width)
        self.layouts[node.output[0]] = OPAQUE

    def reshapes_back(self, reader: onnx.NodeProto, x: str) -> bool:
        """Whether ``reader`` of ``Shape(x)`` is the Reshape back of a GroupNorm over x."""
        norm = self.producer_node.get(reader.input[0]) if reader.op_type == "Reshape" else None
        first = self.producer_node.get(norm.input[0]) if norm is not None else None
        found = self.group_norm(first) if first is not None and first.input[0] == x else None
        return found is not None and found[1] is reader

    def split_group_norm(self, node: onnx.NodeProto, index: int) -> bool:
        """A GroupNorm that splits x's channel axis k in two, as tf2onnx writes Keras'
        GroupNormalization: ``Reshape(x, [.., G, C/G, ..])`` (G at axis k), then element-wise
        ops on the grouped tensors and on constants with one entry per group (or the same
        for all) at axis k, and reductions that keep axes 0 and k (the group's mean and
        variance), ending in Reshapes back to x's shape. No group mixes with another, so a
        group kept whole is normalised as before: x's channels go C/G at a time, the
        constants lose the entries of the groups that go, and the targets' G and C follow.
        Whether ``node`` starts one (where it does, its nodes are recorded for the walk)."""
        found = self.split_norm_region(node, index)
        if found is None:
            return False
        x, k, width, region, backs = found
        if not self.group_blocks(node, index, x, width):
            return True
        layout = self.layout(x)
        self.follow_count(layout, ShapeParam(index, node.input[1], k, x, per=width))
        for back, target, entry in backs:
            if target is not None:
                self.follow_count(layout, ShapeParam(back, target, entry, x))
        self.group_norms[node.output[0]] = (x, width)
        self.layouts[node.output[0]] = OPAQUE
        for i in region:
            self.split_norm_nodes[i] = (x, width, k)
        return True

    def split_norm_region(self, node: onnx.NodeProto, index: int) -> tuple | None:
        """For :meth:`split_group_norm`: (x, k, C/G, the indices of the nodes between the
        Reshapes, the Reshapes back as (index, target tensor to edit or None, entry)), or
        None where ``node`` does not start such a GroupNorm."""
        x, target = node.input[0], node.input[1] if len(node.input) > 1 else ""
        shape_in, out, spec, layout = self.shapes.get(x), node.output[0], self.value(target), self.layout(x)
        if node.op_type != "Reshape" or shape_in is None or spec is None or len(shape_in) < 3 \
                or not isinstance(layout, list) or any(seg.factor != 1 for seg in layout) \
                or self.use_count.get(target, 0) != 1:
            return None
        k, rank = self.axis(x), len(shape_in) + 1
        shape_out = self.shapes.get(out)
        if shape_out is None or len(shape_out) != rank or np.size(spec) != rank or k == 0:
            return None
        groups, width = shape_out[k], shape_out[k + 1]
        if groups * width != shape_in[k] or tuple(shape_out[:k]) != tuple(shape_in[:k]) \
                or tuple(shape_out[k + 2:]) != tuple(shape_in[k + 1:]) or int(np.ravel(spec)[k]) != groups \
                or self.sets_batch(int(np.ravel(spec)[0]), shape_in[0]):
            return None
        grouped, region, backs = {out}, [], []
        for i in range(index + 1, len(self.graph.node)):  # in topological order: a node's inputs come first
            reader = self.graph.node[i]
            if not grouped.intersection(self.reads[i]):
                continue
            if reader.op_type == "Reshape" and reader.input[0] in grouped \
                    and tuple(self.shapes.get(reader.output[0], ())) == tuple(shape_in):
                back = self.reshape_back_target(reader, x, k, shape_in)
                if back is None:
                    return None
                backs.append((i, *back))
            elif self.splits_alike(reader, grouped, k, groups):
                region.append(i)
                grouped.update(reader.output)
            else:
                return None
        if grouped & self.graph_outputs:
            return None
        return (x, k, width, region, backs) if backs else None

    def splits_alike(self, node: onnx.NodeProto, grouped: set[str], k: int, groups: int) -> bool:
        """Whether ``node`` keeps a split GroupNorm's groups apart: an element-wise op whose
        activations are all grouped tensors and whose constants hold one entry per group or
        one for all at axis k, or a reduction with keepdims over axes other than 0 and k;
        its output still has the G groups at axis k."""
        shape = self.shapes.get(node.output[0]) if len(node.output) == 1 else None
        if node.domain not in ("", "ai.onnx") or shape is None or len(shape) <= k + 1 or shape[k] != groups:
            return False
        acts = [n for n in node.input if n and not self.is_const(n)]
        if not set(acts) <= grouped:
            return False
        if node.op_type in REDUCE_OPS:
            axes = self.axes_of(node)
            axes = set() if axes is None else {int(a) % len(shape) for a in np.ravel(axes)}
            return bool(axes) and not axes & {0, k} and int(_attrs(node).get("keepdims", 1)) == 1
        if node.op_type in ELEMENTWISE_UNARY:
            return True
        if node.op_type not in ELEMENTWISE_BINARY or node.op_type == "Pow" and node.input[0] not in grouped:
            return False
        for const in (n for n in node.input if n and self.is_const(n)):
            c_shape = self.shapes.get(const, tuple(self.init_by_name[const].dims) if const in self.init_by_name
                                      else None)
            aligned = None if c_shape is None else len(c_shape) - len(shape) + k
            if c_shape is None or aligned >= 0 and c_shape[aligned] != 1 and (
                    c_shape[aligned] != groups or const not in self.init_by_name):
                return False
        return True

    def reshape_back_target(self, node: onnx.NodeProto, x: str, k: int,
                            shape_in: tuple[int, ...]) -> tuple[str | None, int] | None:
        """Where the target of a split GroupNorm's Reshape back to x's shape holds x's channel
        count (tensor, entry; None where it spells -1 there), or None where the analysis
        cannot edit it: a constant, or tf2onnx's ``Concat(batch, H, W, C)``."""
        target = node.input[1]
        spec, count = self.value(target), (target, k)
        if spec is None:
            found = self.batch_concat(target, x)
            if found is None or len(found[0].input) != len(shape_in) or any(np.size(v) != 1 for v in found[1]):
                return None
            concat, rest = found
            spec, count = np.array([0, *(int(np.ravel(v)[0]) for v in rest)]), (concat.input[k], 0)
        spec = [int(v) for v in np.ravel(spec)]
        if len(spec) != len(shape_in) or self.sets_batch(spec[0], shape_in[0]) or any(
                v not in (0, -1, d) for v, d in zip(spec[1:], shape_in[1:])):
            return None
        if spec[k] in (0, -1):
            return None if spec[k] == 0 else (None, 0)
        return count if self.use_count.get(count[0], 0) == 1 else None

    def split_norm_step(self, node: onnx.NodeProto, index: int) -> None:
        """A node inside a split GroupNorm (:meth:`split_group_norm`): its constants with
        one entry per group lose those of the groups that go."""
        x, width, k = self.split_norm_nodes[index]
        rank = len(self.shapes[node.output[0]])
        for const in (n for n in node.input if n and self.is_const(n) and n in self.init_by_name):
            c_shape = tuple(self.init_by_name[const].dims)
            aligned = len(c_shape) - rank + k
            label = node_label(node, index)
            if aligned >= 0 and c_shape[aligned] != 1 \
                    and not self.add_param(self.layout(x), index, const, aligned, label, divisor=width):
                return
        self.group_norms[node.output[0]] = (x, width)
        self.layouts[node.output[0]] = OPAQUE

    def op_PRelu(self, node: onnx.NodeProto, index: int) -> None:
        self.binary_with_constant(node, index, node.input[0], node.input[1])

    def op_Pad(self, node: onnx.NodeProto, index: int) -> None:
        x = node.input[0]
        rank = len(self.shapes.get(x, ()))
        if len(node.input) > 1 and node.input[1]:
            axes_input = node.input[3] if len(node.input) > 3 else ""
            pads = self.known(node.input[1])
            axes = self.known(axes_input) if axes_input else None
        else:
            pads, axes_input = np.array(_attrs(node).get("pads", [])), ""
            axes = None
        if pads is None or (axes_input and axes is None) or rank < 2:
            self.freeze_all(node, index, "Pad with non-constant pads")
            return
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        pads = pads.reshape(2, -1)
        touched = {ax for ax, (lo, hi) in zip(axes, pads.T) if lo or hi}
        if touched & {self.batch_axis(x), self.axis(x)}:
            self.freeze_all(node, index, "Pad on the batch or channel axis")
            return
        self.passthrough(node, x)

    def op_Flatten(self, node: onnx.NodeProto, index: int) -> None:
        x = node.input[0]
        shape = self.shapes.get(x)
        axis = int(_attrs(node).get("axis", 1))
        if shape is None or axis not in (1, 1 - len(shape)) or not isinstance(self.layout(x), list):
            self.freeze_all(node, index, "Flatten that does not keep the batch axis alone")
            return
        if self.axis(x) not in (1, len(shape) - 1):
            self.reread_channels_first(node, index)
        self.flatten_map(node, index, x)

    def flatten_map(self, node: onnx.NodeProto, index: int, x: str) -> bool:
        """``node``'s output is map ``x`` (N, ...) flattened to (N, features): channel-major
        where its channels are on axis 1, position by position where they are last (NHWC).
        Whether it could follow them: channels already flattened (several entries each)
        flatten in no order a consumer reads unless they are on axis 1."""
        if self.axis(x) != 1 and any(seg.factor != 1 for seg in self.layout(x)):
            self.freeze_all(node, index, f"{node.op_type} of a flattened tensor whose channels are not on axis 1")
            return False
        shape = self.shapes[x]
        positions = int(np.prod(shape[1:], dtype=np.int64)) // max(shape[self.axis(x)], 1)
        self.layouts[node.output[0]] = flatten(self.layout(x), positions)
        if self.axis(x) != 1 and positions > 1:
            self.position_major[node.output[0]] = positions
        return True

    def op_Reshape(self, node: onnx.NodeProto, index: int) -> None:
        x, target = node.input[0], node.input[1]
        if self.batch_axis(x) and not self.merges_moved_batch(node):
            self.refuse_reshape(node, index, "Reshape of a map whose batch a Transpose moved other than into the "
                                             "batch again")
            return
        if x in self.group_norms:  # the Reshape back of a GroupNorm: x's channels again
            self.passthrough(node, self.group_norms[x][0])
            return
        if target in self.count_reads:
            self.counted.add(id(node))
            if not self.split_reshape(node, index, self.count_reads[target]):
                self.refuse_reshape(node, index, "Reshape by a target computed from channel counts other than into "
                                                 "blocks of channels")
            return
        if x in self.position_major:
            if not self.split_reshape(node, index):
                self.freeze_all(node, index, f"{node_label(node, index)} reads a map flattened channels last "
                                             "(position by position) into a shape other than its channel blocks")
            return
        found = self.group_norm(node)
        if found is not None:
            self.group_norm_start(node, index, found[2])
            return
        if self.split_group_norm(node, index):
            return
        shape_in, shape_out = self.shapes.get(x), self.shapes.get(node.output[0])
        layout = self.layout(x)
        spec, count = self.value(target), (target, 1)  # count: where the target's feature count is stored
        if spec is None:
            spec, count = self.batch_target(target, x)
        if self.unflatten(node, index, shape_in, shape_out, layout, spec) or \
                self.same_shape(node, index, shape_in, shape_out, layout, spec) or \
                self.after_channels(node, index, shape_in, shape_out, layout, spec):
            return
        # channels on another axis than 1 or the last flatten in an order the consumers do not
        # follow, unless every other axis but the batch has size 1
        ok = shape_in is not None and (self.axis(x) in (1, len(shape_in) - 1) or int(
            np.prod(shape_in[1:], dtype=np.int64)) == shape_in[self.axis(x)]) and \
            shape_out is not None and isinstance(layout, list) and \
            len(shape_in) >= 2 and len(shape_out) == 2 and shape_out[0] == shape_in[0] and spec is not None \
            and len(spec) == 2 and self.use_count.get(target, 0) == 1
        if not ok:
            if not self.split_reshape(node, index):
                self.freeze_all(node, index, "Reshape other than flattening (N, C, ...) to (N, features)")
            return
        if not self.flatten_map(node, index, x):
            return
        for pos, v in enumerate(spec):
            if v not in (0, -1) and pos == 1:
                self.follow_count(layout, ShapeParam(index, *count, node.output[0]))
            elif pos == 0 and self.sets_batch(int(v), shape_in[0]):
                self.cut_batch(node, index, "Reshape that sets the batch size")
                return

    def refuse_reshape(self, node: onnx.NodeProto, index: int, reason: str) -> None:
        """Freeze Reshape ``node`` for ``reason``, and with it the tensors whose channel counts
        its target reads (:attr:`count_reads`), which it does not follow."""
        target = node.input[1]
        if target in self.count_reads:
            self.counted.add(id(node))
            for z in self.count_reads[target]:
                self.freeze_layout(self.layout(z), "its channel count is read by a Shape op")
        self.freeze_all(node, index, reason)

    def split_reshape(self, node: onnx.NodeProto, index: int, sources: set[str] = frozenset()) -> bool:
        """A Reshape of channels on axis 1 into blocks (:meth:`split_blocks`), or of a map by
        a target computed from its own channel count that keeps that count on axis 1
        (``x.view(B, C, -1)``: :meth:`after_channels`); a map flattened channels last reads
        as its positions' copies of its channels, one after another. ``sources``: the
        tensors whose channel counts the target must read (:meth:`counts_into_targets`).
        Whether it followed the channels."""
        x, out = node.input[0], node.output[0]
        layout = self.layout(x)
        if not isinstance(layout, list):
            return False
        if x in self.position_major:
            layout = [replace(seg, factor=1) for seg in layout] * self.position_major[x]
        parsed = self.target_spec(node.input[1], x)
        if parsed is None or not sources <= {z for z, _ in parsed[1].values()}:
            return False
        spec, counts = parsed
        shape_in, shape_out = self.shapes.get(x), self.shapes.get(out)
        if counts == {1: (x, 1)} and x not in self.position_major:
            own = spec.copy()
            own[1] = 0  # the Reshape reads 0 as x's size there: the count it computes
            if self.after_channels(node, index, shape_in, shape_out, layout, own):
                return True
        if self.regroups_before_channels(node, index, layout, spec, counts):
            return True
        return self.split_blocks(node, index, layout, spec, counts)

    def regroups_before_channels(self, node: onnx.NodeProto, index: int, layout: list[Segment], spec: np.ndarray,
                                 counts: dict[int, tuple[str, int]]) -> bool:
        """A Reshape of a map with its channels on the last axis that keeps them there and
        regroups only the axes before them (tf2onnx's Keras UpSampling2D: (N, H, 2, W, C) to
        (N, 2H, W, C)), its channel entry the count a Shape op reads (which follows by
        itself); that tensor's channels are coupled with these. The batch stays first, or
        (tf2onnx's SpaceToBatchND / BatchToSpaceND, :meth:`batch_regrouped`) the axes up to
        a moved batch merge into it, or a batch of r rows per sample splits into its blocks
        and the samples. Whether it followed the channels."""
        x, out = node.input[0], node.output[0]
        si, so = self.shapes.get(x), self.shapes.get(out)
        if si is None or so is None or len(si) < 3 or len(so) < 3 or len(spec) != len(so) \
                or self.axis(x) != len(si) - 1 or set(counts) != {len(so) - 1} or counts[len(so) - 1][1] != 1 \
                or so[-1] != si[-1] or any(seg.factor != 1 for seg in layout):
            return False
        batch = self.batch_regrouped(x, si, so, spec)
        if batch is None:
            return False
        source = self.layout(counts[len(so) - 1][0])
        if not isinstance(source, list) or any(seg.factor != 1 for seg in source) \
                or sum(seg.length for seg in source) != si[-1]:
            return False
        if source is not layout and not couple(self.spaces, source, layout, self.new_cuts):
            self.freeze_all(node, index, "Reshape of channels kept last: the channels whose count it reads differ "
                                         "in structure")
            return True
        self.layouts[out] = layout
        self.axes[out] = len(so) - 1
        if batch:
            self.batch_axes[out] = batch
        return True

    def merges_moved_batch(self, node: onnx.NodeProto) -> bool:
        """Whether Reshape ``node`` of a map whose batch a Transpose moved behind block axes
        (its channels last) merges those axes into the batch again, on the first axis
        (:meth:`batch_regrouped`), which :meth:`regroups_before_channels` then follows."""
        x = node.input[0]
        si, so = self.shapes.get(x), self.shapes.get(node.output[0])
        parsed = self.target_spec(node.input[1], x)
        return parsed is not None and si is not None and so is not None and len(parsed[0]) == len(so) >= 2 \
            and self.axis(x) == len(si) - 1 and self.batch_regrouped(x, si, so, parsed[0]) == 0

    def batch_regrouped(self, x: str, si: tuple[int, ...], so: tuple[int, ...], spec: np.ndarray) -> int | None:
        """The batch axis of the output of a Reshape of ``x`` (shape ``si``, its channels
        last) to ``so`` by target ``spec`` that keeps the channels last: 0 where the batch
        stays first and the axes between regroup; 0 where x's batch, moved to axis b by a
        Transpose, merges with the b block axes before it (target -1 there); k where x has
        r rows per sample (a space-to-batch's) and the output splits them into k block axes
        of constant sizes multiplying to r, then the samples (target -1 there). None for
        any other Reshape."""
        b = self.batch_axis(x)
        k = next((j for j, v in enumerate(spec) if v == -1), 0)
        if self.batched and b == 0 and k > 0 and so[k] == self.probe_samples < si[0] and all(v > 0 for v in spec[:k]) \
                and np.prod(so[:k + 1], dtype=np.int64) == si[0] and x not in self.batch_cut \
                and np.prod(si[1:-1], dtype=np.int64) == np.prod(so[k + 1:-1], dtype=np.int64):
            return k
        if self.batched and b > 0 and spec[0] == -1 and so[0] == np.prod(si[:b + 1], dtype=np.int64) \
                and np.prod(si[b + 1:-1], dtype=np.int64) == np.prod(so[1:-1], dtype=np.int64):
            return 0
        if b == 0 and so[0] == si[0] and np.prod(si[1:-1], dtype=np.int64) == np.prod(so[1:-1], dtype=np.int64) \
                and (spec[0] in (0, -1) or not self.sets_batch(int(spec[0]), si[0])):
            return 0
        return None

    def target_spec(self, target: str, x: str) -> tuple[np.ndarray, dict[int, tuple[str, int]]] | None:
        """A Reshape target's value at the probed shapes, with the batch size of ``x``, the
        Reshape's input, read from a Shape (:meth:`batch_part`) as its first entry written 0
        (a Reshape reads 0 as "the input's size there"), and its entries computed from
        channel counts: position -> (z, k) for the count of ``z``'s channels divided by k.
        None when the value is not known."""
        spec = self.known(target)
        if spec is None:
            return None
        spec = np.array(spec, dtype=np.int64).reshape(-1)
        counts: dict[int, tuple[str, int]] = {}
        concat = self.producer_node.get(target)
        if concat is not None and concat.op_type == "Cast":
            concat = self.producer_node.get(concat.input[0])
        if concat is None or concat.op_type != "Concat":
            for j, e in enumerate(self.shape_vector(target) or []):
                if e is not None and e[1] == self.axis(e[0]):
                    counts[j] = (e[0], 1)
            return spec, counts
        pos = 0
        for part in concat.input:
            size = int(np.prod(self.shapes.get(part, (1,)), dtype=np.int64))
            entry = self.shape_entry(part) if size == 1 else None
            if entry is not None and entry[1] == self.axis(entry[0]):
                counts[pos] = (entry[0], entry[2])
            elif pos == 0 and self.batch_part(part, x):
                spec[0] = 0
            elif entry is None:  # a vector of Shape entries (tf2onnx: a Slice of a permuted Shape)
                for j, e in enumerate(self.shape_vector(part) or []):
                    if e is not None and e[1] == self.axis(e[0]):
                        counts[pos + j] = (e[0], 1)
                    elif e is not None and pos + j == 0 and e[1] == 0 and self.shares_batch(e[0], x):
                        spec[0] = 0
            pos += size
        return spec, counts

    def shape_vector(self, name: str, depth: int = 0) -> list[tuple[str, int] | None] | None:
        """The entries of the shape-valued tensor ``name``: (z, i) for entry i of
        ``Shape(z)``, read back through Cast, Identity, Squeeze, Unsqueeze, Gathers of
        constant indices and Slices with constant bounds; None for a value built otherwise."""
        node = self.producer_node.get(name)
        if node is None or depth > 16:
            return None
        if node.op_type == "Shape":
            start, end = _shape_range(node, len(self.shapes.get(node.input[0], ())))
            return [(node.input[0], i) for i in range(start, end)]
        if node.op_type in SHAPE_VALUE_COPIES | {"Gather", "Slice"}:
            source = self.shape_vector(node.input[0], depth + 1)
            taken = None if source is None else self.taken_entries(node, len(source)) \
                if node.op_type in ("Gather", "Slice") else list(range(len(source)))
            return None if taken is None else [source[i % len(source)] for i in taken]
        if node.op_type == "Concat":  # tf2onnx's BatchToSpaceND: Gather(Concat(block sizes, Shape entries))
            entries: list[tuple[str, int] | None] = []
            for part in node.input:
                size = self.shapes.get(part)
                if size is None or len(size) != 1:
                    return None
                entries += self.shape_vector(part, depth + 1) or [None] * size[0]
            return entries
        return None

    def split_blocks(self, node: onnx.NodeProto, index: int, layout: list[Segment], spec: np.ndarray,
                     counts: dict[int, tuple[str, int]]) -> bool:
        """A Reshape of (N, k*m, *S) with channels on axis 1 to (N, *K, m, *S), the sizes K
        multiplying to k and S kept (or only ones on both sides): channel c of its output is
        channel c of each of the k blocks of m input channels, which are coupled as the
        operands of a sum are (ResNeSt's ``x.reshape(B, radix, RC // radix, H, W)``,
        ShuffleNet's channel shuffle; k = 1 moves the channels between axes of size 1:
        ``v.view(B, -1, 1, 1)``). The target gives m as a channel count divided by k
        (``counts``), as -1, or as a constant of its own, which follows the kept channels.
        A count read from another tensor couples that tensor's channels with these, so that
        it stays theirs. Every other entry of the target must be a fixed size (0 or -1 for
        the batch). Whether it followed the channels."""
        x, out, target = node.input[0], node.output[0], node.input[1]
        si, so = self.shapes.get(x), self.shapes.get(out)
        if si is None or so is None or len(si) < 2 or len(spec) != len(so) or so[0] != si[0] or self.axis(x) != 1 \
                or any(seg.factor != 1 for seg in layout):
            return False
        at = list(counts) or [pos for pos, v in enumerate(spec) if v == -1 and pos > 0]
        stored = not at and target in self.init_by_name and self.use_count.get(target, 0) == 1
        if stored:  # the first axis where the output's sizes have multiplied up to the channels
            at = [pos for pos in range(1, len(so)) if np.prod(so[1:pos + 1], dtype=np.int64) == si[1]][:1]
        if len(at) != 1:
            return False
        p = at[0]
        k, m = int(np.prod(so[1:p], dtype=np.int64)), so[p]
        rest_in, rest_out = tuple(si[2:]), tuple(so[p + 1:])
        if k * m != si[1] or not (rest_in == rest_out or all(d == 1 for d in rest_in + rest_out)) \
                or any(v < 1 for pos, v in enumerate(spec) if pos not in (0, p)) or (stored and spec[p] != m) \
                or (spec[0] not in (0, -1) and self.sets_batch(int(spec[0]), si[0])):
            return False
        source = self.layout(counts[p][0]) if counts and counts[p][0] != x else layout
        if counts and (counts[p][1] != k or not isinstance(source, list)
                       or any(seg.factor != 1 for seg in source) or sum(seg.length for seg in source) != si[1]):
            return False
        also = None if source is layout else source
        if self.couple_blocks(node, index, layout, k, "Reshape into channel blocks", p, also) and stored:
            self.follow_count(self.layouts[out], ShapeParam(index, target, p, out))
        return True

    def couple_blocks(self, node: onnx.NodeProto, index: int, layout: list[Segment], k: int, what: str,
                      axis: int = 1, also: list[Segment] | None = None) -> bool:
        """Couple the k equal blocks of ``layout`` (and the layout ``also``, as a whole) as the
        operands of a sum are: ``node``'s output carries the first block on ``axis``. Whether
        they aligned; if not, the node froze, and where a block boundary asked the next walk
        for a cut the output still carries the first block (frozen until then), so that the
        cuts further on are found in this walk too."""
        n = sum(seg.length for seg in layout) // k
        cuts_before = len(self.new_cuts)
        blocks = [self.take(layout, b * n, (b + 1) * n) for b in range(k)]
        aligned = len(self.new_cuts) == cuts_before and self.couple_all(blocks) \
            and (also is None or couple(self.spaces, also, layout, self.new_cuts))
        if not aligned:
            self.freeze_all(node, index, f"{what}: its {k} blocks of channels differ in structure")
            if len(self.new_cuts) == cuts_before:
                return False
        self.layouts[node.output[0]] = blocks[0]
        if axis != 1:
            self.axes[node.output[0]] = axis
        return aligned

    def after_channels(self, node: onnx.NodeProto, index: int, shape_in, shape_out, layout, spec) -> bool:
        """A Reshape by a constant target (``spec``; or one that reads the map's own channel
        count, written 0) of a map with its channels on axis 1 that keeps
        axis 0 and either keeps the channel axis, rearranging only the axes after it
        (PixelUnshuffle's split of H and W: (N, C, H/r, r, W/r, r)), or merges it with the
        axes that follow (its Reshape back after a Transpose: (N, C*r*r, H/r, W/r)): each
        channel's entries stay one block along axis 1, ``factor`` times as many when
        merged. The target's count on axis 1 follows the kept channels. False when the
        Reshape is not of this kind (a flatten to (N, features) is :meth:`flatten_map`'s)."""
        target = node.input[1]
        if shape_in is None or shape_out is None or spec is None or len(shape_in) < 3 or len(shape_out) < 3 \
                or not isinstance(layout, list) or self.axis(node.input[0]) != 1 or len(spec) != len(shape_out) \
                or self.use_count.get(target, 0) != 1 or shape_out[0] != shape_in[0] \
                or self.sets_batch(int(spec[0]), shape_in[0]):
            return False
        merged, j = 1, 1  # axes 1..j of the input make axis 1 of the output
        while shape_in[1] * merged < shape_out[1] and j + 1 < len(shape_in):
            j += 1
            merged *= shape_in[j]
        # the axes after the merged ones stay, axes of size 1 aside (PyTorch's PixelUnshuffle
        # exported with a dynamic H and W keeps two: (N, C*r*r, 1, 1, H/r, W/r))
        rest_in, rest_out = (tuple(d for d in rest if d != 1) for rest in (shape_in[j + 1:], shape_out[2:]))
        if shape_in[1] * merged != shape_out[1] or (merged > 1 and rest_in != rest_out) \
                or int(spec[1]) not in (-1, shape_out[1]) + ((0,) if merged == 1 else ()):
            return False
        if int(spec[1]) > 0:
            self.follow_count(layout, ShapeParam(index, target, 1, node.output[0]))
        self.layouts[node.output[0]] = [replace(seg, factor=seg.factor * merged) for seg in layout]
        return True

    def batch_target(self, target: str, x: str) -> tuple[np.ndarray | None, tuple[str, int] | None]:
        """The value of a Reshape target ``Concat(batch, [k])`` (behind Casts) that starts
        with ``x``'s own batch size (PyTorch's ``x.view(x.size(0), -1)``; tf2onnx's Keras
        Flatten, ``[N, H*W*C]``), the batch entry written as 0 (a Reshape reads 0 as "x's
        size there"), and where its feature count k is stored: a constant of its own, which
        the rewrite edits (None for -1). (None, None) when the target is built otherwise."""
        found = self.batch_concat(target, x)
        if found is None:
            return None, None
        concat, rest = found
        tail = [int(v) for part in rest for v in np.ravel(part)]
        if all(v == -1 for v in tail):
            return np.array([0, *tail], dtype=np.int64), None
        stored = concat.input[1]
        if len(tail) == 1 and tail[0] > 0 and stored in self.init_by_name and self.use_count.get(stored, 0) == 1:
            return np.array([0, tail[0]], dtype=np.int64), (stored, 0)
        return None, None

    def batch_concat(self, target: str, x: str) -> tuple[onnx.NodeProto, list[np.ndarray]] | None:
        """A Reshape target built as ``Concat(batch, part, ...)`` (behind Casts) whose first
        part is ``x``'s own batch size and the others constants: (the Concat, the values of
        the others); None when it is built otherwise."""
        concat = self.producer_node.get(target)
        while concat is not None and concat.op_type == "Cast":
            concat = self.producer_node.get(concat.input[0])
        if concat is None or concat.op_type != "Concat" or int(_attrs(concat).get("axis", 0)) not in (0, -1) \
                or not self.batch_part(concat.input[0], x):
            return None
        rest = [self.value(part) for part in concat.input[1:]]
        return None if any(v is None for v in rest) else (concat, rest)

    def batch_part(self, name: str, x: str) -> bool:
        """Whether ``name`` is the batch size of ``x`` (:meth:`reads_batch_size`), or entry 0 of
        the Shape of another tensor with one row per sample and as many rows as ``x`` at the
        probed shapes (timm's RadixSoftmax reshapes its softmax by the batch size it read
        from its input)."""
        if self.reads_batch_size(name, x):
            return True
        entry = self.shape_entry(name)
        return entry is not None and entry[1:] == (0, 1) and self.shares_batch(entry[0], x)

    def shares_batch(self, z: str, x: str) -> bool:
        """Whether ``z`` has one row per sample (no batch cut made it) and as many rows as
        ``x`` at the probed shapes, so that its batch size is ``x``'s."""
        return z not in self.batch_cut and self.shapes.get(z, ())[:1] == self.shapes.get(x, (None,))[:1]

    def reads_batch_size(self, name: str, x: str) -> bool:
        """Whether ``name`` is the batch size of ``x`` as a scalar or 1-element vector: taken
        from ``Shape(x)`` (or the Shape of a tensor that a Transpose keeping the batch axis
        first turns into ``x``) by Gather, Slice, Cast, Unsqueeze and Squeeze. That no other
        entry of the Shape (the channel count) goes anywhere is :meth:`op_Shape`'s check."""
        return self.shapes.get(name) in ((), (1,)) and 0 in self.batch_entries(name, x)

    def batch_entries(self, name: str, x: str, depth: int = 0) -> set[int]:
        """The entries of the shape-valued tensor ``name`` that hold ``x``'s batch size."""
        node = self.producer_node.get(name)
        if node is None or depth > 16:
            return set()
        src = node.input[0] if node.input else ""
        if node.op_type == "Shape":
            rank = len(self.shapes.get(src, ()))
            start, end = _shape_range(node, rank)
            keeps_batch = start == 0 < end and self.batch_of(src, x)
            return {0} if keeps_batch else set()
        if node.op_type in ("Cast", "Identity") or (node.op_type in ("Unsqueeze", "Squeeze")
                                                     and self.shapes.get(src) in ((), (1,))):
            return self.batch_entries(src, x, depth + 1)
        entries = self.batch_entries(src, x, depth + 1)
        vector = self.shapes.get(src, ())  # what is computed from a scalar batch size (B * 4) holds no entry of it
        taken = self.taken_entries(node, vector[0]) if entries and len(vector) == 1 else None
        return set() if taken is None else {j for j, i in enumerate(taken) if i in entries}

    def taken_entries(self, node: onnx.NodeProto, n: int) -> list[int] | None:
        """Which entries of its first input, a shape vector of ``n`` entries, each entry of
        ``node``'s output holds: a Cast or Identity holds them all, a Gather by constant
        indices the ones they name (as given, a negative index not wrapped) and a Slice by
        constant bounds with step 1 the ones it picks. None for any other op, or indices and
        bounds that are not constant."""
        if node.op_type in ("Cast", "Identity"):
            return list(range(n))
        if node.op_type == "Gather" and int(_attrs(node).get("axis", 0)) in (0, -1):  # the vector's one axis
            v = self.value(node.input[1])
            return None if v is None else [int(i) for i in np.ravel(v)]
        bounds = self.slice_inputs(node) if node.op_type == "Slice" else None
        if bounds is None or (bounds[3] is not None and np.any(np.ravel(bounds[3]) != 1)) \
                or (bounds[2] is not None and np.ravel(bounds[2]).tolist() not in ([0], [-1])):
            return None
        lo, hi = _clamp(int(np.ravel(bounds[0])[0]), int(np.ravel(bounds[1])[0]), n)
        return list(range(lo, hi))

    def batch_of(self, y: str, x: str) -> bool:
        """Whether tensor ``y``'s first axis is ``x``'s batch axis: ``y`` is ``x``, or ``x``
        is ``y`` through Transposes that keep the first axis first (tf2onnx reads the shape
        of a map before the Transpose to NHWC that the Reshape flattens), or ``y`` is a graph
        input of a model whose inputs share a free batch and nothing cut it on the way to
        ``x`` (PyTorch's ``h.view(x.size(0), -1)`` with ``x`` the model's input)."""
        if y in self.graph_inputs and self.free_batch and x not in self.batch_cut:
            return True
        for _ in range(16):
            if x == y:
                return True
            node = self.producer_node.get(x)
            if node is None or node.op_type != "Transpose" or [int(p) for p in _attrs(node).get("perm", [])][:1] != [0]:
                return False
            x = node.input[0]
        return False

    def unflatten(self, node: onnx.NodeProto, index: int, shape_in, shape_out, layout, spec) -> bool:
        """(N, C) -> (N, C, 1, 1) by a constant target, as SE blocks written with Keras
        reshape their pooled vector: the channels stay on axis 1 (the target's C follows
        the kept channels). False when the Reshape is not of this kind."""
        target = node.input[1]
        if shape_in is None or shape_out is None or spec is None or len(shape_in) != 2 or len(shape_out) < 3 \
                or tuple(shape_out[:2]) != tuple(shape_in) or any(d != 1 for d in shape_out[2:]) \
                or not isinstance(layout, list) or any(seg.factor != 1 for seg in layout) or self.axis(node.input[0]) != 1 \
                or self.use_count.get(target, 0) != 1 or len(spec) != len(shape_out) \
                or self.sets_batch(int(spec[0]), shape_in[0]):
            return False
        if spec[1] not in (0, -1):
            self.follow_count(layout, ShapeParam(index, target, 1, node.output[0]))
        self.passthrough(node, node.input[0])
        return True

    def same_shape(self, node: onnx.NodeProto, index: int, shape_in, shape_out, layout, spec) -> bool:
        """A Reshape to the shape its input has, by a constant target (tf2onnx writes one
        before the convolutions of Keras' SE blocks, ``[-1, C, 1, 1]``): the channels pass
        through, and a channel count the target spells out follows the kept ones. False
        when the Reshape is not of this kind."""
        target = node.input[1]
        if shape_in is None or shape_out is None or spec is None or tuple(shape_in) != tuple(shape_out) \
                or len(spec) != len(shape_in) or len(shape_in) < 2 or not isinstance(layout, list) \
                or any(seg.factor != 1 for seg in layout) or self.use_count.get(target, 0) != 1:
            return False
        caxis = self.axis(node.input[0])
        if caxis == 0 or self.sets_batch(int(spec[0]), shape_in[0]) or any(
                int(v) not in (0, -1, d) for i, (v, d) in enumerate(zip(spec, shape_in)) if i not in (0, caxis)):
            return False
        if int(spec[caxis]) not in (0, -1):
            self.follow_count(layout, ShapeParam(index, target, caxis, node.output[0]))
        self.passthrough(node, node.input[0])
        return True

    def op_Squeeze(self, node: onnx.NodeProto, index: int) -> None:
        self.rank_change(node, index)

    def op_Tile(self, node: onnx.NodeProto, index: int) -> None:
        """Copies along axes other than the batch and the channels (Keras' UpSampling2D
        repeats rows and columns so) pass the channels on."""
        x = node.input[0]
        repeats = self.known(node.input[1])
        shape = self.shapes.get(x)
        if repeats is None or shape is None or np.size(repeats) != len(shape) \
                or int(np.ravel(repeats)[0]) != 1 or int(np.ravel(repeats)[self.axis(x)]) != 1:
            self.freeze_all(node, index, "Tile along the batch or channel axis, or by repeats not known")
            return
        self.passthrough(node, x)

    def op_Unsqueeze(self, node: onnx.NodeProto, index: int) -> None:
        self.rank_change(node, index)

    def rank_change(self, node: onnx.NodeProto, index: int) -> None:
        """Squeeze/Unsqueeze of axes other than the batch and channel axes (which may shift)."""
        x = node.input[0]
        si, so = self.shapes.get(x), self.shapes.get(node.output[0])
        layout = self.layout(x)
        axes = self.axes_of(node)
        if axes is None and node.op_type == "Squeeze" and si is not None and len(node.input) < 2:
            # without axes (before opset 13: an attribute left out) every axis of size 1 goes,
            # at the probed shapes; one that is the batch axis there freezes below
            axes = [a for a, size in enumerate(si) if size == 1]
        if si is None or so is None or len(si) < 2 or len(so) < 2 or not isinstance(layout, list) or axes is None:
            self.freeze_all(node, index, f"{node.op_type} that moves the channel axis")
            return
        caxis = self.axis(x)
        if node.op_type == "Squeeze":
            gone = {int(a) % len(si) for a in np.ravel(axes)}
            new = caxis - sum(a < caxis for a in gone) if not gone & {0, caxis} else None
        else:
            added = sorted(int(a) % len(so) for a in np.ravel(axes))
            new = caxis
            for a in added:
                new += a <= new
            new = None if 0 in added else new
        if new is None or so[new] != si[caxis]:
            self.freeze_all(node, index, f"{node.op_type} that moves the channel axis")
            return
        if len(so) == 2 and len(si) > 2 and any(seg.factor != 1 for seg in layout):
            self.freeze_all(node, index, f"{node.op_type} of a flattened tensor")
            return
        self.passthrough(node, x, new)

    def reduce(self, node: onnx.NodeProto, index: int) -> None:
        """A reduction over axes other than the batch and channel axes (e.g. global pooling)."""
        x = node.input[0]
        si = self.shapes.get(x)
        axes = self.axes_of(node)
        caxis = self.axis(x)
        axes = None if axes is None or si is None else {int(a) % len(si) for a in np.ravel(axes)}
        if not axes or axes & {0, caxis}:
            self.freeze_all(node, index, f"{node.op_type} over the batch or channel axis")
            return
        keep = int(_attrs(node).get("keepdims", 1))
        self.passthrough(node, x, caxis if keep else caxis - sum(a < caxis for a in axes))

    def normalize_along(self, node: onnx.NodeProto, index: int) -> None:
        """Softmax, LogSoftmax or Hardmax along an axis other than the batch and channel axes
        (ResNeSt's softmax over its radix axis): each channel's values are normalized among
        themselves. Before opset 13 the op normalizes over every axis from ``axis`` on, which
        must then all lie after the channel axis."""
        x = node.input[0]
        rank = len(self.shapes.get(x, ()))
        axis = int(_attrs(node).get("axis", -1 if self.opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        caxis = self.axis(x)
        mixed = {axis} if self.opset >= 13 else set(range(axis, rank))
        if rank < 2 or not isinstance(self.layout(x), list) or mixed & {0, caxis} or not 0 <= axis < rank:
            self.freeze_all(node, index, f"{node.op_type} over the batch or channel axis")
            return
        self.passthrough(node, x)

    def op_Concat(self, node: onnx.NodeProto, index: int) -> None:
        out = node.output[0]
        rank = len(self.shapes.get(out, ()))
        axis = int(_attrs(node).get("axis", 0))
        acts = [n for n in node.input if not self.is_const(n)]
        # operands frozen anyway (an NHWC graph input, whose channel axis the analysis
        # cannot know) join as frozen channels along the axis the followed ones hold theirs on
        followed = [n for n in acts if not self.wholly_frozen(n)] or acts
        caxes = {self.axis(n) for n in followed}
        if rank >= 3 and len(caxes) == 1 and axis % rank not in (0, *caxes):
            self.concat_positions(node, index)
            return
        if rank < 2 or len(caxes) != 1 or axis % rank != caxes.pop():
            self.freeze_all(node, index, "Concat along an axis other than channels")
            return
        axis %= rank
        joined: list[Segment] = []
        for name in node.input:
            layout = self.layout(name)
            if layout is None or (name not in followed and self.axis(name) != axis):
                # constant channels, or frozen ones read on another axis: never pruned
                shape = self.shapes.get(name)
                c = shape[axis] if shape is not None and len(shape) > axis else 0
                reason = "; ".join(self.frozen_reasons(layout)) or (
                    "constant channels in a Concat" if layout is None else
                    f"{node_label(node, index)} joins them on axis {axis}, not on their axis {self.axis(name)}")
                layout = self.create(f"t:{name}", c, None, reason) if c else []
            if not isinstance(layout, list):
                self.freeze_all(node, index, "Concat of a tensor whose channels cannot be followed")
                return
            joined.extend(layout)
        if len({seg.factor for seg in joined}) > 1:  # a Flatten's or a channel multiplier's entries
            self.freeze_all(node, index, "Concat of tensors whose channels hold different numbers of entries (a "
                                         "channel multiplier's outputs beside others, or maps of other sizes after a "
                                         "Flatten)")
            return
        self.layouts[out] = joined
        if axis != 1:
            self.axes[out] = axis

    def concat_positions(self, node: onnx.NodeProto, index: int) -> None:
        """A Concat along a spatial axis (the wrap-around of PyTorch's circular padding):
        channel c of its output is channel c of every operand, which it couples as a sum
        does; a constant operand, whose channels would stay, freezes them."""
        layouts = [self.layout(name) for name in node.input]
        if not all(isinstance(layout, list) for layout in layouts):
            self.freeze_all(node, index, "Concat along a spatial axis of a constant or of channels not followed")
            return
        if not self.couple_all(layouts):
            self.freeze_all(node, index, "Concat along a spatial axis of tensors whose channels differ in structure")
            return
        self.passthrough(node, node.input[0])

    def op_Shape(self, node: onnx.NodeProto, index: int) -> None:
        # Exporters read the batch or spatial sizes to build Reshape targets; reading the
        # channel count would bake it into the graph. Accepted: Shape with start/end that
        # skip axis 1, or whose every reader Gathers another axis, or puts back x's own
        # shape (a Resize's sizes, a GroupNorm's Reshape back).
        rank = len(self.shapes.get(node.input[0], ()))
        start, end = _shape_range(node, rank)
        caxis = self.axis(node.input[0])
        skips_channels = rank > 1 and not (start <= caxis < end)
        # a graph output that holds the channel count would change with the pruning
        safe = skips_channels or node.output[0] not in self.graph_outputs and all(
            self.reads_other_axes(n, node.output[0], {caxis - start}, max(end - start, 1), node.input[0])
            or (start == 0 and self.resizes_itself(n, node.input[0])) or self.reshapes_back(n, node.input[0])
            or self.counts_into_targets(n, node, caxis - start, max(end - start, 1))
            for n in self.consumer_nodes.get(node.output[0], []))
        if not safe:
            self.freeze_layout(self.layout(node.input[0]), "its channel count is read by a Shape op")
        self.consts[node.output[0]] = None

    def counts_into_targets(self, reader: onnx.NodeProto, shape: onnx.NodeProto, channel: int, n: int) -> bool:
        """Whether ``reader`` of ``shape``, a Shape op, is a Gather of its channel entry alone
        whose value goes only into Reshape targets (:meth:`count_targets`), as ResNeSt's
        ``x.reshape(B, radix, RC // radix, H, W)`` does: those Reshapes must then follow the
        count (:meth:`split_reshape`), or the channels freeze. Records the targets. ``n``:
        the entries of the shape vector."""
        taken = self.taken_entries(reader, n) if reader.op_type == "Gather" and reader.input[0] == shape.output[0] \
            else None
        targets = self.count_targets(reader.output[0]) if taken is not None and len(taken) == 1 \
            and taken[0] % n == channel and self.shapes.get(reader.output[0]) in ((), (1,)) else None
        for target in targets or ():
            self.count_reads.setdefault(target, set()).add(shape.input[0])
        return targets is not None

    def concat_target(self, name: str) -> str | None:
        """The Reshape target that the Concat output ``name`` is, itself or behind one Cast or
        one Gather of constant indices (tf2onnx's BatchToSpaceND reorders its target so),
        where Reshapes alone read it (as their target); None otherwise."""
        readers = self.consumer_nodes.get(name, [])
        for op in ("Cast", "Gather"):
            if len(readers) == 1 and readers[0].op_type == op and name not in self.graph_outputs and (
                    op == "Cast" or int(_attrs(readers[0]).get("axis", 0)) == 0 and readers[0].input[0] == name
                    and self.value(readers[0].input[1]) is not None):
                name, readers = readers[0].output[0], self.consumer_nodes.get(readers[0].output[0], [])
        if name in self.graph_outputs or not readers \
                or any(c.op_type != "Reshape" or list(c.input[1:]) != [name] for c in readers):
            return None
        return name

    def count_targets(self, name: str, depth: int = 0) -> set[str] | None:
        """The Reshape targets a channel count ``name`` goes into, through Cast, Identity,
        Squeeze, Unsqueeze and Div by a constant: Concats along axis 0 that Reshapes alone
        read, as their target (none where it goes nowhere). None when it goes anywhere else."""
        readers = self.consumer_nodes.get(name, [])
        if depth > 16 or name in self.graph_outputs:
            return None
        found: set[str] = set()
        for r in readers:
            out = r.output[0]
            if r.input[0] == name and (r.op_type in SHAPE_VALUE_COPIES
                                       or r.op_type == "Div" and self.is_const(r.input[1])):
                more = self.count_targets(out, depth + 1)
            elif r.op_type == "Concat" and int(_attrs(r).get("axis", 0)) in (0, -1) and self.concat_target(out) == out:
                more = {out}  # read by Reshapes directly, not behind a Cast
            else:
                return None
            if more is None:
                return None
            found |= more
        return found

    def shape_entry(self, name: str, depth: int = 0) -> tuple[str, int, int] | None:
        """(z, i, k) when the one-element value ``name`` is entry i of ``Shape(z)`` divided by
        the constant k (1 when not divided), read back through Cast, Identity, Squeeze,
        Unsqueeze and Div; None for anything else."""
        node = self.producer_node.get(name)
        if node is None or depth > 16:
            return None
        if node.op_type in SHAPE_VALUE_COPIES:
            return self.shape_entry(node.input[0], depth + 1)
        if node.op_type == "Div":
            k, found = self.known(node.input[1]), self.shape_entry(node.input[0], depth + 1)
            if found is None or k is None or np.size(k) != 1 or int(np.ravel(k)[0]) < 1 \
                    or float(np.ravel(k)[0]) != int(np.ravel(k)[0]):
                return None
            return found[0], found[1], found[2] * int(np.ravel(k)[0])
        shape = self.producer_node.get(node.input[0]) if node.op_type == "Gather" else None
        if shape is None or shape.op_type != "Shape" or int(_attrs(node).get("axis", 0)) not in (0, -1):
            return None
        start, end = _shape_range(shape, len(self.shapes.get(shape.input[0], ())))
        taken = self.taken_entries(node, end - start)
        if taken is None or len(taken) != 1:
            return None
        return shape.input[0], start + taken[0] % max(end - start, 1), 1

    def reads_other_axes(self, reader: onnx.NodeProto, shape: str, channel: set[int], n: int, z: str,
                         depth: int = 0) -> bool:
        """Whether ``reader`` takes only entries of the shape vector ``shape`` (``n`` entries)
        other than those in ``channel`` (which hold ``z``'s channel count): a Gather of
        entries, or a Slice with constant bounds (``Slice(Shape(skip), 2, 4)``: its H and W),
        or a Cast; where what it takes still holds the count, every reader of its output must
        take only other entries in turn (tf2onnx's ``Slice(Cast(Gather(Shape(x), perm)), 0,
        1)``: the batch size of the NHWC map) or put it, whole, into a Concat along axis 0
        that is a Reshape's target (:meth:`concat_target`; tf2onnx's Keras UpSampling2D:
        ``Slice(Cast(Gather(Shape(x), [0, 2, 3, 1])), 2)``, the W and C of the NHWC map).
        Such targets are recorded (:attr:`count_reads`): their Reshapes must follow the
        count, or ``z``'s channels freeze. A Size or Shape of the vector reads its length
        alone (tf2onnx's SpaceToBatchND pads by the rank)."""
        if reader.op_type in ("Size", "Shape") and reader.input[0] == shape:
            return True
        taken = self.taken_entries(reader, n) if reader.input[0] == shape else None
        if taken is None:
            return False
        held = {j for j, i in enumerate(taken) if i % n in channel}
        out = reader.output[0]
        if not held:
            return True
        if depth >= 16 or out in self.graph_outputs:
            return False
        return all(self.count_into_target(r, z) if r.op_type == "Concat"
                   else self.reads_other_axes(r, out, held, max(len(taken), 1), z, depth + 1)
                   for r in self.consumer_nodes.get(out, []))

    def count_into_target(self, concat: onnx.NodeProto, z: str) -> bool:
        """Whether ``concat``, which takes ``z``'s channel count, builds a Reshape target along
        axis 0 (:meth:`concat_target`); records the target in :attr:`count_reads`."""
        target = self.concat_target(concat.output[0]) if int(_attrs(concat).get("axis", 0)) in (0, -1) else None
        if target is not None:
            self.count_reads.setdefault(target, set()).add(z)
        return target is not None

    def sizes_from_own_shape(self, sizes: str, x: str) -> bool:
        """Whether a Resize's ``sizes`` is ``Concat(Slice(Shape(x), 0, 2), ...)`` of its own
        input ``x`` (see :meth:`resizes_itself`)."""
        concat = self.producer_node.get(sizes)
        head = self.producer_node.get(concat.input[0]) if concat is not None and concat.op_type == "Concat" else None
        shape = self.producer_node.get(head.input[0]) if head is not None else None
        # onnxruntime's optimizer writes Shape(x) with start=0 spelled out
        return shape is not None and shape.op_type == "Shape" and shape.input[0] == x \
            and _shape_range(shape, len(self.shapes.get(x, ())))[0] == 0 and self.resizes_itself(head, x)

    def resizes_itself(self, reader: onnx.NodeProto, x: str) -> bool:
        """Whether ``reader`` of ``Shape(x)`` is ``Slice(Shape(x), 0, 2)`` feeding only
        ``Concat`` s whose only readers are Resizes of ``x`` itself, taking them as ``sizes``:
        ``Resize(x, sizes=Concat(Slice(Shape(x), 0, 2), hw))``, as paddle2onnx writes
        ``F.interpolate(x, size=hw)``. Its channel entry is then always x's own count."""
        bounds = self.slice_inputs(reader) if reader.op_type == "Slice" and len(reader.input) >= 3 else None
        if bounds is None or self.axis(x) != 1:
            return False
        lo, hi, axes, steps = bounds
        if np.ravel(lo).tolist() != [0] or np.ravel(hi).tolist() != [2] \
                or (axes is not None and np.ravel(axes).tolist() != [0]) \
                or (steps is not None and np.ravel(steps).tolist() != [1]):
            return False
        concats = self.consumer_nodes.get(reader.output[0], [])
        rank = len(self.shapes.get(x, ()))
        return bool(concats) and all(
            c.op_type == "Concat" and c.input[0] == reader.output[0] and _attrs(c).get("axis") == 0
            and all(r.op_type == "Resize" and r.input[0] == x and len(r.input) > 3 and r.input[3] == c.output[0]
                    and _resize_axes(r, rank)[:2] == [0, 1]  # sizes[:2] are x's batch and channels
                    for r in self.consumer_nodes.get(c.output[0], [])) and self.consumer_nodes.get(c.output[0])
            for c in concats)

    def binary_with_constant(self, node: onnx.NodeProto, index: int, act: str, const: str) -> None:
        """Element-wise op of an activation and a constant: slice the constant if per-channel."""
        if self.constant_operand(node, index, act, const):
            self.passthrough(node, act)

    def constant_operand(self, node: onnx.NodeProto, index: int, act: str, const: str) -> bool:
        """Whether the constant operand ``const`` of an element-wise ``node`` on activation
        ``act`` leaves act's channels to its output: one value for every channel, or one per
        channel, recorded to slice; else ``node`` is frozen."""
        layout = self.layout(act)
        label = node_label(node, index)
        out_shape = self.shapes.get(node.output[0])
        c_shape = self.shapes.get(const)  # () for a scalar computed from shapes (a pixel count)
        if c_shape is None and const in self.init_by_name:
            c_shape = tuple(self.init_by_name[const].dims)
        if not isinstance(layout, list) or out_shape is None or c_shape is None:
            self.freeze_all(node, index, f"{label}: operand shapes unknown")
            return False
        entries = sum(seg.length * seg.factor for seg in layout)  # a channel's entries are adjacent
        if tuple(self.shapes.get(act, ())) != tuple(out_shape):
            self.freeze_all(node, index, f"{label}: the constant broadcasts the activation to a new shape")
            return False
        aligned = len(c_shape) - len(out_shape) + self.axis(act)  # axis of the constant facing channels
        if aligned < 0 or c_shape[aligned] == 1:
            return True
        if c_shape[aligned] != entries or const not in self.init_by_name:
            self.freeze_all(node, index, f"{label}: constant operand indexes channels in a way not handled")
            return False
        return self.add_param(layout, index, const, aligned, label, act)

    def elementwise_binary(self, node: onnx.NodeProto, index: int) -> None:
        acts = [n for n in node.input if not self.is_const(n)]
        consts = [n for n in node.input if self.is_const(n) and n]
        if node.op_type in ("Sum", "Mean", "Max", "Min") and len(node.input) != 2:
            self.variadic(node, index)
            return
        if len(acts) == 1 and len(consts) == 1:
            if node.op_type == "Pow" and node.input[0] != acts[0]:
                self.freeze_all(node, index, "Pow with an activation exponent")
                return
            self.binary_with_constant(node, index, acts[0], consts[0])
            return
        if len(acts) != 2:
            self.freeze_all(node, index, f"{node.op_type} operands not understood")
            return
        out_shape = self.shapes.get(node.output[0])
        layouts = [self.layout(a) for a in acts]
        shapes = [self.shapes.get(a) for a in acts]
        caxes = {self.axis(a) for a in acts}
        if out_shape is None or any(s is None for s in shapes) or not all(isinstance(l, list) for l in layouts) \
                or len(caxes) != 1:
            self.freeze_all(node, index, f"{node.op_type} of tensors whose channels cannot be followed")
            return
        caxis = caxes.pop()
        full = [i for i, s in enumerate(shapes) if len(s) == len(out_shape) and s[caxis] == out_shape[caxis]]
        bcast = [i for i, s in enumerate(shapes) if i not in full and
                 (len(s) < len(out_shape) - caxis or s[len(s) - len(out_shape) + caxis] == 1)]
        if len(full) == 2:
            a, b = layouts
            cuts_before = len(self.new_cuts)
            if not couple(self.spaces, a, b, self.new_cuts):
                self.freeze_all(node, index, f"{node.op_type} couples channels with different structure")
                if self.request_blocks(a, b):
                    # the next walk couples them: until then the output carries (frozen) the
                    # factors it will have, so that the blocks further on are found now too
                    self.passthrough(node, acts[0] if a[0].factor >= b[0].factor else acts[1])
                elif len(self.new_cuts) > cuts_before:
                    self.pass_finer(node, acts)
                return
            self.passthrough(node, acts[0])
        elif len(full) == 1 and len(bcast) == 1 and out_shape[caxis] > 1:
            # e.g. spatial attention: the broadcast operand does not index channels
            self.freeze_layout(layouts[bcast[0]], f"{node.op_type} broadcasts it over channels")
            self.passthrough(node, acts[full[0]])
        else:
            self.freeze_all(node, index, f"{node.op_type} with a broadcast not handled")

    def couple_all(self, layouts: list[list[Segment]]) -> bool:
        """Couple the first layout with each other one (every pair tried, so that one walk
        asks for all the cuts they need); whether all aligned."""
        return all([couple(self.spaces, layouts[0], other, self.new_cuts) for other in layouts[1:]])

    def pass_finer(self, node: onnx.NodeProto, acts: list[str]) -> None:
        """After a coupling of ``acts`` that asked the next walk for cuts: the output carries
        (frozen) the operand cut at the most places, so that the cuts further on are found
        in this walk too. A chain of residual blocks that each add a Conv's output to a
        Concat (Inception-ResNet) would otherwise need one walk per block."""
        self.passthrough(node, max(acts, key=lambda a: len(self.layout(a))))

    def variadic(self, node: onnx.NodeProto, index: int) -> None:
        """Sum / Mean / Max / Min of one tensor (a copy of it) or of three or more, and
        Where(condition, a, b) (``torch.where(x > 0, x, 0.1 * x)``): its activations, all of
        the output's shape, coupled like a chain of two-input ops; each constant operand a
        value for every channel or one per channel (:meth:`constant_operand`)."""
        acts = [n for n in node.input if not self.is_const(n)]
        consts = [n for n in node.input if self.is_const(n)]
        out_shape = self.shapes.get(node.output[0])
        layouts = [self.layout(a) for a in acts]
        if not acts or out_shape is None or any(tuple(self.shapes.get(a, ())) != tuple(out_shape) for a in acts) or \
                not all(isinstance(layout, list) for layout in layouts) or len({self.axis(a) for a in acts}) != 1:
            self.freeze_all(node, index, f"{node.op_type} of {len(node.input)} inputs whose activations are not all "
                                         "of its output's shape")
            return
        cuts_before = len(self.new_cuts)
        if not self.couple_all(layouts):
            self.freeze_all(node, index, f"{node.op_type} couples channels with different structure")
            if len(self.new_cuts) > cuts_before:
                self.pass_finer(node, acts)
            return
        if all(self.constant_operand(node, index, acts[0], c) for c in consts):
            self.passthrough(node, acts[0])

    def op_Where(self, node: onnx.NodeProto, index: int) -> None:
        self.variadic(node, index)

    def op_Slice(self, node: onnx.NodeProto, index: int) -> None:
        x = node.input[0]
        shape = self.shapes.get(x)
        layout = self.layout(x)
        bounds = self.slice_inputs(node)
        if bounds is None and shape is not None and isinstance(layout, list) and self.crops_other_axes(node, x):
            self.passthrough(node, x)
            return
        if bounds is None or shape is None or not isinstance(layout, list):
            self.freeze_all(node, index, "Slice with non-constant bounds")
            return
        starts, ends, axes, steps = bounds
        rank = len(shape)
        axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in np.ravel(axes)]
        steps = [1] * len(axes) if steps is None else [int(v) for v in np.ravel(steps)]
        spec = dict(zip(axes, zip(np.ravel(starts).tolist(), np.ravel(ends).tolist(), steps)))
        if self.batch_axis(x):
            if spec.keys() & {0, 1}:
                self.freeze_all(node, index, "Slice of the batch or channel axis of a tensor whose batch and channel "
                                             "axes are swapped")
            else:
                self.passthrough(node, x)
            return
        if 0 in spec and (spec[0][:2] != (0, shape[0]) or self.free_batch) and spec[0][1] < 2 ** 31 - 1:
            self.cut_batch(node, index, "Slice of the batch axis")
            return
        caxis = self.axis(x)
        if caxis not in spec:
            self.passthrough(node, x)
            return
        a, b, step = spec[caxis]
        c = shape[caxis]
        a, b = _clamp(a, b, c)
        if (a, b, step) == (0, c, 1):  # every channel, at any count pruning leaves: no bound to edit
            self.passthrough(node, x)
            return
        if step != 1 or any(seg.factor != 1 for seg in layout):
            self.freeze_all(node, index, "Slice of channels with a step, or of channels that hold several entries "
                                         "each (a channel multiplier's outputs, or a map after a Flatten)")
            return
        if len(node.input) > 1:  # the bounds change with pruning: they must be our own constants
            pos = axes.index(caxis)
            for tensor, value in ((node.input[1], a), (node.input[2], b)):
                if self.use_count.get(tensor, 0) > 1:
                    self.freeze_all(node, index, "Slice bounds shared with other nodes")
                    return
                if value < c:
                    self.slice_bounds.append(SliceBound(index, tensor, pos, x, value))
        else:
            self.freeze_all(node, index, "Slice of channels with bounds as attributes (opset < 10)")
            return
        self.layouts[node.output[0]] = self.take(layout, a, b)
        if caxis != 1:
            self.axes[node.output[0]] = caxis

    def op_Split(self, node: onnx.NodeProto, index: int) -> None:
        x = node.input[0]
        shape = self.shapes.get(x)
        layout = self.layout(x)
        attrs = _attrs(node)
        axis = int(attrs.get("axis", 0))
        if shape is None or not isinstance(layout, list):
            self.freeze_all(node, index, "Split of a tensor whose channels cannot be followed")
            return
        axis %= len(shape)
        caxis = self.axis(x)
        if caxis != 1:
            for out in node.output:
                self.axes[out] = caxis
        if axis != caxis:
            if axis == 0:
                self.freeze_all(node, index, "Split of the batch axis")
                return
            for out in node.output:
                self.layouts[out] = layout
            return
        sizes = [self.shapes[o][caxis] if o in self.shapes else None for o in node.output]
        if None in sizes or sum(sizes) != shape[caxis]:
            self.freeze_all(node, index, "Split of channels with unknown sizes")
            return
        if any(seg.factor != 1 for seg in layout):
            self.freeze_all(node, index, "Split of channels that hold several entries each (a channel multiplier's "
                                         "outputs, or a map after a Flatten)")
            return
        tensor = node.input[1] if len(node.input) > 1 and node.input[1] else None
        if tensor is not None and (self.value(tensor) is None or self.use_count.get(tensor, 0) > 1):
            self.freeze_all(node, index, "Split with non-constant or shared sizes")
            return
        self.split_sizes.append(SplitSizes(index, tensor, list(node.output)))
        start = 0
        for out, n in zip(node.output, sizes):
            self.layouts[out] = self.take(layout, start, start + n)
            start += n

    def op_Resize(self, node: onnx.NodeProto, index: int) -> None:
        x = node.input[0]
        si, so = self.shapes.get(x), self.shapes.get(node.output[0])
        layout = self.layout(x)
        caxis = self.axis(x)
        if si is None or so is None or len(si) < 3 or len(so) != len(si) or si[0] != so[0] \
                or si[caxis] != so[caxis] or not isinstance(layout, list):
            self.freeze_all(node, index, f"{node.op_type} that changes the batch or channel count")
            return
        sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
        axes = _resize_axes(node, len(si))
        value = self.value(sizes) if sizes is not None and 0 in axes else None
        if value is not None and self.sets_batch(int(np.ravel(value)[axes.index(0)]), si[0]):
            self.cut_batch(node, index, f"{node.op_type} that sets the batch size")
            return
        entry = axes.index(caxis) if caxis in axes else None  # sizes[entry] is the channel count
        if node.op_type == "Resize" and _attrs(node).get("coordinate_transformation_mode") == b"tf_crop_and_resize" \
                and entry is not None and not self.whole_roi(node, entry, len(axes)):
            # a crop along the channels interpolates between them (the spec; onnxruntime's CPU
            # kernel leaves an axis of scale 1 alone, another runtime need not)
            self.freeze_all(node, index, "Resize whose crop (roi) reaches into the channel axis")
            return
        if sizes is not None and (entry is None or self.sizes_from_own_shape(sizes, x)):
            sizes = None  # it leaves the channel axis out, or reads x's own channel count at run time
        if sizes is not None:  # explicit output sizes spell out the channel count
            if self.value(sizes) is None or self.use_count.get(sizes, 0) > 1:
                self.freeze_all(node, index, f"{node.op_type} with non-constant or shared sizes")
                return
            self.follow_count(layout, ShapeParam(index, sizes, entry, node.output[0]))
        self.passthrough(node, x)

    def whole_roi(self, node: onnx.NodeProto, entry: int, n: int) -> bool:
        """Whether a Resize's constant ``roi`` (starts, then ends, over its ``n`` axes) spans
        the whole of axis ``entry``: from 0 to 1."""
        roi = self.value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if roi is None or np.size(roi) != 2 * n:
            return False
        roi = np.ravel(roi)
        return float(roi[entry]) == 0.0 and float(roi[n + entry]) == 1.0

    def op_DepthToSpace(self, node: onnx.NodeProto, index: int) -> None:
        """PyTorch's PixelShuffle, DepthToSpace in CRD mode: its output channel c spreads the
        r*r adjacent input channels c*r*r .. c*r*r + r*r - 1 over blocks of r x r pixels, so
        each of its channels is a block of r*r input channels: a producer's rows in blocks
        of r*r, which another walk finds, as for a channel multiplier. In DCR mode
        (TensorFlow's ``depth_to_space``) it takes channel c of each of r*r blocks of C/(r*r)
        input channels: the blocks are coupled as the operands of a sum are."""
        x = node.input[0]
        if self.moves_batch_blocks(node, x):
            return
        layout, attrs = self.layout(x), _attrs(node)
        r, mode = int(attrs.get("blocksize", 0)), attrs.get("mode", b"DCR")
        k = r * r
        if r < 1 or self.axis(x) != 1 or not isinstance(layout, list):
            self.freeze_all(node, index, "DepthToSpace of channels not followed on axis 1")
            return
        if mode not in (b"CRD", "CRD"):
            self.depth_to_space_dcr(node, index, layout, k)
            return
        if any(seg.factor % k for seg in layout):
            self.freeze_all(node, index, f"DepthToSpace whose blocks of {k} channels are not a producer's rows")
            if all(seg.length * seg.factor % k == 0 for seg in layout):
                self.request_blocks(layout, [Segment(seg.space, seg.start, seg.length * seg.factor // k, k)
                                             for seg in layout])
            return
        self.layouts[node.output[0]] = [Segment(seg.space, seg.start, seg.length, seg.factor // k) for seg in layout]

    def depth_to_space_dcr(self, node: onnx.NodeProto, index: int, layout: list[Segment], k: int) -> None:
        """DepthToSpace in DCR mode (see :meth:`op_DepthToSpace`): channel c of its output is
        channel c of every block of C/k input channels; a block boundary inside a space
        asks the next walk for a cut there."""
        if any(seg.factor != 1 for seg in layout):
            self.freeze_all(node, index, "DepthToSpace in DCR mode of channels that hold several entries each")
            return
        self.couple_blocks(node, index, layout, k, "DepthToSpace in DCR mode")

    def op_SpaceToDepth(self, node: onnx.NodeProto, index: int) -> None:
        """SpaceToDepth (TensorFlow's ``space_to_depth``): output channel (i * r + j) * C + c
        is pixel (i, j) of each r x r block of input channel c, so its channels are r*r
        copies of the input's, in order."""
        x = node.input[0]
        if self.moves_batch_blocks(node, x):
            return
        layout, r = self.layout(x), int(_attrs(node).get("blocksize", 0))
        if r < 1 or self.axis(x) != 1 or not isinstance(layout, list):
            self.freeze_all(node, index, "SpaceToDepth of channels not followed on axis 1")
            return
        self.layouts[node.output[0]] = layout * (r * r)

    def op_GridSample(self, node: onnx.NodeProto, index: int) -> None:
        """GridSample (a spatial transformer's warp) samples every channel of X at the grid's
        positions: X's channels pass through; the grid's last axis holds coordinates, which
        stay whole (the channels of the layer that computed them)."""
        x, grid = node.input[0], node.input[1]
        self.freeze_layout(self.layout(grid), f"{node_label(node, index)} reads them as sampling coordinates")
        if not isinstance(self.layout(x), list):
            self.freeze_all(node, index, "GridSample of channels not followed")
            return
        self.passthrough(node, x)

    def op_Upsample(self, node: onnx.NodeProto, index: int) -> None:
        self.op_Resize(node, index)

    def moves_batch_blocks(self, node: onnx.NodeProto, x: str) -> bool:
        """A SpaceToDepth or DepthToSpace of a tensor whose batch and channel axes are
        swapped (the channels on axis 0) moves blocks of pixels between the space and the
        batch on axis 1, each channel's own: its channels pass. Whether ``x`` is one."""
        if not self.batch_axis(x):
            return False
        self.passthrough(node, x)
        return True

    def op_Transpose(self, node: onnx.NodeProto, index: int) -> None:
        """Moves the channel axis (NCHW <-> NHWC); the batch axis must stay first, or swap
        places with the channels on axis 1 (tf2onnx's space-to-batch: :data:`SWAPPED_READERS`),
        and back; with the channels last and kept there, the batch may go behind other axes
        (tf2onnx's SpaceToBatchND: the Reshape that follows merges them into it,
        :meth:`batch_regrouped`). Inside such a region, followed or frozen, its output has
        the batch and channel axes it moved."""
        x, out = node.input[0], node.output[0]
        perm = [int(p) for p in _attrs(node).get("perm", [])]
        caxis, batch = self.axis(x), self.batch_axis(x)
        if sorted(perm) != list(range(len(self.shapes.get(x, perm)))) or caxis not in perm:
            self.freeze_all(node, index, "Transpose that moves the batch axis, or of a flattened tensor")
            return
        to_batch, to_channels = perm.index(batch), perm.index(caxis)
        for table, value, usual in ((self.batch_axes, to_batch, 0), (self.axes, to_channels, 1)):
            table.pop(out, None)
            if value != usual:
                table[out] = value
        # a swap of the batch and channel axes moves each channel's entries (a channel
        # multiplier's outputs) together, as a whole axis
        swap = (batch, caxis, to_batch, to_channels) in ((0, 1, 1, 0), (1, 0, 0, 1))
        # tf2onnx's SpaceToBatchND moves the batch behind block axes, the channels kept last
        last = caxis == to_channels == len(perm) - 1
        # inside a space-to-batch a swap or a move behind block axes is followed; a Transpose
        # that moves the batch off axis 0 starts one only where its readers are those of one
        # (:meth:`starts_space_to_batch`)
        follows_batch = not to_batch or (swap or last) and bool(batch) or self.starts_space_to_batch(out, swap, last)
        if not isinstance(self.layout(x), list) or not swap and any(seg.factor != 1 for seg in self.layout(x)) \
                or not follows_batch:
            if not batch:
                self.batch_axes.pop(out, None)
                self.axes.pop(out, None)
            self.freeze_all(node, index, "Transpose that moves the batch axis, or of a flattened tensor")
            return
        self.passthrough(node, x, to_channels)

    def starts_space_to_batch(self, out: str, swap: bool, last: bool) -> bool:
        """Whether the output ``out`` of a Transpose that moves the batch off axis 0 starts a
        space-to-batch: a ``swap`` of the batch and channel axes read only by the ops that pass
        a swapped map (:data:`SWAPPED_READERS`), or a move of the batch behind block axes with
        the channels kept ``last`` read only by Reshapes (each must then merge those axes into
        the batch: op_Reshape). Otherwise the Transpose freezes as any other such Transpose,
        and what follows it reads the batch as on axis 0."""
        readers = self.consumer_nodes.get(out, [])
        return self.batched and bool(readers) and out not in self.graph_outputs and (
            swap and all(r.op_type in SWAPPED_READERS and r.input[0] == out for r in readers)
            or last and all(r.op_type == "Reshape" and r.input[0] == out for r in readers))

    # -- results -----------------------------------------------------------------------
    def propagated_cuts(self) -> list[tuple[str, int]]:
        """The recorded cuts, carried to every space coupled with the cut one, as
        (origin key, position) pairs."""
        out = []
        members: dict[int, list[int]] = {}
        for sid in self.origin:
            members.setdefault(self.spaces.find(sid), []).append(sid)
        for sid, pos in self.new_cuts:
            for other in members.get(self.spaces.find(sid), [sid]):
                key, start = self.origin.get(other, (None, 0))
                if key is not None:
                    out.append((key, start + pos))
        return out

    def edited_constants(self) -> Iterator[tuple[str, int]]:
        """(initializer, space) pairs: the constants the rewrite changes when channels of
        the space go (producer rows, per-channel constants, consumer columns and re-fitted
        weights, Reshape/Resize/Split sizes, Slice bounds)."""
        for sid, producers in self.producers.items():
            yield from ((name, sid) for p in producers for name in (p.weight, p.bias) if name)
        for table in (self.params, self.shape_params):
            for sid, entries in table.items():
                yield from ((entry.tensor, sid) for entry in entries)
        for cons in self.consumers:
            yield from ((name, sid) for sid, _off, _n in cons.segments for name in (cons.weight, cons.bias) if name)
        for split in self.split_sizes:
            if split.tensor:
                yield from ((split.tensor, seg.space) for out in split.outputs for seg in self.layouts[out])
        for bound in self.slice_bounds:
            yield from ((bound.tensor, seg.space) for seg in self.layouts[bound.source])

    def freeze_exported_constants(self) -> None:
        """An initializer that is also a graph output must keep its value and shape."""
        for name, sid in self.edited_constants():
            if name in self.graph_outputs:
                self.spaces.freeze(sid, f"initializer {name!r} is a graph output")

    def collect(self) -> GraphAnalysis:
        sp = self.spaces
        self.freeze_exported_constants()
        for w, (inputs, outputs) in self.tied.items():
            # applied to its own outputs (a recurrence): one re-fit cannot serve every step
            if {sp.find(s.space) for s in inputs} & {sp.find(s.space) for s in outputs}:
                for layout in (inputs, outputs):
                    self.freeze_layout(layout, f"weight {w!r} is applied to its own outputs")
        for layout in self.layouts.values():  # a space only partly present cannot be pruned
            if isinstance(layout, list):
                for seg in layout:
                    if seg.start != 0 or seg.length != sp.size[seg.space]:
                        sp.freeze(seg.space, "cut by a Slice/Split at a position that cannot be aligned")
        roots: dict[int, ChannelGroup] = {}
        order: list[int] = []
        for sid in range(len(sp.parent)):
            root = sp.find(sid)
            if root not in roots:
                roots[root] = ChannelGroup(gid=-1, channels=sp.size[root])
                order.append(root)
        gid_of_root = {root: i for i, root in enumerate(order)}
        groups = [roots[r] for r in order]
        for g, root in zip(groups, order):
            g.gid = gid_of_root[root]
        for sid in range(len(sp.parent)):
            g = roots[sp.find(sid)]
            g.producers.extend(self.producers.get(sid, []))
            g.params.extend(self.params.get(sid, []))
            g.shape_params.extend(self.shape_params.get(sid, []))
            g.unit = math.lcm(g.unit, sp.unit.get(sid, 1))
            for reason in sp.frozen.get(sid, []):
                if reason not in g.frozen:
                    g.frozen.append(reason)
        for cidx, cons in enumerate(self.consumers):
            cons.segments = [(gid_of_root[sp.find(space)], off, length) for space, off, length in cons.segments]
            for gid in sorted({s[0] for s in cons.segments}):
                groups[gid].consumers.append(cidx)
        for name, layout in self.layouts.items():
            if isinstance(layout, list):
                for seg, off in offsets(layout):
                    groups[gid_of_root[sp.find(seg.space)]].tensors.append((name, off, seg.factor, self.axis(name)))
        wide: dict[int, str] = {}
        for g in groups:
            if g.channels % g.unit:
                g.frozen.append(f"grouped convolutions need blocks of {g.unit} of its {g.channels} channels")
            if not g.producers and not g.frozen:
                g.frozen.append("no producer")
            elif not g.consumers and not g.frozen:
                g.frozen.append("no consumer reads these channels")
            if g.frozen:
                continue
            if any(p.bias and self.use_count.get(p.bias, 0) > 1 for p in g.producers) or \
                    any(self.use_count.get(p.weight, 0) > 1 and p.weight not in self.tied for p in g.producers):
                g.frozen.append("a producer's weights are shared by several nodes")
            for cidx in g.consumers:
                cons = self.consumers[cidx]
                width = cons.in_channels * cons.s
                if width <= MAX_CONSUMER_FEATURES:
                    continue
                reason = (f"consumer {cons.name} reads {width} features (statistics stop at {MAX_CONSUMER_FEATURES}: "
                          f"a {width}x{width} Gram matrix takes {8 * width * width / 2**30:.1f} GiB)")
                if self._lean_wide(cons, g.gid):
                    wide.setdefault(g.gid, reason)
                else:
                    g.frozen.append(reason)
                    break
        return GraphAnalysis(groups=groups, consumers=self.consumers, split_sizes=self.split_sizes,
                             slice_bounds=self.slice_bounds, group_counts=self.group_counts,
                             wide={g: r for g, r in wide.items() if groups[g].prunable},
                             position_major={t: p for t, p in self.position_major.items()
                                             if isinstance(self.layouts.get(t), list)})

    def _lean_wide(self, cons: Consumer, gid: int) -> bool:
        """Whether a consumer too wide for statistics of every feature can still let group
        ``gid`` go, on statistics of its channels' leading principal directions (a
        sequential stage: :attr:`GraphAnalysis.wide`): it reads that group alone,
        in its own weight, with at most MAX_CONSUMER_FEATURES channels."""
        return ([s[0] for s in cons.segments] == [gid] and cons.in_channels <= MAX_CONSUMER_FEATURES
                and self.use_count.get(cons.weight, 0) == 1)


def _clamp(a: int, b: int, n: int) -> tuple[int, int]:
    """Slice bounds ``a:b`` on an axis of ``n``: negative ones count from the end, both
    clipped to ``[0, n]``."""
    a, b = (a + n if a < 0 else a), (b + n if b < 0 else b)
    return max(0, min(a, n)), max(0, min(b, n))


def _shape_range(node: onnx.NodeProto, rank: int) -> tuple[int, int]:
    """The axes ``start:end`` of its input (of ``rank`` axes) that a Shape node reads: its
    ``start`` and ``end`` attributes (opset 15), negative ones counted from the end, clamped
    as the spec clamps them; ``(0, rank)`` without them."""
    attrs = _attrs(node)
    start, end = int(attrs.get("start", 0)), int(attrs.get("end", rank))
    start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else end)
    return min(max(start, 0), rank), min(max(end, 0), rank)


def _resize_axes(node: onnx.NodeProto, rank: int) -> list[int]:
    """The axes that the entries of a Resize's ``scales`` or ``sizes`` stand for: its
    ``axes`` attribute (opset >= 18, negative ones counted from the end), else every axis."""
    axes = _attrs(node).get("axes")
    return list(range(rank)) if axes is None else [int(a) % rank for a in axes]


def _bias_vector_len(dims) -> int:
    dims = [d for d in dims if d != 1]
    return dims[0] if len(dims) == 1 else (1 if not dims else -1)


for _op in ELEMENTWISE_UNARY:
    setattr(_Analyzer, f"op_{_op}", _Analyzer.unary)
for _op in SPATIAL_POOLS:
    setattr(_Analyzer, f"op_{_op}", _Analyzer.pool)
for _op in ELEMENTWISE_BINARY:
    setattr(_Analyzer, f"op_{_op}", _Analyzer.elementwise_binary)
for _op in REDUCE_OPS:
    setattr(_Analyzer, f"op_{_op}", _Analyzer.reduce)
for _op in AXIS_NORMALIZERS:
    setattr(_Analyzer, f"op_{_op}", _Analyzer.normalize_along)


def _walks(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], probed: dict[str, np.ndarray] | None,
           blocking: bool) -> tuple[GraphAnalysis, bool]:
    """The analysis after as many walks as its cuts (and, if ``blocking``, multiplier
    blocks) need; whether it blocks any producer."""
    cuts: dict[str, set[int]] = {}
    blocks: dict[str, int] = {}
    for _ in range(MAX_WALKS):
        walker = _Analyzer(model, shapes, cuts, blocks, probed)
        result = walker.run()
        new = walker.propagated_cuts()
        new_blocks = {key: k for key, k in walker.new_blocks.items() if blocks.get(key) != k} if blocking else {}
        if all(pos in cuts.get(key, set()) for key, pos in new) and not new_blocks:
            break
        for key, pos in new:
            cuts.setdefault(key, set()).add(pos)
        blocks.update(new_blocks)
    # else: cuts or blocks keep appearing, and what they would have aligned stays frozen
    return result, bool(blocks)


def _prunable_rows(analysis: GraphAnalysis) -> int:
    """Producer weight rows in prunable groups."""
    return sum(g.channels * p.factor for g in analysis.prunable_groups() for p in g.producers)


def analyze(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], per_image: bool | None = None,
            probed: dict[str, np.ndarray] | None = None) -> GraphAnalysis:
    """Find the channel groups of a model.

    Parameters
    ----------
    model : onnx.ModelProto
        The model, with constant weights as initializers (see ``constants_to_initializers``).
    shapes : dict
        Concrete shape of every tensor at the calibration input shape (batch may be 1).
    per_image : bool, optional
        The model takes one sample without a batch axis and ``shapes`` are those of one
        sample: groups on tensors with other than one row there (a two-stage detector's
        features per region) are frozen, as their statistics cannot be told by image.
        Default: whether the model has inputs without a batch axis (``unbatched_inputs``).
    probed : dict, optional
        Values of small computed integer tensors at the same shapes (``probe_shapes``'
        ``values``): where a Pad's pads are computed, they show which axes it pads.
    """
    result, blocked = _walks(model, shapes, probed, blocking=True)
    if blocked:
        # a producer's blocks hold wherever its outputs go: where they meet something that
        # takes single channels only (a Concat with an ordinary tensor), they freeze layers
        # that were prunable without them. Keep them only if they free more weight rows.
        plain, _ = _walks(model, shapes, probed, blocking=False)
        if _prunable_rows(plain) > _prunable_rows(result):
            result = plain
    if per_image if per_image is not None else unbatched_inputs(model):
        for group in result.groups:
            rows = [(name, shapes[name][0]) for name, *_ in group.tensors if shapes.get(name, (1,))[:1] != (1,)]
            if rows:
                group.frozen.append(f"{rows[0][0]} has {rows[0][1]} rows per image (per-region features)")
    return result
