"""Every command line README.md and BENCHMARKS.md quote must be one the program accepts.

A reader copies ``python tools/X.py ...`` or ``onnx-eprune ...`` from the docs; the first
thing that can go wrong is the argument parser refusing it (a renamed option, a choice
that no longer exists, a required option left out, a number where the tool wants a
list). This file pulls every such command out of both documents -- fenced code blocks,
indented code blocks and inline backtick spans (which may run across a line break) --
and hands its argv to the program's own parser, without running anything:

* ``tools/*.py`` that build their ``argparse`` parser inside ``main()``: the module is
  imported (none imports torch at module level except ``bench_torch_pruning.py``) and
  ``main()`` is called with ``sys.argv`` set and ``ArgumentParser.parse_args`` patched to
  stop right after parsing (``error`` patched to raise instead of exiting). Where the tool
  checks more right after parsing, the same check runs too (``bench_quality.py``'s
  ``--entropic FIELD=VALUE`` via its ``_config_fields``, and its free-form ``--modes``
  against ``onnx_eprune.config.MODES``; ``same_as_fixed_ridge.py``'s "give --sparsity
  and/or --flops").
* ``tools/bench_torch_pruning.py`` imports torch at module level (tests may not): its
  parser is rebuilt from the source, by executing the statements of ``main()`` before
  ``parse_args`` with the module's constant assignments (a dict whose values need torch
  classes is rebuilt from its literal keys, which is all ``choices=list(MODELS)`` reads).
* ``tools/tune_entropic.py`` has no argparse; its ``main(argv)`` runs with the loading,
  calibration, pruning and scoring stubbed out, so its own reading of ``MODEL LEVELS
  VARIANT...`` (model name, levels, ``field=value`` variants) is what is tested, plus
  ``PruneConfig.target()/check()`` on each config it builds (what a real run checks first).
* ``onnx-eprune``: ``onnx_eprune.cli_parser.build_parser().parse_args``.

Shell syntax handled: ``VAR=value`` prefixes, ``/usr/bin/time [-f FMT]``, ``# comments``,
backslash continuations, ``&&``/``;`` chains, ``B="python tools/..."`` definitions (the
latest one above the use, in document order) expanded in ``$B``, and ``for V in ...; do
...; done`` loops (every combination is checked).

Placeholders the docs use, and what is substituted (documented, deliberate):

* ``[...]`` optional parts: the command is checked twice, with every optional part
  (brackets dropped) and with none.
* ``...``: dropped ("and so on"), except right after an ``onnx-eprune`` subcommand, where
  it stands for what the quote leaves out: ``MODEL.onnx -o OUT.onnx`` (prune), plus
  ``--calib CALIB.npy`` and ``--sparsity 0.5`` where it shows no calibration source or
  target; ``0.3,...,f0.89`` -> ``0.3,f0.89``.
* After an option: ``--sparsity S`` -> 0.5, ``--flops F`` -> 0.5, ``--refit-ridge R`` ->
  0.01, ``--seeds S`` -> 1, ``--swap G`` -> 1, ``--models M`` -> lenet5; a positional
  ``M`` -> lenet5, ``LEVELS`` -> ``0.5,0.84``.
* In ``field=X`` variants (one capital letter): N -> 256, K -> 8, D -> 1, R -> 0.01,
  E -> 0.03, P -> 1.
* File names (``OUT``, ``MODEL``, ``R.json``, ``bench/*.json``) are left as written: the
  parsers take any string there.

Left out of the extraction: the README's synopsis block (a grammar, not a command line:
``test_docs`` and ``test_inspect_and_docs`` check its option names; here
:func:`test_synopsis_alternatives_are_accepted` checks its ``a|b|c`` values). Skipped,
with the reason (``NOT_CHECKED``): spans that name an option rather than quote a command,
and commands the docs themselves say need code that is not in the tree. A quoted command that does not parse is a strict xfail
"DOC BUG: <file>:<line>: <command>: <error>", keyed on the command's text (line numbers
move as the docs are edited).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import io
import itertools
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from onnx_eprune.cli_parser import build_parser
from onnx_eprune.config import MODES
from onnx_eprune.errors import UsageError
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
DOCS = ("README.md", "BENCHMARKS.md")

# ------------------------------------------------------------------ extraction

_SHELL_LINE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*"
                         r"(?:\S*python[\d.]*\s|onnx-eprune\b|/usr/bin/time\s|\$\w+\s|\w+=[\"']|for\s)")
_INLINE_COMMAND = re.compile(r"(?:^|\s)(?:\S*python[\d.]*\s+tools/\w+\.py|\$B\s)|^tools/\w+\.py\s+\S|onnx-eprune\s+\w+")
_FOR = re.compile(r"^\s*for\s+(\w+)\s+in\s+([^;]*);\s*do\s+")
_DONE = re.compile(r"(?:;\s*done\s*)+$")
_DEF = re.compile(r"^\s*(\w+)=([\"'])(.*)\2\s*(?:#.*)?$")


@dataclass
class Quoted:
    """One command as a document quotes it."""

    doc: str
    line: int
    kind: str                      # fenced / indented / inline
    text: str                      # as written, continuations joined, whitespace collapsed
    env: dict = field(default_factory=dict)   # shell variables defined above it

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _synopsis_span(lines: list[str]) -> tuple[int, int]:
    """0-based [start, end) of the README's synopsis block (first fence after '## Command line')."""
    start = next(i for i, line in enumerate(lines) if line.startswith("## Command line"))
    open_ = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    close = next(i for i in range(open_ + 1, len(lines)) if lines[i].startswith("```"))
    return open_, close + 1


def _logical(first: int, body: list[str]):
    """(1-based line, text) per logical line of a code block, backslash continuations joined."""
    current, at = "", None
    for k, line in enumerate(body):
        at = first + k if at is None else at
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        yield at, current + line
        current, at = "", None
    if at is not None:
        yield at, current


def _snippets(doc: str):
    """(line, kind, text) of every code line and inline span, in document order."""
    lines = (ROOT / doc).read_text().split("\n")
    synopsis = _synopsis_span(lines) if doc == "README.md" else (0, 0)
    prose = [True] * len(lines)
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            for k in range(i, min(j + 1, len(lines))):
                prose[k] = False
            if not synopsis[0] <= i < synopsis[1]:
                found += [(n, "fenced", t) for n, t in _logical(i + 2, lines[i + 1:j])]
            i = j + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()) and _SHELL_LINE.match(line.strip()):
            j = i
            while j < len(lines) and lines[j].startswith("    "):
                j += 1
            for k in range(i, j):
                prose[k] = False
            found += [(n, "indented", t) for n, t in _logical(i + 1, [x[4:] for x in lines[i:j]])]
            i = j
            continue
        i += 1
    text = "\n".join(line if keep else "" for line, keep in zip(lines, prose))
    for m in re.finditer(r"`([^`]+)`", text):
        span = _flat(m.group(1))
        if _INLINE_COMMAND.search(span):
            found.append((text.count("\n", 0, m.start()) + 1, "inline", span))
    return sorted(found, key=lambda f: f[0])


def _is_command(kind: str, text: str) -> bool:
    """Code lines that run a tool or the CLI; inline spans that quote one with arguments
    (a bare `onnx-eprune calibrate` or `tools/x.py` names the program, it is no command)."""
    if re.search(r"(?:^|\s)(?:\S*python[\d.]*\s+)?tools/\w+\.py\s+\S", text):
        return True
    if re.search(r"\S*python[\d.]*\s+tools/\w+\.py", text):
        return True
    if "$B" in text:
        return True
    m = re.search(r"onnx-eprune\s+(\w[\w-]*)(.*)", text)
    if not m:
        return False
    return kind != "inline" or bool(m.group(2).strip())


@functools.lru_cache(maxsize=None)
def quoted_commands() -> tuple[Quoted, ...]:
    out = []
    for doc in DOCS:
        env: dict[str, str] = {}
        for line, kind, text in _snippets(doc):
            d = _DEF.match(text)
            if d and kind != "inline":
                env[d.group(1)] = d.group(3)
                continue
            if _is_command(kind, text):
                out.append(Quoted(doc, line, kind, _flat(text), dict(env)))
    return tuple(out)


# ------------------------------------------------------------------ turning a quote into argv

CONTEXT = {"--sparsity": {"S": "0.5"}, "--flops": {"F": "0.5"}, "--flops-reduction": {"F": "0.5"},
           "--refit-ridge": {"R": "0.01"}, "--seeds": {"S": "1"}, "--swap": {"G": "1"},
           "--models": {"M": "lenet5"}}
POSITIONAL = {"M": "lenet5", "LEVELS": "0.5,0.84"}
FIELD_VALUE = {"N": "256", "K": "8", "D": "1", "R": "0.01", "E": "0.03", "P": "1"}


def _elided(command: str, shown: list[str]) -> list[str]:
    """What ``onnx-eprune COMMAND ...`` leaves out: the model and output, and the
    calibration source and target where the quote does not show them."""
    head = {"prune": ["MODEL.onnx", "-o", "OUT.onnx"], "search": ["MODEL.onnx", "-o", "OUT.onnx"],
            "sweep": ["MODEL.onnx", "--report-dir", "DIR"],
            "calibrate": ["MODEL.onnx", "--stats-out", "STATS.npz"], "inspect": ["MODEL.onnx"],
            "evaluate": ["ORIGINAL.onnx", "PRUNED.onnx", "--data", "DATA.npy"]}.get(command, [])
    if command in ("prune", "sweep", "search", "calibrate") and \
            not {"--calib", "--stats", "--calib-images", "--calib-random"} & set(shown):
        head += ["--calib", "CALIB.npy"]
    if command == "search" and not {"--max-drop", "--min-agreement", "--max-error"} & set(shown):
        head += ["--max-error", "0.05"]
    if command in ("prune", "sweep") and not {"--sparsity", "--flops-reduction", "--keep-ratio"} & set(shown):
        head += ["--sparsity", "0.5"]
    return head

_SEPARATORS = {"&&", "||", ";", "|"}


class DocError(Exception):
    """The quote itself is broken (an undefined variable, no program): a doc bug too."""


def _expand_loops(text: str) -> list[tuple[str, dict]]:
    loops = []
    while (m := _FOR.match(text)):
        loops.append((m.group(1), m.group(2).split()))
        text = text[m.end():]
    if loops:
        text = _DONE.sub("", text)
    combos = itertools.product(*(values for _, values in loops))
    return [(text, {name: v for (name, _), v in zip(loops, combo)}) for combo in combos]


def _substitute_vars(text: str, env: dict) -> str:
    def var(m):
        name = m.group(1) or m.group(2)
        if name not in env:
            raise DocError(f"${name} is not defined above this command")
        return env[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, text)


def _program(tokens: list[str]):
    """(program, argv) of one shell segment: program is 'onnx-eprune' or a tools/ path."""
    t = list(tokens)
    while t and re.fullmatch(r"[A-Za-z_]\w*=.*", t[0]):
        t.pop(0)
    if t and t[0].endswith("/time"):
        t.pop(0)
        while t and t[0].startswith("-"):
            t = t[2:] if t[0] in ("-f", "-o") else t[1:]
    if not t:
        return None
    if re.fullmatch(r"\S*python[\d.]*", t[0]) and len(t) > 1 and t[1].startswith("tools/"):
        return t[1], t[2:]
    if t[0] == "onnx-eprune":
        return "onnx-eprune", t[1:]
    if re.fullmatch(r"tools/\w+\.py", t[0]):
        return t[0], t[1:]
    return None


def _variants(program: str, args: list[str]) -> list[list[str]]:
    """argv with every optional [part] and with none (placeholders substituted)."""
    full, bare, depth = [], [], 0
    for tok in args:
        opens, closes = tok.startswith("["), tok.endswith("]") and len(tok) > 1
        inner = tok[1:] if opens else tok
        inner = inner[:-1] if closes else inner
        depth += opens
        if inner or not (opens or closes):  # "" is an argument (tune_entropic's default variant)
            full.append(inner)
            if not depth:
                bare.append(inner)
        depth -= closes
    variants = [full] if full == bare else [full, bare]
    return [_placeholders(program, v) for v in variants]


def _placeholders(program: str, args: list[str]) -> list[str]:
    out: list[str] = []
    for k, tok in enumerate(args):
        if tok == "...":
            if program == "onnx-eprune" and k == 1:
                out += _elided(args[0], args[2:])
            continue
        if "," in tok and "..." in tok.split(","):
            tok = ",".join(p for p in tok.split(",") if p != "...")
        prev = args[k - 1] if k else ""
        if tok in CONTEXT.get(prev, {}):
            tok = CONTEXT[prev][tok]
        elif not tok.startswith("-") and tok in POSITIONAL:
            tok = POSITIONAL[tok]
        tok = re.sub(r"(\w=)([A-Z])(?=$|:)", lambda m: m.group(1) + FIELD_VALUE[m.group(2)], tok)
        out.append(tok)
    return out


def invocations(q: Quoted) -> list[tuple[str, list[str]]]:
    """Every (program, argv) the quote stands for."""
    result = []
    for text, loop_env in _expand_loops(q.text):
        expanded = _substitute_vars(text, {**q.env, **loop_env})
        try:
            tokens = shlex.split(expanded, comments=True)
        except ValueError as exc:
            raise DocError(f"not a shell command line: {exc}") from None
        segments = [list(g) for sep, g in itertools.groupby(tokens, lambda t: t in _SEPARATORS) if not sep]
        for seg in segments:
            found = _program(seg)
            if found:
                program, args = found
                result += [(program, argv) for argv in _variants(program, args)]
    if not result:
        raise DocError("no tools/ script or onnx-eprune command in it")
    return result


# ------------------------------------------------------------------ parsing without running

class _Parsed(Exception):
    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


class Refused(Exception):
    """The program's parser refused the argv; the message is its error."""


@contextlib.contextmanager
def _stop_after_parsing():
    parse, error = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.error

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    def refuse(self, message):
        raise Refused(f"{self.prog}: error: {message}")

    argparse.ArgumentParser.parse_args, argparse.ArgumentParser.error = parse_args, refuse
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.error = parse, error


@functools.lru_cache(maxsize=None)
def _module(stem: str):
    return load_tool(stem, f"_quoted_tool_{stem}")


def _imports_torch(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n.split(".")[0] in ("torch", "torch_pruning", "torchvision", "timm") for n in names):
            return True
    return False


@functools.lru_cache(maxsize=None)
def _parser_from_source(stem: str) -> argparse.ArgumentParser:
    """The parser ``main()`` builds, rebuilt from the source without importing the module."""
    path = TOOLS / f"{stem}.py"
    tree = ast.parse(path.read_text())
    ns = {"__file__": str(path), "__name__": f"_quoted_src_{stem}", "__doc__": ast.get_docstring(tree, clean=False),
          "argparse": argparse, "Path": Path, "sys": sys}
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            try:
                exec(compile(ast.Module([node], []), str(path), "exec"), ns)  # noqa: S102
            except Exception:
                keys = node.value.keys if isinstance(node.value, ast.Dict) else None
                if keys and all(isinstance(k, ast.Constant) for k in keys):
                    for t in node.targets:
                        ns[t.id] = dict.fromkeys(k.value for k in keys)
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    prefix = list(itertools.takewhile(lambda s: "parse_args" not in ast.unparse(s), main.body))
    assert prefix and len(prefix) < len(main.body), f"{stem}: no parse_args call in main()"
    local = dict(ns)
    exec(compile(ast.Module(prefix, []), str(path), "exec"), local)  # noqa: S102
    parsers = [v for k, v in local.items() if isinstance(v, argparse.ArgumentParser) and k not in ns]
    assert len(parsers) == 1, f"{stem}: expected one parser in main(), got {len(parsers)}"
    parsers[0].prog = path.name
    return parsers[0]


def _tune_entropic(argv: list[str]) -> None:
    """Run tune_entropic.main with everything that loads data or prunes stubbed out."""
    import json
    import tempfile

    mod = _module("tune_entropic")

    class Variant:
        def __init__(self, path, calib, config, **kwargs):
            self.config = config

        def run(self):
            self.config.target()
            self.config.check()
            return SimpleNamespace(model=None)

    with tempfile.TemporaryDirectory() as tmp:
        for name in mod.MODELS:
            Path(tmp, f"{name}.json").write_text(json.dumps({"test_acc": 0.9}))
        stubs = {"load_fashion_mnist": lambda split: ([], []), "preprocess": lambda images, size: images,
                 "calibration_set": lambda *a, **k: None, "SelectionVariant": Variant,
                 "accuracy": lambda *a, **k: 0.9, "REFERENCE": Path(tmp)}
        saved = {k: getattr(mod, k) for k in stubs}
        for k, v in stubs.items():
            setattr(mod, k, v)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                status = mod.main(list(argv))
        except Exception as exc:  # its own reading of argv fails with a Python error
            raise Refused(f"tune_entropic.py: {type(exc).__name__}: {exc}") from None
        finally:
            for k, v in saved.items():
                setattr(mod, k, v)
    if status != 0:
        raise Refused(f"tune_entropic.py: exit status {status}")


def check_tool(script: str, argv: list[str]):
    """Parse ``argv`` as ``python <script>`` would; Refused if the program would refuse it."""
    path = ROOT / script
    if not (path.parent == TOOLS and path.suffix == ".py" and path.is_file()):
        raise Refused(f"{script} does not exist")
    stem = path.stem
    if stem == "tune_entropic":
        return _tune_entropic(argv)
    if _imports_torch(path):
        parser = _parser_from_source(stem)
        with _stop_after_parsing():
            try:
                parser.parse_args(argv)
            except _Parsed as done:
                return done.namespace
    module = _module(stem)
    old = sys.argv
    sys.argv = [script, *argv]
    try:
        with _stop_after_parsing(), contextlib.redirect_stdout(io.StringIO()):
            try:
                module.main()
            except _Parsed as done:
                namespace = done.namespace
            else:
                raise AssertionError(f"{script}: main() returned without parsing its arguments")
    finally:
        sys.argv = old
    if stem in AFTER_PARSING:
        AFTER_PARSING[stem](module, namespace)
    return namespace


def _bench_quality_after(module, ns) -> None:
    try:
        module._config_fields(ns.entropic)       # main() turns its ValueError into ap.error
    except ValueError as exc:
        raise Refused(f"bench_quality.py: error: {exc}") from None
    bad = [m for m in ns.modes if m not in MODES]  # --modes has no choices; PruneConfig.check refuses
    if bad:
        raise Refused(f"bench_quality.py: --modes {bad}: not one of {MODES}")


def _same_as_fixed_ridge_after(module, ns) -> None:
    if not ns.sparsity and not ns.flops:         # main()'s ap.error right after parsing
        raise Refused("same_as_fixed_ridge.py: error: give --sparsity and/or --flops levels")


# The checks a tool's main() makes on its arguments right after parse_args (before any work).
AFTER_PARSING = {"bench_quality": _bench_quality_after, "same_as_fixed_ridge": _same_as_fixed_ridge_after}


def check_cli(argv: list[str]):
    try:
        return build_parser().parse_args(argv)
    except UsageError as exc:
        raise Refused(f"onnx-eprune: error: {exc}") from None
    except SystemExit as exc:
        raise Refused(f"onnx-eprune exited with {exc.code}") from None


def check(program: str, argv: list[str]):
    return check_cli(argv) if program == "onnx-eprune" else check_tool(program, argv)


# ------------------------------------------------------------------ what is known

# Quotes that are not command lines, or that the docs say need code not in the tree.
NOT_CHECKED = {
    "onnx-eprune evaluate --data": "names evaluate's --data option in prose, quotes no command",
    'python tools/tune_entropic.py lenet5 0.3,...,f0.89 "refit_ridge=0.01" "refit_ridge=0.01:prior_power=P"':
        "BENCHMARKS says the run needs 'the field added': prior_power was a temporary EntropicConfig field",
}

# Quoted commands the program refuses (command text as quoted -> the program's error).
# Remove an entry when the doc is fixed: the strict xfail then fails as XPASS.
DOC_BUGS: dict[str, str] = {}


def _id(q: Quoted) -> str:
    return f"{q.where}:{q.text[:60]}"


def _marks(q: Quoted):
    if q.text not in DOC_BUGS:
        return []
    return [pytest.mark.xfail(strict=True, reason=f"DOC BUG: {q.where}: {q.text}: {DOC_BUGS[q.text]}")]


@pytest.mark.parametrize("q", [pytest.param(q, id=_id(q), marks=_marks(q)) for q in quoted_commands()])
def test_quoted_command_is_accepted(q: Quoted):
    """The program's parser accepts the command as quoted (every variant of it)."""
    for prefix, reason in NOT_CHECKED.items():
        if q.text == prefix or q.text.endswith(prefix):
            pytest.skip(f"{q.where}: {reason}")
    problems = []
    try:
        runs = invocations(q)
    except DocError as exc:
        pytest.fail(f"DOC BUG: {q.where}: {q.text}: {exc}")
    for program, argv in runs:
        try:
            check(program, argv)
        except Refused as exc:
            problems.append(f"{program} {shlex.join(argv)}: {exc}")
    assert not problems, f"DOC BUG: {q.where}: {q.text}: " + "; ".join(problems)


# ------------------------------------------------------------------ the extraction misses nothing

def test_every_python_tools_invocation_in_the_docs_is_extracted():
    """Each ``python tools/X.py`` the docs contain (code or inline, across line breaks) is
    in an extracted command or a ``B="..."`` definition that one expands: none is missed."""
    pattern = re.compile(r"python[\d.]*\s+tools/\w+\.py")
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        in_docs = len(pattern.findall(text))
        in_quotes = sum(len(pattern.findall(q.text)) for q in quoted_commands() if q.doc == doc)
        in_defs = sum(len(pattern.findall(m.group(0))) for m in re.finditer(r"(?m)^\s*\w+=\"[^\"]*\"", text))
        assert in_docs == in_quotes + in_defs, (doc, in_docs, in_quotes, in_defs)
        assert text.count("$B") == sum(q.text.count("$B") for q in quoted_commands() if q.doc == doc), doc


def test_the_extraction_finds_every_kind_of_quote():
    """Enough commands, from code blocks and inline spans of both files, for the CLI and
    for each tools/ script with a parser that the docs run."""
    qs = quoted_commands()
    assert len(qs) >= 120
    kinds = {(q.doc, q.kind) for q in qs}
    assert {("README.md", "indented"), ("README.md", "inline"), ("README.md", "fenced"),
            ("BENCHMARKS.md", "indented"), ("BENCHMARKS.md", "inline")} <= kinds
    programs = {program for q in qs if q.text not in NOT_CHECKED for program, _ in invocations(q)}
    assert {"onnx-eprune", "tools/bench_quality.py", "tools/tune_entropic.py", "tools/bench_torch_pruning.py",
            "tools/bench_speed.py", "tools/bench_coverage.py", "tools/layer_objective.py",
            "tools/mixed_selection.py", "tools/allocation_swap.py", "tools/keepset_landscape.py"} <= programs
    # $B takes the latest definition above it, across blocks
    flops = next(q for q in qs if q.text.startswith("OMP_NUM_THREADS=1 $B --flops 0.3 0.5 0.73 0.84 0.89"))
    assert flops.env["B"] == "python tools/bench_quality.py --models vgg16"
    # the inline shell loop is expanded into every combination
    loop = next(q for q in qs if q.text.startswith("for L in"))
    assert len(invocations(loop)) == 10 * 3 * 2 * 2        # L x M x ON x with/without [--mode oneshot]


def test_known_exceptions_still_match_a_quote():
    """Every DOC_BUGS / NOT_CHECKED entry is still quoted (else the doc changed: drop it)."""
    texts = [q.text for q in quoted_commands()]
    for key in [*DOC_BUGS, *NOT_CHECKED]:
        assert any(t == key or t.endswith(key) for t in texts), f"no longer quoted: {key!r}"


def test_placeholders_and_optional_parts():
    """The substitutions the module docstring promises."""
    q = Quoted("X.md", 1, "inline", 'python tools/tune_entropic.py M LEVELS "" "images=N:draw=D" '
               '["mode=oneshot"]')
    assert invocations(q) == [
        ("tools/tune_entropic.py", ["lenet5", "0.5,0.84", "", "images=256:draw=1", "mode=oneshot"]),
        ("tools/tune_entropic.py", ["lenet5", "0.5,0.84", "", "images=256:draw=1"])]
    q = Quoted("X.md", 1, "inline", "/usr/bin/time -f \"%e s\" onnx-eprune prune ... --sparsity S -q")
    assert invocations(q) == [("onnx-eprune", ["prune", "MODEL.onnx", "-o", "OUT.onnx", "--calib", "CALIB.npy",
                                               "--sparsity", "0.5", "-q"])]
    q = Quoted("X.md", 1, "indented", "OMP_NUM_THREADS=1 $B --seeds S --models M   # M: lenet5",
               {"B": "python tools/b.py"})
    assert invocations(q) == [("tools/b.py", ["--seeds", "1", "--models", "lenet5"])]
    with pytest.raises(DocError, match=r"\$C is not defined"):
        invocations(Quoted("X.md", 1, "indented", "$C --out x.json"))


# ------------------------------------------------------------------ the checker can say no

@pytest.mark.parametrize("program, argv, message", [
    ("tools/bench_quality.py", ["--models", "vgg19"], "invalid choice"),
    ("tools/bench_quality.py", ["--sparsty", "0.5"], "unrecognized arguments"),
    ("tools/bench_quality.py", ["--modes", "one-shot"], "one-shot"),
    ("tools/bench_quality.py", ["--entropic", "widen=3"], "--entropic widen=3"),
    ("tools/bench_quality.py", ["--calib-draws", "one"], "invalid int value"),
    ("tools/layer_objective.py", ["lenet5"], "one of the arguments --keep --sparsity --flops is required"),
    ("tools/bench_speed.py", ["latency", "--samples", "8"], "unrecognized arguments"),
    ("tools/bench_torch_pruning.py", ["--match", "flops"], "invalid choice"),
    ("tools/tune_entropic.py", ["lenet6", "0.5"], "KeyError"),
    ("tools/tune_entropic.py", ["lenet5", "0.5", "no_such_field=1"], "no_such_field"),
    ("tools/tune_entropic.py", ["lenet5", "1.5"], "sparsity target must be in [0, 1)"),
    ("tools/tune_entropic.py", ["lenet5", "0.5", "mode=one-shot"], "mode (--mode) must be one of"),
    ("tools/same_as_fixed_ridge.py", ["m.onnx", "c.npy"], "give --sparsity and/or --flops"),
    ("tools/bench_qualty.py", [], "does not exist"),
    ("onnx-eprune", ["prune", "m.onnx", "--calib", "c.npy", "--sparsity", "0.5"], "-o/--output"),
    ("onnx-eprune", ["prune", "m.onnx", "-o", "o.onnx", "--calib", "c.npy", "--sparsity", "half"], "expected a number"),
])
def test_the_checker_refuses_what_the_program_refuses(program, argv, message):
    with pytest.raises(Refused) as info:
        check(program, argv)
    assert message in str(info.value)


def test_tools_are_checked_without_importing_torch_or_running():
    """bench_torch_pruning's parser comes from its source (torch stays unimported), and its
    rebuilt parser has the real options; a parsed tool returns the namespace, nothing ran."""
    before = "torch" in sys.modules
    ns = check("tools/bench_torch_pruning.py", ["--match", "macs", "--models", "lenet5", "--targets", "0.3"])
    assert (ns.match, ns.models, ns.targets) == ("macs", ["lenet5"], [0.3])
    assert ("torch" in sys.modules) == before
    ns = check("tools/bench_quality.py", ["--models", "lenet5", "--sparsity", "0.5", "--out", "/nonexistent/x.json"])
    assert ns.sparsity == [0.5] and not Path("/nonexistent/x.json").exists()


def test_report_commands_read_committed_files():
    """A quoted bench_quality report command (no --sparsity/--flops: it only reads its
    --out and --with files) and plot_quality's inputs name files that are committed in
    bench/, so the reader reproduces the table rather than an empty one."""
    missing = []
    for q in quoted_commands():
        if q.text in DOC_BUGS or any(q.text.endswith(k) for k in NOT_CHECKED):
            continue
        for program, argv in invocations(q):
            if program == "tools/bench_quality.py":
                ns = check(program, argv)
                files = [] if ns.sparsity or ns.flops else [ns.out, *ns.also]
            elif program == "tools/plot_quality.py":
                files = check(program, argv).inputs
            else:
                continue
            missing += [f"{q.where}: {f}" for f in files if f is None or not list(ROOT.glob(str(f)))]
    assert not missing


# ------------------------------------------------------------------ the README synopsis

MINIMAL = {"prune": ["M.onnx", "-o", "O.onnx", "--calib", "C.npy", "--sparsity", "0.5"],
           "sweep": ["M.onnx", "--calib", "C.npy", "--sparsity", "0.5", "--report-dir", "D"],
           "search": ["M.onnx", "-o", "O.onnx", "--calib", "C.npy", "--max-error", "0.1"],
           "calibrate": ["M.onnx", "--calib", "C.npy", "--stats-out", "S.npz"],
           "inspect": ["M.onnx"], "evaluate": ["A.onnx", "B.onnx", "--data", "D.npy"], "demo": []}


def test_synopsis_alternatives_are_accepted():
    """Each value of an ``--option a|b|c`` in the README synopsis is one that command
    takes (an upper-case alternative is a placeholder: R -> 0.01); sweep's '[run options
    as for prune]' brings prune's."""
    from test_docs import _synopsis

    synopsis = _synopsis((ROOT / "README.md").read_text())
    assert set(synopsis) == set(MINIMAL)
    checked = 0
    for name, text in synopsis.items():
        text = text + (synopsis["prune"] if "as for prune" in text else "")
        for option, values in re.findall(r"(--[\w-]+) ([\w.-]+(?:\|[\w.-]+)+)", text):
            for value in values.split("|"):
                value = {"R": "0.01"}.get(value, value)
                check("onnx-eprune", [name, *MINIMAL[name], option, value])
                checked += 1
    assert checked >= 20
