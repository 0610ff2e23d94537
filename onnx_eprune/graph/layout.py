"""Layouts: which channel spaces a tensor's channel axis holds, in order.

A *space* is the set of channels one producer creates; a tensor's layout lists the
:class:`Segment` of each space it carries (a Concat holds several, a Slice part of one).
:class:`Spaces` is the union-find that element-wise couplings merge spaces with, and that
records the reasons a space is frozen; its unions become the channel groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """``length`` channels of one space, starting at channel ``start`` of that space."""

    space: int
    start: int
    length: int
    factor: int = 1  # features per channel along the channel axis


class Spaces:
    """Union-find over channel spaces, with sizes, members and freeze reasons."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, list[str]] = {}
        self.unit: dict[int, int] = {}   # space -> channels removed together (a conv group)

    def new(self, size: int, frozen: str | None = None) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.size.append(size)
        if frozen:
            self.frozen.setdefault(sid, []).append(frozen)
        return sid

    def find(self, sid: int) -> int:
        root = sid
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[sid] != root:  # path compression
            self.parent[sid], sid = root, self.parent[sid]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, drop = min(ra, rb), max(ra, rb)  # deterministic root: the older space
            self.parent[drop] = keep

    def require_unit(self, sid: int, width: int) -> None:
        """Channels of ``sid`` go in whole blocks of a multiple of ``width``."""
        self.unit[sid] = math.lcm(self.unit.get(sid, 1), width)

    def is_frozen(self, sid: int) -> bool:
        """Whether a space united with ``sid`` (or ``sid`` itself) is frozen."""
        root = self.find(sid)
        return any(self.find(s) == root for s in self.frozen)

    def freeze(self, sid: int, reason: str) -> None:
        reasons = self.frozen.setdefault(sid, [])
        if reason not in reasons:
            reasons.append(reason)


def offsets(layout: list[Segment]):
    off = 0
    for seg in layout:
        yield seg, off
        off += seg.length


def flatten(layout: list[Segment], spatial: int) -> list[Segment]:
    return [Segment(seg.space, seg.start, seg.length, seg.factor * spatial) for seg in layout]


def couple(spaces: Spaces, a: list[Segment], b: list[Segment], cuts: list[tuple[int, int]]) -> bool:
    """Unite the spaces of two element-wise aligned layouts; False if they do not align.

    Where a segment boundary of one layout falls inside a segment of the other (a residual
    stream added to a Concat of a tensor with its own depthwise copy: ``[A, A] + [S]``), the
    cut that would align them is appended to ``cuts`` (space, position) for the next walk."""
    if sum(seg.length for seg in a) != sum(seg.length for seg in b):
        return False
    bounds_a, bounds_b = bounds(a), bounds(b)
    missing = [(layout, pos) for layout, other in ((a, bounds_b), (b, bounds_a)) for pos in other
               if pos not in (bounds_a if layout is a else bounds_b)]
    if missing:
        for layout, pos in missing:
            off = 0
            for seg in layout:
                if off < pos < off + seg.length:
                    cuts.append((seg.space, seg.start + pos - off))
                off += seg.length
        return False
    for sa, sb in zip(a, b):
        whole = (sa.start == 0 and sb.start == 0 and sa.length == spaces.size[sa.space] == spaces.size[sb.space]
                 == sb.length)
        if not whole or sa.factor != sb.factor:
            return False
    for sa, sb in zip(a, b):
        spaces.union(sa.space, sb.space)
    return True


def bounds(layout: list[Segment]) -> set[int]:
    """Channel positions where the segments of a layout end."""
    out, off = set(), 0
    for seg in layout:
        off += seg.length
        out.add(off)
    return out
