"""Batches that grow with the load: a forward pass starts as soon as one of a few passes is free, with every
request waiting then (up to a maximum).

Serve's `@serve.batch` (Ray 2.60) forms a batch every `batch_wait_timeout_s` whether or not a pass is free to
run it, so under load the passes queue up small batches, and a lone request always waits out the timeout.
Here a batch forms only when a pass is free: a lone request goes straight into the network, and the requests
that arrive while every pass is busy share the next one.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class Batcher:
    """`await batcher(item)` -> `run([..., item, ...])`'s result for `item`; `run` is an async function from a
    list of items to a list of results, in order. At most `passes` calls of `run` at once, each with at most
    `max_batch_size` items. An error in `run` goes to every request of that batch; a request cancelled
    (its client gone) before its batch starts is left out of it."""

    def __init__(self, run: Callable[[list], Awaitable[list]], max_batch_size: int, passes: int):
        if max_batch_size < 1 or passes < 1:
            raise ValueError("max_batch_size and passes must be >= 1")
        self.run, self.max_batch_size, self.passes = run, max_batch_size, passes
        self.waiting: list[tuple[Any, asyncio.Future]] = []
        self.running: set[asyncio.Task] = set()

    async def __call__(self, item):
        result = asyncio.get_running_loop().create_future()
        self.waiting.append((item, result))
        self._start()
        return await result

    def _start(self) -> None:
        while len(self.running) < self.passes:
            self.waiting = [(item, result) for item, result in self.waiting if not result.done()]
            if not self.waiting:
                return
            batch, self.waiting = self.waiting[:self.max_batch_size], self.waiting[self.max_batch_size:]
            task = asyncio.get_running_loop().create_task(self._pass(batch))
            self.running.add(task)

    async def _pass(self, batch: list) -> None:
        try:
            outputs = await self.run([item for item, _ in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(outputs)} results")
            for (_, result), output in zip(batch, outputs):
                if not result.done():
                    result.set_result(output)
        except Exception as error:          # every request of the batch hears of it; the replica goes on
            for _, result in batch:
                if not result.done():
                    result.set_exception(error)
        finally:
            self.running.discard(asyncio.current_task())
            self._start()
