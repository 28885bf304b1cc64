"""Rule S9 as a state machine: hypothesis drives a CircuitBreaker and a reference model.

Every rule acts on the real breaker through its real calling paths (``call``,
the decorator, ``async with``): a call is started, held inside the guarded
function (a coroutine suspended by hand, in its own context like a task), and
later finished with a success, a counted failure, an excluded error or a
cancellation. Each held call — each permit — is finished exactly once
(``consumes``). Time is a fake clock moved by a rule.

The reference model below is written from DESIGN.md S9 and the breaker's
documented behaviour, independently of its code: CLOSED counts consecutive
failures and opens at ``fail_max``; OPEN rejects for ``reset_timeout``; then
HALF_OPEN admits ``half_open_max_calls`` trials, a success closes and a failure
re-opens; every transition starts a new *round*, and an outcome of a call
admitted in an earlier round changes nothing; a full half-open round that
never reports back is replaced by a new round after another ``reset_timeout``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from helpers_breaker import Boom, BusinessError, FakeClock, HeldCall, StateChanges
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from fallback_saga import CircuitBreaker, CircuitOpenError, CircuitState

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

RESET_TIMEOUT = 10.0  # whole seconds everywhere: the fake clock's arithmetic stays exact


class Declined(Exception):
    """Excluded by a predicate rather than by type."""


@dataclass
class Model:
    fail_max: int
    max_calls: int
    state: CircuitState = CLOSED
    failures: int = 0
    round: int = 0
    open_until: float = 0.0
    round_until: float = 0.0
    trials: int = 0
    transitions: list[tuple[CircuitState, CircuitState]] = field(default_factory=list)

    def move(self, new: CircuitState, now: float) -> None:
        if new is not self.state:
            self.transitions.append((self.state, new))
        self.state = new
        self.round += 1
        self.failures = 0
        self.trials = 0
        if new is OPEN:
            self.open_until = now + RESET_TIMEOUT
        elif new is HALF_OPEN:
            self.round_until = now + RESET_TIMEOUT

    def observe(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.move(HALF_OPEN, now)

    def acquire(self, now: float) -> float | None:
        """None if admitted, else the expected ``retry_after``."""
        self.observe(now)
        if self.state is CLOSED:
            return None
        if self.state is OPEN:
            return self.open_until - now
        if self.trials >= self.max_calls and now >= self.round_until:
            self.round += 1  # a stuck round: start a new one, same state
            self.trials = 0
            self.round_until = now + RESET_TIMEOUT
        if self.trials < self.max_calls:
            self.trials += 1
            return None
        return max(self.round_until - now, 0.0)

    def finish(self, admitted_in: int, outcome: str, now: float) -> None:
        if admitted_in != self.round:
            return  # stale: never a transition
        if outcome == "success":
            if self.state is CLOSED:
                self.failures = 0
            elif self.state is HALF_OPEN:
                self.move(CLOSED, now)
        elif outcome == "failure":
            if self.state is CLOSED:
                self.failures += 1
                if self.failures >= self.fail_max:
                    self.move(OPEN, now)
            elif self.state is HALF_OPEN:
                self.move(OPEN, now)
        elif self.state is HALF_OPEN:  # excluded or cancelled: the permit comes back
            self.trials -= 1


@dataclass(eq=False)
class Permit:
    call: HeldCall
    round: int  # the model's round when the call was admitted
    generation: int  # the breaker's generation when the call was admitted


def raw(breaker: CircuitBreaker) -> tuple[object, ...]:
    """Everything a transition could change, read without side effects."""
    return (
        breaker._state,
        breaker._generation,
        breaker._failures,
        breaker._half_open_in_flight,
        breaker._open_until,
        breaker._half_open_until,
    )


OUTCOMES = ("success", "failure", "excluded_type", "excluded_predicate", "cancelled")


class BreakerMachine(RuleBasedStateMachine):
    permits = Bundle("permits")

    def __init__(self) -> None:
        super().__init__()
        self.outstanding: list[Permit] = []

    @initialize(fail_max=st.integers(1, 4), max_calls=st.integers(1, 3))
    def build(self, fail_max: int, max_calls: int) -> None:
        self.clock = FakeClock(start=100.0)
        self.changes = StateChanges()
        self.breaker = CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=RESET_TIMEOUT,
            half_open_max_calls=max_calls,
            exclude=[BusinessError, lambda error: isinstance(error, Declined)],
            clock=self.clock,
            name="machine",
            listeners=[self.changes],
        )
        self.model = Model(fail_max=fail_max, max_calls=max_calls)

    # ------------------------------------------------------------------ rules

    @rule(target=permits, via=st.sampled_from(HeldCall.VIAS))
    def acquire(self, via: str) -> object:
        expected_retry_after = self.model.acquire(self.clock.now)
        call = HeldCall(self.breaker, via)
        if expected_retry_after is not None:
            with pytest.raises(CircuitOpenError) as rejected:
                call.start()
            assert rejected.value.retry_after == expected_retry_after
            return multiple()
        call.start()  # a CircuitOpenError here: rejected, but the model admits the call
        permit = Permit(call, self.model.round, self.breaker._generation)
        self.outstanding.append(permit)
        return permit

    @rule(permit=consumes(permits), outcome=st.sampled_from(OUTCOMES))
    def finish(self, permit: Permit, outcome: str) -> None:
        self.outstanding.remove(permit)
        stale = permit.round != self.model.round
        before = raw(self.breaker)
        changes_before = len(self.changes.changes)

        if outcome == "success":
            assert permit.call.succeed() == "done"
        else:
            error: BaseException = {
                "failure": Boom("down"),
                "excluded_type": BusinessError("declined"),
                "excluded_predicate": Declined("not found"),
                "cancelled": asyncio.CancelledError(),
            }[outcome]
            came_out = permit.call.raise_inside(error)
            assert came_out is error  # re-raised unchanged, whatever the outcome

        if stale:
            assert raw(self.breaker) == before, "a stale outcome changed the breaker"
            assert len(self.changes.changes) == changes_before
        self.model.finish(permit.round, outcome, self.clock.now)

    @rule(seconds=st.integers(0, 2 * int(RESET_TIMEOUT)))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(float(seconds))

    @rule()
    def read_state(self) -> None:
        self.model.observe(self.clock.now)
        assert self.breaker.state is self.model.state

    @rule()
    def force_open(self) -> None:
        self.breaker.open()
        self.model.move(OPEN, self.clock.now)

    @rule()
    def force_close(self) -> None:
        self.breaker.close()
        self.model.move(CLOSED, self.clock.now)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def half_open_permits_never_exceed_the_limit(self) -> None:
        assert 0 <= self.breaker.half_open_calls_in_flight <= self.breaker.half_open_max_calls

    @invariant()
    def in_flight_counts_exactly_the_live_trials(self) -> None:
        live = sum(1 for p in self.outstanding if p.round == self.model.round)
        if self.breaker._state is HALF_OPEN:
            assert self.breaker.half_open_calls_in_flight == live
        else:
            assert self.breaker.half_open_calls_in_flight == 0

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.breaker._state is self.model.state
        assert self.breaker.failure_count == self.model.failures
        assert self.breaker.half_open_calls_in_flight == self.model.trials
        assert self.changes.edges() == self.model.transitions

    @invariant()
    def staleness_agrees_with_the_model(self) -> None:
        for permit in self.outstanding:
            is_current = permit.generation == self.breaker._generation
            assert is_current == (permit.round == self.model.round)

    def teardown(self) -> None:
        # Hand back every permit still out (as cancellations): nothing stays in flight.
        if not hasattr(self, "breaker"):
            return
        for permit in self.outstanding:
            error = asyncio.CancelledError()
            assert permit.call.raise_inside(error) is error
        self.outstanding.clear()
        assert self.breaker.half_open_calls_in_flight == 0


BreakerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerStateMachine = BreakerMachine.TestCase
