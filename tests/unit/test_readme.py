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


def test_option_table_rows_have_real_defaults_and_descriptions():
    """Issue 14 item 8: no `Sentinel.UNSET` default, no blank description."""
    rows = [row.split(" | ") for row in options_table().splitlines()[2:]]
    assert rows
    for flags, _env, default, description in rows:
        assert "Sentinel" not in default and "UNSET" not in default, flags
        assert description.strip(" |"), f"{flags} has no description"


def test_demo_keep_running_is_documented():
    from voxgate.demo import demo

    for param in demo.params:
        if param.opts[0].startswith("--") and param.opts[0] != "--help":
            assert param.opts[0] in README, param.opts[0]
