"""The pruning report: a JSON-ready dict and the summary table printed by the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import __version__
from .errors import EPruneError
from .files import write_atomic
from .graph.groups import node_label
from .select.reconstruct import THIN_ROWS


def build_report(pruner, keeps: dict[int, np.ndarray], counts: dict[int, int], fidelity: dict,
                 refitted: set[int]) -> dict:
    """Collect what a run did. ``pruner`` is the finished :class:`~onnx_eprune.pipeline.Pruner`;
    ``refitted``: the consumers it re-fitted."""
    analysis, costs, cfg = pruner.analysis, pruner.costs, pruner.config
    kept = {g: len(k) for g, k in keeps.items()}
    producers_of = {}
    nodes = pruner.model.graph.node
    for g in analysis.groups:
        producers_of[g.gid] = [node_label(nodes[p.node], p.node) for p in g.producers]
    groups = []
    for g in analysis.groups:
        if not g.producers and not g.consumers:
            continue
        entry = {
            "id": g.gid,
            "producers": producers_of[g.gid],
            # a producer added to a channel multiplier's outputs writes r rows per channel
            "producer_rows": [p.factor for p in g.producers],
            "consumers": [analysis.consumers[c].name for c in g.consumers],
            "channels_before": g.channels,
            "channels_after": kept.get(g.gid, g.channels),
            "frozen": "; ".join(g.frozen) if g.frozen else None,
        }
        if g.gid in pruner.steps:  # kept counts are multiples of this (--round-to, conv groups)
            entry["step"] = pruner.steps[g.gid]
        if g.gid in keeps:  # which of the original channels stay (channel c: rows r*c .. r*c + r - 1 of a producer)
            entry["kept_channels"] = [int(c) for c in keeps[g.gid]]
        groups.append(entry)
    target = cfg.target()
    params = (costs.params(), costs.params(kept, {analysis.consumers[c].name for c in refitted}))
    macs = (costs.macs(), costs.macs(kept))
    return {
        "tool": "onnx-eprune",
        "version": __version__,
        "method": cfg.method,
        "mode": cfg.mode,
        "reconstruct": cfg.reconstruct,
        "refit_ridge": cfg.refit_ridge if cfg.reconstruct else None,  # no re-fit, no ridge
        "round_to": cfg.round_to if cfg.round_to is not None else "auto",
        "exclude": list(cfg.exclude),
        "min_keep": cfg.min_keep,
        "target": {"kind": target.kind, "value": target.value},
        "seed": cfg.seed,
        "provider": pruner.providers[0],
        # with statistics files, the images they were computed on (pruner.data holds a few probes)
        "samples": pruner.bundle.samples if pruner.bundle is not None else pruner.data.samples,
        "params": _before_after(*params),
        "macs": _before_after(*macs),
        "groups": groups,
        "prunable_groups": sum(1 for g in analysis.groups if g.prunable),
        "fidelity_on_calibration": fidelity,
        # the ridge each cross-validated consumer got ("auto", or "auto-thin" where thin)
        **({"refit_ridges": {analysis.consumers[c].name: eps for c, eps in sorted(pruner.auto_ridges.items())}}
           if pruner.auto_ridges else {}),
        # re-fits on fewer than reconstruct.THIN_ROWS rows per kept feature: their ridge was
        # cross-validated (then also in refit_ridges) or fixed
        **({"thin_refits": {analysis.consumers[c].name: {"rows": rows, "features": features,
                                                         "cross_validated": c in pruner.auto_ridges}
                            for c, (rows, features) in sorted(pruner.thin_refits.items())}}
           if pruner.thin_refits else {}),
        # consumers re-fitted along their kept channels' leading directions (too many kept features)
        **({"subspace_refits": {analysis.consumers[c].name: {"features": b.shape[0] * b.shape[1],
                                                             "directions": b.shape[0] * b.shape[2]}
                                for c, b in sorted(pruner.subspaces.items())}} if pruner.subspaces else {}),
        # consumers too wide to re-fit on the features they keep: sliced, original weights
        **({"unfitted": {analysis.consumers[c].name: {"features": features}
                         for c, features in sorted(pruner.unfitted.items())}} if pruner.unfitted else {}),
        "seconds": {k: round(v, 3) for k, v in pruner.timer.seconds.items()},
    }


def _before_after(before: int, after: int) -> dict:
    return {"before": int(before), "after": int(after),
            "removed_fraction": round(1.0 - after / before, 6) if before else 0.0}


def provenance(report: dict) -> dict:
    """What a run did, for the pruned model's metadata (:func:`~onnx_eprune.graph.model_io.record_provenance`):
    tool version, method, mode, target, limits, calibration samples and seed, parameters and
    MACs before and after."""
    entry = {key: report[key] for key in ("version", "method", "mode", "target", "exclude", "min_keep",
                                          "refit_ridge", "samples", "seed")}
    entry.update({key: [report[key]["before"], report[key]["after"]] for key in ("params", "macs")})
    return entry


def to_json(value: object, indent: int | None = 1) -> str:
    """``value`` as strict JSON (RFC 8259): a figure that is NaN or infinite (a model whose
    outputs hold NaN) becomes null, where json.dumps would write the bare tokens NaN and
    Infinity that JSON parsers other than Python's refuse."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def printable(text: object) -> str:
    """``text`` for one line of a terminal table: characters that are not printable (line
    breaks, tabs, other control characters in a node's name) as their escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def summary_table(report: dict) -> str:
    """A plain-text table of the groups and the totals."""
    lines = [f"{'group':>5}  {'channels':>13}  {'producers':<40}  note"]
    for g in report["groups"]:
        if g["frozen"] and not g["producers"]:
            continue
        chans = f"{g['channels_before']} -> {g['channels_after']}"
        prod = printable(", ".join(g["producers"]))[:40]
        note = f"frozen: {printable(g['frozen'])}" if g["frozen"] else ""
        lines.append(f"{g['id']:>5}  {chans:>13}  {prod:<40}  {note}")
    p, m = report["params"], report["macs"]
    lines.append(f"params  {p['before']:>12,} -> {p['after']:>12,}  (-{100 * p['removed_fraction']:.1f}%)")
    lines.append(f"MACs    {m['before']:>12,} -> {m['after']:>12,}  (-{100 * m['removed_fraction']:.1f}%)")
    for name, f in report["fidelity_on_calibration"]["outputs"].items():
        extra = f", top-1 agreement {100 * f['top1_agreement']:.1f}%" if "top1_agreement" in f else ""
        lines.append(f"output {printable(name)}: relative error {f['relative_error']:.4f}{extra} "
                     f"on {report['fidelity_on_calibration']['samples']} calibration samples")
    if report.get("thin_refits"):
        lines.append(optimism_note(report))
    secs = report["seconds"]
    lines.append("seconds " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items()) + f"  [{report['provider']}]")
    return "\n".join(lines)


def optimism_note(report: dict) -> str:
    """Why the fidelity on calibration samples overstates that on new data, for a report
    with ``thin_refits``."""
    return (f"(the re-fit was fitted to these samples, {len(report['thin_refits'])} layer(s) on fewer than "
            f"{THIN_ROWS:g} rows per kept input: expect less on new data, and measure it with "
            "onnx-eprune evaluate --data)")


def write_json(report: dict, path: str | os.PathLike) -> None:
    """Write the report atomically."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise EPruneError(f"report folder does not exist: {folder}")
    write_atomic(target, lambda f: f.write((to_json(report) + "\n").encode()),
                 f"report {target}")
