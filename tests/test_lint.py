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


#: the lint tools the test extra pins exactly (pyproject.toml explains why)
PINNED = ("mypy", "ruff")


def test_the_lint_tools_are_pinned_and_installed_at_their_pins() -> None:
    """A clean clone installs the versions main was checked with, so a new release of a
    lint tool cannot fail CI on unchanged code; a contributor with another version
    installed is told so here, not by a list of unfamiliar lint errors above."""
    import importlib.metadata
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        test_extra = tomllib.load(f)["project"]["optional-dependencies"]["test"]
    pins = {}
    for req in test_extra:
        name, sep, version = req.partition("==")
        if sep:
            pins[name.strip()] = version.strip()
    for tool in PINNED:
        assert tool in pins, f"{tool} is not pinned with == in the test extra: {test_extra}"
        installed = importlib.metadata.version(tool)
        assert installed == pins[tool], (
            f"{tool} {installed} is installed, the test extra pins {pins[tool]}: "
            "reinstall with `pip install -e '.[test]'`")
