"""The README's promises that code can check."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    marker = readme.index("<!-- test-command")
    block = readme[marker:].split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert block in ci.splitlines(), f"README test command {block!r} is not a line of .ci/run"


def test_readme_mentions_every_cli_option():
    from onnx_eprune.cli_parser import build_parser

    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert f"onnx-eprune {name}" in readme
        for action in p._actions:
            opts = [o for o in action.option_strings if o not in ("-h", "--help")]
            if opts:
                assert any(o in readme for o in opts), f"{name} {opts} missing from README"


def _synopsis(readme: str) -> dict[str, str]:
    """The README's command synopsis: subcommand -> its lines (continuations included)."""
    block = readme.split("## Command line", 1)[1].split("```\n", 1)[1].split("\n```", 1)[0]
    lines: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line.startswith("onnx-eprune "):
            name = line.split()[1]
        lines[name] = lines.get(name, "") + " " + line
    return lines


def test_readme_synopsis_lists_each_subcommands_options():
    from onnx_eprune.cli_parser import IMAGE_OPTIONS, build_parser

    synopsis = _synopsis((ROOT / "README.md").read_text())
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(synopsis) == set(sub.choices)
    for name, p in sub.choices.items():
        # sweep says "[run options as for prune]"; "[image options]" stands for the --calib-images ones
        text = synopsis[name] + (synopsis["prune"] if "as for prune" in synopsis[name] else "")
        for action in p._actions:
            opts = [o for o in action.option_strings if o not in ("-h", "--help")]
            if opts and opts[-1].lstrip("-") not in IMAGE_OPTIONS:
                assert any(f"{o} " in text or f"{o}]" in text or f"{o}\n" in text for o in opts), \
                    f"onnx-eprune {name}: {opts} missing from the README synopsis"
