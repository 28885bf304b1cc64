"""A Parallel member over a context holding many lines (issue #12's long-saga
profile): the member's writes are found by an exact comparison with the
group's start, which skips identical items and equal items of one plain type
and builds a path only for a difference; a member's failed try is restored
from the group's own snapshot, not from a copy taken per member. These
tests pin what those short cuts must still see."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from helpers_saga import Boom, OrderCtx, Probe, Trace, declare, wreck_context

from fallback_saga import Fallback, Parallel, RetryPolicy, SagaContext, SagaStatus
from fallback_saga.models import first_difference


@dataclasses.dataclass
class LinesCtx(SagaContext):
    lines: list[Any] = dataclasses.field(default_factory=list)
    done: int = 0


def _lines() -> list[Any]:
    return [{"line": i, "sku": "ABC-123", "qty": 1, "price": Decimal("1.0"),
             "tags": ["a"]} for i in range(100)]


# (what a member does to line 50, the path first_difference names, what it says)
EQUAL_BUT_NOT_EXACT = [
    (lambda line: line.update(qty=1.0), "['qty']", "an int comes back as a float"),
    (lambda line: line.update(qty=True), "['qty']", "an int comes back as a bool"),
    (lambda line: line.update(price=Decimal("1")), "['price']",
     "a Decimal comes back with another exponent"),
    (lambda line: line.update(sku=type("Sku", (str,), {})("ABC-123")), "['sku']",
     "a str comes back as a Sku"),
    (lambda line: line.update(tags=("a",)), "['tags']", "a list comes back as a tuple"),
]


@pytest.mark.parametrize(("change", "where", "what"), EQUAL_BUT_NOT_EXACT)
async def test_S15_a_members_write_that_is_equal_but_not_exact_reaches_the_context(
    change: Any, where: str, what: str
) -> None:
    """1 == 1.0 == True and Decimal('1.0') == Decimal('1'): a change of type
    or exponent alone is still a write, merged into the saga's context."""

    class Member:
        async def act(self, context: LinesCtx) -> None:
            change(context.lines[50])

        async def compensate(self, context: LinesCtx) -> None:
            pass

    before = _lines()
    ctx = LinesCtx(lines=_lines())
    result = await declare(Parallel(Member), context=LinesCtx)().run(ctx)

    assert result.status is SagaStatus.COMPLETED
    assert first_difference(before, ctx.lines, "lines") == (f"lines[50]{where}", what)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 2], (1, 2), ("x", "a list comes back as a tuple")),
        ([[1], [2]], [[1], (2,)], ("x[1]", "a list comes back as a tuple")),
        ([1, 2], [1, True], ("x[1]", "an int comes back as a bool")),
        ([b"a"], [bytearray(b"a")], ("x[0]", "a bytes comes back as a bytearray")),
        ({"1": 1}, {1: 1}, ("x[<str key>]", "the key is missing")),
        # Keys equal across types (1 == 1.0 == True): the key's own type differs.
        ({"a": 0, 1: 2}, {"a": 0, 1.0: 2}, ("x[1] (the key)", "an int comes back as a float")),
        ({"a": 0, 1: 2}, {True: 2, "a": 0}, ("x[1] (the key)", "an int comes back as a bool")),
        # The same keys in another order are the same dict; a value differs after the turn.
        ({"a": 0, "b": 1}, {"b": 1, "a": 0}, None),
        ({"a": 0, "b": 1}, {"b": 1.0, "a": 0}, ("x['b']", "an int comes back as a float")),
        ([float("nan")], [float("nan")], None),
        ([0.0], [-0.0], ("x[0]", "a float comes back different")),
        ([{"q": [1, {"r": 2}]}], [{"q": [1, {"r": 2.0}]}], ("x[0]['q'][1]['r']",
                                                            "an int comes back as a float")),
    ],
)
def test_S14_first_difference_tells_equal_values_of_other_types_apart(
    a: Any, b: Any, expected: tuple[str, str] | None
) -> None:
    assert first_difference(a, b, "x") == expected


async def test_S15_S2_on_a_nested_context_every_try_starts_from_the_groups_state() -> None:
    """A member's retried primary wrecks every nested level of its copy and
    fails; each try, the fallback and a retried sibling start from the state
    the group began with — restored from the group's snapshot each time, the
    saga's own context untouched until the members complete."""
    trace: Trace = []
    before = Probe("Before", trace, mutate=lambda c: setattr(c, "order_id", "order-2"))
    primary = Probe("Card", trace, error=Boom, mutate=wreck_context, observe=dataclasses.asdict)
    backup = Probe("Invoice", trace, observe=dataclasses.asdict,
                   mutate=lambda c: c.address.lines.append("from-backup"))
    tries: list[int] = []

    def wreck_then_write(c: OrderCtx) -> None:
        tries.append(1)
        if len(tries) == 1:
            wreck_context(c)
        else:
            c.items.append("from-flaky")

    flaky = Probe("Flaky", trace, error=Boom, fail_times=1, mutate=wreck_then_write,
                  observe=dataclasses.asdict)
    flaky.retry = RetryPolicy(attempts=2, delay=0.0, jitter=0.0)  # type: ignore[attr-defined]
    saga = declare(
        before,
        Parallel(
            Fallback(step=primary, fallback=backup,
                     retry=RetryPolicy(attempts=3, delay=0.0, jitter=0.0)),
            flaky,
        ),
    )()
    ctx = OrderCtx()

    result = await saga.run(ctx)

    assert result.status is SagaStatus.COMPLETED
    group_began = dataclasses.asdict(OrderCtx(order_id="order-2"))
    assert primary.seen == [group_began] * 3
    assert backup.seen == [group_began]
    assert flaky.seen == [group_began] * 2
    assert dataclasses.asdict(ctx) == {
        **group_began,
        "items": ["apple", "from-flaky"],
        "address": {"street": "Main St", "lines": ["1", "from-backup"]},
    }
