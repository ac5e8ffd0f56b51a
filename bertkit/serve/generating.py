"""``POST /v1/generate``: text generation by a decoder-only LM folder, streamed as server-sent
events.

Serving an LM folder (``bertkit serve --model GPT_FOLDER``): :func:`load_served_language_model`
gives the app a :class:`~bertkit.serve.engine.ServedModel` whose only route is ``generate``
(the BERT routes answer 404 naming it). The route is in the ``/v1`` router: the same API keys,
body size, Content-Type and Host checks as every ``/v1`` route.

Request: ``{"prompt": str, "max_new_tokens"?: int, "do_sample"?: bool, "temperature"?: number,
"top_k"?: int, "top_p"?: number, "repetition_penalty"?: number, "seed"?: int, "stop"?: [str],
"stream"?: bool}``. ``max_new_tokens`` is capped by ``generate_max_new_tokens`` (422 above it)
and by the context left after the prompt (422); a prompt longer than the context is a 422.

Answer with ``"stream": true`` (the default), ``text/event-stream``, one event per token as
soon as it is chosen, then one ``done`` event::

    event: token
    data: {"index": 0, "token_id": 262, "text": " the"}

    event: done
    data: {"text": "...", "tokens": 20, "finish_reason": "length", "last_token_at": 1733.2}

(``last_token_at``: the server's ``time.time()`` when the last token was chosen.) With
``"stream": false``, one JSON object ``{"text", "tokens", "finish_reason"}``.

Why a thread of its own: a generation is ``max_new_tokens`` forward passes, seconds where a
prediction takes milliseconds; in the micro-batcher's thread it would hold every /v1/predict.
Generations run one at a time in their own thread; at most ``generate_max_queued`` are held
(waiting or running; more: 429). A request waits ``request_timeout`` for its first token (503
after). A client that goes away stops its generation at the next token.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at runtime.

import asyncio
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bertkit.config import CONFIG_NAME
from bertkit.jsonfile import read_json_object as read_json_file
from bertkit.modeling.generation import GenerationSettings
from bertkit.serve.engine import ServedModel
from bertkit.serve.limits import (ApiError, Limits, boolean, check_fields, check_text, integer,
                                  read_json_object, text_field)
from bertkit.training.generate import DEFAULT_MAX_NEW_TOKENS, LanguageModel, TextStream, \
    load_language_model

FIELDS = ("prompt", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
          "repetition_penalty", "seed", "stop", "stream")
RETRY_AFTER_S = 5     # what a 429 tells the client to wait: a generation takes seconds
MAX_STOP_STRINGS = 8


def is_language_model_folder(folder: str) -> bool:
    """Whether ``folder`` holds a decoder-only LM (``config.json`` model_type ``gpt2``)."""
    try:
        return read_json_file(f"{folder}/{CONFIG_NAME}").get("model_type") == "gpt2"
    except (OSError, ValueError):
        return False  # not a readable folder: the usual loader says why


def load_served_language_model(folder: str, device: str | None = None) -> ServedModel:
    """An LM folder as the app's served model: routes ``["generate"]``."""
    lm = load_language_model(folder, device)
    served = ServedModel(folder, lm.model, lm.tokenizer, None, "torch",
                         architecture="GPT2LMHeadModel", max_length=lm.context,
                         routes=["generate"])
    served.language_model = lm
    return served


@dataclass
class GenerateJob:
    """One generation asked for (the checked fields of a /v1/generate body)."""
    prompt: str
    settings: GenerationSettings
    seed: int | None
    stop: list[str] | None
    stream: bool
    dropped: bool = False          # set when the request goes away: stop at the next token
    events: "asyncio.Queue" = field(default=None, repr=False)


class Generations:
    """Runs generations for the served LM one at a time in its own thread (module docstring)."""

    def __init__(self, lm: LanguageModel, max_queued: int):
        self.lm, self.max_queued = lm, max_queued
        self._held = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bertkit-generate")

    def submit(self, job: GenerateJob, stream: TextStream) -> None:
        """Queue ``job``; its events arrive on ``job.events``: ``("token", dict)`` per token,
        then ``("done", dict)`` or ``("error", message)``. Raises ApiError 429 when
        ``max_queued`` generations are held."""
        with self._lock:
            if self._held >= self.max_queued:
                raise ApiError(429, "queue_full", f"the server is busy: {self._held} generations "
                               f"are waiting or running, the limit is {self.max_queued}; retry "
                               f"in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
            self._held += 1
        loop = asyncio.get_running_loop()
        job.events = asyncio.Queue()

        def emit(kind: str, value) -> None:
            loop.call_soon_threadsafe(job.events.put_nowait, (kind, value))

        future = self._executor.submit(self._run, job, stream, emit)
        future.add_done_callback(self._release)

    def _release(self, _future) -> None:
        with self._lock:
            self._held -= 1

    @staticmethod
    def _run(job: GenerateJob, stream: TextStream, emit) -> None:
        """In the generation thread: the tokens of ``job``, each emitted as it is chosen."""
        try:
            last = time.time()
            for index, piece in enumerate(stream):
                if job.dropped:
                    return
                last = time.time()
                emit("token", {"index": index, "token_id": piece.token_id, "text": piece.text})
            emit("done", {"text": stream.text, "tokens": stream.tokens,
                          "finish_reason": stream.finish_reason, "last_token_at": last})
        except Exception as e:  # reported to the client as an error event, not lost
            emit("error", f"{type(e).__name__}: {e}")


def generate_job(data: dict, limits: Limits, cap: int) -> GenerateJob:
    """The checked fields of a /v1/generate body (ApiError 422 naming the field)."""
    check_fields(data, FIELDS)
    prompt = text_field(data, "prompt", limits)
    settings = GenerationSettings(
        max_new_tokens=integer(data, "max_new_tokens", min(DEFAULT_MAX_NEW_TOKENS, cap), 1, cap),
        do_sample=boolean(data, "do_sample", False),
        temperature=_number(data, "temperature", 1.0, 1e-3, 100.0),
        top_k=integer(data, "top_k", 0, 0, 1 << 20),
        top_p=_number(data, "top_p", 1.0, 1e-6, 1.0),
        repetition_penalty=_number(data, "repetition_penalty", 1.0, 1e-3, 100.0))
    seed = data.get("seed")
    if seed is not None:
        seed = integer(data, "seed", 0, 0, (1 << 63) - 1)
    stop = data.get("stop")
    if stop is not None:
        if not isinstance(stop, list) or not 1 <= len(stop) <= MAX_STOP_STRINGS:
            raise ApiError(422, "invalid_input", f"'stop' must be a list of 1 to "
                           f"{MAX_STOP_STRINGS} strings")
        for i, text in enumerate(stop):
            check_text(text, f"'stop'[{i}]", limits)
    return GenerateJob(prompt, settings, seed, stop, boolean(data, "stream", True))


def _number(data: dict, name: str, default: float, low: float, high: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(422, "invalid_type", f"{name!r} must be a number, got {value!r}"[:200])
    if not low <= value <= high:
        raise ApiError(422, "invalid_input", f"{name!r} must be between {low} and {high}, got "
                                             f"{value}")
    return float(value)


def _sse(kind: str, value) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(value, ensure_ascii=False)}\n\n".encode("utf-8")


def add_generate_route(v1, service) -> None:
    """POST /v1/generate on the ``/v1`` router of the app's ``service`` (module docstring)."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import Request
    from fastapi.responses import JSONResponse, StreamingResponse

    config, served = service.config, service.served
    lm = getattr(served, "language_model", None)
    generations = Generations(lm, config.generate_max_queued) if lm is not None else None
    cap = config.generate_max_new_tokens

    @v1.post("/generate", summary="generate text (server-sent events)",
             description="The continuation of 'prompt' by the served decoder-only LM, one "
                         "server-sent event per token ('stream': false for one JSON answer). "
                         f"max_new_tokens at most {cap}.")
    async def generate_route(request: Request):
        if generations is None:
            raise ApiError(404, "no_language_model", f"model {service.info['name']} cannot answer "
                           "/v1/generate: it is not a decoder-only LM (serve a folder from "
                           "`bertkit pretrain --model-type gpt`). It serves: "
                           + ", ".join(f"/v1/{r}" for r in service.info["routes"]))
        job = generate_job(await read_json_object(request, config.limits), config.limits, cap)
        request.state.inputs = 1
        try:
            stream = TextStream(lm, job.prompt, job.settings, job.seed, job.stop)
        except ValueError as e:  # the prompt or max_new_tokens do not fit the context
            raise ApiError(422, "invalid_input", str(e)) from None
        generations.submit(job, stream)
        try:  # the first event within the request timeout, else 503 (nothing streamed yet)
            first = await asyncio.wait_for(job.events.get(), config.request_timeout)
        except asyncio.TimeoutError:
            job.dropped = True
            raise ApiError(503, "timeout", f"no token within {config.request_timeout} s: the "
                           "server is busy") from None
        if not job.stream:
            return JSONResponse(await _collect(job, first))
        return StreamingResponse(_events(job, first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _collect(job: GenerateJob, event) -> dict:
    while event[0] == "token":
        event = await job.events.get()
    if event[0] == "error":
        raise ApiError(500, "generation_failed", event[1])
    answer = dict(event[1])
    answer.pop("last_token_at")
    return answer


async def _events(job: GenerateJob, event):
    """The SSE body; the client going away (cancellation) drops the job."""
    try:
        while True:
            yield _sse(*event)
            if event[0] != "token":
                return
            event = await job.events.get()
    finally:
        job.dropped = True
