"""Accuracy-vs-sparsity plots from the JSON that ``tools/bench_quality.py`` writes.

    python tools/plot_quality.py bench/quality_lenet5.json [more.json ...] --out-dir bench

One PNG per model (``quality_<model>.png``): accuracy drop in points against the fraction
of parameters removed (and, beside it, of MACs removed when FLOPs targets were run), one
line per method and mode (sequential with re-fit and the default channel rounding unless
marked).
Needs matplotlib (``pip install 'onnx-eprune[plots]'``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


KINDS = {"sparsity": "fraction of parameters removed (--sparsity)",
         "flops_reduction": "fraction of MACs removed (--flops-reduction)"}


def series(runs: list[dict], kind: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """model -> label -> sorted (target, drop) points of the runs with target ``kind`` on
    the reference calibration files with position seed 0 (not other draws) and the default
    entropic settings (not ``--entropic`` variants); a run repeated in the inputs counts once
    (the last one)."""
    latest = {(r["model"], r["target_kind"], r["target"], r["method"], r["mode"], r["reconstruct"],
               _any_count(r)): r for r in runs
              if r["target_kind"] == kind and r.get("calib_draw", 0) == 0 and r.get("seed", 0) == 0
              and "entropic_config" not in r}
    out: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in latest.values():
        label = r["method"] + ("" if r["reconstruct"] else " (no re-fit)") + ("" if r["mode"] == "sequential"
                                                                             else f", {r['mode']}") \
            + (", any count" if _any_count(r) else "")
        out[r["model"]][label].append((r["target"], r["drop_points"]))
    return {m: {k: sorted(v) for k, v in d.items()} for m, d in out.items()}


def _any_count(run: dict) -> bool:
    """Whether the run allowed any channel count (``--round-to 1``; runs from before session
    11 carry no ``round_to`` and had that default)."""
    return run.get("round_to", 1) == 1


METHOD_COLOURS = {"entropic": "C0", "lasso": "C1", "thinet": "C2", "l1": "C3", "random": "C4",
                  "l1 (no re-fit)": "C5"}


def _style(label: str) -> dict:
    """One colour per method, the line per mode (solid: sequential, dashed: one-shot), open
    markers for runs with any channel count."""
    method = label.split(",")[0]
    any_count = "any count" in label
    return {"color": METHOD_COLOURS.get(method, "C7"), "linestyle": "--" if "oneshot" in label else "-",
            "marker": "s" if any_count else "o", "markerfacecolor": "white" if any_count else None,
            "linewidth": 2.2 if method == "entropic" else 1.2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out-dir", type=Path, default=Path("bench"))
    args = ap.parse_args()
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_quality.py: matplotlib is not importable: pip install 'onnx-eprune[plots]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for path in args.inputs for r in json.loads(path.read_text())["runs"]]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    by_kind = {kind: series(runs, kind) for kind in KINDS}
    for model in sorted({m for lines in by_kind.values() for m in lines}):
        kinds = [k for k in KINDS if model in by_kind[k]]
        fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for label, points in sorted(by_kind[kind][model].items()):
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=label, **_style(label))
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel(KINDS[kind])
            ax.set_ylabel("accuracy drop (points, full test split)")
            ax.set_yscale("symlog", linthresh=1.0)
            ax.legend(fontsize=7)
        fig.suptitle(f"{model}: no fine-tuning, 1024 calibration images")
        fig.tight_layout()
        path = args.out_dir / f"quality_{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
