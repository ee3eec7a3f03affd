"""What the documentation shows works: every ``segquant ...`` command line parses with the real command-line parser
(an option the docs name but the parser lacks is the first error a reader would hit), every ``segquant`` name the
README's Python examples import exists, and ``--help`` shows plain text."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

from segquant.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "benchmarks").glob("*.md")),
        *sorted((ROOT / "segquant").rglob("cli.py"))]
#: A command starts at ``segquant`` (also after ``torchrun ... -m``), followed by a subcommand or an option.
_COMMAND = re.compile(r"(?:^|\s-m\s+|^\$\s+)segquant(\s+(?:-|[a-z]+\b).*)$")


def doc_commands(text: str) -> list[str]:
    """The ``segquant`` command lines of ``text`` (continuation lines joined, comments and prose dropped): lines of
    fenced code blocks, indented code blocks and docstring examples (``::`` blocks). Shell variables are expanded
    from the assignments ``NAME="..."`` in ``text``; the others (loop variables) become ``1``."""
    joined = re.sub(r"\\\\?\n", "", text)  # as the shell joins lines (a docstring writes the backslash twice)
    assigned = dict(re.findall(r'^\s*(\w+)="([^"]*)"', joined, re.M))
    joined = re.sub(r"\$\{?(\w+)\}?", lambda name: assigned.get(name.group(1), "1"), joined)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith(("segquant ", "torchrun ", "$ segquant ")):
            match = _COMMAND.search(line.split(" # ")[0].strip())
            if match:
                commands.append(match.group(1).strip())
    return commands


#: Every command line of the docs once (its file named in the test id).
DOC_COMMANDS = [pytest.param(command, id=f"{path.name}:{command[:60]}")
                for path in DOCS for command in dict.fromkeys(doc_commands(path.read_text()))]


def test_the_docs_show_commands():
    assert len(DOC_COMMANDS) >= 30


def parse_error(command: str, capsys) -> str:
    """What the parser says against ``command`` ("" when it parses; ``--version`` / ``--help`` exit 0)."""
    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit as done:
        return capsys.readouterr().err if done.code else ""
    return ""


@pytest.mark.parametrize("command", DOC_COMMANDS)
def test_doc_command_parses(command, capsys):
    assert parse_error(command, capsys) == ""


def readme_imports() -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from segquant... import a, b`` in the README's Python blocks."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = re.findall(r"^from (segquant[\w.]*) import ([\w, ]+)", "\n".join(blocks), re.M)
    return [(module, name.strip()) for module, names in found for name in names.split(",")]


def test_readme_imports_exist():
    imports = readme_imports()
    assert len(imports) >= 15
    missing = [f"{module}.{name}" for module, name in imports if not hasattr(importlib.import_module(module), name)]
    assert not missing


def test_a_wrong_option_is_caught(capsys):
    text = "x\n\n    segquant calibrate m --prompts p.csv \\\n        --limit 64 --out c\n"
    assert "unrecognized arguments: --limit 64" in parse_error(doc_commands(text)[0], capsys)


@pytest.mark.parametrize("command", ["calibrate", "eval", "demo", "dataset canny"])
def test_help_is_plain_text(command, capsys):
    """The subcommands' ``--help`` shows their module docstrings without reST markup."""
    assert parse_error(f"{command} --help", capsys) == ""
    shown = capsys.readouterr().out
    assert f"`segquant {command}`" in shown and "``" not in shown and not re.search(r":\w+:`", shown)
