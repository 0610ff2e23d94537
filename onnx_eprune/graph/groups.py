"""The channel-group model: what the analysis finds, and what pricing, statistics and the
rewrite read.

A :class:`ChannelGroup` is a set of channels that are removed together: the output rows of
its :class:`Producer` nodes, the per-channel constants of the ops they pass through
(:class:`ParamSlice`, :class:`ShapeParam`), and the input columns of its :class:`Consumer`
nodes. :class:`GraphAnalysis` holds them all, with the Split sizes and Slice bounds that
must follow the kept channels. ``analysis.analyze`` builds it; nothing here reads a graph
or does arithmetic on weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

# frozen-group reason for weights behind DequantizeLinear: the remedy, pruning the float
# model before quantizing it, is the user's to take (pipeline's error says so)
QUANTIZED = "quantized weights"


@dataclass
class Producer:
    """A node whose output channels form (part of) a group: its weight rows go."""

    node: int
    kind: str            # "conv" | "gemm" | "matmul"
    weight: str          # initializer name
    weight_axis: int     # axis of the weight that indexes output channels
    bias: str | None     # initializer name of a per-output bias, if any
    offset: int = 0      # first output row of the group (a Split may cut one output in parts)
    factor: int = 1      # output rows per group channel (outputs added to a channel multiplier's)


@dataclass
class ParamSlice:
    """A per-channel constant of a pass-through op (BN scale, depthwise weight, ...)."""

    node: int
    tensor: str
    axis: int
    offset: int      # index along ``axis`` where the group's channel 0 starts
    factor: int = 1  # entries per channel along ``axis`` (H*W for a BatchNormalization behind a Flatten)
    # behind the Flatten of an NHWC map: the map's channel count, the entries position-major
    # (channel c at position p is entry ``p * interleave + offset + c``; ``offset`` in channels)
    interleave: int = 0
    # channels per entry: a GroupNorm's per-group scale, whose entry ``offset + c // divisor``
    # its group of ``divisor`` adjacent channels shares (they go together: ``ChannelGroup.unit``)
    divisor: int = 1

    def entries(self, channels: np.ndarray) -> np.ndarray:
        """The entries along ``axis`` that hold the group's ``channels``."""
        if self.divisor > 1:
            return self.offset + np.unique(np.asarray(channels) // self.divisor)
        if self.interleave:
            return position_columns(self.offset + np.asarray(channels), self.factor, self.interleave)
        return self.offset + spread(channels, self.factor)


@dataclass
class ShapeParam:
    """A Reshape target whose feature count must shrink with the group."""

    node: int
    tensor: str
    index: int   # position in the shape vector holding the feature count
    output: str  # the Reshape output, whose features the target must match
    per: int = 1  # features per entry (a GroupNorm's target holds its group count: C/G channels each)


@dataclass
class GroupCount:
    """A GroupNormalization's ``num_groups``, which must follow the kept groups."""

    node: int
    source: str  # its input, whose kept channels it normalises
    per: int     # channels per group


@dataclass
class SplitSizes:
    """A Split on the channel axis: its sizes must follow the kept channels of its outputs."""

    node: int
    tensor: str | None    # the sizes initializer (opset >= 13), or None (attribute / equal split)
    outputs: list[str]


@dataclass
class SliceBound:
    """A Slice start or end on the channel axis: it becomes the number of channels kept in
    ``source`` before the original channel ``position``."""

    node: int
    tensor: str
    index: int
    source: str
    position: int


@dataclass
class Consumer:
    """A Conv/Gemm/MatMul with constant weights whose input channels can shrink.

    Its input features are channel-major: feature ``f`` of input channel ``c`` is column
    ``c * s + f`` of the flattened weight ``theta`` (M x C*s), with ``s = kh*kw`` for a
    Conv and ``H*W`` for a Gemm behind a Flatten. A ConvTranspose's ``theta`` is the weight
    of the Conv it equals (``conv`` holds that Conv's geometry). A Gemm or MatMul behind the
    Flatten of an NHWC map (``positions_last``) reads them position-major, column ``f * C + c``
    of its weight: the statistics, ``theta`` and re-fits are channel-major all the same
    (:func:`channel_major`), only its stored weight is not.
    """

    node: int
    name: str
    kind: str                   # "conv" | "convT" (ConvTranspose) | "gemm" | "matmul"
    input: str                  # activation tensor name
    output: str
    weight: str
    bias: str | None
    in_channels: int
    out_channels: int
    s: int                      # features per input channel
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # (group, offset, length)
    factor: int = 1             # a Conv's input tensor channels per group channel (m behind a channel multiplier)
    conv: dict | None = None    # kernel, strides, pads, dilations for a Conv
    gemm_trans_b: bool = True   # weight stored as (M, D) when True, (D, M) otherwise
    alpha: float = 1.0
    beta: float = 1.0
    positions_last: bool = False  # features position-major (see above)

    @property
    def spatial(self) -> bool:
        """Whether it slides over positions (a Conv or ConvTranspose: its rows are
        im2col patches), rather than reading one row per sample (Gemm, MatMul)."""
        return self.kind in ("conv", "convT")


@dataclass
class ChannelGroup:
    """Channels that are removed together: a union of channel spaces."""

    gid: int
    channels: int
    producers: list[Producer] = field(default_factory=list)
    params: list[ParamSlice] = field(default_factory=list)
    shape_params: list[ShapeParam] = field(default_factory=list)
    consumers: list[int] = field(default_factory=list)           # consumer indices
    tensors: list[tuple[str, int, int, int]] = field(default_factory=list)  # (name, offset, factor, axis)
    frozen: list[str] = field(default_factory=list)
    unit: int = 1   # channels are removed in aligned blocks of this many (grouped convolutions)

    @property
    def prunable(self) -> bool:
        return not self.frozen and bool(self.producers)


@dataclass
class GraphAnalysis:
    groups: list[ChannelGroup]
    consumers: list[Consumer]
    split_sizes: list[SplitSizes] = field(default_factory=list)
    slice_bounds: list[SliceBound] = field(default_factory=list)
    group_counts: list[GroupCount] = field(default_factory=list)
    # prunable groups read by a consumer too wide for statistics of every feature (group ->
    # the reason): only a run that takes reduced statistics can prune them, others freeze them
    wide: dict[int, str] = field(default_factory=dict)
    # tensors that hold a map flattened channels last (Keras' Flatten of an NHWC map) -> the
    # positions P of each channel: position p of channel c is entry p * C + c of a row
    position_major: dict[str, int] = field(default_factory=dict)

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How reports and messages name the ``index``-th node: its name, or ``OpType#index``."""
    return node.name or f"{node.op_type}#{index}"


def channel_major(a: np.ndarray, s: int) -> np.ndarray:
    """``a`` (..., s * C), its last axis position-major (entry ``p * C + c``), with that axis
    channel-major (entry ``c * s + p``)."""
    lead = a.shape[:-1]
    return a.reshape(*lead, s, -1).swapaxes(-1, -2).reshape(*lead, -1)


def position_major(a: np.ndarray, s: int) -> np.ndarray:
    """The inverse of :func:`channel_major`: ``a`` (..., C * s) channel-major, its last axis
    position-major."""
    lead = a.shape[:-1]
    return a.reshape(*lead, -1, s).swapaxes(-1, -2).reshape(*lead, -1)


def position_columns(channels: np.ndarray, s: int, total: int) -> np.ndarray:
    """The entries of ``channels`` (each at ``s`` positions) in a row that holds ``total``
    channels position-major (entry ``p * total + c``), position by position."""
    return (np.arange(s)[:, None] * total + np.asarray(channels)[None, :]).reshape(-1)


def spread(indices: np.ndarray, width: int) -> np.ndarray:
    """The entries of items that each span ``width`` consecutive entries (a channel's
    features, a flattened or multiplied channel's entries, a conv group's channels): item i
    covers ``i * width`` to ``i * width + width - 1``; items in the order given."""
    return (np.asarray(indices)[:, None] * width + np.arange(width)).reshape(-1)
