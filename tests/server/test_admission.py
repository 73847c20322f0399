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
