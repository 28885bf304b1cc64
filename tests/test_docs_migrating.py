"""docs/migrating.md runs: every ```python block, and the output it shows.

The guide's blocks are one program, read in order: they run in one module
namespace (a block uses the classes an earlier block defined), in one event
loop with top-level ``await`` allowed (as in ``python -m asyncio``), in an
empty temporary working directory. A ```text block that follows a python
block with nothing but blank lines between is that block's expected standard
output, compared line by line (trailing spaces aside).

One test per python block: it runs the blocks before it (their output is
checked by their own tests), then the block, and compares its output.
Tracebacks point at the guide's own line numbers.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import re
import sys
import types
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "migrating.md"
README = ROOT / "README.md"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


class Block(NamedTuple):
    line: int  # the guide's line number of the block's first code line
    source: str
    expected: str | None  # the following ```text block, if any


def python_blocks(text: str) -> list[Block]:
    fences = list(FENCE.finditer(text))
    blocks = []
    for index, fence in enumerate(fences):
        if fence.group(1).strip() != "python":
            continue
        expected = None
        if index + 1 < len(fences):
            after = fences[index + 1]
            between = text[fence.end() : after.start()]
            if after.group(1).strip() == "text" and not between.strip():
                expected = after.group(2)
        line = text.count("\n", 0, fence.start(2)) + 1
        blocks.append(Block(line, fence.group(2), expected))
    return blocks


BLOCKS = python_blocks(GUIDE.read_text(encoding="utf-8"))


def normalized(output: str) -> list[str]:
    lines = [line.rstrip() for line in output.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


async def run_blocks(blocks: list[Block], namespace: dict[str, object]) -> str:
    """Run the blocks in order; return what the last one printed."""
    output = ""
    for block in blocks:
        # Padded so that line numbers in tracebacks are the guide's.
        source = "\n" * (block.line - 1) + block.source
        code = compile(
            source, str(GUIDE), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            outcome = eval(code, namespace)
            if code.co_flags & inspect.CO_COROUTINE:
                await outcome
        output = printed.getvalue()
    return output


@pytest.fixture
def guide_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A fresh module for the guide's code, importable by name like any other,
    with the working directory an empty temporary one."""
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("migrating_guide")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__dict__


def test_the_guide_has_code_to_run() -> None:
    assert len(BLOCKS) >= 10
    assert sum(block.expected is not None for block in BLOCKS) >= 10


@pytest.mark.parametrize(
    "index", range(len(BLOCKS)), ids=[f"line-{block.line}" for block in BLOCKS]
)
def test_block_runs_and_prints_what_the_guide_shows(
    index: int, guide_module: dict[str, object]
) -> None:
    block = BLOCKS[index]
    output = asyncio.run(run_blocks(BLOCKS[: index + 1], guide_module))
    if block.expected is not None:
        assert normalized(output) == normalized(block.expected), (
            f"docs/migrating.md line {block.line}: the block printed\n{output}"
        )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    without_code = FENCE.sub("", markdown)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", without_code, re.MULTILINE)}


def test_the_guide_links_resolve() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]*)\)", FENCE.sub("", text))
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        target = (GUIDE.parent / path).resolve() if path else GUIDE
        assert target.exists(), f"docs/migrating.md links to a missing {path}"
        if anchor:
            assert anchor in anchors(target.read_text(encoding="utf-8")), (
                f"docs/migrating.md links to #{anchor}, which {target.name} has no heading for"
            )


def test_the_readme_links_the_guide() -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme.split("## Coming from python-cqrs", 1)[1].split("\n## ", 1)[0]
    documentation = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    assert "(docs/migrating.md)" in section
    assert "(docs/migrating.md)" in documentation
