"""Report folders: the JSON report, a Markdown summary and (with matplotlib) plots; the same
for a sweep over several targets (:func:`write_sweep_dir`).

``write_report_dir(report, "out/")`` writes ``report.json`` (the same JSON as ``--report``),
``report.md`` and, when matplotlib can be imported (``pip install 'onnx-eprune[plots]'``),
``channels.png`` (channels before and after per prunable group) and ``allocation.png``
(fraction of channels kept per group along the network). Every file is written to a
temporary file in the folder and renamed into place, so a failure leaves no partial file.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections import Counter
from pathlib import Path

from .errors import EPruneError
from .files import Replacing, write_atomic
from .report import optimism_note, to_json
from .select.reconstruct import THIN_ROWS
from .signals import signals_held

log = logging.getLogger("onnx_eprune")

JSON_NAME, MARKDOWN_NAME = "report.json", "report.md"
CHANNELS_PLOT, ALLOCATION_PLOT = "channels.png", "allocation.png"
NAMES = (JSON_NAME, MARKDOWN_NAME, CHANNELS_PLOT, ALLOCATION_PLOT)
SWEEP_JSON, SWEEP_MARKDOWN, SWEEP_PLOT = "sweep.json", "sweep.md", "sweep.png"
SEARCH_NAMES = ("search.json", "search.md", "search.png")


def write_report_dir(report: dict, directory: str | os.PathLike) -> list[Path]:
    """Write the report files into ``directory`` (created if missing) and return their paths.

    Without matplotlib only the JSON and Markdown files are written, and one info line
    says so. Raises :class:`EPruneError` if a file cannot be written; the files this call
    wrote before the failure are then as they were before it (removed, or their old
    content back).
    """
    return _write_folder(directory, report, (JSON_NAME, MARKDOWN_NAME, markdown_report),
                         [(CHANNELS_PLOT, _channels_figure), (ALLOCATION_PLOT, _allocation_figure)])


def write_sweep_dir(sweep: dict, directory: str | os.PathLike) -> list[Path]:
    """Write a sweep (``{"runs": [SweepPoint.as_dict(), ...], ...run details}``) into
    ``directory``: ``sweep.json``, ``sweep.md`` and, with matplotlib, ``sweep.png``
    (fidelity, and accuracy when measured, against the fraction removed). Same guarantees as
    :func:`write_report_dir`."""
    return _write_folder(directory, sweep, (SWEEP_JSON, SWEEP_MARKDOWN, markdown_sweep), [(SWEEP_PLOT, _sweep_figure)])


def write_search_dir(search: dict, directory: str | os.PathLike) -> list[Path]:
    """Write a search (a sweep record of the targets tried, with ``search``: the
    :meth:`SearchResult.as_dict`) into ``directory``: ``search.json``, ``search.md`` and,
    with matplotlib, ``search.png``. Same guarantees as :func:`write_report_dir`."""
    json_name, markdown_name, plot_name = SEARCH_NAMES
    return _write_folder(directory, search, (json_name, markdown_name, markdown_sweep), [(plot_name, _sweep_figure)])


def _write_folder(directory, record: dict, texts: tuple, plots: list) -> list[Path]:
    """``record`` as JSON and Markdown (``texts``: JSON name, Markdown name, renderer) and,
    with matplotlib, the ``plots`` ((name, figure builder) pairs), all written atomically."""
    json_name, markdown_name, render = texts
    folder = _folder(directory)
    # backslashreplace: a path that is not UTF-8 (its bytes as surrogates) stays readable
    contents = [(json_name, (to_json(record) + "\n").encode()),
                (markdown_name, render(record).encode("utf-8", "backslashreplace"))]
    figure = _figure_class()
    if figure is not None:
        contents += [(name, _png(build(figure, record))) for name, build in plots]
    # without matplotlib, an earlier run's plots would show figures this record does not hold
    stale = [] if figure is not None else [name for name, _ in plots]
    return _write_all(folder, contents, stale)


def _folder(directory: str | os.PathLike) -> Path:
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EPruneError(f"cannot create report folder {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise EPruneError(f"report folder is not a directory: {folder}")
    return folder


def _write_all(folder: Path, contents: list[tuple[str, bytes]], stale: list[str]) -> list[Path]:
    """Write every (name, bytes) atomically and remove the ``stale`` plots (names); on a
    failure each file is as it was before."""
    if stale:
        log.info("matplotlib is not installed: wrote no plots (pip install 'onnx-eprune[plots]' for them)")
    with Replacing() as replacing:
        for name, data in contents:
            write_atomic(replacing.claim(folder / name), lambda f, data=data: f.write(data), f"report {folder / name}")
        for name in stale:
            if (folder / name).is_file():
                log.info("removed %s, a plot of an earlier run", folder / name)
                os.unlink(replacing.claim(folder / name))
    return [path for path in replacing.claims if path.exists()]


def _refit_text(report: dict) -> str:
    """``yes (ridge 0.01)``, ``yes (ridge auto: 0.01-0.3)`` or ``no``."""
    if not report.get("reconstruct", True):
        return "no"
    chosen = list(report.get("refit_ridges", {}).values())
    ridge = report.get("refit_ridge", "?")
    if chosen:
        ridge = f"{ridge}: {min(chosen):g}-{max(chosen):g}"
    return f"yes (ridge {ridge})"


def _thin_lines(report: dict) -> list[str]:
    """A line naming the layers re-fitted with a fixed ridge on few rows per kept input, if any."""
    thin = {name: v for name, v in report.get("thin_refits", {}).items() if not v.get("cross_validated")}
    if not thin:
        return []
    named = ", ".join(f"`{name}` ({v['rows']} rows, {v['features']} inputs)" for name, v in list(thin.items())[:3])
    more = f" and {len(thin) - 3} more" if len(thin) > 3 else ""
    return [f"- re-fitted on fewer than {THIN_ROWS:g} rows per kept input: {named}{more}; "
            "`--refit-ridge auto` chooses their ridge by cross-validation"]


def _limit_lines(record: dict) -> list[str]:
    """What the user kept out of reach of the pruning (``--exclude``, ``--min-keep``) and the
    steps of the kept counts (``--round-to``), where given."""
    lines = []
    if record.get("exclude"):
        lines.append("- excluded (kept whole): " + ", ".join(f"`{p}`" for p in record["exclude"]))
    if record.get("min_keep"):
        lines.append(f"- every group keeps at least {_pct(record['min_keep'])} of its channels")
    if record.get("round_to") not in (None, "auto"):
        lines.append(f"- kept counts rounded to multiples of {record['round_to']} (--round-to)")
    return lines


def target_text(value: float) -> str:
    """A sweep target as short as it reads, yet as precise as it is: "0.3", and
    "0.3000001" for a target beside it (file names and table rows must tell them apart)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def markdown_sweep(sweep: dict) -> str:
    """A sweep as Markdown: run details, then one row per target."""
    runs = sweep.get("runs", [])
    on = "; ".join(dict.fromkeys(r["fidelity_on"] for r in runs)) or "?"  # per target, when thin layers vary
    timed = next((r["latency_ms"] for r in runs if r.get("latency_ms")), None)
    searched = sweep.get("search")
    lines = [f"# onnx-eprune {'search' if searched else 'sweep'}", "",
             f"- model: `{sweep.get('input', '?')}`",
             f"- method: {sweep.get('method', '?')}, mode: {sweep.get('mode', '?')}, re-fit: {_refit_text(sweep)}",
             *_limit_lines(sweep),
             *([search_line(searched)] if searched else []),
             f"- fidelity measured on: {on}", "",
             "| target | params removed | MACs removed | relative error | top-1 agreement | accuracy | seconds |"
             + (f" {_latency_header(timed)} |" if timed else "") + (" within tolerance |" if searched else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if timed else "") + ("---|" if searched else "")]
    for r in runs:
        first = next(iter(r["fidelity"].values()), {})
        top1 = _pct(first["top1_agreement"]) if "top1_agreement" in first else "-"
        acc = r.get("accuracy")
        # two decimals: a drop of half a point is the kind of tolerance a sweep is read for
        acc_text = f"{100 * acc['pruned']:.2f}% (original {100 * acc['original']:.2f}%)" if acc else "-"
        lines.append(f"| {r['kind']} {target_text(r['target'])} | {_pct(r['params_removed'])} | {_pct(r['macs_removed'])} | "
                     f"{first.get('relative_error', float('nan')):.4f} | {top1} | {acc_text} | {r['seconds']:.1f} |"
                     + (f" {_latency_text(r.get('latency_ms'))} |" if timed else "")
                     + ((" yes |" if r["within_tolerance"] else " no |") if searched else ""))
    return "\n".join(lines) + "\n"


def _latency_header(timed: dict) -> str:
    """The latency column's header: the batch sizes of a timed run's ``latency_ms``."""
    sizes = " / ".join(key.removeprefix("batch") for key in timed["pruned"])
    return f"latency, ms at batch {sizes}"


def _latency_text(latency: dict | None) -> str:
    """A point's latencies, pruned then the original's, or "-" when not measured."""
    if not latency:
        return "-"
    pruned, original = (" / ".join(map(_ms, latency[k].values())) for k in ("pruned", "original"))
    return f"{pruned} (original {original})"


def _ms(value: float) -> str:
    """Milliseconds to three significant digits, trailing zeros kept: 6.00, 129, 0.0243."""
    if not value > 0 or not math.isfinite(value):
        return str(value)
    value = float(f"{value:.3g}")  # rounded first: 9.996 is 10.0, not 10.00
    return f"{value:.{max(0, 2 - math.floor(math.log10(value)))}f}"


_TOLERANCES = {"max_drop": "accuracy drop <= {:g} points", "min_agreement": "top-1 agreement >= {:.2%}",
               "max_error": "relative output error <= {:g}"}


def search_line(search: dict) -> str:
    """A search's outcome in a Markdown list line: the tolerance, the target found, the grid."""
    kind = search["kind"].replace("_", " ")
    found = f"**{target_text(search['best'])}**" if search["best"] is not None else "none"
    return (f"- search: the largest {kind} with {_TOLERANCES[search['criterion']].format(search['tolerance'])}: "
            f"{found} (bisection on multiples of {search['resolution']:g}; the prunable groups reach "
            f"{search['reach']:.3f})")


# -- Markdown --------------------------------------------------------------------------------

def _cell(text) -> str:
    """``text`` for a Markdown table cell: pipes escaped, every kind of line break a space."""
    return " ".join(str(text).replace("|", "\\|").splitlines())


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def markdown_report(report: dict) -> str:
    """The report as Markdown: totals, run details, fidelity, then one table row per group."""
    lines = ["# onnx-eprune pruning report", ""]
    if report.get("input") or report.get("output"):
        lines += [f"- input: `{report.get('input', '?')}`", f"- output: `{report.get('output', '?')}`"]
    target = report.get("target") or {}
    lines += [
        f"- method: {report.get('method', '?')}, mode: {report.get('mode', '?')}, "
        f"re-fit: {_refit_text(report)}, seed: {report.get('seed', '?')}",
        f"- target: {target.get('kind', '?')} {target.get('value', '?')}",
        *_limit_lines(report),
        f"- provider: {report.get('provider', '?')}",
        f"- calibration samples: {report.get('samples', '?')}",
        *_thin_lines(report),
        f"- tool: {report.get('tool', 'onnx-eprune')} {report.get('version', '')}".rstrip(),
        "",
        "## Summary",
        "",
        "| | before | after | removed |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (("params", "parameters"), ("macs", "MACs")):
        v = report.get(key)
        if v:
            lines.append(f"| {label} | {v['before']:,} | {v['after']:,} | {_pct(v['removed_fraction'])} |")
    groups = report.get("groups", [])
    prunable = [g for g in groups if not g.get("frozen")]
    before = sum(g["channels_before"] for g in prunable)
    after = sum(g["channels_after"] for g in prunable)
    if before:
        lines.append(f"| channels of prunable groups | {before:,} | {after:,} | {_pct(1 - after / before)} |")
    lines.append("")
    fidelity = report.get("fidelity_on_calibration") or {}
    if fidelity.get("outputs"):
        lines += ["## Fidelity on calibration samples", "",
                  f"Pruned against original model on {fidelity.get('samples', '?')} calibration samples"
                  + (f" {optimism_note(report)}." if report.get("thin_refits") else "."), "",
                  "| output | relative error | top-1 agreement |", "|---|---:|---:|"]
        for name, f in fidelity["outputs"].items():
            top1 = _pct(f["top1_agreement"]) if "top1_agreement" in f else "-"
            lines.append(f"| {_cell(name)} | {f['relative_error']:.4f} | {top1} |")
        lines.append("")
    seconds = report.get("seconds") or {}
    if seconds:
        lines += ["## Seconds per phase", "", "| phase | seconds |", "|---|---:|"]
        lines += [f"| {_cell(k)} | {v:.2f} |" for k, v in seconds.items()]
        lines.append("")
    lines += ["## Channel groups", "",
              f"{report.get('prunable_groups', len(prunable))} prunable of {len(groups)} groups.", "",
              "| group | producers | consumers | channels |", "|---:|---|---|---|"]
    for g in groups:
        producers = ", ".join(producer_labels(g)) or "(graph input)"
        consumers = ", ".join(g["consumers"]) or "(graph output)"
        if g.get("frozen"):
            chans = f"{g['channels_before']} (frozen: {g['frozen']})"
        else:
            chans = f"{g['channels_before']} -> {g['channels_after']}"
        lines.append(f"| {g['id']} | {_cell(producers)} | {_cell(consumers)} | {_cell(chans)} |")
    return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------------------

def _figure_class():
    """matplotlib's Figure (drawn without pyplot, so no GUI backend), or None."""
    try:
        with signals_held():  # see signals.py: an interrupted extension import fails as if missing
            from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _prunable(report: dict) -> list[dict]:
    return [g for g in report.get("groups", []) if not g.get("frozen")]


def _label(g: dict) -> str:
    name = g["producers"][0] if g["producers"] else "input"
    name = name if len(name) <= 18 else name[:17] + "…"
    return f"{g['id']}: {name}"


def _channels_figure(Figure, report: dict):
    groups = _prunable(report)
    n = len(groups)
    fig = Figure(figsize=(max(6.0, 0.32 * n + 2.0), 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(n))
    ax.bar(xs, [g["channels_before"] for g in groups], color="#c8c8c8", label="before")
    ax.bar(xs, [g["channels_after"] for g in groups], color="#1f77b4", width=0.6, label="kept")
    ax.set_xticks(xs, [_label(g) for g in groups], rotation=60 if n > 6 else 0, ha="right" if n > 6 else "center",
                  fontsize=8 if n > 20 else 9)
    ax.set_ylabel("channels")
    ax.set_title("Channels kept per prunable group")
    ax.legend()
    return fig


def _allocation_figure(Figure, report: dict):
    groups = _prunable(report)
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(len(groups)))
    kept = [g["channels_after"] / g["channels_before"] if g["channels_before"] else 1.0 for g in groups]
    ax.plot(xs, kept, marker="o", color="#1f77b4", label="fraction of channels kept")
    params = report.get("params")
    if params:
        ax.axhline(1.0 - params["removed_fraction"], color="#d62728", linestyle="--",
                   label="fraction of parameters kept")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("prunable group, in network order (input -> output)")
    ax.set_ylabel("fraction kept")
    ax.set_title("Channel allocation along the network")
    if len(xs) <= 30:
        ax.set_xticks(xs, [str(g["id"]) for g in groups])
    ax.legend(loc="lower left")
    return fig


def _sweep_figure(Figure, sweep: dict):
    runs = sweep.get("runs", [])
    kind = runs[0]["kind"] if runs else "sparsity"
    key, label = (("macs_removed", "fraction of MACs removed") if kind == "flops_reduction"
                  else ("params_removed", "fraction of parameters removed"))
    xs = [r[key] for r in runs]
    first = [next(iter(r["fidelity"].values()), {}) for r in runs]
    timed = [r for r in runs if r.get("latency_ms")]
    panels = 3 if timed else 2
    fig = Figure(figsize=(5.0 * panels, 4.0), layout="constrained")
    ax = fig.add_subplot(1, panels, 1)
    ax.plot(xs, [f.get("relative_error", float("nan")) for f in first], marker="o", color="#d62728")
    ax.set_xlabel(label)
    ax.set_ylabel("relative output error")
    ax.set_title("Output error of the pruned model")
    ax = fig.add_subplot(1, panels, 2)
    if any("top1_agreement" in f for f in first):
        ax.plot(xs, [f.get("top1_agreement", float("nan")) for f in first], marker="o", label="top-1 agreement")
    if all(r.get("accuracy") for r in runs) and runs:
        ax.plot(xs, [r["accuracy"]["pruned"] for r in runs], marker="s", label="accuracy (pruned)")
        ax.axhline(runs[0]["accuracy"]["original"], color="grey", linestyle=":", label="accuracy (original)")
    best = next((r for r in runs if r["target"] == (sweep.get("search") or {}).get("best")), None)
    if best is not None:
        ax.axvline(best[key], color="green", linestyle="--", label="chosen")
    ax.set_xlabel(label)
    ax.set_ylabel("fraction")
    ax.set_title(f"Agreement on {runs[0]['fidelity_on'] if runs else '?'}", fontsize=9)
    ax.legend(loc="lower left")
    if timed:
        ax = fig.add_subplot(1, panels, 3)
        for size in timed[0]["latency_ms"]["pruned"]:
            ax.plot([r[key] for r in timed], [r["latency_ms"]["original"][size] / r["latency_ms"]["pruned"][size]
                                              for r in timed], marker="o", label=size.replace("batch", "batch "))
        ax.axhline(1.0, color="grey", linestyle=":")
        ax.set_xlabel(label)
        ax.set_ylabel("original latency / pruned latency")
        ax.set_title("Speed-up (onnxruntime, median)")
        ax.legend(loc="upper left")
    return fig


def producer_labels(group: dict) -> list[str]:
    """The producers of a group entry (a report's or ``inspect``'s), each marked with its
    output rows per channel where that is more than one: ``"pw (x2)"``, and named once
    where it writes the group's channels in several blocks (the r*r blocks before a
    DepthToSpace in DCR mode): ``"up (4 blocks)"``."""
    labels = [name + (f" (x{r})" if r > 1 else "") for name, r in zip(group["producers"], group["producer_rows"])]
    counts = Counter(labels)
    return [label + (f" ({counts[label]} blocks)" if counts[label] > 1 else "") for label in dict.fromkeys(labels)]
