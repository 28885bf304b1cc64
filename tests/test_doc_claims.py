"""The checkable claims of README.md and docs/*.md hold: what the prose says
about the API and the command line is what the code has.

``test_doc_blocks.py`` runs the pages' code; this file checks the words
around it, as a new user reading them would rely on them:

* every relative link and ``#anchor`` resolves (GitHub's heading slugs);
* every ``--flag`` the pages show exists on the command line — on the
  subcommand it is shown with, when the text names one;
* every error class the pages name is one ``fallback_saga`` exports (or a
  builtin, or one listed below as someone else's);
* every ``fallback_saga.module.NAME`` the pages name can be imported;
* the signatures in the README's API tables are the code's (every
  parameter, its kind and its default), and so are the defaults of every
  other signature the pages spell out (``name(..., *, x=1) -> T``).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib
import inspect
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doc_blocks import FENCE, ROOT, pages

import fallback_saga
from fallback_saga.cli import build_parser

PAGES = pages()
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def prose(page: Path) -> str:
    """The page without its fenced blocks (line numbers kept)."""
    text = page.read_text(encoding="utf-8")
    return FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


# ------------------------------------------------------------------ links and anchors


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation
    dropped (``-`` and ``_`` kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", prose(page), re.MULTILINE):
        slug = github_slug(match.group(1))
        if slug in seen:  # GitHub numbers repeated headings: slug-1, slug-2, ...
            seen[slug] += 1
            found.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            found.add(slug)
    return found


def links(page: Path) -> Iterator[tuple[int, str]]:
    text = prose(page)
    for match in re.finditer(r"\]\(([^)\s]+)\)", text):
        yield line_of(text, match.start()), match.group(1)


def test_the_slugs_are_githubs() -> None:
    assert github_slug("Issue #12, PostgreSQL: one statement per group (target 5,000 sagas/s)") == (
        "issue-12-postgresql-one-statement-per-group-target-5000-sagass"
    )
    assert github_slug("`SagaFailed` wraps the step's exception") == (
        "sagafailed-wraps-the-steps-exception"
    )
    assert github_slug('synchronous="full" or "normal"') == "synchronousfull-or-normal"
    assert github_slug("current_step() and idempotency keys") == "current_step-and-idempotency-keys"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for line, link in links(page):
        if re.match(r"^[a-z][a-z+.-]*:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{page.name}:{line}: {link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{page.name}:{line}: {link}: {target.name} has no heading for #{anchor}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_file_named_exists(page: Path) -> None:
    """``tests/test_crash_matrix.py``, ``benchmarks/compare.py``,
    ``examples/shop.py``: the files the prose sends a reader to are there."""
    text = page.read_text(encoding="utf-8")
    missing = [
        f"{page.name}:{line_of(text, match.start())}: {match.group(0)}"
        for match in re.finditer(
            r"(?<![\w/])(?:tests|benchmarks|examples|fallback_saga)/[\w/]+\.py\b", text
        )
        if not (ROOT / match.group(0)).is_file()
    ]
    assert not missing, "\n".join(missing)


# ------------------------------------------------------------------ command-line flags

# Flags of other programs that the pages show (gunicorn, pytest, docker, the
# benchmark scripts, which are checked against their own files below).
FOREIGN_FLAGS = {
    "--preload": "gunicorn",
    "--collect-only": "pytest",
    "--rm": "docker run",
    "--only": "benchmarks/compare.py, benchmarks/versus_release.py",
    "--profile": "benchmarks/compare.py",
    "--password": "another program's command line, in the redaction rules",
    "--no-password": "another program's command line, in the redaction rules",
    "--skip-password": "another program's command line, in the redaction rules",
    "--password-stdin": "another program's command line, in the redaction rules",
    "--password-file": "another program's command line, in the redaction rules",
}
BENCHMARK_FLAGS = {"--only": ("compare.py", "versus_release.py"), "--profile": ("compare.py",)}


def subcommand_flags() -> dict[str, set[str]]:
    """Each subcommand's flags ("" for the top level's)."""
    parser = build_parser()
    flags: dict[str, set[str]] = {"": set()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags[name] = {s for a in sub._actions for s in a.option_strings}
        else:
            flags[""].update(action.option_strings)
    return flags


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
# A command shown with its subcommand: "python -m fallback_saga list ..." in a
# shell block or a code span, or a row of the README's and durability.md's
# command tables ("`list --db PATH [--status S]`").
COMMAND = re.compile(
    r"(?:python -m fallback_saga|fallback-saga)\s+(?P<cmd>[a-z][a-z-]*)(?P<rest>[^\n`|]*)"
    r"|^\|\s*`(?P<row>demo|graph|list|show|recover|resume|retry-unwinding|purge|serve)"
    r"(?![\w-])(?P<rowrest>[^`]*)`",
    re.MULTILINE,
)


def test_the_benchmark_flags_shown_exist() -> None:
    for flag, scripts in BENCHMARK_FLAGS.items():
        for script in scripts:
            assert f'"{flag}"' in (ROOT / "benchmarks" / script).read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_flag_shown_exists(page: Path) -> None:
    flags = subcommand_flags()
    every = set().union(*flags.values())
    text = page.read_text(encoding="utf-8")
    wrong = []
    for match in FLAG.finditer(text):
        flag = match.group(0)
        if flag not in every and flag not in FOREIGN_FLAGS:
            wrong.append(f"{page.name}:{line_of(text, match.start())}: {flag} is no option")
    for match in COMMAND.finditer(text):
        command = match.group("cmd") or match.group("row")
        rest = match.group("rest") if match.group("cmd") else match.group("rowrest")
        if command not in flags:
            wrong.append(f"{page.name}:{line_of(text, match.start())}: no command {command!r}")
            continue
        for flag in FLAG.findall(rest):
            if flag not in flags[command] and flag not in FOREIGN_FLAGS:
                wrong.append(f"{page.name}:{line_of(text, match.start())}: "
                             f"`{command}` has no {flag}")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------ error names

# Error classes the pages name that are not fallback_saga's.
FOREIGN_ERRORS = {
    "CancelledError": "asyncio",
    "CalledProcessError": "subprocess, in the redaction rules",
    "CircuitBreakerError": "aiobreaker, in the migration notes",
    "OperationalError": "psycopg",
    "PaymentError": "the pages' example application",
    "ReadOnlySqlTransaction": "psycopg",
}
ERROR_NAME = re.compile(
    r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception|Lost|Busy|Failed|Interrupted|NotFound|"
    r"Exists|Changed|Conflict|Record)\b"
)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_error_named_is_exported(page: Path) -> None:
    """A user who reads ``except SagaBusy`` must be able to import it."""
    text = prose(page)
    known = set(fallback_saga.__all__) | set(dir(builtins)) | set(FOREIGN_ERRORS)
    unknown = []
    for span in CODE_SPAN.finditer(text):
        for name in ERROR_NAME.findall(span.group(1)):
            if name not in known:
                unknown.append(f"{page.name}:{line_of(text, span.start())}: {name}")
    assert not unknown, "\n".join(unknown)


def test_every_exported_name_has_a_readme_api_row() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    api = readme.split("## The API", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([\w.]+)` \|", api, re.MULTILINE))
    missing = [name for name in fallback_saga.__all__ if name not in rows]
    assert not missing, f"README's API tables have no row for {missing}"


def public_modules() -> list[str]:
    """The modules the README's API section calls public, besides
    ``fallback_saga`` itself (its sentence "... public modules of their own:
    `a`, `b` and `c`.")."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    api = readme.split("## The API", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"public modules of their own:(.+?)\.\n", api, re.DOTALL)
    assert match, "README's API section no longer lists the public modules"
    return CODE_SPAN.findall(match.group(1))


def names_the_module(text: str, module: str, exported: list[str]) -> bool:
    """The page names ``module`` in a code span: alone, or one of its
    exported names spelt in full."""
    return any(
        span == module or (span.startswith(module + ".")
                           and span[len(module) + 1:].split(".")[0] in exported)
        for span in CODE_SPAN.findall(text)
    )


def test_the_public_modules_are_the_ones_the_pages_import_from() -> None:
    """The list the next test walks is the README's, and is not empty or stale."""
    modules = public_modules()
    assert {"fallback_saga.store", "fallback_saga.console", "fallback_saga.store.postgres"} <= set(
        modules)
    for module in modules:
        assert isinstance(importlib.import_module(module).__all__, list), module


@pytest.mark.parametrize("module", public_modules())
def test_every_name_a_public_module_exports_is_documented(module: str) -> None:
    """A name in a public module's ``__all__`` is one users may import and rely
    on; the docs must say what it is. It is documented when a page's prose
    shows it in a code span (``fallback_saga.console.DEFAULT_PORT``, or
    ``DEFAULT_PORT`` on a page that names ``fallback_saga.console``), or it
    is the same object as a ``fallback_saga`` name (the README's API rows
    cover those: see above)."""
    imported = importlib.import_module(module)
    exported: list[str] = list(imported.__all__)
    texts = [prose(page) for page in PAGES]
    naming = [text for text in texts if names_the_module(text, module, exported)]
    undocumented = []
    for name in exported:
        if name in fallback_saga.__all__ and getattr(fallback_saga, name) is getattr(imported,
                                                                                     name):
            continue
        bare = re.compile(rf"(?<![\w.]){re.escape(name)}\b")
        dotted = f"{module}.{name}"
        if any(dotted in span for text in texts for span in CODE_SPAN.findall(text)):
            continue
        if any(bare.search(span) for text in naming for span in CODE_SPAN.findall(text)):
            continue
        undocumented.append(name)
    assert not undocumented, (
        f"{module}.__all__ exports {undocumented}, which no page documents: describe each "
        f"(what it is, when a user needs it) on a page that names {module}, or deprecate it"
    )


# ------------------------------------------------------------------ dotted references


def resolve(dotted: str) -> object:
    """``fallback_saga.a.b.NAME``: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(dotted)


# The OpenTelemetry names (``fallback_saga.saga.id``, ``fallback_saga.fallbacks``)
# look like module paths: they must be names the listener uses.
OTEL_SOURCE = (ROOT / "fallback_saga" / "otel.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_dotted_references_resolve(page: Path) -> None:
    """``fallback_saga.store.sqlite.WAL_SIZE_LIMIT`` can be imported, and
    ``fallback_saga.step.attempt`` is a span attribute the listener sets."""
    text = prose(page)
    wrong = []
    for match in re.finditer(r"`(fallback_saga(?:\.\w+)+)", text):
        try:
            resolve(match.group(1))
        except (ImportError, AttributeError) as error:
            if f'"{match.group(1)}"' in OTEL_SOURCE:
                continue
            wrong.append(f"{page.name}:{line_of(text, match.start())}: {match.group(1)}: {error!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_modules_functions_and_classes_named_are_public(page: Path) -> None:
    """A page sends users only to public modules (``fallback_saga`` and the
    README's list) for a module, function or class: durability.md said
    ``claims_by_name(store)`` was "in ``fallback_saga.store.base``", a
    module of the package's own, free to change. (A constant named where it
    is defined, ``fallback_saga.context.MAX_CONTEXT_DEPTH``, states a limit:
    no import is asked; an OpenTelemetry name is no module.)"""
    public = {"fallback_saga", *public_modules()}
    text = prose(page)
    internal = []
    for match in re.finditer(r"`(fallback_saga(?:\.\w+)+)", text):
        dotted = match.group(1)
        if f'"{dotted}"' in OTEL_SOURCE:
            continue
        target = resolve(dotted)
        if not (inspect.ismodule(target) or inspect.isfunction(target)
                or inspect.isclass(target)):
            continue
        # Where the page says to import it from: the module itself, or the
        # module a function or class is named in (``fallback_saga.store.X``
        # may be defined in an internal module and exported by a public one).
        home = dotted if inspect.ismodule(target) else dotted.rpartition(".")[0]
        if home not in public:
            internal.append(f"{page.name}:{line_of(text, match.start())}: {dotted}")
    assert not internal, "\n".join(internal)


# ------------------------------------------------------------------ signatures

# What a documented default may name.
NAMESPACE: dict[str, Any] = {"time": time, "logging": logging, "__builtins__": builtins}


def api_object(name: str) -> object | None:
    """What a README row or a signature names: ``Saga.run``,
    ``fallback_saga.store.postgres.PostgresSagaStore``, ``recover``, ..."""
    if name.startswith("fallback_saga."):
        try:
            return resolve(name)
        except (ImportError, AttributeError):
            return None
    head, _, rest = name.partition(".")
    if head not in fallback_saga.__all__:
        return None
    target: object = getattr(fallback_saga, head)
    for attribute in rest.split(".") if rest else ():
        target = getattr(target, attribute, None)
        if target is None:
            return None
    return target


SIGNATURE = re.compile(
    r"^(?:await\s+)?(?:[a-z_]\w*\.)*(?P<name>\w+)\((?P<params>.*)\)(?:\s*->.*)?$"
)


def parsed_signature(span: str) -> tuple[str, ast.arguments] | None:
    """``await saga.run(context, *, saga_id=None) -> SagaResult`` as
    ``("run", <its parameters>)``, if the span reads as a signature: its
    parentheses hold what a ``def`` may (names, defaults, ``*``, ``/``)."""
    match = SIGNATURE.match(span.strip())
    if not match:
        return None
    try:
        tree = ast.parse(f"def _signature({match['params']}): pass")
    except SyntaxError:  # an example call: Parallel(StepA, Fallback(...), ...)
        return None
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    return match["name"], function.args


def check_signature(
    where: str, target: object, shown: ast.arguments, *, complete: bool
) -> list[str]:
    """What ``shown`` says wrongly about ``target``'s parameters."""
    signature = inspect.signature(target)  # type: ignore[arg-type]
    real = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
    by_name = {p.name: p for p in real}
    positional = [p for p in real if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    documented: set[str] = set()

    def compare_default(name: str, node: ast.expr | None, parameter: inspect.Parameter) -> None:
        if node is None:  # shown required
            if parameter.default is not parameter.empty:
                problems.append(f"{where}: {name} is shown required; the code's default is "
                                f"{parameter.default!r}")
            return
        if parameter.default is parameter.empty:
            return  # an example value of a required parameter (context=lambda parent: ...)
        try:
            value = eval(compile(ast.Expression(node), where, "eval"), NAMESPACE)
        except Exception:
            problems.append(f"{where}: {name}={ast.unparse(node)} is no default "
                            f"(the code's is {parameter.default!r})")
            return
        same_number = (isinstance(value, int | float) and isinstance(parameter.default, int | float)
                       and not isinstance(value, bool) and not isinstance(parameter.default, bool))
        if value != parameter.default or (type(value) is not type(parameter.default)
                                          and not same_number):
            problems.append(f"{where}: {name}={ast.unparse(node)}, but the code's default is "
                            f"{parameter.default!r}")

    shown_positional = [*shown.posonlyargs, *shown.args]
    defaults: list[ast.expr | None] = [None] * (len(shown_positional) - len(shown.defaults))
    defaults += shown.defaults
    for index, (argument, default) in enumerate(zip(shown_positional, defaults, strict=True)):
        name = argument.arg
        if index >= len(positional):
            parameter = by_name.get(name)
            if parameter is not None and parameter.kind is parameter.KEYWORD_ONLY:
                problems.append(f"{where}: {name} is keyword-only in the code: show `*,` before it")
                documented.add(name)
                compare_default(name, default, parameter)
            else:
                problems.append(f"{where}: {name}: the code takes no further positional parameter")
            continue
        parameter = positional[index]
        documented.add(parameter.name)
        if parameter.name != name:
            problems.append(f"{where}: positional parameter {name!r} is {parameter.name!r} "
                            f"in the code")
            continue
        compare_default(name, default, parameter)
    if shown.vararg is not None:
        varargs = [p for p in real if p.kind is p.VAR_POSITIONAL]
        if not varargs:
            problems.append(f"{where}: *{shown.vararg.arg}: the code takes no *args")
        documented.update(p.name for p in varargs)
    for argument, default in zip(shown.kwonlyargs, shown.kw_defaults, strict=True):
        name = argument.arg
        parameter = by_name.get(name)
        if parameter is None:
            problems.append(f"{where}: {name} is no parameter of the code")
            continue
        documented.add(name)
        if parameter.kind is not parameter.KEYWORD_ONLY:
            problems.append(f"{where}: {name} is shown after `*` but is not keyword-only")
        compare_default(name, default, parameter)
    if shown.kwarg is not None:
        if not any(p.kind is p.VAR_KEYWORD for p in real):
            problems.append(f"{where}: **{shown.kwarg.arg}: the code takes none")
        documented.update(p.name for p in real if p.kind is p.VAR_KEYWORD)
    if complete:
        missing = [p.name for p in real if p.name not in documented]
        if missing:
            problems.append(f"{where}: the code also takes {missing}")
    return problems


def readme_api_rows() -> Iterator[tuple[int, str, str]]:
    """(line, name, signature cell) of each row of the README's API tables."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## The API")
    end = readme.index("\n## ", start + 1)
    for match in re.finditer(r"^\| `([\w.]+)` \| (.*?) \| .* \|$", readme[start:end], re.MULTILINE):
        yield line_of(readme, start + match.start()), match.group(1), match.group(2)


def readme_api_signatures() -> Iterator[tuple[str, object, ast.arguments, bool]]:
    """(where, the object, the call shown, whether it must be complete) for
    each row of the README's API tables that shows a signature."""
    for line, name, cell in readme_api_rows():
        target = api_object(name)
        if target is None or not callable(target):
            continue
        short = name.rpartition(".")[2]
        aliases = {short, "OrderSaga"} if short == "Saga" else {short}
        for span in CODE_SPAN.findall(cell):
            parsed = parsed_signature(span)
            if parsed and parsed[0] in aliases:
                exception = isinstance(target, type) and issubclass(target, BaseException)
                yield f"README.md:{line} ({name})", target, parsed[1], not exception
                break


README_SIGNATURES = list(readme_api_signatures())


def test_the_readme_signatures_are_found() -> None:
    shown = {where.split("(")[1].rstrip(")") for where, _, _, _ in README_SIGNATURES}
    assert {"Saga", "Saga.run", "Saga.resume", "RetryPolicy", "CircuitBreaker", "SQLiteSagaStore",
            "recover", "RecoveryWorker", "SagaFailed", "SubSaga"} <= shown


@pytest.mark.parametrize(
    ("where", "target", "call", "complete"), README_SIGNATURES,
    ids=[row[0] for row in README_SIGNATURES],
)
def test_readme_api_signatures_are_the_codes(
    where: str, target: object, call: ast.arguments, complete: bool
) -> None:
    """Each signature of the README's API tables names every parameter of
    the code (an exception's constructor: those it shows), in its kind
    (positional, or keyword-only after ``*``), with the code's default."""
    problems = check_signature(where, target, call, complete=complete)
    assert not problems, "\n".join(problems)


def prose_signatures() -> Iterator[tuple[str, object, ast.arguments]]:
    """Signatures the pages spell out in a code span (``*`` or ``->`` in it)."""
    for page in PAGES:
        text = prose(page).replace("\n", " ")  # a span may wrap
        for match in re.finditer(r"`([^`]+)`", text):
            span = match.group(1)
            if not re.search(r"[(,]\s*\*\s*[,)]|\)\s*->", span):  # "*," or "-> T"
                continue
            parsed = parsed_signature(span)
            if parsed is None:
                continue
            name, call = parsed
            target = None
            for candidate in (name, f"Saga.{name}", f"RecoveryWorker.{name}",
                              f"fallback_saga.store.postgres.{name}",
                              f"fallback_saga.store.postgres_breaker.{name}",
                              f"fallback_saga.otel.{name}", f"fallback_saga.console.{name}"):
                try:
                    target = api_object(candidate)
                except ImportError:  # an extra that is not installed
                    target = None
                if target is not None:
                    break
            if target is None or not callable(target):
                continue
            yield f"{page.name}:{line_of(prose(page), match.start())}", target, call


PROSE_SIGNATURES = list(prose_signatures())


def test_prose_signatures_are_found() -> None:
    found = {where.split(":")[0] for where, _, _ in PROSE_SIGNATURES}
    assert {"README.md", "durability.md", "scaling.md"} <= found


@pytest.mark.parametrize(
    ("where", "target", "call"), PROSE_SIGNATURES, ids=[row[0] for row in PROSE_SIGNATURES]
)
def test_prose_signatures_show_the_codes_defaults(
    where: str, target: object, call: ast.arguments
) -> None:
    problems = check_signature(where, target, call, complete=False)
    assert not problems, "\n".join(problems)


def test_the_signature_check_can_fail() -> None:
    def sample(a: int, /, b: int = 1, *, c: float = 2.0, d: str = "x") -> None: ...

    def check(span: str, complete: bool = False) -> list[str]:
        parsed = parsed_signature(span)
        assert parsed is not None
        return check_signature("here", sample, parsed[1], complete=complete)

    assert check("sample(a, b=1, *, c=2.0, d='x')", complete=True) == []
    assert check("sample(a, b=2)")  # wrong default
    assert check("sample(a, b=1, c=2.0)")  # c shown positional-capable
    assert check("sample(a, b=1, *, c)")  # c shown required
    assert check("sample(a, *, e=1)")  # no such parameter
    assert check("sample(z, b=1)")  # wrong positional name
    assert check("sample(a, b=1)", complete=True)  # c and d missing



# ------------------------------------------------------------------ numbers


def documented_numbers() -> list[tuple[str, str, object]]:
    """(page, what the page says with ``{}`` for the number, the code's value)."""
    from fallback_saga.class_caches import CLASS_CACHE_BOUND
    from fallback_saga.cli import MAX_CELL, MAX_CONTEXT, MAX_VALUE
    from fallback_saga.cli.inspect import LIST_PAGE
    from fallback_saga.cli.serve import _CONNECTIONS
    from fallback_saga.cli.stores import CONNECT_TIMEOUT
    from fallback_saga.console import ConsoleServer
    from fallback_saga.console._http import HEADER_TIMEOUT, SEND_TIMEOUT
    from fallback_saga.console.query import MAX_PAGE
    from fallback_saga.console.store_counts import SCAN_LIMIT
    from fallback_saga.context import MAX_CONTEXT_DEPTH
    from fallback_saga.definition import MAX_SAGA_NAME_LENGTH, MAX_STEP_NAME_LENGTH
    from fallback_saga.journal import DEFAULT_JOURNAL_RETRY
    from fallback_saga.retry import DEFAULT_COMPENSATION_RETRY
    from fallback_saga.shielding import CLAIM_GRACE
    from fallback_saga.store._common import MAX_SAGA_ID_LENGTH
    from fallback_saga.store._group_commit import MAX_GROUP, SHARE_AT_LEAST
    from fallback_saga.store._responses import MAX_ERROR_TEXT
    from fallback_saga.store._sqlite_runner import _FORK_WAIT
    from fallback_saga.store._sqlite_workers import _ROOMY
    from fallback_saga.store.postgres import PURGE_BATCH as PG_PURGE_BATCH
    from fallback_saga.store.postgres import PURGE_BATCH_MAX, PURGE_BATCH_SECONDS
    from fallback_saga.store.sqlite import PURGE_BATCH, WAL_SIZE_LIMIT
    from fallback_saga.worker import STOP_WAIT

    def default(target: object, name: str) -> object:
        return inspect.signature(target).parameters[name].default  # type: ignore[arg-type]

    console = inspect.signature(ConsoleServer).parameters
    journal, compensation = DEFAULT_JOURNAL_RETRY, DEFAULT_COMPENSATION_RETRY
    max_finished = default(fallback_saga.MemorySagaStore, "max_finished")
    return [
        ("README.md", "keeps at most {:,} finished", max_finished),
        ("mechanics.md", "finished sagas (default {:,};", max_finished),
        ("mechanics.md", "(`lease_seconds`, {:g} s by default", default(fallback_saga.SubSaga,
                                                                        "lease_seconds")),
        ("mechanics.md", "at most `CLASS_CACHE_BOUND` classes ({:,},", CLASS_CACHE_BOUND),
        ("mechanics.md", "(default: {} attempts, 50 ms doubling to 1 s", journal.attempts),
        ("mechanics.md", "{:g} ms doubling to 1 s", journal.delay * 1000),
        ("mechanics.md", "50 ms doubling to {:g} s", journal.max_delay),
        ("mechanics.md", "`RetryPolicy(attempts=3, delay=0.1, backoff=2.0, max_delay={})`",
         compensation.max_delay),
        ("mechanics.md", "`RetryPolicy(attempts={}, delay=0.1, backoff=2.0, max_delay=5.0)`",
         compensation.attempts),
        ("README.md", "Default: {} tries, 0.1 s doubling, capped at 5 s.", compensation.attempts),
        ("README.md", "Default: 3 tries, 0.1 s doubling, capped at {:g} s.",
         compensation.max_delay),
        ("mechanics.md", "`Saga(journal_timeout={})`",
         default(fallback_saga.Saga, "journal_timeout")),
        ("durability.md", "cuts it back to {} MiB", WAL_SIZE_LIMIT // 2**20),
        ("durability.md", "holds half of the disk's free space, until {} MiB are free",
         _ROOMY // 2**20),
        ("durability.md", "The fork waits (up to {:g} s)", _FORK_WAIT),
        ("durability.md", "`fallback_saga.context.MAX_CONTEXT_DEPTH` ({})", MAX_CONTEXT_DEPTH),
        ("durability.md", "a non-empty `str` of at most {} characters", MAX_SAGA_ID_LENGTH),
        ("durability.md", "printable str of at most {} characters", MAX_SAGA_NAME_LENGTH),
        ("durability.md", "checked then too: at most {} characters", MAX_STEP_NAME_LENGTH),
        ("durability.md", "cut to its first {:,} characters", MAX_ERROR_TEXT),
        ("durability.md", "purges {:,} sagas a transaction", PURGE_BATCH),
        ("durability.md", "A batch starts at {:,} sagas", PG_PURGE_BATCH),
        ("durability.md", "it aims at {}, or a quarter",
         {0.25: "a quarter of a second"}.get(PURGE_BATCH_SECONDS, PURGE_BATCH_SECONDS)),
        ("durability.md", "twice as large, up to {:,} sagas", PURGE_BATCH_MAX),
        ("observability.md", "default to `DEFAULT_HOST` (`\"{}\"`: loopback only)",
         default(ConsoleServer, "host")),
        ("observability.md", "`DEFAULT_PORT` (`{}`), as `serve`'s", default(ConsoleServer, "port")),
        ("durability.md", "reads and writes {:,} sagas at a time", LIST_PAGE),
        ("durability.md", "({} characters in a table cell", MAX_CELL),
        ("durability.md", "{} for a value on a line of its own", MAX_VALUE),
        ("durability.md", "{:,} for the context", MAX_CONTEXT),
        ("observability.md", "| `--page-size N` | `{}` |", console["page_size"].default),
        ("observability.md", "sagas per page of the list, 1 to {} |", MAX_PAGE),
        ("observability.md", "read through a pool of at most {} connections", _CONNECTIONS),
        ("observability.md", "It holds at most {} connections.",
         console["max_connections"].default),
        ("observability.md", "arrive within {:g} s of connecting", HEADER_TIMEOUT),
        ("observability.md", "its answer be taken within {:g} s", SEND_TIMEOUT),
        ("observability.md", "cover only its newest {} sagas", SCAN_LIMIT),
        ("observability.md", "(unreachable within {:g} seconds", CONNECT_TIMEOUT),
        ("scaling.md", "at least {} writes", SHARE_AT_LEAST),
        ("scaling.md", "for `STOP_WAIT` ({:g}) seconds", STOP_WAIT),
        ("scaling.md", "up to three times `STOP_WAIT` ({:g} s) past `grace`", 3 * STOP_WAIT),
        ("durability.md", "does not answer within `STOP_WAIT`, {:g} s:", STOP_WAIT),
        ("durability.md", "not answered within `STOP_WAIT` ({:g} s): a store", STOP_WAIT),
        ("durability.md", "if its answer comes within {:g} s more", CLAIM_GRACE),
        ("scaling.md", "`CLAIM_GRACE` ({:g} s) more", CLAIM_GRACE),
        ("scaling.md", "and at most {}; the rest", MAX_GROUP),
        ("scaling.md", "(within {:g} seconds, or the DSN's own `connect_timeout`)",
         CONNECT_TIMEOUT),
    ]


@pytest.mark.parametrize(
    ("page", "phrase", "value"), documented_numbers(),
    ids=[f"{page}: {phrase}" for page, phrase, _ in documented_numbers()],
)
def test_documented_numbers_are_the_codes(page: str, phrase: str, value: object) -> None:
    """A number the pages state (a default, a limit) is the code's: a change
    of the constant must come with the page's."""
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    text = " ".join(path.read_text(encoding="utf-8").split())  # lines rewrapped
    expected = phrase.format(value)
    assert expected in text, f"{page} should say {expected!r} (the code's value is {value!r})"


def test_the_journal_writes_never_retried_are_the_codes() -> None:
    """mechanics.md, "The journal is the truth" (S13): the refusals a
    journal write is not retried on are the ones the code gives up on at
    once — every one named, and no other."""
    from fallback_saga.journal import _DEFINITIVE

    text = " ".join((ROOT / "docs" / "mechanics.md").read_text(encoding="utf-8").split())
    sentence = re.search(r"unavailable store\)\. (.*?) are not retried", text)
    assert sentence is not None
    named = set(re.findall(r"`(\w+)`", sentence.group(1)))
    assert named == {kind.__name__ for kind in _DEFINITIVE}


def test_the_version_is_the_distributions() -> None:
    """README: ``__version__`` is the distribution's version, as in pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert fallback_saga.__version__ == project["version"]


# ------------------------------------------------------------------ the shop session

SESSION_START = "A session with [`examples/shop.py`]"
SESSION_END = "**The demo.**"
# What differs from run to run, in the page and in what is printed alike.
SESSION_NOISE = [
    (re.compile(r"\b\d{4}-\d\d-\d\d(?: \d\d:\d\d:\d\d(?:\.\d+)?)?"), "<time>"),
    (re.compile(r"\b1\d{9}\.\d+"), "<time>"),  # Unix seconds (--json)
    (re.compile(r"\b1\d{12}\b"), "<time>"),  # Unix milliseconds (--mermaid)
    (re.compile(r"\b\d+ms\b"), "<n>ms"),
]


def session_commands(text: str) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of the ```text blocks of ``text``, each with
    the lines the page shows it print."""
    commands: list[tuple[str, list[str]]] = []
    for match in FENCE.finditer(text):
        if match.group("lang").strip() != "text" or not match.group("body").startswith("$ "):
            continue
        for line in match.group("body").splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
    return commands


def session_lines(text: str) -> list[str]:
    for pattern, replacement in SESSION_NOISE:
        text = pattern.sub(replacement, text)
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def session_matches(shown: list[str], printed: list[str]) -> bool:
    """Line by line; a line ``...`` on the page stands for any lines."""
    if not shown:
        return not printed
    if shown[0].strip() == "...":
        return any(session_matches(shown[1:], printed[cut:]) for cut in range(len(printed) + 1))
    return bool(printed) and shown[0] == printed[0] and session_matches(shown[1:], printed[1:])


def test_the_shop_session_of_durability_md_prints_what_the_page_shows(tmp_path: Path) -> None:
    """durability.md's session with examples/shop.py, replayed command by
    command in a copy of examples/: each prints what the page shows (times,
    timestamps and durations aside; ``...`` where the page leaves lines out)."""
    import os
    import shlex
    import subprocess
    import sys

    page = (ROOT / "docs" / "durability.md").read_text(encoding="utf-8")
    text = page[page.index(SESSION_START):page.index(SESSION_END)]
    commands = session_commands(text)
    assert len(commands) >= 15, "the session's commands were not found"
    (tmp_path / "shop.py").write_text(
        (ROOT / "examples" / "shop.py").read_text(encoding="utf-8"), encoding="utf-8"
    )
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("FALLBACK_SAGA_", "SHOP_"))}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")])
    base["COLUMNS"] = "80"  # argparse wraps its usage lines to the terminal
    wrong = []
    for command, shown in commands:
        if command == "cd examples":
            continue
        words = shlex.split(command)
        env = dict(base)
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        assert words[0] == "python", command
        child = subprocess.run(
            [sys.executable, *words[1:]], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=120, check=False,
        )
        printed = child.stdout + child.stderr
        if shown[-1:] == ["Killed"]:  # the shell's word for a SIGKILL
            shown = shown[:-1]
            if child.returncode != -9:
                wrong.append(f"$ {command}: exit status {child.returncode}, not killed")
        if not session_matches(session_lines("\n".join(shown)), session_lines(printed)):
            wrong.append(f"$ {command}\nthe page shows:\n" + "\n".join(shown)
                         + f"\nit printed:\n{printed}")
    assert not wrong, "\n\n".join(wrong)


def test_the_recoverable_store_row_shows_the_protocols_methods_in_full() -> None:
    """README's ``RecoverableStore`` row: each method of the protocol with its
    parameters as the protocol has them, and ``claim`` as the built-in stores
    take it (``names=`` and ``deferred=`` besides), checked against both."""
    from fallback_saga.store import PURGED_BY_DEFAULT
    from fallback_saga.store.postgres import PostgresSagaStore

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if line.startswith("| `RecoverableStore` |")]
    protocol = fallback_saga.RecoverableStore
    methods = {"list_sagas", "claim", "claim_saga", "release", "purge"}
    found: set[str] = set()
    problems: list[str] = []
    NAMESPACE["PURGED_BY_DEFAULT"] = PURGED_BY_DEFAULT
    try:
        for span in CODE_SPAN.findall(row):
            parsed = parsed_signature(span)
            if parsed is None or parsed[0] not in methods:
                continue
            name, call = parsed
            shown = {argument.arg for argument in [*call.args, *call.kwonlyargs]}
            if name == "claim" and "names" in shown:
                found.add("claim (built-in stores)")
                for store in (fallback_saga.SQLiteSagaStore, PostgresSagaStore):
                    problems += check_signature(f"README ({store.__name__}.claim)",
                                                store.claim, call, complete=True)
                continue
            found.add(name)
            problems += check_signature(f"README (RecoverableStore.{name})",
                                        getattr(protocol, name), call, complete=True)
    finally:
        del NAMESPACE["PURGED_BY_DEFAULT"]
    assert found == methods | {"claim (built-in stores)"}, f"shown in full: {sorted(found)}"
    assert not problems, "\n".join(problems)


def public_commands() -> set[str]:
    return {name for name in subcommand_flags() if name and not name.startswith("_")}


def test_the_command_table_rows_are_checked_for_every_command() -> None:
    """The rows of the command tables (README, durability.md) are matched by
    COMMAND for every public command, so their flags are checked."""
    rows = {f"| `{name} ID --db PATH` |" for name in public_commands()}
    matched = {match.group("row") for row in rows for match in COMMAND.finditer(row)}
    assert matched == public_commands()


def test_the_readme_names_every_command() -> None:
    """README's command table has a row for each command, and the
    Documentation section's ``--help`` line names each one."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Command line", 1)[1].split("\n#", 1)[0]
    rows = set(re.findall(r"^\| `python -m fallback_saga ([a-z-]+)", table, re.MULTILINE))
    assert rows == public_commands()
    (line,) = [paragraph for paragraph in readme.split("\n* ")
               if paragraph.startswith("`python -m fallback_saga --help`")]
    named = set(re.findall(r"`([a-z][a-z-]*)[ `]", " ".join(line.split())))
    assert public_commands() <= named, f"not named: {sorted(public_commands() - named)}"


def test_the_readme_command_rows_name_every_option() -> None:
    """Each row of README's command table shows all of its command's options
    (but the store's, described once below the table): a new user reads the
    row, not ``--help`` (``recover --resume-timeout`` was left out once)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Command line", 1)[1].split("\n#", 1)[0]
    store_flags = {"--db", "--dsn", "--schema", "--park-after", "--help", "-h"}
    missing: dict[str, list[str]] = {}
    for name, flags in subcommand_flags().items():
        if name not in public_commands():
            continue
        (row,) = re.findall(rf"^\| `python -m fallback_saga {name} .*$", table, re.MULTILINE)
        shown = set(FLAG.findall(row.split("` |", 1)[0]))
        if left_out := sorted({f for f in flags if f.startswith("--")} - store_flags - shown):
            missing[name] = left_out
    assert not missing, f"options not in their README row: {missing}"


def test_the_json_api_table_names_every_key_the_console_sends() -> None:
    """observability.md's JSON API rows: each key of a saga in the list, and
    each top-level key of one saga, is named (a script reads what it is told of)."""
    from fallback_saga.console.api_json import record_json, summary_json
    from fallback_saga.console.saga_view import SagaView
    from fallback_saga.store.base import SagaRecord
    from fallback_saga.testing import entry

    text = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")

    def row(request: str) -> set[str]:
        (line,) = [line for line in text.splitlines() if line.startswith(f"| `{request}` |")]
        return set(re.findall(r"`(\w+)`", line))

    record = SagaRecord(saga_id="o-1", saga_name="OrderSaga", fingerprint="fp",
                        status=fallback_saga.SagaStatus.RUNNING, context={},
                        history=[entry(0, "Reserve")])
    summary = fallback_saga.SagaSummary(saga_id="o-1", saga_name="OrderSaga",
                                        status=fallback_saga.SagaStatus.RUNNING,
                                        created_at=1.0, updated_at=2.0)
    # The server adds the bars and the page of the history it sends.
    one = {*record_json(SagaView(record, None)), "timeline", "history_page"}
    assert set(summary_json(summary)) <= row("GET /api/sagas"), (
        f"GET /api/sagas: not named: {sorted(set(summary_json(summary)) - row('GET /api/sagas'))}"
    )
    paged = "GET /api/sagas/<id>[?page=N]"
    assert one <= row(paged), f"{paged}: not named: {sorted(one - row(paged))}"


def test_the_readme_states_the_benchmarks_saving_of_max_finished_0() -> None:
    """README says what ``MemorySagaStore(max_finished=0)`` saves twice (its
    operational notes, its performance notes): both as benchmarks/README.md
    measured it."""
    percent = r"(\d+)\u2013(\d+) %"  # an en dash, as the pages write ranges
    bench = " ".join((ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").split())
    measured = re.search(rf"\*\*`max_finished=0`\*\* saves [^(]*\({percent}\)", bench)
    assert measured, "benchmarks/README.md no longer states the saving"
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    stated = re.findall(rf"`MemorySagaStore\(max_finished=0\)`[^.]*?{percent}", readme)
    assert len(stated) == 2, stated
    assert all(found == measured.groups() for found in stated), (stated, measured.groups())


def test_the_readmes_first_commands_start_in_a_virtualenv() -> None:
    """On a fresh machine the OS's Python refuses ``pip install`` (PEP 668):
    the README's first block makes a virtualenv and enters it before the
    install commands (which .ci/run runs as they are written)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = next(match for match in FENCE.finditer(readme) if match.group("lang") == "sh")
    lines = first.group("body").splitlines()
    assert lines[0].split("#")[0].split() == [
        "python3", "-m", "venv", ".venv", "&&", ".", ".venv/bin/activate"
    ]
    assert lines[1:] == ["pip install -e . && python -m fallback_saga demo",
                         'pip install -e ".[dev]" && python -m pytest']
