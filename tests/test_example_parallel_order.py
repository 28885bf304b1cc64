"""examples/parallel_order.py prints its lines in the order docs/examples.md
shows even when the machine stalls one of its services (a busy CI machine
once held a member back 169 ms, and the sleeps alone then reordered the
lines): each service answers only after the one the page shows before it.
The stall is injected (a blocking ``time.sleep`` inside an act, which holds
up the whole event loop, as a loaded machine does), never waited out."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from doc_blocks import ROOT, normalized, page_blocks

EXAMPLE = ROOT / "examples" / "parallel_order.py"


@contextlib.contextmanager
def _example() -> Iterator[Any]:
    spec = importlib.util.spec_from_file_location("parallel_order_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _page_output() -> str:
    [block] = [
        block for block in page_blocks(ROOT / "docs" / "examples.md")
        if block.source.lstrip().startswith('"""Parallel groups and child sagas')
    ]
    assert block.expected is not None
    return block.expected


@pytest.mark.parametrize(
    ("step", "when"),
    [
        ("PickCarrier", "before"),  # what the CI run saw: the child started late
        ("PriceParcel", "before"),
        ("ReserveStock", "before"),
        ("ValidateOrder", "after"),
        ("ChargeCard", "before"),
    ],
)
def test_a_stalled_service_does_not_reorder_the_lines(step: str, when: str) -> None:
    with _example() as example:
        handler = getattr(example, step)
        act = handler.act

        async def stalled(self: Any, context: Any) -> Any:
            if when == "before":
                time.sleep(0.17)  # noqa: ASYNC251  (the injected stall: it holds the loop up)
            result = await act(self, context)
            if when == "after":
                time.sleep(0.17)  # noqa: ASYNC251  (the same, after the act)
            return result

        handler.act = stalled
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            asyncio.run(example.main())
    normalise = ("times",)
    assert normalized(printed.getvalue(), normalise) == normalized(_page_output(), normalise)
