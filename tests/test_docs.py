"""Every ```python sample in README.md and docs/*.md runs, so samples cannot rot.

Each block runs as a script of its own (``python block.py`` in a fresh temporary
directory, with this checkout on ``PYTHONPATH``) and must exit 0 within 60 s.  A
block that only defines functions is run too: it must at least define them.

A sample that needs something a test run does not have (a VPP, a DPDK peer started
by hand, a path under /run) is guarded by an HTML comment on the line just before
its fence, which Markdown renders as nothing::

    <!-- no-run: needs VPP -->
    ```python
    ...
    ```

A guarded block is still compiled (top-level ``await`` and ``async with`` allowed,
for fragments), so its syntax cannot rot either.  The reason after ``no-run:`` is
mandatory.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)(.*)$")
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(\S.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    file: str  # relative to ROOT
    line: int  # 1-based line of the opening fence
    code: str
    no_run: str | None  # the reason, for a guarded block

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def markdown_files() -> list[str]:
    files = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    files.append(os.path.join(ROOT, "README.md"))
    return [os.path.relpath(f, ROOT) for f in files]


def python_blocks(rel: str, root: str = ROOT) -> list[Block]:
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m[1], m[2], m[3].lower()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence)) and
                                      lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        if lang not in ("python", "py", "python3"):
            continue
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        guard = NO_RUN.match(prev)
        blocks.append(Block(rel, start + 1, "\n".join(body) + "\n",
                            guard[1] if guard else None))
    return blocks


ALL = [b for f in markdown_files() for b in python_blocks(f)]
RUNNABLE = [b for b in ALL if b.no_run is None]
GUARDED = [b for b in ALL if b.no_run is not None]


def test_samples_were_found() -> None:
    files = {b.file for b in RUNNABLE}
    assert "docs/index.md" in files and "docs/cli.md" in files, files
    assert len(RUNNABLE) >= 5


def test_the_extractor() -> None:
    text = ("intro\n```python\nprint(1)\n```\n<!-- no-run: needs VPP -->\n\n"
            "```python\nawait x\n```\n```sh\nls\n```\n  ```py\n  a = 1\n  ```\n")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "x.md"), "w") as f:
            f.write(text)
        got = python_blocks("x.md", root=d)
    assert [(b.line, b.code, b.no_run) for b in got] == [
        (2, "print(1)\n", None), (7, "await x\n", "needs VPP"), (13, "a = 1\n", None)]


@pytest.mark.parametrize("block", GUARDED, ids=[b.id for b in GUARDED])
def test_guarded_sample_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_sample_runs(block: Block) -> None:
    try:
        compile(block.code, block.id, "exec")
    except SyntaxError as exc:
        pytest.fail(f"{block.id}: not a runnable script ({exc}); if it is a fragment or needs "
                    "a real peer, put '<!-- no-run: <why> -->' on the line before its fence")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="memif-aio-doc-") as d:
        env["TMPDIR"] = d  # the sample's temporary files land here, and must be gone
        script = os.path.join(d, "sample.py")
        with open(script, "w") as f:
            f.write(block.code)
        try:
            r = subprocess.run([sys.executable, script], cwd=d, env=env, capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.id}: still running after 60 s (needs a real peer? then "
                        "guard it with '<!-- no-run: <why> -->')")
        os.unlink(script)
        leftovers = os.listdir(d)
    assert r.returncode == 0, f"{block.id} failed:\n{block.code}\n--- stdout\n{r.stdout}\n" \
                              f"--- stderr\n{r.stderr}"
    assert not leftovers, f"{block.id} left files behind: {leftovers}"
