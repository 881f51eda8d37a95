"""The repository passes `ruff check` under pyproject.toml's [tool.ruff] settings."""
import importlib.util
import subprocess
import sys

import pytest

import jobs


def test_ruff_finds_nothing():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: `pip install '.[test]'` brings it (setup.py's test extra)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format=concise", "."],
                            cwd=jobs.REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"`ruff check` found problems:\n{result.stdout}{result.stderr}"
