"""Quality benchmark: accuracy kept by each selection method at each target, no fine-tuning.

Runs on the fixed reference models in ../shared/reference (LeNet-5, VGG-16, ResNet-18 trained
on Fashion-MNIST) with their calibration sets (drawn from the train split), and measures
accuracy on the full 10,000-image test split. Parameters and MACs are counted on the output
files' cost model, seconds are wall-clock pruning time.

    python tools/bench_quality.py --models lenet5 --sparsity 0.55 0.7 0.84 \\
        --methods entropic l1 random --out bench/quality_lenet5.json

Prints one line per run and writes all runs as JSON (appending to an existing file, so runs
can be split over several invocations); ``--markdown`` prints the table for BENCHMARKS.md.

The tables quote the reference calibration files. ``--calib-draws 1 2`` runs the same
targets on other calibration sets, each 1024 train images drawn with that seed, to see how
far a method's accuracy moves with the draw; ``--seeds 1 2`` runs them with other draws of
the sampled convolution positions (the tool's ``--seed``); ``--pivot --draws`` averages
over both kinds of draw.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from scipy.stats import binomtest

import onnx_eprune
from onnx_eprune.select import METHODS
from onnx_eprune.cli_parser import refit_ridge_arg
from onnx_eprune.config import MODES, PruneConfig
from onnx_eprune.select.entropic import EntropicConfig
from onnx_eprune.datasets import fashion_mnist_available, load_fashion_mnist, preprocess
from onnx_eprune.calibrate.data import load_calibration
from onnx_eprune.evaluate import run_model

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
MODELS = {"lenet5": ("lenet5.onnx", "calib28.npy", 28), "vgg16": ("vgg16.onnx", "calib32.npy", 32),
          "resnet18": ("resnet18.onnx", "calib32.npy", 32)}
PROVIDERS = ["CPUExecutionProvider"]
DRAW_SIZE = 1024   # images per drawn calibration set, as many as the reference files hold


def calibration_set(name: str, draw: int, reference: Path, images: int = DRAW_SIZE):
    """What the runs of model ``name`` calibrate on: draw 0 is the reference file (a path);
    draw d > 0 is ``images`` Fashion-MNIST train images chosen with seed d (an array)."""
    _file, calib, size = MODELS[name]
    if draw == 0:
        if images != DRAW_SIZE:
            raise ValueError(f"the reference calibration files hold {DRAW_SIZE} images: draw another set")
        return str(reference / calib)
    x, _ = load_fashion_mnist("train")
    chosen = np.sort(np.random.default_rng(draw).choice(len(x), images, replace=False))
    return preprocess(x[chosen], size)


def run_one(name: str, kind: str, target: float, method: str, mode: str, reconstruct: bool, test, samples,
            reference: Path, round_to: int | None = None, stats: tuple | None = None, draw: int = 0,
            calib=None, seed: int = 0, entropic: dict | None = None, refit_ridge: float | str | None = None,
            min_keep: float = 0.0, exclude: tuple[str, ...] = ()) -> dict:
    """One pruning run and its accuracy. ``stats``: (bundle, seconds) of a one-shot
    calibration shared by the one-shot runs of this model and ``seed``; its seconds count
    in the run's. ``calib``: the calibration set of ``draw`` (:func:`calibration_set`; made
    here if None). ``seed``: the positions' (and ``random``'s) seed. ``entropic``: fields of
    :class:`EntropicConfig` that differ from the defaults (recorded in the row).
    ``refit_ridge``: the re-fit's ridge toward the original weights, None for the default
    (the row records the value used). ``min_keep``, ``exclude``: the tool's ``--min-keep`` and
    ``--exclude`` (recorded when given)."""
    file, _calib, size = MODELS[name]
    model = onnx.load(str(reference / file))
    refit_ridge = PruneConfig().refit_ridge if refit_ridge is None else refit_ridge
    options = dict(method=method, mode=mode, reconstruct=reconstruct, samples=samples, device="cpu",
                   round_to=round_to, seed=seed, min_keep=min_keep, exclude=exclude,
                   refit_ridge=refit_ridge if reconstruct else PruneConfig().refit_ridge,  # no re-fit, no ridge
                   **{kind: target})
    if entropic:
        options["entropic"] = EntropicConfig(**entropic)
    t0 = time.perf_counter()
    if stats is not None:  # the statistics hold their samples: no --samples to give
        result = onnx_eprune.prune(model, stats=[stats[0]], **dict(options, samples=None))
    else:
        result = onnx_eprune.prune(model, calib if calib is not None else calibration_set(name, draw, reference),
                                   **options)
    seconds = time.perf_counter() - t0 + (stats[1] if stats is not None else 0.0)
    x, y = test[size]
    logits = run_model(result.model, load_calibration(x, result.model), PROVIDERS)[0]
    original = _original_logits(reference / file, x)
    correct = logits.argmax(axis=1) == y
    acc = float(np.mean(correct))
    logits = logits.astype(np.float64)
    card = json.loads((reference / file.replace(".onnx", ".json")).read_text())
    rep = result.report
    return {"model": name, "target_kind": kind, "target": target, "method": method, "mode": mode,
            "reconstruct": reconstruct, "calib_draw": draw, "seed": seed, "round_to": rep["round_to"], "samples": rep["samples"], "accuracy": acc,
            "accuracy_original": card["test_acc"], "drop_points": 100 * (card["test_acc"] - acc),
            "params_removed": rep["params"]["removed_fraction"], "macs_removed": rep["macs"]["removed_fraction"],
            "channels": [g["channels_after"] for g in rep["groups"] if not g["frozen"]],
            "seconds": seconds, "phase_seconds": rep["seconds"], "shared_calibration": stats is not None,
            "test_agreement": float(np.mean(logits.argmax(axis=1) == original.argmax(axis=1))),
            "test_relative_error": float(np.linalg.norm(logits - original) / np.linalg.norm(original)),
            "test_images": len(correct), "correct": np.packbits(correct).tobytes().hex(),
            "refit_ridge": refit_ridge, **({"entropic_config": entropic} if entropic else {}),
            **({"min_keep": min_keep} if min_keep else {}), **({"exclude": list(exclude)} if exclude else {})}


# the re-fit ridge of the runs that do not record it (the default before session 27)
LEGACY_REFIT_RIDGE = 0.1


def _ridge(row: dict) -> float | str:
    return row.get("refit_ridge", LEGACY_REFIT_RIDGE)


def at_ridge(rows: list[dict], refit_ridge: float | str) -> list[dict]:
    """The runs whose re-fit used ``refit_ridge``, and those without a re-fit."""
    return [r for r in rows if _ridge(r) == refit_ridge or not r["reconstruct"]]


def read_runs(*paths: Path | None) -> list[dict]:
    """The runs of the result files among ``paths`` that exist, in order; ValueError naming
    the file if one is not a whole results file (cut short, or not this tool's JSON)."""
    runs = []
    for path in paths:
        if path and path.exists():
            try:
                runs += json.loads(path.read_text())["runs"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path} is not a results file of this tool ({type(exc).__name__}: {exc})") from None
    return runs


def _read_for_report(*paths: Path | None) -> list[dict]:
    """:func:`read_runs` of ``paths``, every one of which must exist (a typo in a name must
    not pass for a table without its rows); ValueError naming the first missing one."""
    missing = [path for path in paths if path and not path.is_file()]
    if missing:
        raise ValueError(f"no results file {missing[0]}")
    return read_runs(*paths)


def print_tables(rows: list[dict], args: argparse.Namespace) -> None:
    """Print each table asked for (--markdown, --pivot, --head-to-head, --bar), in that order."""
    if args.markdown:
        print(markdown(rows))
    if args.pivot:
        print(pivot(rows, args.metric, args.draws))
    if args.head_to_head:
        print(head_to_head(rows, args.draws))
    if args.bar:
        print(bar_table(rows))


def _usage_error(message: str) -> int:
    """One line on stderr and the usage-error status (argparse's usage lines would bury it)."""
    print(f"bench_quality.py: error: {message}", file=sys.stderr)
    return 2


def append_run(path: Path, row: dict) -> None:
    """Add ``row`` to the runs in ``path``, read again under a lock: several invocations
    may append to one file at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "bench_quality.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = read_runs(path)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"machine": platform.platform(), "runs": runs + [row]}, indent=1))
        os.replace(tmp, path)


_ORIGINAL: dict[Path, np.ndarray] = {}


def _original_logits(path: Path, x) -> np.ndarray:
    """The reference model's logits on the test images (computed once per model)."""
    if path not in _ORIGINAL:
        model = onnx.load(str(path))
        _ORIGINAL[path] = run_model(model, load_calibration(x, model), PROVIDERS)[0].astype(np.float64)
    return _ORIGINAL[path]


def _correct(run: dict) -> np.ndarray:
    """A run's per-test-image correctness, shape (test images,), bool."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(run["correct"]), np.uint8))
    return bits[:run["test_images"]].astype(bool)


def mcnemar_p(a: dict, b: dict) -> float | None:
    """Exact McNemar p-value (two-sided) of two runs' per-image correctness on the same
    test images: how likely a split of the images only one of them gets right at least as
    uneven as the one seen, were both equally accurate. None when a run lacks the record."""
    if "correct" not in a or "correct" not in b:
        return None
    ca, cb = _correct(a), _correct(b)
    only_a, only_b = int(np.sum(ca & ~cb)), int(np.sum(cb & ~ca))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def markdown(rows: list[dict]) -> str:
    lines = ["| model | target | method | mode | accuracy | drop (points) | params removed | MACs removed | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        method = r["method"] + ("" if r["reconstruct"] else " (no re-fit)") + \
            (f" (min-keep {r['min_keep']:g})" if r.get("min_keep") else "") + \
            (f" (excluding {', '.join(r['exclude'])})" if r.get("exclude") else "")
        target = f"{'sparsity' if r['target_kind'] == 'sparsity' else 'FLOPs'} {r['target']:g}"
        lines.append(f"| {r['model']} | {target} | {method} | {r['mode']} | {100 * r['accuracy']:.2f}% | "
                     f"{r['drop_points']:+.2f} | {r['params_removed']:.3f} | {r['macs_removed']:.3f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


# what a pivot cell shows: (row field, scale, better is smaller, header)
METRICS = {"drop": ("drop_points", 1.0, True, "accuracy drop in points"),
           "agreement": ("test_agreement", 100.0, False, "top-1 agreement with the original model, %"),
           "error": ("test_relative_error", 100.0, True, "relative error of the logits, %")}


def _draw(row: dict) -> tuple[int, int]:
    """The draws behind a run: (calibration draw, position seed); runs recorded before
    either existed used the reference file and seed 0."""
    return row.get("calib_draw", 0), row.get("seed", 0)


def pivot(rows: list[dict], metric: str = "drop", draws: bool = False) -> str:
    """One row per (model, target, mode), one column per method: the ``metric`` on the test
    split (the best method in bold), the MACs removed by entropic and, for the accuracy
    drop, the McNemar p of entropic against the best other method; repeated runs count
    once (the last). Only runs on the reference calibration files with position seed 0
    count, unless ``draws``: then each cell is the mean over the draws (calibration set and
    position seed: ``1`` is calibration draw 1, ``0s2`` the reference file with seed 2)
    entropic ran on ("-" for a method that missed one), and the last columns name the draws
    and count those in which entropic was best (ties count)."""
    field, scale, smaller, header = METRICS[metric]
    pick = min if smaller else max
    latest = {(r["model"], r["target_kind"], r["target"], r["mode"], r["method"], r["reconstruct"],
               _draw(r)): r
              for r in rows if field in r and (draws or _draw(r) == (0, 0))}
    methods = [m for m in METHODS if any(k[4] == m and k[5] for k in latest)]
    if any(not k[5] for k in latest):
        methods.append("l1 (no re-fit)")
    variant = {m: (m, True) if m != "l1 (no re-fit)" else ("l1", False) for m in methods}
    if draws:
        header = f"{header}, mean over calibration draws"
        tail = " draws | entropic best in |"
    else:
        tail = " entropic vs the best other method: McNemar p |" if metric == "drop" else ""
    lines = [f"{header}:", "", "| model | target | mode | " + " | ".join(methods) + " | MACs removed (entropic) |"
             + tail, "|---|---|---|" + "---|" * (len(methods) + 1 + tail.count("|"))]
    for key in sorted({k[:4] for k in latest}, key=lambda k: (k[0], k[1] != "sparsity", k[2], k[3] != "sequential")):
        ran = {m: {k[6] for k in latest if k[:6] == key + variant[m]} for m in methods}
        # the draws entropic ran on (all draws of the row without it); a method that
        # missed one of them shows "-"
        common = sorted(ran.get("entropic") or set.union(*ran.values()))
        per_draw = {m: [scale * latest[key + variant[m] + (d,)][field] for d in common]
                    if ran[m] >= set(common) else None for m in methods}
        if draws and sum(v is not None for v in per_draw.values()) < 2:
            continue  # nothing to compare with
        cells = {m: None if v is None else round(float(np.mean(v)), 2) for m, v in per_draw.items()}
        best = pick(v for v in cells.values() if v is not None)
        text = [("-" if v is None else (f"**{v:.2f}**" if v == best else f"{v:.2f}")) for v in cells.values()]
        ent = latest.get(key + ("entropic", True, common[0]))
        macs = [latest[key + ("entropic", True, d)]["macs_removed"] for d in common] if ent is not None else []
        line = f"| {key[0]} | {'sparsity' if key[1] == 'sparsity' else 'FLOPs'} {key[2]:g} | {key[3]} | " + \
            " | ".join(text) + f" | {format(np.mean(macs), '.3f') if macs else '-'} |"
        if draws:
            wins = "-"
            if per_draw.get("entropic") is not None:
                won = sum(round(per_draw["entropic"][i], 2) == pick(round(v[i], 2) for v in per_draw.values() if v)
                          for i in range(len(common)))
                wins = f"{won} of {len(common)}"
            line += f" {', '.join(f'{d}s{s}' if s else str(d) for d, s in common)} | {wins} |"
        elif metric == "drop":
            others = [latest[key + (m, True, (0, 0))] for m in methods if m not in ("entropic", "l1 (no re-fit)")
                      and key + (m, True, (0, 0)) in latest]
            rival = min(others, key=lambda r: r["drop_points"], default=None)
            p = None if ent is None or rival is None else mcnemar_p(ent, rival)
            line += " - |" if p is None else f" {p:.2f} ({rival['method']}) |"
        lines.append(line)
    return "\n".join(lines)


def head_to_head(rows: list[dict], draws: bool = False) -> str:
    """Entropic against each other method, one at a time, over every (model, target, mode)
    row both ran on the reference calibration file with position seed 0 (the last run of
    each counts): in how many rows entropic gets more / as many / fewer test images right,
    how many of those differences are significant (McNemar p < 0.05), the test images it
    gets right more in total, and the two-sided sign-test p of the ahead/behind split (rows
    as the units; neighbouring targets share most channels, so the rows are not independent
    and the p-value flatters either side). With ``draws`` a row's difference is the mean
    over the draws (calibration set, position seed) both ran, and only rows both ran on
    two draws or more count; no McNemar then."""
    latest = {(r["model"], r["target_kind"], r["target"], r["mode"], r["method"], r["reconstruct"], _draw(r)): r
              for r in rows if "correct" in r and (draws or _draw(r) == (0, 0))}
    variants = [(m, True) for m in METHODS if m != "entropic"] + [("l1", False)]
    lines = ["| entropic against | rows | ahead | tied | behind | ahead, p < 0.05 | behind, p < 0.05 "
             "| test images kept more, in total | sign test p |", "|---|---|---|---|---|---|---|---|---|"]
    for method, reconstruct in variants:
        diff, significant = [], []
        for key in sorted({k[:4] for k in latest if k[4:6] == (method, reconstruct)}):
            pairs = [(latest[key + ("entropic", True, d)], b) for k, b in latest.items()
                     if k[:6] == key + (method, reconstruct) and key + ("entropic", True, k[6]) in latest
                     for d in [k[6]]]
            # a re-fitted baseline counts only against entropic with the same re-fit ridge
            pairs = [(e, b) for e, b in pairs if not reconstruct or _ridge(e) == _ridge(b)]
            if not pairs or (draws and len(pairs) < 2):
                continue
            diff.append(float(np.mean([_correct(e).sum() - _correct(b).sum() for e, b in pairs])))
            if not draws and mcnemar_p(*pairs[0]) < 0.05:
                significant.append(diff[-1])
        if not diff:
            continue
        ahead, behind = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
        sign_p = binomtest(ahead, ahead + behind, 0.5).pvalue if ahead + behind else 1.0
        sig = ("-", "-") if draws else (sum(d > 0 for d in significant), sum(d < 0 for d in significant))
        lines.append(f"| {method + ('' if reconstruct else ' (no re-fit)')} | {len(diff)} | {ahead} | "
                     f"{len(diff) - ahead - behind} | {behind} | {sig[0]} | {sig[1]} | {sum(diff):+.0f} | "
                     f"{sign_p:.2g} |")
    if not draws:
        lines += ["", _beaten_rows(latest)]
    return "\n".join(lines)


def _beaten_rows(latest: dict) -> str:
    """The rows in which a re-fitted baseline gets more test images right than entropic,
    and how many of those it wins with more right than the unpruned model: there even a
    pruned network that gave exactly the original's outputs, the most faithful pruning
    possible, would lose."""
    beaten, above = [], []
    for key in sorted({k[:4] for k in latest}):
        ent = latest.get(key + ("entropic", True, (0, 0)))
        others = [latest[key + (m, True, (0, 0))] for m in METHODS
                  if m != "entropic" and key + (m, True, (0, 0)) in latest]
        if ent is None or not others:
            continue
        best = max(others, key=lambda r: int(_correct(r).sum()))
        right, original = int(_correct(best).sum()), round(ent["accuracy_original"] * ent["test_images"])
        if right > int(_correct(ent).sum()):
            beaten.append(key)
            if right > original:
                above.append(f"{key[0]} {'sparsity' if key[1] == 'sparsity' else 'FLOPs'} {key[2]:g} {key[3]} "
                             f"({best['method']} +{right - original})")
    return (f"A baseline keeps more test images than entropic in {len(beaten)} rows; in {len(above)} of them "
            f"it gets more right than the unpruned model, which a pruning that reproduced the original exactly "
            f"would not: {', '.join(above) or 'none'}.")


def bar_table(rows: list[dict], resamples: int = 2000, seed: int = 0) -> str:
    """The bar "at every row, at least as many test images right as every other method",
    applied to each re-fitted method in turn over the rows that all of them ran (reference
    calibration files, position seed 0, one re-fit ridge): the rows it meets the bar in, and
    how many it would meet on a fresh test split of the same size from the same
    distribution, estimated by resampling the 10,000 test images with replacement
    (``resamples`` bootstrap draws; the same draws for every row, since the rows share the
    test images): the mean, the 5th / 95th percentiles, the fraction of draws in which it
    meets the bar in every row, and the rows it meets the bar in on at least 95% of the
    draws (won whatever the test images) and on at most 5% (lost whatever they are)."""
    latest = {(r["model"], r["target_kind"], r["target"], r["mode"], r["method"]): r
              for r in rows if "correct" in r and r["reconstruct"] and _draw(r) == (0, 0)}
    methods = [m for m in METHODS if any(k[4] == m for k in latest)]
    keys = sorted({k[:4] for k in latest if all(k[:4] + (m,) in latest for m in methods)
                   and len({_ridge(latest[k[:4] + (m,)]) for m in methods}) == 1})
    if not keys:
        return "no row that every method ran"
    n = latest[keys[0] + (methods[0],)]["test_images"]
    rng = np.random.default_rng(seed)
    # a bootstrap draw as the number of times each test image is drawn: (images, resamples)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).T.astype(np.float32)
    met, met_boot = np.zeros(len(methods), int), np.zeros((len(methods), resamples), int)
    sure, hopeless = np.zeros(len(methods), int), np.zeros(len(methods), int)
    lost = []   # the rows the first method (entropic) meets the bar in on at most 5% of draws
    for key in keys:
        correct = np.stack([_correct(latest[key + (m,)]) for m in methods]).astype(np.float32)
        right = correct.sum(axis=1)
        met += right >= right.max()
        boot = correct @ weights                       # (methods, resamples) images right
        won = boot >= boot.max(axis=0) - 0.5           # counts are integers: ties count
        met_boot += won
        sure += won.mean(axis=1) >= 0.95
        hopeless += won.mean(axis=1) <= 0.05
        if won[0].mean() <= 0.05:
            rival = methods[int(np.argmax(right[1:])) + 1]
            lost.append(f"{key[0]} {'sparsity' if key[1] == 'sparsity' else 'FLOPs'} {key[2]:g} {key[3]} "
                        f"({rival} +{right.max() - right[0]:.0f})")
    lines = [f"{len(keys)} rows that {', '.join(methods)} all ran; a method meets the bar in a row when no other "
             f"method gets more test images right ({resamples} bootstrap resamples of the test images):", "",
             "| method | rows where it meets the bar | on a resampled test split: mean (5th-95th percentile) "
             "| resamples in which it meets the bar in every row | rows met in >= 95% of resamples "
             "| rows met in <= 5% |", "|---|---|---|---|---|---|"]
    for i, m in enumerate(methods):
        lo, hi = np.percentile(met_boot[i], [5, 95])
        lines.append(f"| {m} | {met[i]} | {met_boot[i].mean():.1f} ({lo:.0f}-{hi:.0f}) | "
                     f"{int(np.sum(met_boot[i] == len(keys)))} of {resamples} | {sure[i]} | {hopeless[i]} |")
    lines += ["", f"{methods[0]} meets the bar in at most 5% of the resamples in {len(lost)} rows: "
              f"{', '.join(lost) or 'none'}."]
    return "\n".join(lines)


def _config_fields(items: list[str]) -> dict:
    """``["wide=100000", ...]`` as EntropicConfig fields, each value of its default's type."""
    defaults, fields = EntropicConfig(), {}
    for item in items:
        key, _, value = item.partition("=")
        if not hasattr(defaults, key) or not value:
            raise ValueError(f"--entropic {item}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(vars(defaults))}")
        fields[key] = type(getattr(defaults, key))(value)
    return fields


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sparsity", nargs="*", type=float, default=[])
    ap.add_argument("--flops", nargs="*", type=float, default=[])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--modes", nargs="+", default=["sequential"], choices=list(MODES))
    ap.add_argument("--no-reconstruct", action="store_true", help="also run l1 without the re-fit")
    ap.add_argument("--samples", type=int, help="calibration samples (default: all 1024)")
    ap.add_argument("--round-to", type=int, help="channel count multiples (default: the tool's automatic rule)")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--out", type=Path, help="JSON file to append the runs to")
    ap.add_argument("--with", dest="also", nargs="+", type=Path, default=[],
                    help="more result files whose runs the printed tables include")
    ap.add_argument("--markdown", action="store_true", help="print the Markdown table of --out at the end")
    ap.add_argument("--pivot", action="store_true",
                    help="print --out at the end as one row per target and mode, one column per method "
                    "(without targets: print it and exit)")
    ap.add_argument("--head-to-head", action="store_true",
                    help="print, for each other method, the rows where entropic keeps more / as much / less "
                    "test accuracy than it (reference calibration files, position seed 0; with --draws: the "
                    "mean over the draws both ran)")
    ap.add_argument("--bar", action="store_true",
                    help="print, for each re-fitted method, the rows where no other method gets more test images "
                    "right, on the test split and on bootstrap resamples of it")
    ap.add_argument("--metric", choices=list(METRICS), default="drop", help="what --pivot shows")
    ap.add_argument("--calib-draws", nargs="+", type=int, default=[0],
                    help="calibration sets: 0 is the reference file, d > 0 is 1024 train images drawn with seed d")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="position seeds: which conv output positions give the statistics (and random's choice)")
    ap.add_argument("--draws", action="store_true",
                    help="--pivot averages each cell over the calibration draws and seeds "
                    "(default: the reference file with seed 0 only)")
    ap.add_argument("--entropic", nargs="+", default=[], metavar="FIELD=VALUE",
                    help="entropic selector settings other than the defaults (EntropicConfig fields); "
                    "write such runs to their own --out, the pivot does not tell them apart")
    ap.add_argument("--min-keep", type=float, default=0.0,
                    help="the tool's --min-keep for every run (write such runs to their own --out, as for --entropic)")
    ap.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                    help="the tool's --exclude patterns for every run (their own --out, as for --min-keep)")
    ap.add_argument("--refit-ridge", type=refit_ridge_arg, metavar="R|auto|auto-thin",
                    help="the re-fit's ridge toward the original weights, relative to the mean kept-feature "
                    f"variance, auto (cross-validated per consumer) or auto-thin (default "
                    f"{PruneConfig().refit_ridge}: cross-validated where a consumer has few rows per feature); "
                    "for every method. Without targets: print only the runs made with R (runs that do not "
                    f"record it used {LEGACY_REFIT_RIDGE:g})")
    args = ap.parse_args()
    try:
        entropic = _config_fields(args.entropic)
    except ValueError as exc:
        ap.error(str(exc))
    targets = [("sparsity", s) for s in args.sparsity] + [("flops_reduction", f) for f in args.flops]
    try:
        for kind, target in targets:  # refused before any work, as the runs would refuse each
            PruneConfig(**{kind: target}).target()
        also = _read_for_report(*args.also)
        # the runs are appended to --out, which need not exist yet; a report reads it
        rows = read_runs(args.out) if targets else _read_for_report(args.out)
    except (onnx_eprune.UsageError, ValueError) as exc:
        return _usage_error(str(exc))
    if not targets:  # nothing to run: print the tables of --out (the Markdown table unless told)
        rows += also
        if args.refit_ridge is not None:
            rows = at_ridge(rows, args.refit_ridge)
        if not (args.pivot or args.head_to_head or args.bar):
            args.markdown = True
        print_tables(rows, args)
        return 0
    if not fashion_mnist_available():
        print("needs the Fashion-MNIST test split: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    xt, yt = load_fashion_mnist("test")
    test = {28: (preprocess(xt, 28), yt), 32: (preprocess(xt, 32), yt)}
    variants = [(m, True) for m in args.methods] + ([("l1", False)] if args.no_reconstruct else [])
    made = 0
    for name in args.models:
        for draw in args.calib_draws:
            calib = calibration_set(name, draw, args.reference)   # read (or drawn) once per draw
            for seed in args.seeds:
                shared = None
                if "oneshot" in args.modes:
                    # one-shot statistics do not depend on the method or the target: calibrate once
                    t0 = time.perf_counter()
                    bundle = onnx_eprune.calibrate(str(args.reference / MODELS[name][0]), calib,
                                                   samples=args.samples, device="cpu", seed=seed)
                    shared = (bundle, time.perf_counter() - t0)
                    print(f"{name} draw {draw} seed {seed}: one-shot statistics in {shared[1]:.1f}s", flush=True)
                for (kind, target), mode, (method, reconstruct) in itertools.product(targets, args.modes, variants):
                    label = (f"{name} draw {draw} seed {seed} {kind}={target:g} "
                             f"{method}{'' if reconstruct else '(no re-fit)'} {mode}")
                    try:
                        row = run_one(name, kind, target, method, mode, reconstruct, test, args.samples,
                                      args.reference, args.round_to, shared if mode == "oneshot" else None,
                                      draw, calib, seed, entropic, args.refit_ridge, args.min_keep,
                                      tuple(args.exclude))
                    except onnx_eprune.EPruneError as exc:  # e.g. a FLOPs target the prunable part cannot reach
                        print(f"{label}: {exc}", flush=True)
                        continue
                    print(f"{label}: acc {100 * row['accuracy']:.2f}% drop {row['drop_points']:+.2f} "
                          f"params -{row['params_removed']:.3f} MACs -{row['macs_removed']:.3f} "
                          f"{row['seconds']:.1f}s {row['channels']}", flush=True)
                    rows.append(row)
                    made += 1
                    if args.out:
                        append_run(args.out, row)
    rows += also
    print_tables(rows, args)
    return 0 if made else 1  # every run refused: a script chaining runs must not carry on


if __name__ == "__main__":
    sys.exit(main())
