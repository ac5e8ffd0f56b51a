"""Micro-batching: concurrent requests share one forward pass.

A model call on B texts costs far less than B calls on one text (one kernel launch per layer
instead of B, and matrix products that use the cores well), so under concurrent load the
server groups what arrives close together::

    request ──submit(key, items)──▶ queue ──▶ worker: first job, then more jobs until
        ``max_batch`` items or ``max_wait_ms`` passed ──▶ one run(key, items) per key in a
        thread ──▶ results split back to each request, in its own order

Only jobs with the same key (the same route and options, e.g. ``("embed", normalize)``)
share a call. The model runs in one thread, so calls never compete for the cores; while it
runs, new requests queue up and form the next batch. If a grouped call fails, each request is
run alone, so a bad input fails only the request that sent it.

Inside a call, :func:`length_buckets` sorts the items by token count and cuts them into
forward passes of similar length. Padding is real work on a CPU: a batch of texts of 5 to 150
tokens padded to the longest costs about twice the same texts run one by one (measured with
all-MiniLM-L6-v2, where one text of ~80 tokens already keeps the matrix units busy). So a
forward pass takes texts while padding stays under ``max_padding`` of its tokens: short,
similar texts share passes (what pays off for small models and on GPUs), very different
lengths do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass
class _Job:
    key: Hashable
    items: list
    future: asyncio.Future


class MicroBatcher:
    """Groups concurrent :meth:`submit` calls into calls of ``run(key, items) -> results``.

    Args:
        run: a blocking function returning one result per item, in order (runs in a thread).
        max_batch: the most items grouped into one call (a single larger request still runs
            whole: ``run`` cuts it into batches itself).
        max_wait_ms: how long the first request of a group waits for company.
        enabled: False runs every request alone, in arrival order (for comparison).
        on_batch: called as ``on_batch(key, n_items, n_requests)`` after each call.
    """

    def __init__(self, run: Callable[[Hashable, list], list], max_batch: int = 32,
                 max_wait_ms: float = 5.0, enabled: bool = True,
                 on_batch: Callable[[Hashable, int, int], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.enabled, self.on_batch = enabled, on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    async def start(self) -> None:
        """Start the worker (call from the event loop that will submit)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bertkit-model")
        self._stopping = False
        self._task = asyncio.create_task(self._worker(), name="bertkit-batcher")

    async def stop(self) -> None:
        """Finish every job already submitted, then stop the worker."""
        if self._task is None:
            return
        self._stopping = True
        await self._queue.put(None)
        await self._task
        self._executor.shutdown(wait=True)
        self._task = None

    async def submit(self, key: Hashable, items: list) -> list:
        """Run ``items`` (grouped with other requests' items of the same key); their results."""
        if not self.running:
            raise RuntimeError("the model worker is not running (the server is shutting down)")
        if not items:
            return []
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(key, list(items), future))
        return await future

    # ------------------------------------------------------------------ worker
    async def _worker(self) -> None:
        stop = False
        while not stop:
            job = await self._queue.get()
            if job is None:
                break
            jobs = [job]
            if self.enabled:
                stop = await self._gather(jobs)
            groups: dict[Hashable, list[_Job]] = {}
            for j in jobs:
                groups.setdefault(j.key, []).append(j)
            for key, group in groups.items():
                await self._run_group(key, group)

    async def _gather(self, jobs: list[_Job]) -> bool:
        """Add queued jobs to ``jobs`` until max_batch items or max_wait; True on stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        count = len(jobs[0].items)
        while count < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if job is None:
                return True
            jobs.append(job)
            count += len(job.items)
        return False

    async def _run_group(self, key: Hashable, group: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for job in group for item in job.items]
        try:
            results = await loop.run_in_executor(self._executor, self.run, key, items)
        except Exception as error:  # noqa: BLE001 -- handed to the request(s)
            if len(group) > 1:  # find the request at fault: run each alone
                for job in group:
                    await self._run_group(key, [job])
                return
            _resolve(group[0].future, error=error)
            return
        if self.on_batch is not None:
            self.on_batch(key, len(items), len(group))
        if len(results) != len(items):
            error = RuntimeError(f"run returned {len(results)} results for {len(items)} items")
            for job in group:
                _resolve(job.future, error=error)
            return
        start = 0
        for job in group:
            _resolve(job.future, results[start:start + len(job.items)])
            start += len(job.items)


def length_buckets(lengths: list[int], max_batch: int,
                   max_padding: float = 0.25) -> list[list[int]]:
    """Indices of ``lengths`` cut into forward passes: longest first, each pass at most
    ``max_batch`` items and at most ``max_padding`` (0-1) of its padded tokens padding
    (``max_padding=1``: just ``max_batch`` items a pass, in length order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        if current:
            padded = lengths[current[0]] * (len(current) + 1)        # the first is the longest
            if len(current) >= max_batch or 1 - (real + lengths[i]) / max(padded, 1) > max_padding:
                passes.append(current)
                current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        passes.append(current)
    return passes


def _resolve(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
