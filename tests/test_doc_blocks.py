"""Every ```python block of README.md and docs/*.md compiles, names nothing
undefined, and — unless marked a fragment or ``not run`` — runs and prints
what the page shows. The markers and how a page's blocks are grouped into
programs are described in ``doc_blocks.py``; ``.ci/run`` type-checks the
blocks with ``mypy --strict`` (``python tests/doc_blocks.py mypy-modules DIR``).
"""

from __future__ import annotations

import ast
import difflib
import re
import textwrap
from pathlib import Path

import pytest
from doc_blocks import (
    FRAGMENT,
    LANGUAGES,
    NOT_RUN,
    ROOT,
    RUN,
    Block,
    DocBlockError,
    Program,
    all_blocks,
    all_programs,
    fence_languages,
    mypy_module,
    normalized,
    page_blocks,
    page_programs,
    pages,
    run_program,
    undefined_names,
    unused_assumptions,
    write_mypy_modules,
)

import fallback_saga

BLOCKS = all_blocks()
PROGRAMS = all_programs()
RUNNING = [program for program in PROGRAMS if program.runs]


def test_the_pages_have_blocks_that_run() -> None:
    assert {block.page.name for block in BLOCKS} >= {
        "README.md",
        "circuit_breaker.md",
        "durability.md",
        "examples.md",
        "mechanics.md",
        "migrating.md",
        "scaling.md",
    }
    runs = [block for block in BLOCKS if block.kind == RUN]
    assert len(runs) >= 20
    assert sum(block.expected is not None for block in runs) >= 18


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_fence_names_a_known_language(page: Path) -> None:
    """A ```py or unlabelled fence would hide python code from these tests."""
    for line, language in fence_languages(page):
        assert language in LANGUAGES, (
            f"{page.name}:{line}: fence language {language!r}; use one of {sorted(LANGUAGES)}"
        )


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.where)
def test_block_compiles(block: Block) -> None:
    block.code()  # a SyntaxError names the page's line
    assert not unused_assumptions(block), (
        f"{block.where}: the marker assumes {sorted(unused_assumptions(block))}, "
        "which the block does not use"
    )


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_blocks_name_nothing_undefined(page: Path) -> None:
    undefined = undefined_names(page_blocks(page), set(fallback_saga.__all__))
    assert not undefined, "\n".join(
        f"{block.where} ({block.kind}): {', '.join(sorted(names))} undefined"
        + (" (a fragment may list what it assumes: <!-- fragment: assumes a, b -->)"
           if block.kind == FRAGMENT else "")
        for block, names in undefined.items()
    )


@pytest.mark.parametrize("program", RUNNING, ids=lambda program: program.where)
def test_program_runs_and_prints_what_the_page_shows(
    program: Program, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    mismatches = []
    for block, output in run_program(program):
        if block.expected is None:
            continue
        printed = normalized(output, block.normalise)
        shown = normalized(block.expected, block.normalise)
        if printed != shown:
            diff = difflib.unified_diff(shown, printed, "the page", "printed", lineterm="")
            mismatches.append(f"{block.where}: the block printed\n{output}\n" + "\n".join(diff))
        # The comparison above ignores trailing blanks, which a reader's terminal
        # (or a diff of the output) still shows.
        blank_ended = [line for line in output.splitlines() if line != line.rstrip()]
        if blank_ended:
            mismatches.append(f"{block.where}: printed trailing blanks in {blank_ended!r}")
    assert not mismatches, "\n\n".join(mismatches)


# ------------------------------------------------------------------ examples.md

EXAMPLES_PAGE = ROOT / "docs" / "examples.md"
RUN_LINE = re.compile(r"^Run: python (examples/\w+\.py)", re.MULTILINE)


def test_examples_md_reproduces_the_example_files_in_full() -> None:
    """docs/examples.md says each program is a file in examples/, reproduced in full."""
    reproduced = set()
    for block in page_blocks(EXAMPLES_PAGE):
        match = RUN_LINE.search(block.source)
        assert match, f"{block.where}: no 'Run: python examples/NAME.py' line"
        path = ROOT / match[1]
        assert block.source == path.read_text(encoding="utf-8"), (
            f"{block.where} differs from {match[1]}: copy the file into the page"
        )
        reproduced.add(path.name)
    # The page names the one file it does not reproduce.
    assert reproduced == {path.name for path in (ROOT / "examples").glob("*.py")} - {"shop.py"}


# ------------------------------------------------------------------ mypy modules


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda program: program.where)
def test_mypy_module_is_the_programs_code(program: Program) -> None:
    source = mypy_module(program)
    ast.parse(source)
    for block in program.blocks:
        assert block.kind in (RUN, NOT_RUN)
        for code, text in block.ignores:
            assert any(
                text in line and f"# type: ignore[{code}]" in line for line in source.splitlines()
            )


def test_mypy_modules_are_written(tmp_path: Path) -> None:
    written = write_mypy_modules(tmp_path / "doc_blocks")
    assert len(written) == len(PROGRAMS)
    assert len({path.name for path in written}) == len(written)


# ------------------------------------------------------------------ the markers


def markdown_page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text), encoding="utf-8")
    return page


def test_markers(tmp_path: Path) -> None:
    page = markdown_page(
        tmp_path,
        """\
        # A page

        ```python
        x = await answer()
        ```

        ```text
        42
        ```

        <!-- fragment: assumes client -->
        ```python
        client.send(x)
        ```

        <!-- program -->
        <!-- not run: needs PostgreSQL -->
        ```python
        y = 1
        ```

        * a list item:

          <!-- mypy: ignore[attr-defined] on "z.nope" -->
          <!-- output: normalise times, ids -->
          ```python
          print(z.nope)  # on purpose
          ```

          ```text
          2 s
          ```
        """,
    )
    first, fragment, not_run, indented = page_blocks(page)
    assert (first.kind, first.line, first.source, first.expected) == (
        RUN, 4, "x = await answer()\n", "42"
    )
    assert first.awaits()
    assert (fragment.kind, fragment.assumes) == (FRAGMENT, {"client"})
    assert not_run.new_program
    assert (not_run.kind, not_run.reason) == (NOT_RUN, "needs PostgreSQL")
    assert indented.source == "print(z.nope)  # on purpose\n"
    assert indented.ignores == (("attr-defined", "z.nope"),)
    assert indented.normalise == ("times", "ids")
    assert indented.expected == "2 s"
    one, two = page_programs([first, fragment, not_run, indented])
    assert one.blocks == (first,)
    assert two.blocks == (not_run, indented)
    assert "print(z.nope)  # type: ignore[attr-defined]  # on purpose" in mypy_module(two)
    assert "async def _main() -> None:\n" in mypy_module(one)
    assert "async def" not in mypy_module(two)


@pytest.mark.parametrize(
    "marker",
    [
        "fragmant",
        "fragment: client",
        "not run:",
        "output: normalise colours",
        'mypy: ignore[attr-defined] on "',
        "fragment -->\n<!-- not run: needs PostgreSQL",
    ],
)
def test_a_malformed_marker_is_refused(tmp_path: Path, marker: str) -> None:
    page = markdown_page(tmp_path, f"<!-- {marker} -->\n```python\npass\n```\n")
    with pytest.raises(DocBlockError):
        page_blocks(page)


def test_undefined_names(tmp_path: Path) -> None:
    page = markdown_page(
        tmp_path,
        """\
        ```python
        import asyncio

        def f(a):
            return [b for b in a if asyncio and Saga]
        ```

        <!-- fragment: assumes client -->
        ```python
        client.send(f, CircuitBreaker, typo)
        ```

        ```python
        f(client)
        ```
        """,
    )
    first, fragment, last = page_blocks(page)
    undefined = undefined_names([first, fragment, last], set(fallback_saga.__all__))
    assert undefined == {first: {"Saga"}, fragment: {"typo"}, last: {"client"}}


def test_normalisation() -> None:
    printed = "took 0.52 s at 2026-11-26 02:26:31.779, 849ms; fingerprint 3f5eef0e2c0548f4 "
    assert normalized(printed, ("times", "ids")) == [
        "took <time> at <time> <time>, <time>; fingerprint <id>"
    ]
    assert normalized("order-42 id 00000000-0000-0000-0000-000000000004", ("ids",)) == [
        "order-42 id <id>"
    ]
    assert normalized("a  \n\n\n") == ["a"]
