"""``POST /v1/explain``: token attributions for one input, computed beside the micro-batcher.

Why explanations do not go through the :class:`~bertkit.serve.batching.MicroBatcher`:

- Integrated Gradients costs ``steps`` forward and backward passes: seconds where a prediction
  takes milliseconds. Run in the batcher's model thread, one explanation would hold every
  /v1/predict behind it. So explanations run in a thread of their own, one at a time, and at
  most ``max_queued`` of them are held at once (waiting or running; more: 429).
- captum hooks the word-embedding layer while it attributes, and a hook belongs to the module,
  not to a thread: a prediction running in the batcher's thread at that moment would go
  through it. So explanations run on their own copy of the model and tokenizer (one more
  model in memory, made at the first /v1/explain, not at startup).
- A request that goes away (the client closed the connection, or its time ran out) stops its
  explanation at the next forward pass: a pre-hook on the copy raises :class:`Abandoned`
  (captum removes its own hooks on the way out), so abandoned work costs at most one pass.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from bertkit.explain import Explainable, Explanation, explain, load_explainable
from bertkit.explain.subject import ENCODER, FILL_MASK
from bertkit.tasks.folder import TaskFolder


RETRY_AFTER_S = 5   # what a 429 tells the client to wait: an explanation takes seconds


class ExplainQueueFull(Exception):
    """``max_queued`` explanations are already waiting or running."""

    def __init__(self, held: int, limit: int):
        super().__init__(f"the server is busy: {held} explanations are waiting or running, the "
                         f"limit is {limit}; retry in {RETRY_AFTER_S} s")
        self.retry_after = RETRY_AFTER_S


class Abandoned(Exception):
    """The request of the explanation in progress has gone: stop computing it."""


@dataclass
class ExplainRequest:
    """One explanation asked for (the checked fields of a /v1/explain body)."""
    text: str
    text_pair: str | None
    target: str | None
    method: str
    steps: int
    dropped: bool = False     # set when the request goes away; read by the forward pre-hook


class Explainer:
    """Runs :func:`bertkit.explain.explain` for the served model, one request at a time, in
    its own thread and on its own copy of the model (see the module docstring)."""

    def __init__(self, served, max_queued: int):
        self.served, self.max_queued = served, max_queued
        self._held = 0                        # explanations waiting or running
        self._lock = threading.Lock()         # guards _held (released from the thread)
        self._executor: ThreadPoolExecutor | None = None
        self._subject: Explainable | None = None
        self._current: ExplainRequest | None = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bertkit-explain")

    def stop(self) -> None:
        """Drop what is queued, stop the explanation running at its next forward pass."""
        job = self._current
        if job is not None:
            job.dropped = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, job: ExplainRequest) -> "asyncio.Future[Explanation]":
        """Queue ``job``; its future gives the :class:`Explanation`. Raises
        :class:`ExplainQueueFull` when ``max_queued`` explanations are already held, RuntimeError when stopped."""
        if self._executor is None:
            raise RuntimeError("the server is shutting down")
        with self._lock:
            if self._held >= self.max_queued:
                raise ExplainQueueFull(self._held, self.max_queued)
            self._held += 1
        future: Future = self._executor.submit(self._run, job)
        future.add_done_callback(self._release)   # on completion, failure or cancellation
        return asyncio.wrap_future(future)

    def _release(self, _future: Future) -> None:
        with self._lock:
            self._held -= 1

    def _run(self, job: ExplainRequest) -> Explanation:
        """In the explain thread: the explanation of ``job`` on the private copy."""
        subject = self._private_subject()
        self._current = job
        try:
            return explain(subject, job.text, job.text_pair, target=job.target,
                           method=job.method, steps=job.steps)
        finally:
            self._current = None

    def _private_subject(self) -> Explainable:
        """The copy of the served model the explanations run on (made once, in the thread)."""
        if self._subject is None:
            served = self.served
            model = copy.deepcopy(served.model)
            tokenizer = copy.deepcopy(served.tokenizer)
            model.register_forward_pre_hook(self._stop_if_abandoned)
            if served.predictor is not None:
                predictor = served.predictor
                self._subject = load_explainable(TaskFolder(served.folder, model, tokenizer,
                                                            predictor.task, predictor.settings))
            else:
                kind = FILL_MASK if served.has_mlm else ENCODER
                self._subject = Explainable(served.folder, model, tokenizer, kind)
        return self._subject

    def _stop_if_abandoned(self, _module, _args) -> None:
        job = self._current
        if job is not None and job.dropped:
            raise Abandoned("the request went away")


def explanation_json(explanation: Explanation) -> dict:
    """The answer of /v1/explain: :meth:`Explanation.to_dict` without the per-layer attention
    maps (L x T x T numbers: megabytes for a long text; the [CLS] rollout stays)."""
    answer = explanation.to_dict()
    answer["attention"] = {"rollout_to_cls": answer["attention"]["rollout_to_cls"]}
    return answer
