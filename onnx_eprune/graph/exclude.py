"""Layers the user keeps whole: ``--exclude`` patterns freeze the channel groups they produce or pass on."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence

import onnx

from ..errors import UsageError
from .groups import GraphAnalysis, node_label

log = logging.getLogger("onnx_eprune")

SHOWN = 8  # layers named in the log line of a pattern


def check_patterns(patterns: object) -> None:
    """Refuse anything but a sequence of non-empty strings (a bare string would be read as
    one pattern per character)."""
    if isinstance(patterns, str) or not isinstance(patterns, Sequence) or \
            not all(isinstance(p, str) and p for p in patterns):
        shown = repr(patterns) if isinstance(patterns, str) or not isinstance(patterns, Sequence) \
            else repr(list(patterns))
        raise UsageError("--exclude takes non-empty node-name patterns (in Python a sequence of them, e.g. "
                         f"('conv1*',)), not {shown}")


def exclude_groups(analysis: GraphAnalysis, nodes: Sequence[onnx.NodeProto], patterns: Sequence[str],
                   folded: Collection[str] = ()) -> list[int]:
    """Freeze, in place, every channel group that a node matching one of ``patterns`` produces
    or passes on with per-channel weights of its own (a depthwise convolution, a BatchNormalization).

    A pattern is matched case-sensitively against each node's label, ``*`` standing for
    any characters and ``?`` for one (every other character for itself: exporters' names
    hold brackets, ``model/block[1]/conv``, which a shell glob would read as a set): its
    name, or ``OpType#index`` for an unnamed node (the names ``onnx-eprune inspect`` and the
    report print). A group is a unit: excluding one of its layers keeps the others whole too
    (the convolutions feeding one residual sum, say; the convolution before a depthwise one).
    The inputs of an excluded layer may still lose channels, to the groups of the layers
    before it. Returns the ids of the groups frozen here; a pattern that matches no node is
    refused, as a mistyped name would otherwise prune the layer it meant to protect; one that
    matches only ``folded`` nodes (the input's nodes that became constants: an Identity or a
    Cast on a weight) gets a warning, as those carry no channels of their own.
    """
    check_patterns(patterns)
    labels = [node_label(node, i) for i, node in enumerate(nodes)]
    frozen: list[int] = []
    for pattern in patterns:
        regex = _wildcards(pattern)
        matched = {i for i, label in enumerate(labels) if regex.fullmatch(label)}
        constants = [name for name in folded if regex.fullmatch(name)]
        if not matched and constants:
            log.warning("--exclude %r matches only %s, folded into constants: nodes without channels of their own",
                        pattern, ", ".join(sorted(constants)[:SHOWN]))
            continue
        if not matched:
            raise _no_match(pattern)
        # a group is hit through its producers, and through the per-channel parameters of the
        # layers that pass it on (a depthwise convolution, a BatchNormalization)
        hits = [g for g in analysis.groups if any(p.node in matched for p in [*g.producers, *g.params])]
        newly = [g for g in hits if g.prunable]
        if not hits:
            log.warning("--exclude %r matches %d node(s), none of which produces or passes on prunable channels "
                        "with weights of its own", pattern, len(matched))
        elif not newly:
            log.warning("--exclude %r matches only layers that stay whole anyway (%s)", pattern,
                        "; ".join(dict.fromkeys(r for g in hits for r in g.frozen)))
        else:
            # coupled producers stay too: name them all, so that a surprise shows before the run
            kept = list(dict.fromkeys(labels[p.node] for g in newly for p in g.producers))
            log.info("--exclude %r keeps whole the output channels of %s%s", pattern, ", ".join(kept[:SHOWN]),
                     f" and {len(kept) - SHOWN} more layers" if len(kept) > SHOWN else "")
        for g in hits:
            g.frozen.append(f"excluded by {pattern!r}")
        frozen += [g.gid for g in newly]
    return sorted(frozen)


def check_matches(nodes: Sequence[onnx.NodeProto], patterns: Sequence[str]) -> None:
    """Refuse, before any work, a pattern that matches none of ``nodes`` (the model as the
    user gave it: unnamed nodes as ``OpType#index``), as :func:`exclude_groups` would later."""
    check_patterns(patterns)
    labels = [node_label(node, i) for i, node in enumerate(nodes)]
    for pattern in patterns:
        regex = _wildcards(pattern)
        if not any(regex.fullmatch(label) for label in labels):
            raise _no_match(pattern)


def _no_match(pattern: str) -> UsageError:
    return UsageError(f"--exclude {pattern!r} matches no node of the model (node names as 'onnx-eprune inspect "
                      "MODEL' lists them; * matches any characters, ? one)")


def _wildcards(pattern: str) -> re.Pattern:
    """``pattern`` as a regular expression in which only ``*`` and ``?`` are wildcards."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)
