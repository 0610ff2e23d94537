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
    from onnx_eprune.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert f"onnx-eprune {name}" in readme
        for action in p._actions:
            opts = [o for o in action.option_strings if o not in ("-h", "--help")]
            if opts:
                assert any(o in readme for o in opts), f"{name} {opts} missing from README"
