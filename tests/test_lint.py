"""ruff (configured in pyproject.toml) over the whole repository: the lint check CI runs with the tests."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff():
    exe = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    return exe if os.path.exists(exe) else None


@pytest.mark.skipif(_ruff() is None, reason="ruff is not installed (it comes with pip install -e '.[test]')")
def test_ruff_clean():
    proc = subprocess.run([_ruff(), "check", "--no-cache", ROOT], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
