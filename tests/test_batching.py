"""The Serve replica's Batcher: a lone request runs at once, requests waiting while every pass is busy share
the next pass, each gets its own result, errors reach their batch only, a cancelled request is left out."""
from __future__ import annotations

import asyncio

import pytest

from faceseg.serve.batching import Batcher


class Network:
    """A stand-in forward pass that holds each batch until released, and records the batches it saw."""

    def __init__(self):
        self.batches: list[list] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await self.release.wait()
        if "bad" in items:
            raise ValueError("a bad input")
        return [10 * item for item in items]


def test_a_lone_request_goes_straight_into_the_network():
    async def scenario():
        network = Network()
        network.release.set()
        batcher = Batcher(network, max_batch_size=8, passes=2)
        assert await asyncio.wait_for(batcher(3), 1) == 30
        assert network.batches == [[3]]

    asyncio.run(scenario())


def test_requests_waiting_on_busy_passes_share_the_next_ones_in_order():
    async def scenario():
        network = Network()
        batcher = Batcher(network, max_batch_size=4, passes=2)
        calls = [asyncio.create_task(batcher(i)) for i in range(12)]
        await asyncio.sleep(0.05)
        assert network.batches == [[0], [1]]                 # each went in alone; both passes busy, 2..11 wait
        network.release.set()
        assert await asyncio.wait_for(asyncio.gather(*calls), 1) == [10 * i for i in range(12)]
        assert network.batches[2:] == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11]]
        assert not batcher.running and not batcher.waiting

    asyncio.run(scenario())


def test_an_error_reaches_its_own_batch_and_the_batcher_goes_on():
    async def scenario():
        network = Network()
        batcher = Batcher(network, max_batch_size=2, passes=1)
        calls = [asyncio.create_task(batcher(item)) for item in (1, 2, "bad", 5)]
        await asyncio.sleep(0.01)
        network.release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 1)
        assert network.batches == [[1], [2, "bad"], [5]]
        assert outcomes[0] == 10 and outcomes[3] == 50
        assert all(isinstance(outcome, ValueError) for outcome in outcomes[1:3])

    asyncio.run(scenario())


def test_a_request_cancelled_while_waiting_is_left_out_of_its_batch():
    async def scenario():
        network = Network()
        batcher = Batcher(network, max_batch_size=8, passes=1)
        busy = asyncio.create_task(batcher(1))
        await asyncio.sleep(0.01)
        gone, kept = asyncio.create_task(batcher(2)), asyncio.create_task(batcher(3))
        await asyncio.sleep(0.01)
        gone.cancel()                                             # its client went away
        network.release.set()
        assert await asyncio.wait_for(asyncio.gather(busy, kept), 1) == [10, 30]
        assert network.batches == [[1], [3]]

    asyncio.run(scenario())


def test_a_network_that_loses_results_fails_its_requests_instead_of_hanging():
    async def scenario():
        async def lossy(items):
            return items[:1]

        batcher = Batcher(lossy, max_batch_size=4, passes=1)
        calls = [asyncio.create_task(batcher(i)) for i in range(3)]
        outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 1)
        assert outcomes[0] == 0                                   # alone in its batch: one result, as it should
        assert all(isinstance(outcome, RuntimeError) for outcome in outcomes[1:])

    asyncio.run(scenario())


def test_sizes_below_one_are_refused():
    with pytest.raises(ValueError):
        Batcher(Network(), max_batch_size=0, passes=1)
