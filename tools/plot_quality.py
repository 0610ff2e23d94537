"""Accuracy-vs-sparsity plots from the JSON that ``tools/bench_quality.py`` writes.

    python tools/plot_quality.py bench/quality_lenet5.json [more.json ...] --out-dir bench

One PNG per model (``quality_<model>.png``): accuracy drop in points against the fraction
of parameters removed, one line per method (sequential mode, with re-fit unless marked).
Needs matplotlib (``pip install 'onnx-eprune[plots]'``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def series(runs: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """model -> label -> sorted (sparsity, drop) points of the sparsity-target runs."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r["target_kind"] != "sparsity":
            continue
        label = r["method"] + ("" if r["reconstruct"] else " (no re-fit)") + ("" if r["mode"] == "sequential"
                                                                             else f", {r['mode']}")
        out[r["model"]][label].append((r["target"], r["drop_points"]))
    return {m: {k: sorted(v) for k, v in d.items()} for m, d in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out-dir", type=Path, default=Path("bench"))
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for path in args.inputs for r in json.loads(path.read_text())["runs"]]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for model, lines in sorted(series(runs).items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in sorted(lines.items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=label)
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("fraction of parameters removed (--sparsity)")
        ax.set_ylabel("accuracy drop (points, full test split)")
        ax.set_title(f"{model}: no fine-tuning, 1024 calibration images")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = args.out_dir / f"quality_{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
