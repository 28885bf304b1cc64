"""The ```python blocks of README.md and docs/*.md: found, run, and written out for mypy.

Used by ``test_doc_blocks.py`` (every block compiles, names nothing undefined,
runs and prints what the page shows) and by ``.ci/run`` (``python
tests/doc_blocks.py mypy-modules DIR`` writes the blocks as modules for
``mypy --strict``). Standard library only: .ci/run calls it in a virtualenv
that holds nothing but the package and mypy.

How a page's blocks are read
----------------------------
A python block **runs** unless an HTML comment right before its fence says
otherwise. The blocks of a page form *programs*: a program starts at the
page's first python block and at each block marked ``<!-- program -->``, and
goes on through the following blocks. A program's blocks run in order in one
namespace, a module named ``__main__`` (as ``python file.py`` runs; the blocks
of examples.md guard with ``if __name__ == "__main__"``), in one event loop
with top-level ``await`` allowed (as in ``python -m asyncio``), in an empty
working directory, with the root logger bare (so ``logging.basicConfig``
works as in a script). A ```text block that follows a block with nothing
between but blank lines (or a line ``Output:``) is what that block prints,
compared line by line (trailing spaces and trailing blank lines aside).

The markers, one per HTML comment, right before the fence (several comments
may be stacked):

``<!-- fragment -->``, ``<!-- fragment: assumes name, other -->``
    Not runnable on its own (an excerpt, or it needs a service, a file or a
    killed process the page only describes). It is compiled, and every name
    it uses must be bound by the block itself or an earlier block of the page,
    be a builtin or a name ``fallback_saga`` exports, or be listed after
    ``assumes``. It is not type-checked, and its output is not compared.
``<!-- not run: REASON -->``
    A complete program that cannot run here (it needs PostgreSQL, say):
    compiled, its names checked and type-checked like a block that runs.
``<!-- program -->``
    The block starts a new program (a fresh namespace; its own module for
    mypy): for a page of independent, complete programs.
``<!-- mypy: ignore[CODE] on "TEXT" -->``
    The block shows a type error on purpose (the seed example's
    ``_inventory_service``): the module written for mypy gets
    ``# type: ignore[CODE]`` on each line of the block that contains TEXT
    (which must occur in it).
``<!-- output: normalise times -->``, ``... ids``, ``... times, ids``
    Output that differs from run to run: durations (``0.52 s``, ``849ms``),
    clock times and dates (``02:26:31.779``, ``2026-11-26``) become ``<time>``;
    UUIDs and 8-or-more-digit hex ids (``3f5eef0e2c0548f4``) become ``<id>``,
    in what is printed and in what the page shows alike.

For mypy, each program (its blocks that run or are ``not run``) becomes one
module, ``doc_<page>_<line>.py``; when a block uses top-level ``await``, the
program's code is the body of an ``async def _main() -> None`` (``from
__future__`` imports and ``# mypy:`` comments stay at the top).
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import dataclasses
import inspect
import io
import logging
import re
import sys
import tokenize
import types
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# A fenced block, possibly indented (inside a list item): its closing fence has
# the same indentation.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
# Fence languages the pages may use. "py", "python3" or "pycon" would hide a
# python block from these tests: they are refused.
LANGUAGES = {"python", "text", "sh", "mermaid"}

RUN, FRAGMENT, NOT_RUN = "run", "fragment", "not run"

_IGNORE = re.compile(r'^mypy: ignore\[(?P<code>[a-z0-9-]+)\] on "(?P<text>[^"]+)"$')
_OUTPUT = re.compile(r"^output: normalise (?P<what>[a-z, ]+)$")
_NORMALISATIONS = {
    "times": [
        (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "<time>"),
        (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\b"), "<time>"),
        (re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b"), "<time>"),
    ],
    "ids": [
        (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
        (re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b"), "<id>"),
    ],
}


def shown(page: Path) -> str:
    """The page's path as the messages show it: relative to the checkout."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


class DocBlockError(ValueError):
    """A page's markers are malformed."""


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # the page's line number of the block's first code line
    source: str  # the code, dedented when the fence was indented
    kind: str = RUN  # RUN, FRAGMENT or NOT_RUN
    reason: str = ""  # why a NOT_RUN block is not run
    new_program: bool = False  # marked <!-- program -->
    assumes: frozenset[str] = frozenset()
    ignores: tuple[tuple[str, str], ...] = ()  # (mypy error code, text of the lines)
    normalise: tuple[str, ...] = ()  # keys of _NORMALISATIONS
    expected: str | None = None  # the ```text block that follows, if any

    @property
    def where(self) -> str:
        return f"{shown(self.page)}:{self.line}"

    def code(self) -> types.CodeType:
        """The block compiled, top-level await allowed; tracebacks show the page's lines."""
        source = "\n" * (self.line - 1) + self.source
        return compile(
            source,
            str(self.page),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )

    def awaits(self) -> bool:
        return bool(self.code().co_flags & inspect.CO_COROUTINE)


@dataclasses.dataclass(frozen=True)
class Program:
    page: Path
    blocks: tuple[Block, ...]  # the blocks that run or are NOT_RUN, in page order

    @property
    def line(self) -> int:
        return self.blocks[0].line

    @property
    def where(self) -> str:
        return self.blocks[0].where

    @property
    def runs(self) -> bool:
        return any(block.kind == RUN for block in self.blocks)

    @property
    def module_name(self) -> str:
        stem = re.sub(r"\W", "_", self.page.stem.lower())
        return f"doc_{stem}_{self.line}"


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _markers(text: str, end: int) -> list[str]:
    """The HTML comments right before position ``end``, first one first."""
    markers: list[str] = []
    before = text[:end]
    while True:
        before = before.rstrip()
        if not before.endswith("-->"):
            return markers
        start = before.rfind("<!--")
        if start < 0:
            return markers
        markers.insert(0, " ".join(before[start + 4 : -3].split()))
        before = before[:start]


def _block(page: Path, text: str, fence: re.Match[str], expected: str | None) -> Block:
    indent = fence["indent"]
    lines = fence["body"].splitlines(keepends=True)
    if indent:
        lines = [line.removeprefix(indent) for line in lines]
    line = text.count("\n", 0, fence.start("body")) + 1
    where = f"{shown(page)}:{line}"
    kind, reason, new_program = RUN, "", False
    assumes: frozenset[str] = frozenset()
    ignores: list[tuple[str, str]] = []
    normalise: tuple[str, ...] = ()
    for marker in _markers(text, fence.start()):
        if marker == "fragment" or marker.startswith("fragment:"):
            names = marker.removeprefix("fragment").removeprefix(":").strip()
            if names and not names.startswith("assumes "):
                raise DocBlockError(f"{where}: write <!-- fragment: assumes a, b -->")
            if kind != RUN:
                raise DocBlockError(f"{where}: a fragment or not run, not both")
            kind = FRAGMENT
            names = names.removeprefix("assumes ")
            assumes = frozenset(name.strip() for name in names.split(",") if name.strip())
        elif marker.startswith("not run:") and marker.removeprefix("not run:").strip():
            if kind != RUN:
                raise DocBlockError(f"{where}: a fragment or not run, not both")
            kind, reason = NOT_RUN, marker.removeprefix("not run:").strip()
        elif marker == "program":
            new_program = True
        elif match := _IGNORE.match(marker):
            ignores.append((match["code"], match["text"]))
        elif match := _OUTPUT.match(marker):
            normalise = tuple(w.strip() for w in match["what"].split(",") if w.strip())
            unknown = set(normalise) - set(_NORMALISATIONS)
            if unknown or not normalise:
                raise DocBlockError(f"{where}: cannot normalise {', '.join(sorted(unknown))}")
        else:
            raise DocBlockError(
                f"{where}: unknown marker <!-- {marker} --> (see tests/doc_blocks.py)"
            )
    return Block(
        page=page,
        line=line,
        source="".join(lines),
        kind=kind,
        reason=reason,
        new_program=new_program,
        assumes=assumes,
        ignores=tuple(ignores),
        normalise=normalise,
        expected=expected,
    )


def page_blocks(page: Path) -> list[Block]:
    """Every ```python block of the page, with its markers and expected output."""
    text = page.read_text(encoding="utf-8")
    fences = list(FENCE.finditer(text))
    blocks = []
    for index, fence in enumerate(fences):
        if fence["lang"].strip() != "python":
            continue
        expected = None
        if index + 1 < len(fences):
            after = fences[index + 1]
            between = text[fence.end() : after.start()].strip()
            if after["lang"].strip() == "text" and between in ("", "Output:"):
                expected = "\n".join(
                    line.removeprefix(after["indent"]) for line in after["body"].splitlines()
                )
        blocks.append(_block(page, text, fence, expected))
    return blocks


def fence_languages(page: Path) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, fence.start()) + 1, fence["lang"].strip())
        for fence in FENCE.finditer(text)
    ]


def page_programs(blocks: list[Block]) -> list[Program]:
    """The page's programs: each with its blocks that run or are type-checked."""
    programs: list[list[Block]] = []
    for index, block in enumerate(blocks):
        if index == 0 or block.new_program:
            programs.append([])
        if block.kind != FRAGMENT:
            programs[-1].append(block)
    return [Program(blocks[0].page, tuple(p)) for p in programs if p]


def all_blocks() -> list[Block]:
    return [block for page in pages() for block in page_blocks(page)]


def all_programs() -> list[Program]:
    return [program for page in pages() for program in page_programs(page_blocks(page))]


# ---------------------------------------------------------------- names


_TYPE_PARAMS = tuple(
    getattr(ast, name) for name in ("TypeVar", "ParamSpec", "TypeVarTuple") if hasattr(ast, name)
)


def bound_names(tree: ast.AST) -> set[str]:
    """Every name the code binds, in any scope (a lenient, scope-blind check)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names.update(node.names)
        elif _TYPE_PARAMS and isinstance(node, _TYPE_PARAMS):  # Python 3.12's def f[T]()
            names.add(node.name)
    return names


def used_names(tree: ast.AST) -> set[str]:
    return {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }


MODULE_NAMES = {"__name__", "__file__", "__doc__", "__builtins__", "__spec__", "__loader__"}


def undefined_names(blocks: list[Block], exported: set[str]) -> dict[Block, set[str]]:
    """For each block, the names it uses that nothing defines.

    A block that runs (or is NOT_RUN) may use builtins and what earlier blocks of
    its program bound; a fragment, what any earlier block of the page bound,
    the names ``fallback_saga`` exports, and the names its marker assumes.
    """
    known = set(dir(builtins)) | MODULE_NAMES
    undefined: dict[Block, set[str]] = {}
    page_bound: set[str] = set()
    program_bound: set[str] = set()
    for index, block in enumerate(blocks):
        if index == 0 or block.new_program:
            program_bound = set()
        tree = ast.parse(block.source)
        bound = bound_names(tree)
        if block.kind == FRAGMENT:
            allowed = known | page_bound | exported | block.assumes | bound
        else:
            allowed = known | program_bound | bound
        missing = used_names(tree) - allowed
        if missing:
            undefined[block] = missing
        page_bound |= bound
        if block.kind != FRAGMENT:
            program_bound |= bound
    return undefined


def unused_assumptions(block: Block) -> set[str]:
    return set(block.assumes) - used_names(ast.parse(block.source))


# ---------------------------------------------------------------- running


def normalized(output: str, normalise: tuple[str, ...] = ()) -> list[str]:
    lines = []
    for line in output.splitlines():
        for key in normalise:
            for pattern, replacement in _NORMALISATIONS[key]:
                line = pattern.sub(replacement, line)
        lines.append(line.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


@contextlib.contextmanager
def _as_script(page: Path) -> Iterator[dict[str, object]]:
    """A fresh ``__main__`` module, and the root logger without handlers."""
    module = types.ModuleType("__main__")
    module.__file__ = str(page)
    saved_main = sys.modules.get("__main__")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []
    sys.modules["__main__"] = module  # dataclasses and get_type_hints look it up
    try:
        yield module.__dict__
    finally:
        if saved_main is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = saved_main
        for handler in root.handlers:
            handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def run_program(program: Program) -> Iterator[tuple[Block, str]]:
    """Run the program's blocks that run, in order; yield each with what it printed.

    Runs in the current working directory: give it an empty one.
    """
    with _as_script(program.page) as namespace, asyncio.Runner() as runner:
        for block in program.blocks:
            if block.kind != RUN:
                continue
            code = block.code()
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                outcome = eval(code, namespace)
                if code.co_flags & inspect.CO_COROUTINE:
                    runner.run(outcome)
            yield block, printed.getvalue()


# ---------------------------------------------------------------- mypy


def _with_ignores(block: Block) -> str:
    """The block's source with ``# type: ignore[code]`` on the lines its markers name."""
    if not block.ignores:
        return block.source
    lines = block.source.splitlines()
    comments: dict[int, int] = {}  # 0-based line -> column of its comment
    tokens = tokenize.generate_tokens(io.StringIO(block.source).readline)
    for token in tokens:
        if token.type == tokenize.COMMENT:
            comments[token.start[0] - 1] = token.start[1]
    for code, text in block.ignores:
        hits = [i for i, line in enumerate(lines) if text in line]
        if not hits:
            raise DocBlockError(f'{block.where}: no line contains "{text}"')
        for i in hits:
            line = lines[i]
            if i in comments:
                column = comments[i]
                head, comment = line[:column].rstrip(), line[column:]
                lines[i] = f"{head}  # type: ignore[{code}]  {comment}"
            else:
                lines[i] = f"{line}  # type: ignore[{code}]"
    return "\n".join(lines) + "\n"


def mypy_module(program: Program) -> str:
    """The program as one module for mypy --strict."""
    header = [
        f"# The code blocks of {shown(program.page)} from line {program.line},",
        "# written by tests/doc_blocks.py for mypy --strict.",
    ]
    hoisted: list[str] = []
    body: list[str] = []
    for block in program.blocks:
        body.append(f"# --- {block.where}")
        for line in _with_ignores(block).splitlines():
            if line.startswith(("from __future__ import", "# mypy:")):
                hoisted.append(line)
            else:
                body.append(line)
    if any(block.awaits() for block in program.blocks):
        body = ["async def _main() -> None:"] + [f"    {line}" if line else "" for line in body]
    return "\n".join([*header, *hoisted, "", *body]) + "\n"


def write_mypy_modules(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for program in all_programs():
        path = directory / f"{program.module_name}.py"
        path.write_text(mypy_module(program), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "mypy-modules":
        print("usage: python tests/doc_blocks.py mypy-modules DIRECTORY", file=sys.stderr)
        return 2
    for path in write_mypy_modules(Path(argv[1])):
        print(f"   {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
