"""``POST /v1/search``: the documents of a search index nearest a query (``bertkit serve
--index INDEX``).

The index carries its own encoder -- the model it was built with, named in its index.json --
so the served model may be any folder (a classifier, a NER model ...): searching never goes
through it or its :class:`~bertkit.serve.batching.MicroBatcher`. Searches run one at a time
in a thread of their own (embedding the queries is model work: off the event loop), at most
``max_queued`` held at once (more: 429), within the request timeout like every route.

Body: ``{"query": "text"}`` or ``{"queries": ["text", ...]}``, and ``"top_k"`` (default 10).
Answer: ``{"results": [{"id", "text", "score", "rank"}, ...]}`` for ``query``; for
``queries`` one such list per query, in order.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from bertkit.search import SearchIndex
from bertkit.serve.limits import (ApiError, Limits, check_fields, integer, text_field,
                                  text_list)

RETRY_AFTER_S = 1      # what a 429 tells the client to wait: a search takes milliseconds
DEFAULT_TOP_K = 10


class SearchQueueFull(Exception):
    """``max_queued`` searches are already waiting or running."""

    def __init__(self, held: int, limit: int):
        super().__init__(f"the server is busy: {held} searches are waiting or running, the "
                         f"limit is {limit}; retry in {RETRY_AFTER_S} s")
        self.retry_after = RETRY_AFTER_S


def load_search_index(path: str, device: str | None = None) -> SearchIndex:
    """The index folder ``path`` opened for serving (its own model embeds the queries)."""
    return SearchIndex.load(path, device=device)


def index_info(index: SearchIndex) -> dict:
    """What /v1/info tells of the index (folder names only, no paths)."""
    return {"name": os.path.basename(os.path.normpath(index.folder)), "documents": len(index),
            "kind": index.info.kind, "dimension": index.info.dimension,
            "model": os.path.basename(os.path.normpath(index.encoder.folder))}


def search_request(data: dict, limits: Limits) -> tuple[list[str], bool, int]:
    """The checked fields of a /v1/search body: the queries, whether it asked for one
    (``query``) rather than a list (``queries``), and top_k."""
    check_fields(data, ("query", "queries", "top_k"))
    if ("query" in data) == ("queries" in data):
        raise ApiError(422, "missing_field" if "query" not in data else "invalid_input",
                       "give either 'query' (a string) or 'queries' (a list of strings)")
    top_k = integer(data, "top_k", DEFAULT_TOP_K, 1, limits.max_top_k)
    if "query" in data:
        return [text_field(data, "query", limits)], True, top_k
    return text_list(data, "queries", limits), False, top_k


class Searcher:
    """Runs :meth:`SearchIndex.search` for the routes, one search at a time, in its own
    thread (``index`` None: no index is served)."""

    def __init__(self, index: SearchIndex | None, max_queued: int):
        self.index, self.max_queued = index, max_queued
        self._held = 0                     # searches waiting or running
        self._lock = threading.Lock()      # guards _held (released from the thread)
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self.index is not None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="bertkit-search")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, queries: list[str], top_k: int) -> "asyncio.Future[list[list[dict]]]":
        """Queue a search; its future gives one list of hits per query. Raises
        :class:`SearchQueueFull` when ``max_queued`` searches are held, RuntimeError when
        stopped."""
        if self._executor is None:
            raise RuntimeError("the server is shutting down")
        with self._lock:
            if self._held >= self.max_queued:
                raise SearchQueueFull(self._held, self.max_queued)
            self._held += 1
        future: Future = self._executor.submit(self.index.search, queries, top_k)
        future.add_done_callback(self._release)  # on completion, failure or cancellation
        return asyncio.wrap_future(future)

    def _release(self, _future: Future) -> None:
        with self._lock:
            self._held -= 1
