"""The environment the README's commands build: the console script exists and runs."""

import subprocess
import sys
from pathlib import Path

import pytest


def test_console_script_is_installed_and_answers():
    script = Path(sys.executable).parent / "mixstudio"
    if not (Path(sys.prefix) / "pyvenv.cfg").exists():
        pytest.skip("not running inside a virtual environment")
    assert script.is_file(), f"{script} is missing: `make install` must install the package (pip install -e .)"
    result = subprocess.run([str(script), "train", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "judge-shapes-eval" in result.stdout
