"""The truth of the README's reference parts, checked as a demanding user reads them.

Attacks what ``tests/test_docs.py``, ``tests/test_inspect_and_docs.py`` and
``tests/test_readme_examples.py`` leave open:

- the CLI reference: every option every ``--help`` lists has a help text; a default a help
  text states is the parser's; an option with a default says which; the choices the synopsis
  writes ``a|b|c`` are the parser's; the README states each option's default and explains
  every option (top-level ``--version`` included) outside the synopsis; the figures the
  README and ``--help`` quote (ridges, thin-layer limits, batch bytes, rounding) are the
  code's constants; ``--sparsity``'s help counts the layers the README counts;
- the Python API section: every name of ``onnx_eprune.__all__`` is documented; the example
  calls bind to the real signatures; the value ranges the docstrings give are the ranges
  checked, with errors that name the argument; docstrings of functions that take labels or
  return accuracies state their shape and unit;
- exit statuses: the error classes carry the documented codes, and a command line without a
  command is a one-line usage error as every other one is;
- the report: every field a real ``report.json`` holds is in the README's field list, every
  field listed is in a real report, and ``report.md`` shows the run's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect as pyinspect
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_eprune
from models import conv_bn_relu_pool_flatten_gemm, random_input
from onnx_eprune.cli import main
from onnx_eprune.cli_parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _trivial(default: object) -> bool:
    """A default that means 'not given' (None, False, an empty list): no value to state. (By
    identity: 0 == False, and --seed's 0 is a real default.)"""
    return default is None or default is False or (isinstance(default, (list, tuple)) and not default)


# -- helpers -----------------------------------------------------------------------------------

def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def _options(parser: argparse.ArgumentParser):
    """(option strings without -h/--help, action) of every optional argument."""
    for action in parser._actions:
        opts = [o for o in action.option_strings if o not in ("-h", "--help")]
        if opts:
            yield opts, action


def _synopsis_block() -> str:
    return README.split("## Command line", 1)[1].split("```\n", 1)[1].split("\n```", 1)[0]


def _prose() -> str:
    """The README without its fenced code blocks (the synopsis, the test command, Python)."""
    return re.sub(r"```.*?```", " ", README, flags=re.DOTALL)


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def _table_row(first_cell: str) -> str:
    """The README option table's row whose first cell is ``first_cell`` (backticks included)."""
    rows = [line for line in README.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, first_cell
    return rows[0]


def _api_section() -> str:
    return README.split("## Python API", 1)[1].split("\n## ", 1)[0]


def _flat(text: str) -> str:
    return " ".join(text.split())


# -- CLI reference: --help ---------------------------------------------------------------------

def test_every_option_of_every_command_has_a_help_text():
    """Each option that ``onnx-eprune <cmd> --help`` lists says what it does (calibrate's,
    evaluate's and demo's --device and demo's --method used to be listed bare)."""
    bare = [f"{name} {opts[-1]}" for name, p in _subparsers().items() for opts, a in _options(p)
            if not (a.help or "").strip()]
    assert bare == []


def test_defaults_that_help_texts_state_are_the_parsers():
    """Every '(default: X)' a help text gives, and every choice it marks '(default)', is the
    value argparse fills in when the option is left out."""
    checked = 0
    for name, p in _subparsers().items():
        for opts, action in _options(p):
            text = _flat(action.help or "")
            if _trivial(action.default):
                continue
            stated = re.search(r"\(default: ([^;)]+)", text)
            if stated and not action.choices and stated.group(1).split(",")[0].strip() not in (
                    "automatic", "CUDA when usable"):
                value = stated.group(1).split(",")[0].strip()
                if isinstance(action.default, str):
                    assert os.path.normpath(value) == os.path.normpath(action.default), (name, opts, value)
                else:
                    assert float(value) == pytest.approx(action.default), (name, opts, value)
                checked += 1
            if action.choices and "(default)" in text:
                clause = next(c for c in re.split(r";|, or ", text) if "(default)" in c)
                named = [c for c in action.choices if _mentions(clause, c)]
                assert named == [action.default], (name, opts, clause)
                checked += 1
    assert checked >= 8  # batch-size x3, min-keep x2, method x2, mode x2, demo sparsity and -o


def test_an_option_with_a_default_says_which_in_its_help():
    """An explained option whose value, left out, is not 'none' (None, False, an empty list)
    names its default in --help, as --batch-size, --min-keep, --method, --seed and demo's
    --sparsity and -o do (--seed's 0 used to go unstated)."""
    missing = [f"{name} {opts[-1]}={action.default!r}" for name, p in _subparsers().items()
               for opts, action in _options(p)
               if not _trivial(action.default) and action.help and "default" not in action.help]
    assert missing == []


def test_choices_in_the_synopsis_and_prose_are_the_parsers():
    """``--method entropic|lasso|thinet|l1|random``, ``--mode``, ``--device`` in the synopsis of
    every command that has them, and the image options' choices in the prose, are exactly the
    values argparse accepts."""
    synopsis = _synopsis_block()
    prose = _flat(_prose())
    checked = 0
    for name, p in _subparsers().items():
        for opts, action in _options(p):
            if not action.choices:
                continue
            option = opts[-1]
            pattern = rf"{re.escape(option)} ([\w-]+(?:\|[\w-]+)*)"
            for listed in re.findall(pattern, synopsis):  # the synopsis's a|b|c lists every choice
                assert set(listed.split("|")) == set(action.choices), (name, option, listed)
            written = re.findall(pattern, synopsis + " " + prose)
            named = {v for w in written for v in w.split("|")}
            # the prose names choices only (`--resize crop`, `--method thinet|lasso`), and all of them somewhere
            assert named == set(action.choices), (name, option, written)
            checked += 1
    assert checked >= 12


def test_sparsity_help_counts_the_layers_the_readme_counts():
    """--sparsity's help names the layer types whose parameters the target counts, as the
    README ('all Conv/ConvTranspose/Gemm/MatMul weights and biases') and PruneConfig's
    docstring do (it used to leave out ConvTranspose, whose weights count)."""
    row = _table_row("`--sparsity S`")
    assert "Conv/ConvTranspose/Gemm/MatMul" in row
    assert "Conv/ConvTranspose/" in onnx_eprune.PruneConfig.__doc__
    helps = {a.dest: a.help for a in _subparsers()["prune"]._actions}
    assert "ConvTranspose" in helps["sparsity"]


# -- CLI reference: the README ---------------------------------------------------------------

def test_every_option_is_explained_outside_the_synopsis():
    """Every option of ``onnx-eprune --help`` and of each command's --help is explained in
    the README's prose or tables, not only listed in the synopsis (``--version``,
    ``-q``/``--quiet`` and ``--input-shape`` used to be explained nowhere)."""
    prose = _prose()
    parsers = {"(top level)": build_parser(), **_subparsers()}
    unexplained = sorted({opts[-1] for name, p in parsers.items() for opts, _ in _options(p)
                          if not any(_mentions(prose, o) for o in opts)})
    assert unexplained == []


@pytest.mark.parametrize("where, option, default", [
    pytest.param("`--batch-size B`", "--batch-size", "(default 64)", id="batch-size"),
    pytest.param("`--method`", "--method", "`entropic` (default)", id="method"),
    pytest.param("`--round-to N`", "--round-to", "default: multiples of 8 for convolution outputs of 64 channels "
                 "or more", id="round-to"),
    pytest.param(None, "--seed", "0", id="seed"),
    pytest.param("`--device`", "--device", "(default)", id="device"),
    pytest.param(None, "demo -o", "lenet5_fmnist.pruned.onnx", id="demo-output"),
])
def test_the_readme_states_each_default(where, option, default):
    """The README states what an option does when left out, in its table row or, for an
    option without a fixed row, in a sentence that names it: --seed's 0, ``auto`` as
    --device's default, and demo's ``lenet5_fmnist.pruned.onnx`` in the current folder
    unless ``-o`` is given (the three used to be stated nowhere). The values are
    cli_parser.py's."""
    # --seed: None, read as 0 (as the README says), or with --stats as the files' seed
    parser_default = {"--batch-size": 64, "--method": "entropic", "--round-to": None, "--seed": None,
                      "--device": "auto", "demo -o": "lenet5_fmnist.pruned.onnx"}[option]
    command, opt = ("demo", "-o") if option == "demo -o" else ("prune", option)
    actual = next(a.default for opts, a in _options(_subparsers()[command]) if opt in opts)
    assert actual == parser_default  # the value the README has to state
    if where is not None:
        assert default in _table_row(where)
    else:
        sentences = re.split(r"(?<=[.;])\s", _flat(_prose()))
        assert any(_mentions(s, opt) and default in s and "default" in s for s in sentences), option


def test_the_figures_the_readme_and_help_quote_are_the_codes():
    """The numbers the --refit-ridge, --batch-size and --round-to rows (and --help) quote, and
    the fidelity, cache and consumer limits of How it works and Known limits, are the
    constants the code uses."""
    from onnx_eprune import budget
    from onnx_eprune.calibrate import engine, session
    from onnx_eprune.graph import analysis
    from onnx_eprune.pipeline import VALIDATION_BYTES, VALIDATION_SAMPLES
    from onnx_eprune.select import reconstruct
    from onnx_eprune.select.entropic import EntropicConfig

    ridge = _flat(_table_row("`--refit-ridge R\\|auto\\|auto-thin`"))
    low, high = re.search(r"from ([\d.]+)-([\d.]+) by generalised cross-validation", ridge).groups()
    assert (float(low), float(high)) == (min(reconstruct.AUTO_RIDGES), max(reconstruct.AUTO_RIDGES))
    assert float(re.search(r"a ridge of R \(0 to ([\de.]+)\)", ridge).group(1)) == reconstruct.MAX_RIDGE
    assert f"R = {reconstruct.DEFAULT_RIDGE:g}" in ridge
    assert f"fewer than {reconstruct.THIN_ROWS:g} calibration rows per kept input" in ridge
    assert f"at most {reconstruct.THIN_MAX_FEATURES} inputs" in ridge
    helps = {a.dest: _flat(a.help or "") for a in _subparsers()["prune"]._actions}
    assert f"auto-thin (default): {reconstruct.DEFAULT_RIDGE:g}" in helps["refit_ridge"]
    assert f"at most {reconstruct.THIN_MAX_FEATURES} inputs" in helps["refit_ridge"]

    assert session.BATCH_BYTES == 1 << 30
    assert "more than 1 GiB" in _table_row("`--batch-size B`") and "over 1 GiB" in helps["batch_size"]
    rounding = _table_row("`--round-to N`")
    assert f"multiples of {budget.AUTO_ROUND} for convolution outputs of {budget.AUTO_ROUND_MIN} channels" in rounding
    assert f"multiples of {budget.AUTO_ROUND} for convolution outputs of {budget.AUTO_ROUND_MIN} channels" in \
        helps["round_to"]
    prose = _flat(README)
    assert engine.CACHE_MEMORY_BYTES == 512 << 20 and "up to 512 MiB" in prose
    assert VALIDATION_SAMPLES == 256 and VALIDATION_BYTES == 256 << 20
    assert "on the first 256 calibration samples (fewer when their compared outputs would take more than 256 MiB" \
        in prose
    assert analysis.MAX_CONSUMER_FEATURES == 16384 and "more than 16,384 features" in prose
    assert EntropicConfig().max_features == 512 and "the solver's 512 features" in prose


# -- exit statuses -------------------------------------------------------------------------------

def test_the_error_classes_carry_the_documented_exit_statuses(tmp_path, capsys, calib):
    """README: '2 for usage errors, 1 for runtime errors'; the classes the API documents,
    ``onnx_eprune.UsageError`` (bad input) and ``onnx_eprune.EPruneError`` (runtime), say so
    and the command line returns those codes: an out-of-range --min-keep is 2, a target that the
    prunable part cannot reach is 1 and says how much it can remove."""
    assert onnx_eprune.UsageError.exit_code == 2 and "exit status 2" in onnx_eprune.UsageError.__doc__
    assert onnx_eprune.EPruneError.exit_code == 1 and "exit status 1" in onnx_eprune.EPruneError.__doc__
    assert issubclass(onnx_eprune.UsageError, onnx_eprune.EPruneError)  # one except clause catches both
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(model))
    np.save(tmp_path / "c.npy", calib)
    base = ["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "c.npy"),
            "--device", "cpu", "--method", "l1"]
    for extra, code, says in ((["--sparsity", "0.5", "--min-keep", "1.5"], 2, "--min-keep"),
                              (["--sparsity", "0.9", "--min-keep", "0.9"], 1, "removes")):
        assert main(base + extra) == code
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith("onnx-eprune: error: ") and says in lines[-1], err
        assert "Traceback" not in err and out == ""
    assert not (tmp_path / "o.onnx").exists()


def test_a_command_line_without_a_command_is_a_one_line_usage_error(capsys):
    """README, Exit status: a bare ``onnx-eprune`` is a usage error like any other, exit 2
    and one line on stderr, 'onnx-eprune: error: ...', that names the problem and what to do
    (give a command; see --help), with stdout left empty (it used to print the whole --help
    on stdout and nothing on stderr)."""
    assert main([]) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnx-eprune: error: ") and "--help" in lines[0], err
    assert out == ""


# -- Python API ----------------------------------------------------------------------------------

def test_every_public_name_but_the_version_is_documented():
    """Each name of ``onnx_eprune.__all__`` resolves, and the Python API section names it (a
    function as ``name(``, a class or error by name)."""
    section = _api_section()
    assert len(onnx_eprune.__all__) == len(set(onnx_eprune.__all__))
    for name in onnx_eprune.__all__:
        assert getattr(onnx_eprune, name) is not None
        if name == "__version__":
            continue  # test___version___is_documented
        assert re.search(rf"(?<![\w.]){name}\b|onnx_eprune\.{name}\b", section), name


def test___version___is_documented():
    """The public ``__version__`` (what ``onnx-eprune --version`` prints and the report's and
    metadata's ``version`` hold) is documented in the README, which used to name neither."""
    version = next(a for a in build_parser()._actions if "--version" in a.option_strings)
    assert version.version == f"onnx-eprune {onnx_eprune.__version__}"  # what --version prints
    assert "__version__" in README


def test_the_documented_calls_bind_to_the_real_signatures():
    """The README's calls ``inspect("model.onnx", exclude=[...])``, ``evaluate("model.onnx",
    "model.pruned.onnx", "calib.npy")``, ``sweep(model, calib, [..], data=, labels=)`` and
    ``prune(model, stats=[...], sparsity=0.5)`` bind; ``PruneResult(model, report)`` is
    constructible as written, with those two fields first."""
    calls = [
        (onnx_eprune.inspect, ("model.onnx",), {"exclude": ["/stem/*"]}),
        (onnx_eprune.evaluate, ("model.onnx", "model.pruned.onnx", "calib.npy"), {}),
        (onnx_eprune.sweep, ("model.onnx", None, [0.3, 0.5, 0.7]), {"data": "val.npy", "labels": "l.npy"}),
        (onnx_eprune.prune, ("model.onnx",), {"stats": ["s.npz"], "sparsity": 0.5}),
        (onnx_eprune.calibrate, ("model.onnx", None), {"seed": 0}),
    ]
    for function, args, kwargs in calls:
        pyinspect.signature(function).bind(*args, **kwargs)
    assert "`PruneResult(model, report)`" in _api_section()
    fields = [f.name for f in dataclasses.fields(onnx_eprune.PruneResult)]
    assert fields[:2] == ["model", "report"]
    result = onnx_eprune.PruneResult(onnx.ModelProto(), {})
    assert callable(result.save)


@pytest.mark.parametrize("keyword, bad, good", [
    ("sparsity", 1.0, 0.0), ("flops_reduction", 1.0, 0.0), ("keep_ratio", 0.0, 1.0), ("min_keep", 1.0001, 1.0),
    ("refit_ridge", 1.000001e6, 1e6), ("seed", -1, 0), ("batch_size", 0, 1),
])
def test_the_ranges_the_docstring_gives_are_the_ranges_checked(keyword, bad, good):
    """PruneConfig's docstring: targets in [0, 1) (keep_ratio (0, 1]), min_keep in [0, 1],
    refit_ridge from 0 to 1e6; the ends it includes are accepted and those it leaves out are a
    UsageError, checked on entry."""
    target = {} if keyword in ("sparsity", "flops_reduction", "keep_ratio") else {"sparsity": 0.5}
    config = onnx_eprune.PruneConfig(**target, **{keyword: good})
    config.check()
    config.target()
    with pytest.raises(onnx_eprune.UsageError):
        config = onnx_eprune.PruneConfig(**target, **{keyword: bad})
        config.check()
        config.target()


def test_an_out_of_range_target_error_names_the_argument(tmp_path, capsys, calib):
    """README: 'a value out of range ... is a one-line UsageError that names the argument':
    an out-of-range flops target names ``flops_reduction`` (Python) and ``--flops-reduction``
    (the command line), as the messages of sparsity, keep_ratio and every other field name
    theirs (it used to name the internal kind 'flops')."""
    with pytest.raises(onnx_eprune.UsageError) as exc:
        onnx_eprune.PruneConfig(flops_reduction=1.0).target()
    assert "flops_reduction" in str(exc.value) or "--flops-reduction" in str(exc.value), str(exc.value)
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(model))
    np.save(tmp_path / "c.npy", calib)
    assert main(["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "--flops-reduction", "1.0"]) == 2
    assert "--flops-reduction" in capsys.readouterr().err


def test_docstrings_state_units_of_what_they_return():
    """evaluate's latency in ms, inspect's MACs per sample, SweepPoint's fractions and
    seconds, PruneConfig's ridge relative to the feature variance: units, not bare numbers."""
    assert "latency (ms)" in _flat(onnx_eprune.evaluate.__doc__)
    assert "MACs per sample" in _flat(onnx_eprune.inspect.__doc__)
    point = _flat(onnx_eprune.SweepPoint.__doc__)
    assert "fractions in [0, 1]" in point and "``seconds``: wall time" in point
    assert "relative to the mean kept-feature variance" in _flat(onnx_eprune.PruneConfig.__doc__)


def test_docstrings_state_the_labels_shape_and_the_accuracy_unit():
    """A function that takes a labels array states its shape, as sweep's does ('shape (N,)'),
    and an accuracy says whether it is a fraction or a percentage (the command line prints
    percentages, the dicts hold fractions in [0, 1]): evaluate's and SweepPoint's docstrings
    used to say neither."""
    evaluate = _flat(onnx_eprune.evaluate.__doc__)
    assert re.search(r"shape \(N,\)|\(N,\)", evaluate)
    for doc in (evaluate, _flat(onnx_eprune.SweepPoint.__doc__)):
        clause = doc[doc.index("accuracy"):][:160]
        assert re.search(r"fraction|in \[0, 1\]|percent|%", clause), clause


# -- report.json ---------------------------------------------------------------------------------

SAMPLES = 48


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One prune through the command line with --report and --report-dir: the default
    auto-thin ridge (the classifier is fitted on fewer than 2 rows per input, so
    refit_ridges and thin_refits are filled), an --exclude, a --min-keep, a seed and --samples."""
    folder = tmp_path_factory.mktemp("report")
    onnx.save(conv_bn_relu_pool_flatten_gemm(True), str(folder / "m.onnx"))
    np.save(folder / "c.npy", random_input(64, seed=1))
    argv = ["prune", str(folder / "m.onnx"), "-o", str(folder / "o.onnx"), "--calib", str(folder / "c.npy"),
            "--sparsity", "0.3", "--device", "cpu", "--exclude", "conv_1", "--min-keep", "0.2", "--seed", "3",
            "--samples", str(SAMPLES), "--report", str(folder / "r.json"), "--report-dir", str(folder / "rd"), "-q"]
    assert main(argv) == 0
    return {"folder": folder, "report": json.loads((folder / "r.json").read_text()),
            "markdown": (folder / "rd" / "report.md").read_text()}


def _report_docs() -> str:
    """The README's report field list: the --report row, and the sentences whose subject is
    the report (its fidelity, refit_ridges, thin_refits, the provider, 'excluded by')."""
    text = [_table_row("`--report`")]
    for sentence in re.split(r"(?<=[.;])\s+", _flat(README)):
        if re.search(r"[Tt]he report(?:'s| marks| gives)|printed and reported", sentence):
            text.append(sentence)
    return " ".join(text)


# how the README would name each field a report holds
FIELD_NAMES = {
    "tool": ["tool"], "version": ["version"], "method": ["method"], "mode": ["mode"],
    "reconstruct": ["`reconstruct`", "whether the re-fit ran", "--no-reconstruct"],
    "refit_ridge": ["`refit_ridge`", "ridge setting", "re-fit ridge"], "round_to": ["round_to", "round-to", "rounding"],
    "exclude": ["exclude"], "min_keep": ["min_keep"], "target": ["target"], "seed": ["seed"],
    "provider": ["provider"], "samples": ["samples"], "params": ["params"], "macs": ["MACs"],
    "groups": ["per group"], "prunable_groups": ["prunable_groups", "prunable groups"],
    "fidelity_on_calibration": ["fidelity"], "refit_ridges": ["`refit_ridges`"], "thin_refits": ["`thin_refits`"],
    "seconds": ["seconds per phase"], "input": ["input path", "`input`", "the paths"],
    "output": ["output path", "`output`", "the paths"],
    # a group's fields
    "id": ["per group"], "producers": ["producers"], "producer_rows": ["output rows per channel"],
    "consumers": ["consumers"], "channels_before": ["channels before/after"], "channels_after": ["channels before/after"],
    "frozen": ["why frozen"], "kept_channels": ["indices of the kept channels"], "step": ["step"],
    # params / macs
    "before": ["before/after"], "after": ["before/after"], "removed_fraction": ["removed fraction", "fraction removed"],
}


def test_every_documented_report_field_is_in_a_real_report(run):
    """The --report row's list: per group producers (and their output rows per channel),
    consumers, channels before/after and the kept channels' indices, or why frozen (with
    'excluded by'); params and MACs before/after; samples; provider; exclude and min_keep;
    seconds per phase; and the report's refit_ridges (cross-validated layers' R) and
    thin_refits (rows, kept inputs, cross_validated) and fidelity: all there, with the
    values of the run."""
    report = run["report"]
    for key in ("params", "macs"):
        assert {"before", "after"} <= set(report[key])
        assert report[key]["before"] >= report[key]["after"] > 0
    assert report["samples"] == SAMPLES
    assert report["provider"] == "CPUExecutionProvider"
    assert report["exclude"] == ["conv_1"] and report["min_keep"] == 0.2
    phases = report["seconds"]
    assert {"calibrate", "select", "total"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
    assert sum(v for k, v in phases.items() if k != "total") <= phases["total"] + 0.01
    for group in report["groups"]:
        assert {"producers", "producer_rows", "consumers", "channels_before", "channels_after", "frozen"} <= set(group)
        assert len(group["producer_rows"]) == len(group["producers"])
        if group["frozen"]:
            assert group["channels_after"] == group["channels_before"] and "kept_channels" not in group
        else:
            kept = group["kept_channels"]
            assert kept == sorted(set(kept)) and len(kept) == group["channels_after"]
            assert 0 <= kept[0] and kept[-1] < group["channels_before"]
            assert group["channels_after"] >= np.ceil(0.2 * group["channels_before"])  # --min-keep
    assert any(g["frozen"] == "excluded by 'conv_1'" for g in report["groups"])
    thin = report["thin_refits"]
    assert thin and all(set(v) == {"rows", "features", "cross_validated"} for v in thin.values())
    assert all(v["rows"] < 2 * v["features"] and v["cross_validated"] for v in thin.values())
    ridges = report["refit_ridges"]
    assert set(ridges) == set(thin) and all(0.001 <= r <= 10 for r in ridges.values())
    assert report["fidelity_on_calibration"]["samples"] == SAMPLES


def test_every_field_of_a_real_report_is_documented(run):
    """Each key of a real report.json (top level, per group, in params/macs) is named in the
    README's report documentation: the --report row (the run's settings, the input and output
    paths, per group producers ..., its ``step`` ...; prunable_groups; params and MACs
    before/after and the fraction removed; ...) and the sentences about the report's
    fidelity, refit_ridges and thin_refits (the row used to leave out the settings,
    prunable_groups, the paths, ``step`` and ``removed_fraction``). The fields come from
    report.py:build_report and cli.py."""
    report = run["report"]
    docs = _report_docs()
    keys = set(report) | {k for g in report["groups"] for k in g} | set(report["params"]) | set(report["macs"])
    unknown = keys - set(FIELD_NAMES)
    assert not unknown, f"fields this test does not know yet: {unknown}"
    undocumented = sorted(k for k in keys if not any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", docs)
                                                      for name in FIELD_NAMES[k]))
    assert undocumented == []


def test_report_fields_echo_the_run(run):
    """The settings a report holds are those of the command line, and its figures are
    consistent: removed_fraction = 1 - after/before (6 digits), prunable_groups counts the
    groups without a reason to be frozen, the version is the package's."""
    report = run["report"]
    assert (report["method"], report["mode"], report["seed"]) == ("entropic", "sequential", 3)
    assert report["target"] == {"kind": "sparsity", "value": 0.3}
    assert report["version"] == onnx_eprune.__version__ and report["tool"] == "onnx-eprune"
    assert report["reconstruct"] is True and report["refit_ridge"] == "auto-thin" and report["round_to"] == "auto"
    assert report["output"].endswith("o.onnx") and report["input"].endswith("m.onnx")
    for key in ("params", "macs"):
        b, a = report[key]["before"], report[key]["after"]
        assert report[key]["removed_fraction"] == pytest.approx(round(1 - a / b, 6), abs=1e-9)
    assert report["params"]["removed_fraction"] >= 0.3
    assert report["prunable_groups"] == sum(1 for g in report["groups"] if g["frozen"] is None)


def test_report_md_shows_the_settings_and_figures_of_the_json(run):
    """report.md is 'the same as a readable Markdown summary and group table': the method,
    mode, seed, target, exclusions, floor, provider, samples, the params and MACs before and
    after, and a row per group with its channels before -> after or its frozen reason."""
    md, report = run["markdown"], run["report"]
    for text in ("method: entropic", "mode: sequential", "seed: 3", "target: sparsity 0.3", "`conv_1`",
                 "20.0%", "CPUExecutionProvider", f"calibration samples: {SAMPLES}"):
        assert text in md, text
    for key in ("params", "macs"):
        assert f"{report[key]['before']:,}" in md and f"{report[key]['after']:,}" in md
    table = md.split("## Channel groups", 1)[1]
    for group in report["groups"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| {group['id']} |"))
        if group["frozen"]:
            assert f"(frozen: {group['frozen']})" in row
        else:
            assert f"{group['channels_before']} -> {group['channels_after']}" in row


def test_sweep_point_and_evaluate_fidelity_keys_are_the_documented_ones(calib):
    """SweepPoint's docstring: 'fidelity: output name -> relative_error, cosine,
    top1_agreement'; evaluate's: 'per output top-1 agreement, relative L2 error and mean cosine
    similarity' and latency at batch 1 and 32: the dicts hold exactly those."""
    model = conv_bn_relu_pool_flatten_gemm(True)
    (point,) = onnx_eprune.sweep(model, calib[:32], [0.3], method="l1", mode="oneshot", device="cpu")
    documented = set(re.search(r"output name -> ([\w, ]+) \(", _flat(onnx_eprune.SweepPoint.__doc__)).group(1)
                     .replace(" ", "").split(","))
    assert documented == {"relative_error", "cosine", "top1_agreement"}
    assert set(point.fidelity) == {"y"} and set(point.fidelity["y"]) == documented
    assert set(point.as_dict()) == {f.name for f in dataclasses.fields(point)} - {"report", "model"}
    fidelity = onnx_eprune.evaluate(model, point.model, calib[:8], device="cpu")
    assert set(fidelity["outputs"]["y"]) == documented
    assert all(set(v) == {"batch1", "batch32"} for v in fidelity["latency_ms"].values())
