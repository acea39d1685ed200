"""The README cannot drift: its option table is the CLI's, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from voxgate.cli import cli, options_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_option_table_matches_the_cli():
    block = re.search(r"<!-- options:start -->\n(.*)\n<!-- options:end -->", README, re.S)
    assert block, "README lost its options block"
    assert block.group(1) == options_table(), "run: voxgate options-table and paste it into README.md"


def test_every_serve_option_is_documented():
    serve = cli.commands["serve"]
    for param in serve.params:
        assert param.opts[0] in README


def test_first_screen_commands_and_ci():
    first_screen = "\n".join(README.splitlines()[:20])
    commands = re.findall(r"^(pip install .+)$", first_screen, re.M)
    assert commands == ["pip install -e . && voxgate demo", "pip install -e '.[test]' && python -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1], "CI must run exactly the README's test command"
