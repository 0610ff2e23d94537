"""Helpers the command-line tests share: run the CLI in-process and read what it printed."""

from __future__ import annotations

from onnx_eprune.cli import main


def run_ok(capsys, argv):
    """A command that must succeed (exit 0); returns what it printed (capsys's pair)."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured


def run_error(capsys, argv, code=2):
    """A failing command: its exit status, one error line, no traceback; returns the line."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("onnx-eprune: error: "), err
    return lines[-1]


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: carriage returns go back to column 0, ESC[2K
    erases the line, newlines open a new one. Returns the non-empty lines."""
    lines: list[list[str]] = [[]]
    col = 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[2K", i):
            lines[-1] = []
            i += 4
            continue
        c = raw[i]
        if c == "\r":
            col = 0
        elif c == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            line.extend(" " * max(0, col - len(line)))
            if col < len(line):
                line[col] = c
            else:
                line.append(c)
            col += 1
        i += 1
    return [text for text in ("".join(line).rstrip() for line in lines) if text]
