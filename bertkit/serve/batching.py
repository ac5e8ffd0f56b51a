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

The work a server accepts is bounded: each job counts its tokens from :meth:`submit` until
its call is over, and a job that would take the count over ``max_queued`` is refused
(:class:`QueueFull`, answered 429). A job whose request went away (the client closed the
connection, or its time ran out: the awaiting task was cancelled) is dropped: never run if
it is still queued, and skipped between forward passes (``wanted``) if its call has begun.

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
import math
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(eq=False)
class _Job:
    key: Hashable
    items: list
    future: asyncio.Future
    cost: int = 0            # tokens, held in the queue's count until the job is over
    started: bool = False    # handed to ``run``: its tokens are released when the call ends
    dropped: bool = False    # the request went away: skip what has not run yet
    counted: bool = True


class QueueFull(Exception):
    """The server holds as much work as ``max_queued`` allows; try again in ``retry_after`` s."""

    def __init__(self, queued: int, limit: int, retry_after: int):
        super().__init__(f"the server is busy: {queued} tokens are queued, the limit is {limit}; "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


class MicroBatcher:
    """Groups concurrent :meth:`submit` calls into calls of ``run(key, items, wanted)``.

    Args:
        run: a blocking function returning one result per item, in order (runs in a thread).
            It may ask ``wanted(i)`` between pieces of work and skip item ``i`` when False
            (its request has gone; its result is ignored).
        max_batch: the most items grouped into one call (a single larger request still runs
            whole: ``run`` cuts it into batches itself).
        max_wait_ms: how long the first request of a group waits for company.
        enabled: False runs every request alone, in arrival order (for comparison).
        on_batch: called as ``on_batch(key, n_items, n_requests)`` after each call.
        max_queued: the most tokens (the ``cost`` of :meth:`submit`) held at once, queued or
            running (None: no bound). A job is always taken when nothing else is held, so a
            request the per-request limits allow never waits forever.
    """

    def __init__(self, run: Callable[[Hashable, list, Callable[[int], bool]], list],
                 max_batch: int = 32, max_wait_ms: float = 5.0, enabled: bool = True,
                 on_batch: Callable[[Hashable, int, int], None] | None = None,
                 max_queued: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queued is not None and max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.enabled, self.on_batch, self.max_queued = enabled, on_batch, max_queued
        self.queued_tokens = 0
        self._tokens_per_second: float | None = None  # measured, for Retry-After
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

    async def submit(self, key: Hashable, items: list, cost: int = 0) -> list:
        """Run ``items`` (grouped with other requests' items of the same key); their results.

        ``cost`` (tokens) counts against ``max_queued``; :class:`QueueFull` when it does not
        fit. Cancelling the awaiting task drops the job.
        """
        if not self.running:
            raise RuntimeError("the model worker is not running (the server is shutting down)")
        if not items:
            return []
        if (self.max_queued is not None and self.queued_tokens > 0
                and self.queued_tokens + cost > self.max_queued):
            raise QueueFull(self.queued_tokens, self.max_queued, self._retry_after())
        job = _Job(key, list(items), asyncio.get_running_loop().create_future(), cost)
        self.queued_tokens += cost
        job.future.add_done_callback(lambda _: self._on_done(job))
        await self._queue.put(job)
        return await job.future

    def _on_done(self, job: _Job) -> None:
        if job.future.cancelled():
            job.dropped = True  # read by the model thread between passes (a plain flag)
        if not job.started:     # never run: nothing holds its tokens any more
            self._release(job)

    def _release(self, job: _Job) -> None:
        if job.counted:
            self.queued_tokens -= job.cost
            job.counted = False

    def _retry_after(self) -> int:
        """Seconds until the work held now is likely done (1-60; 1 before any measurement)."""
        if not self._tokens_per_second:
            return 1
        return max(1, min(60, math.ceil(self.queued_tokens / self._tokens_per_second)))

    # ------------------------------------------------------------------ worker
    async def _worker(self) -> None:
        stop = False
        while not stop:
            job = await self._queue.get()
            if job is None:
                break
            if job.future.done():  # dropped while queued: never run
                continue
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
            if not job.future.done():
                jobs.append(job)
                count += len(job.items)
        return False

    async def _run_group(self, key: Hashable, group: list[_Job]) -> None:
        for job in group:
            if job.future.done():  # dropped while gathering (or during a failed group call)
                self._release(job)
        group = [job for job in group if not job.future.done()]
        if not group:
            return
        loop = asyncio.get_running_loop()
        items = [item for job in group for item in job.items]
        owners = [job for job in group for _ in job.items]
        for job in group:
            job.started = True
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run, key, items,
                                                 lambda i: not owners[i].dropped)
        except Exception as error:  # noqa: BLE001 -- handed to the request(s)
            if len(group) > 1:  # find the request at fault: run each alone
                for job in group:
                    job.started = False
                    await self._run_group(key, [job])
                return
            self._finish(group)
            _resolve(group[0].future, error=error)
            return
        self._finish(group, time.perf_counter() - start)
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

    def _finish(self, group: list[_Job], seconds: float | None = None) -> None:
        """Release the group's tokens; measure the speed that Retry-After is estimated from."""
        tokens = sum(job.cost for job in group if not job.dropped)
        for job in group:
            self._release(job)
        if seconds and tokens:
            rate = tokens / seconds
            old = self._tokens_per_second
            self._tokens_per_second = rate if old is None else 0.8 * old + 0.2 * rate


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
