"""The permit stack of ``async with breaker:`` blocks (rule S9): which blocks
of one breaker a task is inside, and whether a call is nested in one.

Each breaker keeps, in a context variable, a stack per task of the blocks
entered and not yet left (``Entry``). It answers two questions the breaker's
ways in (``breaker_blocks``, ``breaker_calls``) ask: which permit a block
leaving hands back, and whether a call or a block is *nested* — made while a
guarded call of the same breaker is in progress in the same task — and so
records nothing.

What makes it more than a stack:

* a task started inside a block copies the stack with its context: an entry
  names the task that made it (weakly);
* an async generator parked at a yield inside a block leaves its entry on its
  consumer's stack, and a consumer that drops it (``break`` out of ``async
  for``) leaves it there for good: the generator is closed by asyncio's
  finalizer in a task of its own. A block whose generator's frame has ended
  (or whose exit stack was closed away from the task) is over
  (``block_over``), passed over and dropped;
* a generator parked at a yield inside a block covers neither its
  consumer's calls nor another generator's block: what runs while it is
  parked is no part of its guarded work. But a generator's block covers
  what runs under it (a pipeline's stage over its source), and an
  ``asynccontextmanager``'s body covers what runs in its ``async with``
  (``_parked_elsewhere``). A block entered through an exit stack is the
  block of the frame holding that exit stack in its locals: among the
  frames running the call, the generator that awaited its
  ``enter_async_context`` (3.12+), or the heap is asked, once per exit
  stack;
* a block left by the garbage collector (its task destroyed pending) runs in
  whatever context is current: a gc callback tells the breaker
  (``collecting``), and it leaves the stack alone.

The closed path of ``async with`` (in ``breaker_blocks``, inlined for
speed) uses ``LAST_OWNER`` and ``drop_over``, and records only the frame
entering a block; the rest is asked off it. Nothing here imports from the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from inspect import CO_ASYNC_GENERATOR
from types import AsyncGeneratorType, CodeType, FrameType
from typing import Any, TypeAlias

__all__ = [
    "LAST_OWNER",
    "Entry",
    "block_over",
    "closed_elsewhere",
    "collecting",
    "current_task",
    "drop_over",
    "entered_here",
    "nested",
    "new_stack",
    "thrown_in_at_yield",
    "unstack",
    "watch_collections",
]

# One ``async with`` block on a task's permit stack: its permit (None for a
# nested block, which took none), whether it was let in on the closed path
# (then whether it is nested is only looked at when it leaves, if that
# matters), the task that entered it (weakly; None when no event loop runs),
# the entry below it, and the frame that entered it (an async generator's
# block outlives its place on the stack: see ``block_over``).
Entry: TypeAlias = tuple[
    int | None, bool, weakref.ref[asyncio.Task[Any]] | None, object, FrameType
]

# The frame that runs one step of a task: below it are the event loop's frames
# (None if asyncio changes: walks then go on to the bottom of the stack).
_LOOP_STEP = getattr(getattr(asyncio.events.Handle, "_run", None), "__code__", None)

# ``AsyncExitStack.enter_async_context``: the frame naming a block it enters
# (see ``block_over``).
_ENTER_ASYNC_CONTEXT = contextlib.AsyncExitStack.enter_async_context.__code__
_EXIT_STACK_EXIT = contextlib.AsyncExitStack.__aexit__.__code__

# The exit stacks whose exit ran away from the task whose stack holds their
# blocks' entries (weakly: an exit stack goes with its frame); see
# ``closed_elsewhere``.
_stacks_closed_elsewhere: weakref.WeakSet[object] = weakref.WeakSet()

# What ``asynccontextmanager`` makes (() if contextlib changes: then a
# wrapper's generator is taken for a stream, see ``_wrapper_body``).
_WRAPPER: Any = getattr(contextlib, "_AsyncGeneratorContextManager", ())

# Whether an async generator's code is an ``asynccontextmanager``'s body, by
# code (weakly: a code object goes with its function); see ``_wrapper_body``.
_wrapper_bodies: weakref.WeakKeyDictionary[CodeType, bool] = weakref.WeakKeyDictionary()


def new_stack(name: str) -> ContextVar[Entry | None]:
    """A breaker's permit stack (empty in every task until it enters a block)."""
    return ContextVar(f"fallback_saga_permits_{name}", default=None)


class _Nobody:
    __weakref__: object


class _LastOwner:
    """The weak reference to the task that entered the latest block, kept so
    that the next block of the same task reuses it (a new one per block
    allocates). An object's slot, not a module global: ``breaker_blocks`` reads
    and writes it on its closed path without a function call."""

    __slots__ = ("ref",)

    def __init__(self) -> None:
        self.ref: weakref.ref[Any] = weakref.ref(_Nobody())


LAST_OWNER = _LastOwner()


# The thread in which the garbage collector is running (0: none), set by a
# gc callback. A block left while it runs in this thread is a dead task's: see
# ``GuardedBlocks.__aexit__`` (``breaker_blocks``), which asks only off its
# closed path.
_collecting_in = 0


def _note_collection(
    phase: str, info: dict[str, int], _ident: Callable[[], int] = threading.get_ident
) -> None:
    global _collecting_in
    _collecting_in = _ident() if phase == "start" else 0


def collecting(_ident: Callable[[], int] = threading.get_ident) -> bool:
    """Whether this thread is inside a garbage collection."""
    return _collecting_in != 0 and _collecting_in == _ident()


def watch_collections() -> None:
    """Install the gc callback (once: again if something cleared the list).
    Called when a breaker is made, so that only a program that has one pays
    the callback's two calls per collection."""
    if _note_collection not in gc.callbacks:
        gc.callbacks.append(_note_collection)


def current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop: a coroutine driven by hand
        return None


def entered_here(top: Entry | None) -> bool:
    """Whether ``top`` (a permit stack's top, or None) was entered by the
    current task (or, both without a task, by hand)."""
    if top is None:
        return False
    owner, task = top[2], current_task()
    if owner is None:
        return task is None
    # Without a task, an entry a task made is not ours even when that task is
    # gone (its weak reference then reads None, as the missing task does): a
    # loop callback runs in a copy of the context it was scheduled from.
    return task is not None and owner() is task


def block_over(frame: FrameType) -> bool:
    """Whether the block entered by ``frame`` is over although its entry is
    still on the stack: the block of an async generator that its consumer
    dropped while it was parked inside it (``break`` out of ``async for``),
    closed later by asyncio's finalizer in a task of its own, where the
    block's exit cannot reach this stack. Its frame has ended. A coroutine's
    block is never over here: its task ends it.

    A block entered through ``AsyncExitStack.enter_async_context`` is named
    by that coroutine's frame, which ends at once: the block is over when
    the exit stack it went on was closed elsewhere (``closed_elsewhere``:
    an async generator's stack, dropped with it). A stack whose blocks
    moved on (``pop_all``) is not that one.

    A generator's frame, running or parked, lives in the generator; once it
    has ended, the frame object (held here) owns what it holds, and only then
    does the collector see its code among the frame's referents. (Where it
    stopped tells nothing: a frame that ended re-raising the GeneratorExit
    thrown in at a yield reads as stopped at that yield.)"""
    code = frame.f_code
    if code is _ENTER_ASYNC_CONTEXT:
        return _ended(frame) and _left_exit_stack(frame)
    if not code.co_flags & CO_ASYNC_GENERATOR:
        return False
    return _ended(frame)


def _ended(frame: FrameType) -> bool:
    code = frame.f_code
    return any(referent is code for referent in gc.get_referents(frame))


def _left_exit_stack(frame: FrameType) -> bool:
    """Whether the exit stack that ``frame`` (an ``enter_async_context``
    that has ended: its locals are its own) put a block on was closed
    away from this stack's task."""
    return frame.f_locals.get("self") in _stacks_closed_elsewhere


def closed_elsewhere(caller: FrameType) -> None:
    """A block is left away from the task whose stack holds its entry, from
    ``caller``: when that is an exit stack's exit, its blocks are over
    (``block_over``)."""
    if caller.f_code is _EXIT_STACK_EXIT:
        stack = caller.f_locals.get("self")
        if stack is not None:
            _stacks_closed_elsewhere.add(stack)


def drop_over(top: Entry) -> Entry | None:
    """``top`` without the entries at its top whose blocks are over."""
    entry: Entry | None = top
    while entry is not None and block_over(entry[4]):
        entry = entry[3]  # type: ignore[assignment]
    return entry


def _parked_elsewhere(other: FrameType, block: FrameType | None, frame: FrameType) -> bool:
    """Whether ``other``, the frame naming an outer block, names an async
    generator's block (another than ``block``; its own, or one entered
    through an exit stack it holds) while that generator is parked at a
    yield: not among the frames running ``frame`` (then the call runs under
    it: a pipeline's stage whose block covers its source's, or the
    generator's own call), nor an ``asynccontextmanager``'s body (it covers
    the body of the ``async with`` that entered it, whatever runs there).
    A generator holding the exit stack that is gone (dropped, its finalizer
    to close it in a task of its own) is parked elsewhere too."""
    if other is block:
        return False
    if other.f_code is _ENTER_ASYNC_CONTEXT:
        stack = other.f_locals.get("self")
        if stack is None or _held_by_running(stack, frame):
            # The block of a frame running this call (the usual one: a
            # coroutine's ``async with AsyncExitStack() as stack``, or the
            # generator's own call): it covers the call.
            return False
        # No frame running this call holds the exit stack. It is a parked
        # generator's: a stream's (the consumer's calls while it waits in
        # such a block) or an ``asynccontextmanager``'s (the calls in its
        # ``async with``, one exit stack per use), told by the frame that
        # awaited ``enter_async_context`` when that one holds it (3.12+);
        # else (3.11, or an exit stack held elsewhere than in a local: an
        # object's attribute) the heap is asked, once per exit stack. A
        # failing request handler's block is its own frame's, found above.
        generator = _awaited_by_holder(other, stack)
        if generator is None:
            holder = _stack_holder(stack)
            if holder is None:
                return False  # no generator's: a coroutine's block covers its calls
            held = holder()
            generator = None if held is None else held.ag_frame
            if generator is None:
                return True  # over, or about to be closed elsewhere: covers nothing here
        elif _ended(generator):
            return True  # over: covers nothing here
    elif other.f_code.co_flags & CO_ASYNC_GENERATOR:
        generator = other
    else:
        return False
    running: FrameType | None = frame
    while running is not None:
        if running is generator:
            return False
        running = running.f_back
    return not _wrapper_body(generator)


def _holds(frame: FrameType, value: object) -> bool:
    """Whether one of ``frame``'s locals is ``value`` (by identity: an
    exit stack's ``__eq__`` is no business of ours)."""
    return any(local is value for local in frame.f_locals.values())


def _held_by_running(stack: object, frame: FrameType) -> bool:
    """Whether a frame running ``frame`` (a caller of it, down to the event
    loop: the task's own frames) holds ``stack`` in its locals. A few
    frames' locals, not the heap: this is asked on every failure of a call
    nested in an exit stack's block. ``frame`` itself, the breaker's, holds
    no exit stack and is passed over: before 3.13 reading a frame's locals
    leaves a copy of them on it until it ends, and the breaker's holds the
    error failing the call, whose traceback holds the frame (a cycle)."""
    running = frame.f_back
    while running is not None and running.f_code is not _LOOP_STEP:
        if _holds(running, stack):
            return True
        running = running.f_back
    return False


def _awaited_by_holder(entered: FrameType, stack: object) -> FrameType | None:
    """The frame of the async generator that awaited ``entered`` (an
    ``enter_async_context`` that has ended) and holds ``stack``, the exit
    stack it was called on, in its locals; or None. An ended frame's
    ``f_back`` is the frame that was running under it as it ended (3.12+;
    3.11 clears it): the one that awaited it, unless it was run otherwise
    (a task of its own, ``wait_for``): hence the locals are asked too."""
    awaiter = entered.f_back
    if (
        awaiter is None
        or not awaiter.f_code.co_flags & CO_ASYNC_GENERATOR
        or not _holds(awaiter, stack)
    ):
        return None
    return awaiter


# The async generator holding each exit stack a block was entered through
# (both weakly; None: none holds it); see ``_stack_holder``.
_stack_holders: weakref.WeakKeyDictionary[object, weakref.ref[Any] | None] = (
    weakref.WeakKeyDictionary()
)


def _stack_holder(stack: object) -> weakref.ref[Any] | None:
    """The async generator (weakly) holding ``stack``, the exit stack that a
    block was entered through, or None when no generator holds it. A scan
    of the heap (tens of milliseconds on a large one), once per exit stack,
    and only when no frame running the call holds it (``_parked_elsewhere``).
    (A generator's weak references are cleared before asyncio's finalizer
    takes it back to close it: then the reference reads None.)"""
    try:
        return _stack_holders[stack]
    except KeyError:
        pass
    except TypeError:  # not an exit stack one can refer to weakly
        return None
    generators = [
        referrer for referrer in gc.get_referrers(stack)
        if isinstance(referrer, AsyncGeneratorType)
    ]
    holder = _stack_holders[stack] = (
        weakref.ref(generators[0]) if len(generators) == 1 else None
    )
    return holder


def _wrapper_body(frame: FrameType) -> bool:
    """Whether ``frame``, a parked async generator's, is the body of an
    ``asynccontextmanager``. Asked of the heap (the generator holding the
    frame, what holds the generator) once per code: a function is a wrapper
    or a stream, and the closed path records nothing that would tell."""
    code = frame.f_code
    known = _wrapper_bodies.get(code)
    if known is None:
        known = any(
            isinstance(holder, _WRAPPER)
            for generator in gc.get_referrers(frame)
            if getattr(generator, "ag_frame", None) is frame
            for holder in gc.get_referrers(generator)
        )
        _wrapper_bodies[code] = known
    return known


# The offsets of each async generator's own yields, by code (weakly); see
# ``thrown_in_at_yield``.
_yields: weakref.WeakKeyDictionary[CodeType, frozenset[int]] = weakref.WeakKeyDictionary()


def thrown_in_at_yield(block: FrameType, error: BaseException) -> bool:
    """Whether ``error``, leaving the block ``block`` names, reached it at
    one of its generator's own yields: thrown in by the consumer
    (``athrow``) while the generator was parked there, not raised by the
    block's guarded work. The error's traceback starts at the frame handling
    it, where the block is left: the generator's (its own block, or one
    entered through an exit stack it holds in its locals). Its entry says
    where the generator was when the error came: a ``yield`` of the body,
    not the yield inside an ``await``, which a resumed call fails through.
    An ``asynccontextmanager``'s body is not parked elsewhere: what fails in
    the ``async with`` it wraps is thrown in there, and is its block's
    guarded work. Asked of every block leaving with an error: a coroutine's
    (a request handler's failing ``fetch()``) is told by the first frame's
    flags alone, and nothing here scans the heap but once per code."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    generator = traceback.tb_frame
    code = generator.f_code
    if not code.co_flags & CO_ASYNC_GENERATOR:
        return False  # left from a coroutine: no yield to be parked at
    yields = _yields.get(code)
    if yields is None:
        yields = _yields[code] = _yield_offsets(code)
    if traceback.tb_lasti not in yields:
        return False  # raised by the work (the usual failure), not thrown in
    if generator is not block:
        if block.f_code is not _ENTER_ASYNC_CONTEXT:
            return False
        stack = block.f_locals.get("self")
        if stack is None or not _holds(generator, stack):
            return False  # another generator's block, or another exit stack's
    return not _wrapper_body(generator)


def _yield_offsets(code: CodeType) -> frozenset[int]:
    """Where an exception thrown in at the body's own yields is raised:
    its ``YIELD_VALUE`` (3.11, 3.12) or the ``RESUME`` after it (3.13+),
    told from an ``await``'s by that ``RESUME``'s argument (1: after a
    yield; 3: after an await)."""
    import dis  # only a generator left at a yield with an error gets here

    offsets: set[int] = set()
    previous: dis.Instruction | None = None
    for instruction in dis.get_instructions(code):
        if (instruction.opname == "RESUME" and previous is not None
                and previous.opname == "YIELD_VALUE" and (instruction.arg or 0) & 3 == 1):
            offsets.update((previous.offset, instruction.offset))
        previous = instruction
    return frozenset(offsets)


def nested(
    permits: ContextVar[Entry | None],
    top: Entry | None,
    frame: FrameType,
    block: FrameType | None,
    call_code: CodeType,
    breaker: object,
) -> bool:
    """Whether the call running in ``frame`` (a breaker's ``call``,
    ``__aenter__`` or ``__aexit__``) is nested: made while a guarded call of
    ``breaker`` is in progress in the same task.

    An outer ``async with`` block is on ``top``, this task's permit stack
    (or the part of it below the block leaving); an outer ``call()`` (or
    decorated function) is a frame of ``call_code`` on ``breaker`` below
    ``frame``. A task started inside a guarded call is not nested: it
    copies the permit stack with its context, but the entries name the
    task that made them; and a frame found below the task's own coroutine
    (an eager task runs its first step on its creator's frames) belongs to
    another task. The block of an async generator closed elsewhere (see
    ``block_over``) is passed over, and dropped from the stack when it
    is on top of it.

    The blocks async generators are parked in (at a yield, not running
    this call) are passed over: what runs while a generator is parked is
    no part of its block's guarded work — its consumer's calls and blocks
    (in the body of ``async for``), or another stream's block (two streams
    driven in turn by one task each have a block of their own). ``block``,
    the frame naming an ``async with`` block being entered or left, is not
    an outer one.
    """
    if top is not None:
        task = current_task()
        entry: Entry | None = top
        while entry is not None:
            owner = entry[2]
            if not (owner is None if task is None else owner is not None and owner() is task):
                break  # another task's: so are those below it
            if not block_over(entry[4]) and not _parked_elsewhere(entry[4], block, frame):
                return True
            entry = entry[3]  # type: ignore[assignment]
        if entry is not top and permits.get() is top:
            # Over: its exit ran elsewhere and will not pop it.
            permits.set(drop_over(top))
    own = frame
    while True:
        below = frame.f_back
        if below is None:
            return False
        frame = below
        f_code = frame.f_code
        if f_code is call_code:
            if frame.f_locals.get("self") is breaker:
                return _in_current_task(own, frame)
        elif f_code is _LOOP_STEP:
            return False  # below: the event loop, not this task


def unstack(permits: ContextVar[Entry | None], top: Entry | None, caller: FrameType) -> Entry:
    """Take the entry of the block leaving from ``caller`` off the stack when
    it is not the top one: an async generator parked inside a block entered
    after this one (the consumer dropped it, or drives it on), or a block
    entered and left from two frames (``AsyncExitStack``: then the top one,
    as ever). Entries above it stay, but for blocks that are over."""
    if top is None:
        raise RuntimeError("breaker __aexit__ without a matching __aenter__ in this task")
    above: list[Entry] = []
    entry: Entry | None = top
    while entry is not None and entry[4] is not caller and entered_here(entry):
        above.append(entry)
        entry = entry[3]  # type: ignore[assignment]
    if entry is None or entry[4] is not caller:
        entry, above = top, []  # entered from another frame
    stack = entry[3]
    for kept in reversed(above):
        if not block_over(kept[4]):
            stack = (*kept[:3], stack, kept[4])
    permits.set(stack)  # type: ignore[arg-type]
    return entry


def _in_current_task(own: FrameType, outer: FrameType) -> bool:
    """Whether ``outer``, a caller of ``own`` on the stack, belongs to the
    running task: the task's own coroutine is not between them."""
    task = current_task()
    root = None if task is None else getattr(task.get_coro(), "cr_frame", None)
    if root is None:  # no task, or one that is not a coroutine: nothing to tell them apart
        return True
    running: FrameType | None = own
    while running is not outer:
        if running is root or running is None:
            return False
        running = running.f_back
    return True
