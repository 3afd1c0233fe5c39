"""The README's commands exist as written."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_lines():
    text = (ROOT / "README.md").read_text()
    blocks = [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)
              if lang in ("", "bash", "sh", "console")]  # shell blocks; a python block is not commands
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_two_set_up_commands_exist_and_are_executable():
    lines = _code_lines()
    for script in ("./scripts/demo", "./scripts/test"):
        assert script in lines
        assert os.access(ROOT / script, os.X_OK)


def test_ci_runs_the_readme_test_command():
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def _measurement_log_commands():
    """The commands quoted inline in docs/measured.md, each of which the log says produced a figure."""
    text = " ".join((ROOT / "docs" / "measured.md").read_text().split())  # inline code wraps over lines
    return re.findall(r"`(tally [^`]+)`", text)


def test_every_tally_command_in_the_readme_and_the_measurement_log_exists(tally_cli):
    lines = [line for line in _code_lines() if line.startswith("tally ")] + _measurement_log_commands()
    commands = {tuple(w for w in line.split()[1:3] if not w.startswith("-") and re.fullmatch(r"[a-z0-9-]+", w))
                for line in lines}
    assert commands
    for words in commands:
        result = tally_cli(*words, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, f"tally {' '.join(words)}: {result.stderr}"
