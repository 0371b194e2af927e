"""The code passes ``mypy --strict`` and ``ruff`` (the house rules in ARCHITECTURE): the
package, the benchmarks and the tests alike."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: everything that is Python in the repository
CODE = ("memif_aio", "benchmarks", "tests")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_mypy_strict() -> None:
    # configuration: [tool.mypy] in pyproject.toml (strict, the tests' import path); the
    # paths are named here so that a change of the configuration cannot drop one
    r = run("mypy", "--strict", *CODE)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in CODE:
        assert os.path.isdir(os.path.join(ROOT, name))


def test_ruff_at_the_repository_root() -> None:
    """``ruff check`` exactly as a contributor types it at the root (which covers the
    package, the benchmarks and the tests)."""
    r = run("ruff", "check")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("ruff", "check", "--show-files")
    for name in CODE:
        assert f"/{name}/" in r.stdout, f"ruff does not look at {name}/"
