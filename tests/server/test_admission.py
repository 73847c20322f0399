import asyncio

import pytest

from tercet.server.admission import AdmissionQueue
from tercet.wire.errors import OverloadedError

pytestmark = pytest.mark.anyio


async def test_full_line_is_refused_with_overloaded() -> None:
    queue = AdmissionQueue(max_active=1, max_waiting=1)
    first = queue.join()
    await first.__aenter__()
    waiting = queue.join()
    with pytest.raises(OverloadedError):
        queue.join()
    waiting.leave()
    assert queue.waiting == 0
    await first.__aexit__(None, None, None)


async def test_waiters_run_in_order_once_a_slot_frees() -> None:
    queue = AdmissionQueue(max_active=1, max_waiting=4)
    order: list[int] = []

    async def use(n: int) -> None:
        async with queue.join():
            order.append(n)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(use(n) for n in range(4)))
    assert order == [0, 1, 2, 3]
    assert (queue.active, queue.waiting) == (0, 0)


async def test_a_ticket_steps_aside_while_a_tool_runs() -> None:
    queue = AdmissionQueue(max_active=1, max_waiting=4)
    order: list[str] = []
    tool_running = asyncio.Event()

    async def with_a_tool() -> None:
        ticket = queue.join()
        async with ticket:
            order.append("a generates")
            async with ticket.stepped_aside():
                tool_running.set()
                await asyncio.sleep(0.05)  # the other request runs now
                order.append("a's tool done")
            assert queue.active == 1
            order.append("a goes on")

    async def plain() -> None:
        await tool_running.wait()
        async with queue.join():
            order.append("b generates")

    await asyncio.gather(with_a_tool(), plain())
    assert order == ["a generates", "b generates", "a's tool done", "a goes on"]
    assert (queue.active, queue.waiting) == (0, 0)


async def test_a_request_cancelled_while_aside_takes_no_slot_again() -> None:
    queue = AdmissionQueue(max_active=1, max_waiting=4)
    ticket = queue.join()

    async def cancelled_during_tool() -> None:
        async with ticket, ticket.stepped_aside():
            await asyncio.sleep(10)

    task = asyncio.create_task(cancelled_during_tool())
    await asyncio.sleep(0.01)
    assert queue.active == 0  # aside: the slot is free
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert queue.active == 0
    async with queue.join():  # the one slot is still there, not released twice or lost
        assert queue.active == 1
    assert queue._slots._value == 1  # type: ignore[attr-defined]
