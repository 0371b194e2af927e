"""The package passes ``mypy --strict`` and ``ruff`` (the house rules in ARCHITECTURE)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_mypy_strict() -> None:
    r = run("mypy")  # configuration: [tool.mypy] in pyproject.toml (strict, files = memif_aio)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff() -> None:
    r = run("ruff", "check", "memif_aio", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr
