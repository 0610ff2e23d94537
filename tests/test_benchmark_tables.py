"""The figures of BENCHMARKS.md and the README's benchmark summary against the shipped tools.

The project forbids hard-coded figures: every number the docs quote must be what the tool
quoted next to it prints from the committed runs in ``bench/*.json``. This file runs those
report commands of ``tools/bench_quality.py`` (the modes that read the JSON and prune
nothing: ``--pivot``, ``--metric``, ``--head-to-head``, ``--bar``, ``--draws``, the plain
Markdown listing) in-process, exactly as quoted, parses what they print and compares it
with the docs, table by table and row by row:

* the LeNet-5, VGG-16 / ResNet-18 sequential, one-shot and equal-MAC tables (accuracy drop
  and logit error), the head-to-head table and its paragraphs, the ``--bar`` table and its
  paragraphs, the at-a-glance quality bars, the session-39 "waves" table;
* the calibration-draw and position-seed tables (``--pivot --draws``);
* the ``--min-keep`` table;
* the Torch-Pruning peer rows, recomputed from ``bench/torch_pruning*.json`` with the rule
  of ``tools/bench_torch_pruning.py``'s ``markdown()`` (that tool imports torch, which the
  tests may not);
* the README's summary table and its head-to-head / bar / largest-sparsity figures.

A figure the tool does not reproduce is a strict xfail whose reason starts with
"DOC MISMATCH". torch is not imported and no model is run.
"""

from __future__ import annotations

import contextlib
from decimal import ROUND_HALF_UP, Decimal
import functools
import io
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from tool_modules import load_tool

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text()
README = (ROOT / "README.md").read_text()
TOOL = "python tools/bench_quality.py"

MODEL = {"LeNet-5": "lenet5", "VGG-16": "vgg16", "ResNet-18": "resnet18"}
BASELINES = ["lasso", "thinet", "l1", "random"]
SIX_WITH = ("--out bench/quality_seq_vgg16.json --with bench/quality_seq_resnet18.json "
            "bench/quality_oneshot_vgg16.json bench/quality_oneshot_resnet18.json "
            "bench/quality_flops_levels.json bench/quality_lenet5.json")
SIX = SIX_WITH + " --refit-ridge 0.01"


# ----------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def _tool():
    return load_tool("bench_quality", "_bench_quality_under_test")


def _flat(text: str) -> str:
    """Shell continuations joined and whitespace collapsed, as a reader would retype it."""
    return re.sub(r"\s+", " ", re.sub(r"\\\n", " ", text))


def _expand(arg: str) -> list[str]:
    """A command-line argument as the shell hands it over (paths from the repository root)."""
    if arg.startswith("bench/"):
        matches = sorted(ROOT.glob(arg)) if "*" in arg else [ROOT / arg]
        assert matches, f"{arg} matches no committed file"
        return [str(m) for m in matches]
    return [arg]


@functools.lru_cache(maxsize=None)
def run(command: str) -> str:
    """What ``python tools/bench_quality.py ARGS`` prints, run in-process on the committed JSON."""
    assert command.startswith(TOOL + " "), command
    argv = [a for arg in shlex.split(command[len(TOOL):]) for a in _expand(arg)]
    assert "--sparsity" not in argv and "--flops" not in argv, "report modes only: this would prune"
    out, old = io.StringIO(), sys.argv
    sys.argv = ["bench_quality.py", *argv]
    try:
        with contextlib.redirect_stdout(out):
            assert _tool().main() == 0
    finally:
        sys.argv = old
    return out.getvalue()


def quoted(command: str, doc: str | None = None) -> str:
    """``command``, after checking that the doc quotes it (continuations joined)."""
    doc = BENCHMARKS if doc is None else doc
    assert _flat(command) in _flat(doc), f"the docs do not quote {command!r}"
    return run(command)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> list[list[str]]:
    """Every Markdown table in ``text`` as its lines (separator rows dropped)."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(-+\|)+", line.strip()):
                current.append(line.strip())
        elif current:
            found.append(current)
            current = []
    return found


def doc_table(anchor: str, nth: int = 0, doc: str | None = None) -> list[str]:
    """The ``nth`` table after the first occurrence of ``anchor`` in the doc."""
    doc = BENCHMARKS if doc is None else doc
    assert doc.count(anchor) >= 1, f"anchor {anchor!r} not in the doc"
    return tables(doc[doc.index(anchor):])[nth]


def keyed(table: list[str]) -> dict[tuple, dict[str, str]]:
    """A table as {(first three cells): {header: cell}}."""
    header = _cells(table[0])
    return {tuple(_cells(line)[:3]): dict(zip(header, _cells(line))) for line in table[1:]}


def num(cell: str) -> float | None:
    """A cell's leading number ('**0.13** (..)' -> 0.13; '-' / 'not run' -> None)."""
    m = re.match(r"\**(-?\d+(?:\.\d+)?)", cell.strip())
    return float(m.group(1)) if m else None


def pivot(command: str) -> dict[tuple, dict[str, str]]:
    """The tool's pivot table, keyed by (model, target, mode)."""
    return keyed(tables(run(command))[0])


def seq_pivot(model: str) -> dict[tuple, dict[str, str]]:
    return pivot(f"{TOOL} --out bench/quality_seq_{model}.json --pivot")


def rows_of(*files: str, ridge=0.01) -> list[dict]:
    bq = _tool()
    rows = bq.read_runs(*[BENCH / f for f in files])
    return bq.at_ridge(rows, ridge) if ridge is not None else rows


SIX_FILES = ["quality_seq_vgg16.json", "quality_seq_resnet18.json", "quality_oneshot_vgg16.json",
             "quality_oneshot_resnet18.json", "quality_flops_levels.json", "quality_lenet5.json"]


def h2h_counts(text: str) -> dict[str, dict[str, str]]:
    return {row["entropic against"]: row for row in keyed(tables(text)[0]).values()}


def bar_counts(text: str) -> dict[str, list[str]]:
    return {_cells(line)[0]: _cells(line) for line in tables(text)[0][1:]}


# ---------------------------------------------------------- the main quality tables
MAIN_TABLES = {
    # id: (anchor in BENCHMARKS.md, which table after it, commands whose tables, together, are the doc table)
    "lenet5-drop": ("--pivot   # the table below", 0, [f"{TOOL} --out bench/quality_lenet5.json --pivot"]),
    "lenet5-error": ("Fidelity to the original model on the test split", 0,
                     [f"{TOOL} --out bench/quality_lenet5.json --pivot --metric error"]),
    "sequential-drop": ("**Sequential mode (the default)**", 0,
                        [f"{TOOL} --out bench/quality_seq_resnet18.json --pivot",
                         f"{TOOL} --out bench/quality_seq_vgg16.json --pivot"]),
    "sequential-error": ("**Sequential mode (the default)**", 1,
                         [f"{TOOL} --out bench/quality_seq_resnet18.json --pivot --metric error",
                          f"{TOOL} --out bench/quality_seq_vgg16.json --pivot --metric error"]),
    "oneshot-drop": ("**One-shot mode** (`--mode oneshot`)", 0,
                     [f"{TOOL} --out bench/quality_oneshot_vgg16.json --with bench/quality_oneshot_resnet18.json --pivot"]),
    "oneshot-error": ("**One-shot mode** (`--mode oneshot`)", 1,
                      [f"{TOOL} --out bench/quality_oneshot_vgg16.json --with bench/quality_oneshot_resnet18.json "
                       "--pivot --metric error"]),
    "flops-drop": ("--out bench/quality_flops_levels.json --pivot [--metric error]", 0,
                   [f"{TOOL} --out bench/quality_flops_levels.json --pivot"]),
    "flops-error": ("--out bench/quality_flops_levels.json --pivot [--metric error]", 1,
                    [f"{TOOL} --out bench/quality_flops_levels.json --pivot --metric error"]),
}


@pytest.mark.parametrize("name", list(MAIN_TABLES))
def test_main_quality_table_is_what_the_pivot_prints(name):
    """Each main table of BENCHMARKS.md, header and every row, is the tool's pivot output."""
    anchor, nth, commands = MAIN_TABLES[name]
    doc = doc_table(anchor, nth)
    printed = []
    for command in commands:
        table = tables(run(command))[0]
        assert table[0] == doc[0], f"{name}: header differs"
        printed += table[1:]
    assert len(doc) - 1 == len(printed), f"{name}: {len(doc) - 1} rows in the doc, {len(printed)} printed"
    for want, got in zip(doc[1:], printed):
        assert want == got, f"{name}: docs say {want}, the tool prints {got}"


@pytest.mark.parametrize("nth, metric", [(0, ""), (1, " --metric error")], ids=["drop", "error"])
def test_sequential_table_comes_whole_from_its_quoted_command(nth, metric):
    """The command quoted for the sequential tables (`--out bench/quality_seq_vgg16.json --with
    bench/quality_seq_resnet18.json --pivot [--metric error]`) prints every row of them, the
    resnet18 rows included. Was: the quoted command lacked `--with
    bench/quality_seq_resnet18.json` and printed the 10 vgg16 rows only (fixed in session 44)."""
    doc = doc_table("**Sequential mode (the default)**", nth)
    quoted(f"{TOOL} --out bench/quality_seq_vgg16.json --with bench/quality_seq_resnet18.json --pivot")
    printed = tables(run(f"{TOOL} --out bench/quality_seq_vgg16.json --with bench/quality_seq_resnet18.json "
                         f"--pivot{metric}"))[0]
    assert printed == doc


# ------------------------------------------------------------------- at a glance
@pytest.mark.parametrize("model, target, figure", [("vgg16", "0.89", 0.21), ("resnet18", "0.84", 0.17),
                                                    ("lenet5", "0.55", 0.13)])
def test_quality_bar_figures(model, target, figure):
    """The at-a-glance bars (and the README table) quote the pivot's entropic drop."""
    out = "lenet5" if model == "lenet5" else f"seq_{model}"
    command = f"{TOOL} --out bench/quality_{out}.json --pivot"
    row = next(line for line in doc_table("## At a glance") if f"`--sparsity {target}`" in line)
    assert f"`{command}`" in row
    assert num(_cells(row)[1]) == figure
    printed = pivot(command)[(model, f"sparsity {target}", "sequential")]["entropic"]
    assert num(printed) == figure, f"docs say {figure}, the tool prints {printed}"


def _largest_within(model: str) -> tuple[float, float, float, float]:
    """(largest sequential sparsity with an entropic drop <= 0.5, its drop, the next level, its drop)."""
    table = pivot(f"{TOOL} --out bench/quality_{'lenet5' if model == 'lenet5' else 'seq_' + model}.json --pivot")
    levels = sorted((float(k[1].split()[1]), num(v["entropic"])) for k, v in table.items()
                    if k[1].startswith("sparsity") and k[2] == "sequential")
    i = max(i for i, (_, d) in enumerate(levels) if d <= 0.5)
    nxt = levels[i + 1] if i + 1 < len(levels) else (None, None)
    return levels[i] + nxt


def test_largest_sparsity_within_half_a_point():
    """'LeNet-5 62%, VGG-16 96% (0.49; 97% costs 0.55), ResNet-18 94% (0.45; 95% costs 0.64)',
    in the at-a-glance row, the tables' text and the README."""
    assert _largest_within("lenet5") == (0.62, 0.43, 0.65, 0.57)
    assert _largest_within("vgg16") == (0.96, 0.49, 0.97, 0.55)
    assert _largest_within("resnet18") == (0.94, 0.45, 0.95, 0.64)
    assert "LeNet-5 62%, VGG-16 96%, ResNet-18 94%" in _flat(BENCHMARKS)
    assert "Largest sparsity within 0.5 points: **0.62** (0.43 sequential; 0.65 costs 0.57)" in _flat(BENCHMARKS)
    assert ("**VGG-16 0.96** (0.49 points; 0.97 costs 0.55), **ResNet-18 0.94** (0.45; 0.95 costs 0.64)"
            in _flat(BENCHMARKS))
    assert "LeNet-5 62%, VGG-16 96% (0.49), ResNet-18 94% (0.45; 95% costs 0.64)" in _flat(README)


def _entropic_best(command: str, models=("vgg16", "resnet18", "lenet5"), sparsity_upto=0.89) -> tuple[int, int]:
    """(rows where entropic's cell is bold, rows with at least one baseline) in a pivot."""
    best = total = 0
    for (model, target, _mode), row in pivot(command).items():
        kind, level = target.split()
        if model not in models or (kind == "sparsity" and float(level) > sparsity_upto):
            continue
        if all(num(row[m]) is None for m in BASELINES):
            continue
        total += 1
        best += row["entropic"].startswith("**")
    return best, total


def test_most_accuracy_counts_of_the_bar_row():
    """'most accuracy at 6 of 10 sequential and 7 of 10 one-shot VGG-16 / ResNet-18 rows, 11 of 20
    equal-MAC rows, 20 of 30 LeNet-5 rows' (ties count), also in the README's bullets."""
    seq = [_entropic_best(f"{TOOL} --out bench/quality_seq_{m}.json --pivot") for m in ("vgg16", "resnet18")]
    assert (seq[0][0] + seq[1][0], seq[0][1] + seq[1][1]) == (6, 10)
    assert _entropic_best(f"{TOOL} --out bench/quality_oneshot_vgg16.json --with "
                          "bench/quality_oneshot_resnet18.json --pivot") == (7, 10)
    assert _entropic_best(f"{TOOL} --out bench/quality_flops_levels.json --pivot") == (11, 20)
    assert _entropic_best(f"{TOOL} --out bench/quality_lenet5.json --pivot") == (20, 30)
    glance = _flat(BENCHMARKS)
    assert ("most accuracy at 6 of 10 sequential and 7 of 10 one-shot VGG-16 / ResNet-18 rows, 11 of 20 "
            "equal-MAC rows, 20 of 30 LeNet-5 rows") in glance
    readme = _flat(README)
    for claim in ("the most accuracy at 6 of the 10 levels", "One-shot: the most at 7 of 10",
                  "the most in 11 of 20 rows", "LeNet-5: the most in 20 of 30 rows"):
        assert claim in readme


def test_lost_rows_on_vgg_resnet_are_by_2_to_15_images_none_significantly():
    """'lost rows by 2-15 test images on VGG-16 / ResNet-18, none significantly' (with the
    tool's own per-image records and McNemar test)."""
    bq = _tool()
    latest = {(r["model"], r["target_kind"], r["target"], r["mode"], r["method"]): r
              for r in rows_of(*SIX_FILES) if r["reconstruct"] and bq._draw(r) == (0, 0)}
    margins, ps = [], []
    for key in {k[:4] for k in latest if k[0] != "lenet5" and all(k[:4] + (m,) in latest for m in BASELINES)}:
        ent = latest[key + ("entropic",)]
        rival = max((latest[key + (m,)] for m in BASELINES), key=lambda r: bq._correct(r).sum())
        margin = int(bq._correct(rival).sum() - bq._correct(ent).sum())
        if margin > 0:
            margins.append(margin)
            ps.append(bq.mcnemar_p(ent, rival))
    assert (min(margins), max(margins)) == (2, 15)
    assert min(ps) >= 0.05
    assert "lost rows by 2-15 test images on VGG-16 / ResNet-18, none significantly" in _flat(BENCHMARKS)


def test_readme_sequential_margins_and_p_values():
    """README: 'by 15 test images over the best baseline at ResNet-18 84% (LASSO, p = 0.29) and
    27 at 89% (`random`, p = 0.049)'."""
    table = seq_pivot("resnet18")
    for level, rival, images, p in (("0.84", "lasso", 15, "0.29"), ("0.89", "random", 27, "0.05")):
        row = table[("resnet18", f"sparsity {level}", "sequential")]
        assert round(100 * (num(row[rival]) - num(row["entropic"]))) == images
        assert row["entropic vs the best other method: McNemar p"] == f"{p} ({rival})"
    bq = _tool()
    latest = {(r["target"], r["method"]): r for r in rows_of("quality_seq_resnet18.json")
              if r["target_kind"] == "sparsity" and bq._draw(r) == (0, 0)}
    assert round(bq.mcnemar_p(latest[(0.89, "entropic")], latest[(0.89, "random")]), 3) == 0.049
    assert ("by 15 test images over the best baseline at ResNet-18 84% (LASSO, p = 0.29) and 27 at 89% "
            "(`random`, p = 0.049") in _flat(README)


# --------------------------------------------------------------------- head to head
H2H = f"{TOOL} {SIX} --head-to-head"


def test_head_to_head_table_is_what_the_tool_prints():
    doc = doc_table("### Head to head: entropic against each baseline")
    printed = tables(quoted(H2H))[0]
    assert doc == printed


def test_head_to_head_rows_beaten_above_the_unpruned_model():
    """'26 of the 70 ... In 6 of them (sequential VGG-16 30% and FLOPs 0.3, ResNet-18 50% and
    FLOPs 0.3; one-shot VGG-16 50 / 73%) ... 1-9 more test images right than the unpruned model'."""
    sentence = run(H2H).strip().splitlines()[-1]
    m = re.match(r"A baseline keeps more test images than entropic in (\d+) rows; in (\d+) of them", sentence)
    assert m and (int(m.group(1)), int(m.group(2))) == (26, 6), sentence
    above = set(re.findall(r"(\w+) (sparsity|FLOPs) ([\d.]+) (\w+) \((\w+) \+(\d+)\)", sentence))
    assert {(a, b, c, d) for a, b, c, d, _, _ in above} == {
        ("vgg16", "sparsity", "0.3", "sequential"), ("vgg16", "FLOPs", "0.3", "sequential"),
        ("resnet18", "sparsity", "0.5", "sequential"), ("resnet18", "FLOPs", "0.3", "sequential"),
        ("vgg16", "sparsity", "0.5", "oneshot"), ("vgg16", "sparsity", "0.73", "oneshot")}
    extra = sorted(int(x[-1]) for x in above)
    assert (extra[0], extra[-1]) == (1, 9)
    doc = _flat(BENCHMARKS)
    assert "rows entropic loses to its best rival: 26 of the 70" in doc
    assert "6 of the 26 lost rows" in doc


def test_readme_head_to_head_counts():
    """README (twice): ahead of LASSO / ThiNet / `l1` / `random` in 58 / 50 / 54 / 63 rows and
    behind in 11 / 18 / 13 / 7, significantly fewer in one row each of the first three;
    BENCHMARKS: 50-63 / 7-18."""
    counts = h2h_counts(run(H2H))
    ahead = [int(counts[m]["ahead"]) for m in BASELINES]
    behind = [int(counts[m]["behind"]) for m in BASELINES]
    assert ahead == [58, 50, 54, 63] and behind == [11, 18, 13, 7]
    assert [counts[m]["behind, p < 0.05"] for m in BASELINES] == ["1", "1", "1", "0"]
    assert all(counts[m]["rows"] == "70" for m in BASELINES)
    readme = _flat(README)
    assert readme.count("58 / 50 / 54 / 63 rows") == 2
    assert "fewer in 11 / 18 / 13 / 7, significantly fewer in one row each of the first three" in readme
    assert "behind in 11 / 18 / 13 / 7" in readme
    assert "ahead in 50-63 and behind in 7-18" in _flat(BENCHMARKS)
    assert (min(ahead), max(ahead), min(behind), max(behind)) == (50, 63, 7, 18)


def test_head_to_head_on_vgg16_and_resnet18_alone():
    """'The same on VGG-16 and ResNet-18 only (40 rows; drop bench/quality_lenet5.json): ahead of
    LASSO in 32, behind in 7; ThiNet 24 / 15; l1 30 / 7; random 33 / 7; no loss significant, 9-14
    wins significant; +1032 to +1506 test images in total (sign test p = 7e-05, 0.2, 0.00019, 4.2e-05)'."""
    counts = h2h_counts(run(H2H.replace(" bench/quality_lenet5.json", "")))
    assert [(counts[m]["ahead"], counts[m]["behind"]) for m in BASELINES] == \
        [("32", "7"), ("24", "15"), ("30", "7"), ("33", "7")]
    assert all(counts[m]["rows"] == "40" and counts[m]["behind, p < 0.05"] == "0" for m in BASELINES)
    wins = [int(counts[m]["ahead, p < 0.05"]) for m in BASELINES]
    assert (min(wins), max(wins)) == (9, 14)
    total = [int(counts[m]["test images kept more, in total"]) for m in BASELINES]
    assert (min(total), max(total)) == (1032, 1506)
    assert [counts[m]["sign test p"] for m in BASELINES] == ["7e-05", "0.2", "0.00019", "4.2e-05"]
    doc = _flat(BENCHMARKS)
    assert "entropic ahead of LASSO in 32, behind in 7; ThiNet 24 / 15; `l1` 30 / 7; `random` 33 / 7" in doc
    assert "(sign test p = 7e-05, 0.2, 0.00019, 4.2e-05)" in doc


def test_thinet_on_vgg16_alone():
    """BENCHMARKS: 'on VGG-16 alone entropic is ahead in 8 rows and behind in 12, but +91 test
    images in total'; README: ThiNet 'ahead in 12 of its 20 rows ..., behind in 8 ..., 91 images
    fewer in total' (the tool's head_to_head on the six files' vgg16 rows)."""
    vgg = [r for r in rows_of(*SIX_FILES) if r["model"] == "vgg16"]
    row = h2h_counts(_tool().head_to_head(vgg))["thinet"]
    assert (row["rows"], row["ahead"], row["behind"], row["test images kept more, in total"]) == \
        ("20", "8", "12", "+91")
    assert "on VGG-16 alone entropic is ahead in 8 rows and behind in 12, but +91 test images" in _flat(BENCHMARKS)
    assert "ahead in 12 of its 20 rows by 1-14 images, behind in 8 by up to 83, 91 images fewer" in _flat(README)


DRAWS_H2H = f"{TOOL} {SIX_WITH} bench/quality_draws_*.json bench/quality_seeds_*.json --head-to-head --draws"
# the doc's figures: baseline -> (ahead, behind, tied) over all rows / over the VGG-16 and ResNet-18 rows
DRAWS_DOC = {"all": {"lasso": (43, 6, 1), "thinet": (40, 12, 0), "l1": (33, 10, 1), "random": (32, 3, 0)},
             "vgg16+resnet18": {"lasso": (17, 2, 1), "thinet": (13, 9, 0), "l1": (11, 3, 0), "random": (2, 3, 0)}}
DRAWS_PROSE = ("entropic ahead of LASSO in 43 rows, tied in 1 and behind in 6, ThiNet 40 / 12, `l1` 33 / 10 (one "
               "tie), `random` 32 / 3. On the VGG-16 / ResNet-18 rows with other draws alone (14-22 rows per "
               "re-fitted baseline, 5 for `random`): LASSO 17 / 2 (one tie), ThiNet 13 / 9, `l1` 11 / 3, "
               "`random` 2 / 3. The LASSO tie is ResNet-18 FLOPs 0.73 sequential")


@pytest.mark.parametrize("scope, method", [(scope, method) for scope in DRAWS_DOC for method in BASELINES])
def test_head_to_head_over_the_draws(scope, method):
    """'entropic ahead of LASSO in 43 rows, tied in 1 and behind in 6, ThiNet 40 / 12, l1 33 / 10
    (one tie), random 32 / 3. On the VGG-16 / ResNet-18 rows with other draws alone: LASSO 17 / 2
    (one tie), ThiNet 13 / 9, l1 11 / 3, random 2 / 3' (the `--draws` head to head, re-fit ridge
    0.01 as in the command it abbreviates; ahead / behind / tied as the tool prints them).

    Was: LASSO 43 / 7 and 17 / 3, the figures before session 39 re-ran the ResNet-18 sequential
    runs, which turned ResNet-18 FLOPs 0.73 sequential from a loss into a tie (session 44)."""
    assert DRAWS_PROSE in _flat(BENCHMARKS)
    if scope == "all":
        counts = h2h_counts(run(DRAWS_H2H + " --refit-ridge 0.01"))
        rows = [int(counts[m]["rows"]) for m in BASELINES]
        assert (min(rows), max(rows)) == (35, 52)   # 'rows with two or more shared draws, 35-52 per baseline'
    else:
        files = SIX_FILES + [p.name for p in sorted(BENCH.glob("quality_draws_*.json"))] + \
            [p.name for p in sorted(BENCH.glob("quality_seeds_*.json"))]
        big = [r for r in rows_of(*files) if r["model"] != "lenet5"]
        counts = h2h_counts(_tool().head_to_head(big, True))
        assert [int(counts[m]["rows"]) for m in BASELINES] == [20, 22, 14, 5]  # '14-22 ..., 5 for random'
    row = counts[method]
    assert (int(row["ahead"]), int(row["behind"]), int(row["tied"])) == DRAWS_DOC[scope][method]


def test_head_to_head_over_the_draws_lasso_tie():
    """'The LASSO tie is ResNet-18 FLOPs 0.73 sequential (both 0.35 points on the mean of draws
    0-2 ...)': the equal-MAC draws pivot prints the same mean drop for both there."""
    row = pivot(FLOPS_DRAWS)[("resnet18", "FLOPs 0.73", "sequential")]
    assert num(row["entropic"]) == num(row["lasso"]) == 0.35
    assert "(both 0.35 points on the mean of draws 0-2" in _flat(BENCHMARKS)


# ---------------------------------------------------------------------------- --bar
BAR = f"{TOOL} {SIX} --bar"


@pytest.fixture(scope="module")
def bar_out():
    return quoted(BAR)


def test_bar_table_is_what_the_tool_prints(bar_out):
    """Every cell of the --bar table (the doc words two headers differently)."""
    doc = doc_table("### The bar applied to every method")
    printed = tables(bar_out)[0]
    assert len(doc) == len(printed)
    for want, got in zip(doc[1:], printed[1:]):
        assert want == got, f"docs say {want}, the tool prints {got}"


def test_bar_counts_quoted_in_the_summaries(bar_out):
    """'entropic meets it in 44 of 70 rows, the next best (l1) in 12, and no method's networks meet
    it in all 70 on any of 2000 bootstrap-resampled test splits (entropic 35-45 rows)'."""
    counts = bar_counts(bar_out)
    assert counts["entropic"][1] == "44"
    assert max((int(v[1]), k) for k, v in counts.items() if k != "entropic") == (12, "l1")
    assert all(v[3] == "0 of 2000" for v in counts.values())
    assert "(35-45)" in counts["entropic"][2]
    assert "70 rows that entropic, lasso, thinet, l1, random all ran" in bar_out
    glance = _flat(BENCHMARKS)
    assert "entropic meets it in 44 of 70 rows, the next best (`l1`) in 12" in glance
    assert "(entropic 35-45 rows; sessions 39 and 46)" in glance
    readme = _flat(README)
    assert "entropic in 44 of the 70 rows, the next (`l1`) in 12" in readme
    assert "no other method gets more test images right than entropic in 44; the next best, `l1` with the re-fit, in 12" \
        in readme


def test_bar_rows_lost_whatever_the_test_images(bar_out):
    """'The 13 rows entropic loses whatever the test images ... (the winner and its margin)'."""
    last = bar_out.strip().splitlines()[-1]
    assert last.startswith("entropic meets the bar in at most 5% of the resamples in 13 rows")
    lost = {(m, k, t, mode): (w, int(n)) for m, k, t, mode, w, n in
            re.findall(r"(\w+) (sparsity|FLOPs) ([\d.]+) (\w+) \((\w+) \+(\d+)\)", last)}
    assert lost == {
        ("lenet5", "sparsity", "0.3", "sequential"): ("lasso", 6),
        ("lenet5", "sparsity", "0.73", "sequential"): ("l1", 49),
        ("lenet5", "sparsity", "0.73", "oneshot"): ("l1", 36),
        ("lenet5", "FLOPs", "0.3", "sequential"): ("l1", 32),
        ("lenet5", "FLOPs", "0.73", "sequential"): ("lasso", 53),
        ("lenet5", "FLOPs", "0.73", "oneshot"): ("thinet", 112),
        ("resnet18", "sparsity", "0.5", "sequential"): ("lasso", 12),
        ("resnet18", "FLOPs", "0.3", "sequential"): ("l1", 7),
        ("resnet18", "FLOPs", "0.5", "sequential"): ("random", 15),
        ("vgg16", "FLOPs", "0.5", "sequential"): ("thinet", 14),
        ("vgg16", "FLOPs", "0.5", "oneshot"): ("thinet", 11),
        ("vgg16", "sparsity", "0.73", "oneshot"): ("random", 8),
        ("vgg16", "sparsity", "0.89", "oneshot"): ("random", 14)}
    doc = _flat(BENCHMARKS)
    for phrase in ("LeNet-5 sparsity 0.3 sequential (LASSO +6", "0.73 in both modes (`l1` +49 / +36)",
                   "FLOPs 0.3 sequential (`l1` +32)", "FLOPs 0.73 in both modes (LASSO +53, ThiNet +112)",
                   "(LASSO +12, `l1` +7, `random` +15)",
                   "VGG-16 FLOPs 0.5 in both modes (ThiNet +14 / +11), sparsity 0.73 and 0.89 one-shot (`random` +8 / +14)"):
        assert phrase in doc


def test_bar_on_vgg_resnet_alone_and_lenet5_alone():
    """'On VGG-16 / ResNet-18 alone (40 rows) entropic meets the bar in 24 rows, 20.3 on the mean
    (16-25), in 8 whatever the test images and in none of them in 7; the next best, ThiNet, in 10
    (7.8). On LeNet-5 alone (30 rows): entropic 20 (19.5; 16 sure, 6 lost), l1 6.' and '25 of 40
    are decided by which test images were drawn'."""
    big = bar_counts(run(BAR.replace(" bench/quality_lenet5.json", "")))
    assert big["entropic"][1:] == ["24", "20.3 (16-25)", "0 of 2000", "8", "7"]
    assert max((int(v[1]), k) for k, v in big.items() if k != "entropic") == (10, "thinet")
    assert big["thinet"][2].startswith("7.8 ")
    assert 40 - int(big["entropic"][4]) - int(big["entropic"][5]) == 25
    lenet = bar_counts(run(f"{TOOL} --out bench/quality_lenet5.json --refit-ridge 0.01 --bar"))
    assert lenet["entropic"][1:] == ["20", "19.5 (17-22)", "0 of 2000", "16", "6"]
    assert lenet["l1"][1] == "6"
    doc = _flat(BENCHMARKS)
    assert ("entropic meets the bar in 24 rows, 20.3 on the mean of the resampled splits (16-25), in 8 "
            "whatever the test images and in none of them in 7; the next best, ThiNet, in 10 (7.8)") in doc
    assert "entropic 20 (19.5; 16 sure, 6 lost), `l1` 6" in doc
    assert "(25 of 40) are decided by which test images" in doc


# ------------------------------------------------------------------ LeNet-5 prose
def test_lenet5_fidelity_and_agreement_counts():
    """'Entropic's networks have the lowest logit error in 28 of 30 rows ...; top-1 agreement with
    the original is highest for entropic in 19 rows, for l1 with re-fit in 9 ... and for LASSO in 2'."""
    def bold(metric, method):
        table = pivot(f"{TOOL} --out bench/quality_lenet5.json --pivot --metric {metric}")
        return sum(row[method].startswith("**") for row in table.values())
    assert bold("error", "entropic") == 28
    assert bold("agreement", "entropic") == 19
    assert bold("agreement", "l1") == 9
    assert bold("agreement", "lasso") == 2
    doc = _flat(BENCHMARKS)
    assert "Entropic's networks have the lowest logit error in 28 of 30 rows" in doc
    assert "highest for entropic in 19 rows, for `l1` with re-fit in 9, mostly at low sparsity, and for LASSO in 2" in doc


# --------------------------------------------------------- session 39: waves table
def test_waves_table_after_values_are_the_current_tables():
    """The session-39 table's 'after' values (drop, logit error) are the current sequential and
    equal-MAC ResNet-18 rows."""
    table = doc_table("**Session 39: sequential re-fits in waves.**")
    header = _cells(table[0])[1:]
    targets = [("sparsity", h) for h in header[:5]] + [("FLOPs", h.split()[-1]) for h in header[5:]]
    drop = {**seq_pivot("resnet18"), **pivot(f"{TOOL} --out bench/quality_flops_levels.json --pivot")}
    error = {**pivot(f"{TOOL} --out bench/quality_seq_resnet18.json --pivot --metric error"),
             **pivot(f"{TOOL} --out bench/quality_flops_levels.json --pivot --metric error")}
    for line, source in zip(table[1:], (drop, error)):
        for (kind, level), cell in zip(targets, _cells(line)[1:]):
            after = float(cell.split("->")[1])
            printed = num(source[("resnet18", f"{kind} {level}", "sequential")]["entropic"])
            assert after == printed, f"{_cells(line)[0]} {kind} {level}: docs say {after}, the tool prints {printed}"


# ------------------------------------------------------------- README summary table
README_ROWS = [line for line in doc_table("| model (reference accuracy) |", doc=README)[1:]]


@pytest.mark.parametrize("line", README_ROWS, ids=lambda line: "-".join(_cells(line)[:2]))
def test_readme_summary_row(line):
    """Each README summary row is the pivot's row (columns reordered), bold on the same method,
    MACs removed rounded to a percent, and the reference accuracy the runs record."""
    cells = _cells(line)
    name = cells[0].split(" (")[0]
    model = MODEL.get(name) or next(v for k, v in MODEL.items() if name.startswith(k))
    level = f"{int(cells[1].rstrip('%')) / 100:g}"
    table = pivot(f"{TOOL} --out bench/quality_{'lenet5' if model == 'lenet5' else 'seq_' + model}.json --pivot")
    row = table[(model, f"sparsity {level}", "sequential")]
    for doc_cell, method in zip(cells[2:7], ["entropic", "l1", "thinet", "lasso", "random"]):
        assert doc_cell == row[method], f"{method}: docs say {doc_cell}, the tool prints {row[method]}"
    macs = Decimal(row["MACs removed (entropic)"]) * 100   # as printed, rounded half up to a percent
    assert cells[7] == f"{macs.quantize(Decimal(1), ROUND_HALF_UP)}%"
    if "(" in cells[0]:
        acc = {r["accuracy_original"] for r in rows_of(
            "quality_lenet5.json" if model == "lenet5" else f"quality_seq_{model}.json", ridge=None)}
        assert len(acc) == 1
        assert cells[0].endswith(f"({100 * acc.pop():.2f}%)")


# ------------------------------------------------------------- calibration draws
def _drop_cell(cell: str) -> tuple[str, str | None]:
    """'**0.12** (2.43)' -> ('**0.12**', '2.43')."""
    m = re.fullmatch(r"(\S+)(?: \(([-\d.]+)\))?", cell.strip())
    return m.group(1), m.group(2)


DRAWS_SEQ = (f"{TOOL} --out bench/quality_draws_seq_vgg16.json --with bench/quality_seq_vgg16.json "
             "bench/quality_draws_seq_resnet18.json bench/quality_seq_resnet18.json --pivot --draws --refit-ridge 0.01")


def _compare_rows(doc: list[str], printed: dict, model: str) -> None:
    for key, want in keyed(doc).items():
        if key[0] != model:
            continue
        got = printed[key]
        for column, cell in want.items():
            assert cell == got[column], f"{' '.join(key)}, {column}: docs say {cell}, the tool prints {got[column]}"


def test_lenet5_draws_table():
    doc = doc_table("LeNet-5, accuracy drop in points, mean over draws 0-2:")
    printed = tables(quoted(f"{TOOL} --out bench/quality_draws_lenet5.json --with bench/quality_lenet5.json "
                            "--pivot --draws --refit-ridge 0.01"))[0]
    assert doc == printed


def test_sequential_draws_table_vgg16_rows():
    doc = doc_table("Accuracy drop in points, mean over the draws:")
    _compare_rows(doc, keyed(tables(quoted(DRAWS_SEQ))[0]), "vgg16")


def test_sequential_draws_table_resnet18_rows():
    """The ResNet-18 rows of the 'mean over the draws' table are what the quoted command prints
    (draw 0 = the sequential table above, session 39's re-run). Was: the means over the runs
    before that re-run (0.84: 0.11 / 0.27 / 0.35 / 0.34, now 0.15 / 0.30 / 0.37 / 0.38;
    regenerated in session 44)."""
    doc = doc_table("Accuracy drop in points, mean over the draws:")
    _compare_rows(doc, keyed(tables(quoted(DRAWS_SEQ))[0]), "resnet18")


def test_sequential_draws_fidelity_figures():
    """'means VGG-16 0.44-3.31%, ResNet-18 0.86-4.84%' (logit error), 'VGG-16 99.87-98.98%,
    ResNet-18 99.61-98.25%' (top-1 agreement where entropic's is the highest, 9 of 10 rows) and
    'at ResNet-18 30% ThiNet and LASSO agree on 4 and 1 more images, 99.72% / 99.70% against
    99.69%', from the same command with --metric error / agreement."""
    error = pivot(DRAWS_SEQ + " --metric error")
    agree = pivot(DRAWS_SEQ + " --metric agreement")
    for model, lo, hi in (("vgg16", 0.44, 3.31), ("resnet18", 0.86, 4.84)):
        ent = [num(v["entropic"]) for k, v in error.items() if k[0] == model]
        assert (min(ent), max(ent)) == (lo, hi)
        assert all(v["entropic"].startswith("**") for k, v in error.items() if k[0] == model)
    best = {k: num(v["entropic"]) for k, v in agree.items() if v["entropic"].startswith("**")}
    assert len(best) == 9 and ("resnet18", "sparsity 0.3", "sequential") not in best
    for model, hi, lo in (("vgg16", 99.87, 98.98), ("resnet18", 99.61, 98.25)):
        ent = [v for k, v in best.items() if k[0] == model]
        assert (max(ent), min(ent)) == (hi, lo)
    row = agree[("resnet18", "sparsity 0.3", "sequential")]
    assert (num(row["thinet"]), num(row["lasso"]), num(row["entropic"])) == (99.72, 99.70, 99.69)
    bq = _tool()
    runs = {(r["method"], bq._draw(r)): r for r in rows_of("quality_seq_resnet18.json", "quality_draws_seq_resnet18.json")
            if r["target_kind"] == "sparsity" and r["target"] == 0.3 and r["mode"] == "sequential" and r["reconstruct"]}

    def agreeing(method):   # test images on which the method's network agrees with the original, mean over draws 0-2
        return sum(runs[(method, (d, 0))]["test_agreement"] * runs[(method, (d, 0))]["test_images"] for d in range(3)) / 3
    assert [round(agreeing(m) - agreeing("entropic")) for m in ("thinet", "lasso")] == [4, 1]
    doc = _flat(BENCHMARKS)
    assert "means VGG-16 0.44-3.31%, ResNet-18 0.86-4.84%" in doc
    assert "(VGG-16 99.87-98.98%, ResNet-18 99.61-98.25%; at ResNet-18 30% ThiNet and LASSO agree on 4 and 1 " \
        "more images, 99.72% / 99.70% against 99.69%" in doc


SEEDS = (f"{TOOL} --out bench/quality_seeds_vgg16.json --with bench/quality_seeds_resnet18.json "
         "bench/quality_seq_vgg16.json bench/quality_seq_resnet18.json bench/quality_flops_levels.json --pivot --draws "
         "--refit-ridge 0.01")
SEEDS_ROWS = [tuple(_cells(line)[:3]) for line in doc_table("Accuracy drop in points, mean over the three position "
                                                             "draws:")[1:]]


@pytest.mark.parametrize("key", SEEDS_ROWS, ids=lambda k: " ".join(k))
def test_position_seed_table_row(key):
    """Each row of the position-seed table is the quoted `--pivot --draws` row (the doc leaves
    out the `l1 (no re-fit)` column and the rows without other seeds).

    Was (ResNet-18 FLOPs 0.73): entropic 0.33 against ThiNet 0.31, from before session 39's
    re-run of the seed-0 run; now a tie at 0.32 (regenerated in session 44)."""
    want = keyed(doc_table("Accuracy drop in points, mean over the three position draws:"))[key]
    got = keyed(tables(quoted(SEEDS))[0])[key]
    for column, cell in want.items():
        assert cell == got[column], f"{column}: docs say {cell}, the tool prints {got[column]}"


def test_position_seed_prose():
    """'ahead on the mean at one of the eight (VGG-16 FLOPs 0.73 ...), level with ThiNet at one
    (ResNet-18 FLOPs 0.73, 0.32 points each: entropic one test image ahead over the three seeds,
    best on seed 1 only) and behind at six by 3-12 images on the means'."""
    table = pivot(SEEDS)
    rows = {k: table[k] for k in SEEDS_ROWS}
    ahead = behind = level = 0
    for row in rows.values():
        rival = min(num(row[m]) for m in BASELINES if num(row[m]) is not None)
        margin = round(100 * (rival - num(row["entropic"])))
        ahead, behind, level = ahead + (margin > 0), behind + (margin < 0), level + (margin == 0)
    assert (ahead, level, behind) == (1, 1, 6)
    margins = sorted(round(100 * (num(row["entropic"]) - min(num(row[m]) for m in BASELINES if num(row[m]) is not None)))
                     for row in rows.values())
    assert (margins[2], margins[-1]) == (3, 12)
    row = rows[("resnet18", "FLOPs 0.73", "sequential")]
    assert row["entropic"] == row["thinet"] == "**0.32**" and row["entropic best in"] == "1 of 3"
    bq = _tool()
    runs = {(r["method"], bq._draw(r)): r for r in rows_of("quality_flops_levels.json", "quality_seeds_resnet18.json")
            if r["model"] == "resnet18" and r["target_kind"] == "flops_reduction" and r["target"] == 0.73
            and r["mode"] == "sequential" and r["reconstruct"]}
    kept = {m: sum(int(bq._correct(runs[(m, (0, s))]).sum()) for s in range(3)) for m in ("entropic", "thinet")}
    assert kept["entropic"] - kept["thinet"] == 1
    assert ("level with ThiNet at one (ResNet-18 FLOPs 0.73, 0.32 points each: entropic one test image ahead over "
            "the three seeds, best on seed 1 only) and behind at six by 3-12 images on the means") in _flat(BENCHMARKS)


def _bracketed_table_matches(doc: list[str], drop: dict, error: dict, model: str | None = None) -> None:
    """A doc table whose cells read 'drop (logit error)' against the drop and error pivots."""
    header = _cells(doc[0])
    for line in doc[1:]:
        cells = dict(zip(header, _cells(line)))
        key = (cells["model"], cells["target"], cells["mode"]) if "model" in cells else None
        if model and key[0] != model:
            continue
        for method in ["entropic"] + BASELINES:
            if method not in cells:
                continue
            d, e = _drop_cell(cells[method])
            assert d == drop[key][method], f"{key} {method}: docs say {d}, the tool prints {drop[key][method]}"
            if e is not None:
                printed = error[key][method].strip("*")
                assert e == printed, f"{key} {method} logit error: docs say {e}, the tool prints {printed}"
        best = next(v for k, v in cells.items() if k.startswith("entropic best in"))
        if "/" in best:   # 'accuracy / logit error'
            acc, rest = best.split(" / ")
            assert f"{acc} of {rest.split(' of ')[1]}" == drop[key]["entropic best in"]
            assert rest == error[key]["entropic best in"]
        else:
            assert best == drop[key]["entropic best in"]


FLOPS_DRAWS = (f"{TOOL} --out bench/quality_draws_flops.json --with bench/quality_flops_levels.json "
               "--pivot --draws --refit-ridge 0.01")


def test_equal_mac_draws_table_vgg16_rows():
    doc = doc_table("Session 35: the equal-MAC rows")
    quoted(FLOPS_DRAWS)
    _bracketed_table_matches(doc, pivot(FLOPS_DRAWS), pivot(FLOPS_DRAWS + " --metric error"), "vgg16")


def test_equal_mac_draws_table_resnet18_rows():
    """The ResNet-18 rows of the session-35 equal-MAC draws table are what the quoted command
    prints, and the prose's margins follow: 'by 11 test images on the mean at VGG-16 FLOPs 0.5
    sequential (ThiNet) and 8 at ResNet-18 FLOPs 0.3 sequential (LASSO), and two by 3-5 images'.

    Was: the means over the draw-0 runs before session 39 re-ran them (FLOPs 0.3: 0.05 (1.17) /
    -0.04 (1.50) / 0.00 (1.47), 9 images behind LASSO; FLOPs 0.73: 0.35 (3.48) / 0.34 (4.33) /
    0.31 (4.25), 4 behind ThiNet; regenerated in session 44)."""
    doc = doc_table("Session 35: the equal-MAC rows")
    quoted(FLOPS_DRAWS)
    drop = pivot(FLOPS_DRAWS)
    _bracketed_table_matches(doc, drop, pivot(FLOPS_DRAWS + " --metric error"), "resnet18")

    def behind(model, target, mode, rival):
        row = drop[(model, target, mode)]
        return round(100 * (num(row["entropic"]) - num(row[rival])))
    assert behind("vgg16", "FLOPs 0.5", "sequential", "thinet") == 11
    assert behind("resnet18", "FLOPs 0.3", "sequential", "lasso") == 8
    assert sorted([behind("resnet18", "FLOPs 0.73", "sequential", "thinet"),
                   behind("vgg16", "FLOPs 0.5", "oneshot", "thinet")]) == [3, 5]
    assert behind("resnet18", "FLOPs 0.73", "sequential", "lasso") == 0
    assert ("by 11 test images on the mean at VGG-16 FLOPs 0.5 sequential (ThiNet) and 8 at ResNet-18 FLOPs 0.3 "
            "sequential (LASSO), and two by 3-5 images on the mean with one draw of three won") in _flat(BENCHMARKS)


def test_oneshot_position_seed_table():
    seeds = (f"{TOOL} --out bench/quality_seeds_oneshot_vgg16.json --with bench/quality_oneshot_vgg16.json "
             "--pivot --draws --refit-ridge 0.01")
    doc = doc_table("Accuracy drop in points, mean over the three position draws (relative logit error")
    quoted(seeds)
    _bracketed_table_matches(doc, pivot(seeds), pivot(seeds + " --metric error"))


# ----------------------------------------------------------------------- --min-keep
MIN_KEEP = f"{TOOL} --out bench/quality_min_keep_vgg16.json --with bench/quality_min_keep_resnet18.json"
MIN_KEEP_ROWS = doc_table(MIN_KEEP)[1:]


def _row_target(line: str) -> tuple[str, str]:
    name, _, level = _cells(line)[0].rpartition(" sparsity ")
    return MODEL[name], level


def test_min_keep_table_floor_columns():
    """The `--min-keep 0.1` / `0.2` columns are the quoted listing's drops and MACs removed;
    'out of reach' where the listing has no run."""
    printed = {}
    for row in tables(quoted(MIN_KEEP))[0][1:]:
        c = _cells(row)
        floor = re.search(r"min-keep ([\d.]+)", c[2]).group(1)
        printed[(c[0], c[1].split()[1], floor)] = f"{float(c[5]):.2f} ({c[7]})"
    for line in doc_table(MIN_KEEP)[1:]:
        model, level = _row_target(line)
        for floor, cell in zip(("0.1", "0.2"), _cells(line)[2:4]):
            got = printed.get((model, level, floor))
            if cell.startswith("out of reach"):
                assert got is None
            else:
                assert cell == got, f"{model} {level} --min-keep {floor}: docs say {cell}, the tool prints {got}"


MIN_KEEP_LISTING = f"{TOOL} --out bench/quality_seq_resnet18.json --refit-ridge 0.01"


def _listed_entropic_runs(level: str) -> list[str]:
    """'drop (MACs removed)' of each ridge-0.01 sequential entropic run of ResNet-18 at ``level``
    in the listing, in file order."""
    found = []
    for line in tables(quoted(MIN_KEEP_LISTING))[0][1:]:
        c = _cells(line)
        if c[:4] == ["resnet18", f"sparsity {level}", "entropic", "sequential"]:
            found.append(f"{float(c[5]):.2f} ({c[7]})")
    return found


@pytest.mark.parametrize("line", MIN_KEEP_ROWS, ids=lambda line: _cells(line)[0])
def test_min_keep_table_no_floor_column(line):
    """The "no floor" column is the tables' row as of session 38, when the floors ran: VGG-16's is
    still the sequential pivot's entropic drop and MACs removed; ResNet-18's is the run before
    session 39's re-fit waves, the first of the two ridge-0.01 entropic runs at that level in the
    quoted listing (`--out bench/quality_seq_resnet18.json --refit-ridge 0.01`), whose second is
    session 39's, the pivot's row now ('gives 0.17 and 0.31 at the same MACs removed').

    Was: the section called the whole column 'the tables' row above', which the ResNet-18 cells
    stopped being when session 39 re-ran the sequential ResNet-18 runs (session 44: reworded;
    the figures stand, as the floor runs were not re-run with the waves)."""
    model, level = _row_target(line)
    row = seq_pivot(model)[(model, f"sparsity {level}", "sequential")]
    table_row = f"{row['entropic'].strip('*')} ({row['MACs removed (entropic)']})"
    if model == "vgg16":
        assert _cells(line)[1] == table_row, f"docs say {_cells(line)[1]}, the tool prints {table_row}"
        return
    runs = _listed_entropic_runs(level)
    assert len(runs) == 2
    assert _cells(line)[1] == runs[0], f"docs say {_cells(line)[1]}, the listing's first run is {runs[0]}"
    assert runs[1] == table_row
    now = {lvl: seq_pivot("resnet18")[("resnet18", f"sparsity {lvl}", "sequential")]["entropic"].strip("*")
           for lvl in ("0.84", "0.93")}
    assert f"gives {now['0.84']} and {now['0.93']} at the same MACs removed" in _flat(BENCHMARKS)


# ----------------------------------------------------------------- the peer row
def _tp_best(path: Path) -> dict[tuple[str, float], dict]:
    """bench_torch_pruning.markdown()'s 'best criterion' rule: the most accurate run per model and target."""
    best = {}
    for r in json.loads(path.read_text()):
        if r["criterion"] == "baseline" or "accuracy" not in r:
            continue
        key = (r["model"], r["target_sparsity"])
        if key not in best or r["accuracy"] > best[key]["accuracy"]:
            best[key] = r
    return best


LEVELS = [0.3, 0.5, 0.73, 0.84, 0.89]


def _peer_rows(anchor: str) -> dict[str, list[str]]:
    return {_cells(line)[0]: _cells(line)[1:] for line in doc_table(anchor)[1:]}


def test_peer_row_at_equal_parameters():
    """The 'Best Torch-Pruning criterion vs entropic' table: Torch-Pruning rows from
    bench/torch_pruning.json, entropic rows from the sequential sweeps."""
    rows = _peer_rows("### Peer row: Torch-Pruning on the same weights")
    best = _tp_best(BENCH / "torch_pruning.json")
    for label, cells in rows.items():
        name, what = label.split(", ", 1)
        model = MODEL[name]
        for level, cell in zip(LEVELS, cells):
            if what == "Torch-Pruning best":
                run_ = best.get((model, level))
                if run_ is None:
                    assert cell == "not run"
                    continue
                assert num(cell) == round(run_["drop_points"], 2), f"{label} {level}: {cell}"
            else:
                table = pivot(f"{TOOL} --out bench/quality_{'lenet5' if model == 'lenet5' else 'seq_' + model}.json --pivot")
                printed = num(table[(model, f"sparsity {level:g}", "sequential")]["entropic"])
                assert num(cell) == printed, f"{label} {level}: docs say {cell}, the tool prints {printed}"
    assert "(LAMP global, MACs -4%)" in rows["LeNet-5, Torch-Pruning best"][0]
    lamp = best[("lenet5", 0.3)]
    assert (lamp["criterion"], lamp["global"], round(100 * lamp["macs_removed"])) == ("lamp", True, 4)
    assert "(LAMP global)" in rows["ResNet-18, Torch-Pruning best"][2]
    assert best[("resnet18", 0.73)]["criterion"] == "lamp"


def test_peer_rows_at_equal_macs():
    """The two equal-MAC peer tables: Torch-Pruning rows from bench/torch_pruning_macs.json (with
    'reaches N%' where the bisection fell short), entropic rows from the equal-MAC pivots."""
    best = _tp_best(BENCH / "torch_pruning_macs.json")
    rows = {**_peer_rows("At equal MACs (`OMP_NUM_THREADS=1 python tools/bench_torch_pruning.py --match macs"),
            **_peer_rows("magnitude_l2 bn_scale taylor lamp --out bench/torch_pruning_macs.json")}
    flops = pivot(f"{TOOL} --out bench/quality_flops_levels.json --pivot")
    for label, cells in rows.items():
        name, what = label.split(", ", 1)
        model = MODEL[name]
        for level, cell in zip(LEVELS, cells):
            if what == "Torch-Pruning best":
                run_ = best[(model, level)]
                assert num(cell) == round(run_["drop_points"], 2), f"{label} {level}: {cell}"
                reach = re.search(r"reaches (?:only )?(\d+)%", cell)
                if reach:
                    assert int(reach.group(1)) == round(100 * run_["macs_removed"]), f"{label} {level}: {cell}"
            else:
                if model == "lenet5":
                    table, mode = pivot(f"{TOOL} --out bench/quality_lenet5.json --pivot"), "sequential"
                else:
                    table, mode = flops, what.split()[-1].replace("one-shot", "oneshot")
                printed = num(table[(model, f"FLOPs {level:g}", mode)]["entropic"])
                assert num(cell) == printed, f"{label} {level}: docs say {cell}, the tool prints {printed}"
                tp = best[(model, level)]["drop_points"]
                assert printed < tp   # 'entropic >= best Torch-Pruning criterion at equal MACs'


def test_peer_ranges_quoted_in_the_readme():
    """README: 'lose 15-83 points at 73% of the parameters; at equal MACs the best of them loses
    1.2-44 points on LeNet-5 and 18-83 on VGG-16 and ResNet-18, entropic 1.0-9.0 and -0.07-1.12
    (sequential; -0.01-1.75 in one-shot mode)'."""
    params = _tp_best(BENCH / "torch_pruning.json")
    at73 = [r["drop_points"] for (m, t), r in params.items() if t == 0.73]
    assert (round(min(at73)), round(max(at73))) == (15, 83)
    macs = _tp_best(BENCH / "torch_pruning_macs.json")
    lenet = [r["drop_points"] for (m, _), r in macs.items() if m == "lenet5"]
    big = [r["drop_points"] for (m, _), r in macs.items() if m != "lenet5"]
    assert (round(min(lenet), 1), round(max(lenet))) == (1.2, 44)
    assert (round(min(big)), round(max(big))) == (18, 83)
    lenet_ent = [num(v["entropic"]) for k, v in pivot(f"{TOOL} --out bench/quality_lenet5.json --pivot").items()
                 if k[1].startswith("FLOPs") and k[2] == "sequential"]
    assert (round(min(lenet_ent), 1), round(max(lenet_ent), 1)) == (1.0, 9.0)
    flops = pivot(f"{TOOL} --out bench/quality_flops_levels.json --pivot")
    for mode, lo, hi in (("sequential", -0.07, 1.12), ("oneshot", -0.01, 1.75)):
        ent = [num(v["entropic"]) for k, v in flops.items() if k[2] == mode]
        assert (min(ent), max(ent)) == (lo, hi)
    readme = _flat(README)
    assert "lose 15-83 points at 73% of the parameters" in readme
    assert ("the best of them loses 1.2-44 points on LeNet-5 and 18-83 on VGG-16 and ResNet-18, entropic 1.0-9.0 "
            "and -0.07-1.12 (sequential; -0.01-1.75 in one-shot mode)") in readme


# ----------------------------------------------------------------------------- search
def _search_rows() -> dict[tuple[str, str], dict]:
    return {(r["model"], r["split"]): r for r in json.loads((BENCH / "search.json").read_text())}


def test_search_table_is_what_the_tool_prints():
    """BENCHMARKS.md's Search table is ``tools/bench_search.py --out bench/search.json
    --markdown`` of the committed rows, and each row's target is the largest tried that kept
    within half a point, with the next step tried and beyond it."""
    tool = load_tool("bench_search", "_bench_search_under_test")
    rows = json.loads((BENCH / "search.json").read_text())
    assert "python tools/bench_search.py --out bench/search.json --markdown" in BENCHMARKS
    assert tool.markdown(rows) in BENCHMARKS
    for r in rows:
        drops = {t["target"]: 100 * (t["accuracy"]["original"] - t["accuracy"]["pruned"]) for t in r["tried"]}
        within = [t for t, d in drops.items() if d <= r["max_drop"] + 1e-9]
        assert r["best"] == max(within)
        after = round(r["best"] + r["resolution"], 12)
        assert after in drops and drops[after] > r["max_drop"], r["model"]


def test_search_figures_quoted_in_the_summaries():
    """The README's and the at-a-glance row's search figures are the committed rows'."""
    rows = _search_rows()

    def drop(row: dict, test: bool) -> str:
        if test:
            return f"{100 * (row['test_original'] - row['test_pruned']):.2f}"
        chosen = next(t for t in row["tried"] if t["target"] == row["best"])["accuracy"]
        return f"{100 * (chosen['original'] - chosen['pruned']):.2f}"

    on_test = [rows[(m, "test")] for m in ("lenet5", "vgg16", "resnet18")]
    on_train = [rows[(m, "train")] for m in ("lenet5", "vgg16", "resnet18")]
    found = ", ".join(f"{name} {100 * r['best']:.0f}% ({drop(r, True)})"
                      for name, r in zip(("LeNet-5", "VGG-16", "ResNet-18"), on_test))
    assert f"`onnx-eprune search ... --max-drop 0.5` on the test split finds {found}" in _flat(README)
    assert f"to the step of 0.01 (session 48): {found}" in _flat(BENCHMARKS)
    train = " / ".join(f"{100 * r['best']:.0f}%" for r in on_train)
    losses = " / ".join(drop(r, True) for r in on_train)
    assert f"searched on 5000 held-out train images instead, {train}, which lose {losses} points" in _flat(README)
    assert f"finds {train} sparsity, which lose {losses} points on the test split" in _flat(README)


# ----------------------------------------------------------------------------- wide consumers
def _wide_rows(name: str, command: str) -> tuple[dict, dict, dict]:
    """The committed ``bench/<name>.json`` of ``tools/bench_wide.py``, whose ``command``
    BENCHMARKS.md quotes and whose ``--markdown`` table it holds: the record, its rows by
    (target, run) and their accuracy drops in points as the documents print them."""
    tool = load_tool("bench_wide", "_bench_wide_under_test")
    record = json.loads((BENCH / f"{name}.json").read_text())
    assert command in _flat(BENCHMARKS)
    assert tool.markdown(record) in BENCHMARKS
    rows = {(r["target"], r["run"]): r for r in record["rows"]}
    drops = {k: f"{100 * (record['original'] - r['accuracy']):.2f}" for k, r in rows.items()}
    return record, rows, drops


def test_wide_table_and_its_quoted_figures():
    """BENCHMARKS.md's table of the wide model is ``tools/bench_wide.py --out bench/wide.json
    --markdown`` of the committed rows; the README's drops are theirs; every row met its
    sparsity, the entropic and l1 runs pruned the wide group from 0.5 on and re-fitted the Gemm
    exactly wherever it kept at most 16,384 of its 18,816 features, along leading
    directions elsewhere."""
    _, rows, drops = _wide_rows("wide", "python tools/bench_wide.py --out bench/wide.json")
    readme = " ".join(README.split())
    assert (f"{drops[0.7, 'entropic']} / {drops[0.8, 'entropic']} / {drops[0.9, 'entropic']} points against "
            f"{drops[0.7, 'entropic, frozen']} / {drops[0.8, 'entropic, frozen']} / {drops[0.9, 'entropic, frozen']}"
            ) in readme
    for (target, run), r in rows.items():
        assert r["params_removed"] >= target
        if run in ("entropic", "l1"):
            assert (r["wide_channels"] < 96) == (target >= 0.5) and not r["wide_frozen"]
            assert r["gemm_refit"] == ("exact" if r["wide_channels"] * 14 * 14 <= 16384 else "subspace")
        else:
            assert r["wide_channels"] == 96 and "excluded" in r["wide_frozen"] and r["gemm_refit"] == "exact"


def test_one_shot_wide_table_and_its_quoted_figures():
    """BENCHMARKS.md's one-shot table of the wide model is ``tools/bench_wide.py --mode
    oneshot ... --markdown`` of the committed rows, the README's one-shot drops are theirs,
    and the runs that prune the group took channels from it at every sparsity."""
    record, rows, drops = _wide_rows(
        "wide_oneshot", "python tools/bench_wide.py --mode oneshot --sparsity 0.5 0.7 0.8 0.9 --out "
        "bench/wide_oneshot.json")
    assert record["mode"] == "oneshot"
    assert (f"(one-shot: {drops[0.7, 'entropic']} / {drops[0.8, 'entropic']} / {drops[0.9, 'entropic']} against "
            f"{drops[0.7, 'entropic, frozen']} / {drops[0.8, 'entropic, frozen']} / {drops[0.9, 'entropic, frozen']}"
            ) in _flat(README)
    for (target, run), r in rows.items():
        assert r["params_removed"] >= target
        assert (r["wide_channels"] < 96) != ("frozen" in run)


def test_keras_flatten_table_and_its_quoted_figures():
    """BENCHMARKS.md's table of the Keras model is ``tools/bench_wide.py --model
    keras_flatten --out bench/keras_flatten.json --markdown`` of the committed rows; the
    README's drops are theirs; every row met its sparsity, the runs that prune the last
    convolution's group took channels from it from 0.5 on, the frozen runs none."""
    record, rows, drops = _wide_rows(
        "keras_flatten", "python tools/bench_wide.py --model keras_flatten --out bench/keras_flatten.json")
    assert record["model"] == "keras_flatten" and record["channels"] == 64
    assert (f"loses {drops[0.8, 'entropic']} / {drops[0.9, 'entropic']} points against "
            f"{drops[0.8, 'entropic, frozen']} / {drops[0.9, 'entropic, frozen']}") in _flat(README)
    assert f"Original: {100 * record['original']:.2f}%" in BENCHMARKS and "90.10%" in _flat(README)
    for (target, run), r in rows.items():
        assert r["params_removed"] >= target
        if "frozen" in run:
            assert r["wide_channels"] == 64 and "excluded" in r["wide_frozen"]
        else:
            assert not r["wide_frozen"] and (r["wide_channels"] < 64) == (target >= 0.5 or run == "l1")


def test_keras_flatten_batchnorm_table_and_its_quoted_figures():
    """The same for the Keras model with a BatchNormalization of the flattened features
    (``--model keras_flatten_bn``): its table, the README's drops, and the group pruned at
    every sparsity by the runs that may prune it."""
    record, rows, drops = _wide_rows(
        "keras_flatten_bn", "python tools/bench_wide.py --model keras_flatten_bn --out bench/keras_flatten_bn.json")
    assert record["model"] == "keras_flatten_bn" and record["channels"] == 64
    assert (f"it loses {drops[0.8, 'entropic']} / {drops[0.9, 'entropic']} points against "
            f"{drops[0.8, 'entropic, frozen']} / {drops[0.9, 'entropic, frozen']}") in _flat(README)
    assert (f"entropic loses {drops[0.7, 'entropic']} / {drops[0.8, 'entropic']} / {drops[0.9, 'entropic']} points "
            f"against {drops[0.7, 'entropic, frozen']} / {drops[0.8, 'entropic, frozen']} / "
            f"{drops[0.9, 'entropic, frozen']}") in _flat(BENCHMARKS)
    assert f"{100 * record['original']:.2f}%" == "91.47%" and "91.47%" in _flat(README)
    for (target, run), r in rows.items():
        assert r["params_removed"] >= target
        if "frozen" in run:
            assert r["wide_channels"] == 64 and "excluded" in r["wide_frozen"]
        else:
            assert not r["wide_frozen"] and r["wide_channels"] < 64


# ----------------------------------------------------------------------------- other runtimes
def test_runtimes_table_and_its_quoted_figures():
    """BENCHMARKS.md's runtimes table is ``tools/bench_runtimes.py --out bench/runtimes.json
    --markdown`` of the committed rows; the figures the text and the README quote are theirs:
    the accuracy the same in every runtime, full top-1 agreement, the speed-ups and their
    ranges, the parameters and their float32 megabytes."""
    tool = load_tool("bench_runtimes", "_bench_runtimes_under_test")
    record = json.loads((BENCH / "runtimes.json").read_text())
    rows = record["rows"]
    assert "python tools/bench_runtimes.py --out bench/runtimes.json --markdown" in BENCHMARKS
    assert tool.markdown(rows) in BENCHMARKS
    assert {(r["model"], r["sparsity"]) for r in rows} == {("lenet5", 0.55), ("vgg16", 0.89), ("resnet18", 0.84)}
    assert {r["runtime"] for r in rows} == {"onnxruntime", "openvino", "torch"} and not any("error" in r for r in rows)
    for r in rows:
        same = next(o for o in rows if o["model"] == r["model"] and o["runtime"] == "onnxruntime")
        assert (r["accuracy_original"], r["accuracy_pruned"]) == (same["accuracy_original"], same["accuracy_pruned"])
        assert r["agreement_original"] == r["agreement_pruned"] == 1.0 and r["test_images"] == 10_000
    speed = {(r["model"], r["runtime"], r["batch"]): r["speedup"] for r in rows}

    def span(model_names, batch) -> str:
        values = [v for (m, _, b), v in speed.items() if m in model_names and b == batch]
        return f"{min(values):.1f}-{max(values):.1f}"

    text, readme = _flat(BENCHMARKS), _flat(README)
    assert f"run {span(('vgg16', 'resnet18'), 32)} times as fast at batch 32 in all three runtimes, and " \
           f"{span(('vgg16', 'resnet18'), 1)} times at batch 1" in text
    assert f"runs at the same speed (x{min(v for (m, _, _), v in speed.items() if m == 'lenet5'):.2f}-" \
           f"{max(v for (m, _, _), v in speed.items() if m == 'lenet5'):.2f})" in text
    for name in ("vgg16", "resnet18"):
        quoted = " / ".join(f"{speed[name, rt, 32]:.2f}" for rt in ("onnxruntime", "openvino", "torch"))
        assert quoted in readme, name
    params = {r["model"]: r["params"] for r in rows}
    assert (f"hold {params['vgg16']['after'] / 1e6:.2f} and {params['resnet18']['after'] / 1e6:.2f} million "
            f"parameters, {4 * params['vgg16']['after'] / 1e6:.1f} and {4 * params['resnet18']['after'] / 1e6:.1f} MB "
            f"in float32, against {4 * params['vgg16']['before'] / 1e6:.0f} and "
            f"{4 * params['resnet18']['before'] / 1e6:.0f} MB") in text
    lenet_macs = next(r for r in rows if r["model"] == "lenet5")["macs_removed"]
    assert f"loses only {100 * lenet_macs:.0f}% of its MACs" in text and f"loses {100 * lenet_macs:.0f}% of its MACs" \
        in readme


def test_ort_optimized_table_and_its_quoted_figures():
    """BENCHMARKS.md's table of the reference models saved by onnxruntime's optimizer is
    ``tools/bench_runtimes.py --ort-optimized --runtimes onnxruntime --out
    bench/runtimes_ort_optimized.json --markdown`` of the committed rows: each pruned model
    holds the fused ops its original held; the originals are the reference networks (the
    accuracy of bench/runtimes.json's originals); all three keep the accuracy and the MACs
    removed of the same models pruned in standard form (ResNet-18, which onnxruntime lists in
    another order, since session 61), and the accuracies and speed-ups the text and the
    README quote are the rows'."""
    tool = load_tool("bench_runtimes", "_bench_runtimes_ort_under_test")
    rows = json.loads((BENCH / "runtimes_ort_optimized.json").read_text())["rows"]
    assert "python tools/bench_runtimes.py --ort-optimized --runtimes onnxruntime" in BENCHMARKS
    assert tool.markdown(rows) in BENCHMARKS
    plain = {r["model"]: r for r in json.loads((BENCH / "runtimes.json").read_text())["rows"]
             if r["runtime"] == "onnxruntime"}
    assert {(r["model"], r["sparsity"], r["runtime"]) for r in rows} == \
        {("lenet5", 0.55, "onnxruntime"), ("vgg16", 0.89, "onnxruntime"), ("resnet18", 0.84, "onnxruntime")}
    accuracy = {}
    for r in rows:
        assert r["fused_ops_original"] and r["fused_ops_pruned"] == r["fused_ops_original"]
        assert set(r["fused_ops_original"]) <= {"FusedConv", "FusedGemm"}
        assert r["accuracy_original"] == plain[r["model"]]["accuracy_original"] and r["test_images"] == 10_000
        accuracy[r["model"]] = f"{r['accuracy_pruned']:.2%}"
        assert accuracy[r["model"]] == f"{plain[r['model']]['accuracy_pruned']:.2%}", r["model"]
        assert r["macs_removed"] == plain[r["model"]]["macs_removed"], r["model"]
    text, readme = _flat(BENCHMARKS), _flat(README)
    assert (f"keep the channels, the weights and the accuracy ({accuracy['lenet5']}, {accuracy['vgg16']}, "
            f"{accuracy['resnet18']})") in text
    for name, label in (("lenet5", "LeNet-5"), ("vgg16", "VGG-16"), ("resnet18", "ResNet-18")):
        assert f"{accuracy[name]} ({label}" in readme, name
    speed = [r["speedup"] for r in rows if r["model"] != "lenet5"]
    assert f"runs {min(speed):.1f}-{max(speed):.1f} times as fast as that input" in text
