"""The ``bertkit serve`` web app: FastAPI routes over a model folder loaded once.

Routes (``/v1`` ones need ``Authorization: Bearer <key>`` when keys are configured)::

    POST /v1/predict    {"texts": [...], "text_pairs"?: [...]}  or QA {"questions", "contexts"}
                        -> {"predictions": [...]}   (as `bertkit predict` answers)
    POST /v1/embed      {"texts": [...], "normalize"?: bool}   -> {"embeddings": [[...], ...]}
    POST /v1/fill-mask  {"texts": [...], "top_k"?: int}        -> {"results": [...]}
    POST /v1/explain    {"text", "text_pair"?, "target"?, "method"?, "steps"?}  (QA: "question",
                        "context") -> the explanation: words with spans and scores, prediction
    POST /v1/search     {"query": str} or {"queries": [...]}, "top_k"?: int  (with --index INDEX)
                        -> {"results": [{id, text, score, rank}, ...]}  (see searching.py)
    POST /v1/generate   {"prompt", "max_new_tokens"?, sampling options?, "stream"?}  (a GPT
                        folder) -> server-sent events, one per token (see generating.py)
    GET  /v1/info       the model: task, labels, routes (and the index)
    GET  /healthz  /readyz  /metrics  /docs  /          (no key needed)

Model calls go through a :class:`~bertkit.serve.batching.MicroBatcher`; every request is
counted in Prometheus metrics and written as one JSON line to the ``bertkit.serve.access``
logger (method, path, route, status, duration, input count -- never keys, headers or texts).

Bounds: the work held at once (``max_queued_tokens``, else 429 with Retry-After), the wait for
the model (``request_timeout``, else 503), work for a client that has gone (dropped), metric
label values (fixed sets), the Host names answered (``allowed_hosts``, else 400), POST bodies
(application/json only, else 415). With API keys, the open routes say nothing of the model.
Explanations have their own bounds (``explain_max_*``) and thread: see explaining.py.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions'
# annotations (Request) at runtime, and those classes are imported inside the functions that
# build the app.

import asyncio
import json
import logging
import math
import os
import sys
import time
import traceback
import uuid
import warnings
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields

from bertkit.data.tasks import TruncationWarning
from bertkit.explain import METHODS
from bertkit.explain.attributions import MAX_STEPS
from bertkit.serve.auth import (KeyChecker, allowed_host_names, check_allowed_hosts, check_bind,
                                host_allowed, load_api_keys)
from bertkit.serve.batching import MicroBatcher, QueueFull
from bertkit.serve.engine import load_served_model
from bertkit.serve.explaining import (ExplainQueueFull, ExplainRequest, Explainer,
                                      explanation_json)
from bertkit.serve.generating import (add_generate_route, is_language_model_folder,
                                      load_served_language_model)
from bertkit.serve.limits import (ApiError, Limits, boolean, check_fields, choice, integer,
                                  read_json_object, same_length, text_field, text_list)
from bertkit.serve.monitoring import (PredictionMonitor, class_labels, load_training_stats,
                                      watch_queue)
from bertkit.serve.page import render_page
from bertkit.search import read_index_info
from bertkit.serve.searching import (SearchQueueFull, Searcher, index_info, load_search_index,
                                     search_request)
from bertkit.version import __version__

CONFIG_ENV = "BERTKIT_SERVE_CONFIG"  # how `--workers N` hands the settings to each worker
ACCESS_LOG = "bertkit.serve.access"
SERVER_LOG = "bertkit.serve"


@dataclass
class ServeConfig:
    """Everything ``bertkit serve`` takes (the CLI options, one to one)."""
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    runtime: str = "torch"
    device: str | None = None
    api_keys_file: str | None = None
    insecure: bool = False
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_padding: float = 0.25
    max_texts: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    graceful_timeout: float = 30.0
    max_queued_tokens: int = 65_536    # tokens queued or running at once; more: 429
    request_timeout: float = 30.0      # seconds a request may wait for the model; then 503
    allowed_hosts: list[str] = field(default_factory=list)  # Host names beyond the defaults
    # /v1/explain: Integrated Gradients costs `steps` forward+backward passes of the text
    explain_max_chars: int = 2_000     # characters per text (and per pair text / context)
    explain_max_steps: int = MAX_STEPS  # the most IG steps a request may ask for (see below)
    explain_max_queued: int = 4        # explanations waiting or running at once; more: 429
    index: str | None = None           # a search index folder (`bertkit index`): /v1/search
    search_max_queued: int = 16        # searches waiting or running at once; more: 429
    drift_window: int = 500            # inputs the drift signals average over (monitoring.py)
    generate_max_new_tokens: int = 256  # /v1/generate: the most tokens a request may ask for
    generate_max_queued: int = 4       # generations waiting or running at once; more: 429

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def __post_init__(self) -> None:
        if not 0 <= self.max_padding <= 1:
            raise ValueError(f"max_padding must be between 0 and 1, got {self.max_padding}")
        if isinstance(self.max_queued_tokens, bool) or not isinstance(self.max_queued_tokens, int) \
                or self.max_queued_tokens < 1:
            raise ValueError(f"max_queued_tokens must be a whole number of at least 1, got "
                             f"{self.max_queued_tokens!r}")
        if isinstance(self.request_timeout, bool) \
                or not isinstance(self.request_timeout, (int, float)) \
                or not 0 < self.request_timeout < math.inf:
            raise ValueError(f"request_timeout must be a number of seconds above 0, got "
                             f"{self.request_timeout!r}")
        for name in ("explain_max_chars", "explain_max_steps", "explain_max_queued",
                     "search_max_queued", "generate_max_new_tokens", "generate_max_queued"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        self.allowed_hosts = check_allowed_hosts(self.allowed_hosts)

    @property
    def limits(self) -> Limits:
        return Limits(max_texts=self.max_texts, max_chars=self.max_chars,
                      max_body_bytes=self.max_body_bytes)


# ============================================================================ logging


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = record.msg if isinstance(record.msg, dict) else {"message": record.getMessage()}
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), **entry}
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def _json_logger(name: str) -> logging.Logger:
    """A logger writing one JSON object a line to stderr (set up once per process)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


# ============================================================================ metrics


class Metrics:
    """The Prometheus metrics of one app, in its own registry (two apps never share counts)."""

    def __init__(self):
        # prometheus_client is imported when an app is built, not whenever the CLI imports this.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("bertkit_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("bertkit_request_duration_seconds", "time to answer a request",
                                 ["route"], registry=registry,
                                 buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.in_flight = Gauge("bertkit_requests_in_flight", "requests being answered",
                               registry=registry)
        self.batch_size = Histogram("bertkit_batch_size", "inputs per forward pass",
                                    ["route"], registry=registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_requests = Histogram("bertkit_batch_requests",
                                        "requests grouped into one micro-batch", ["route"],
                                        registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.inputs = Counter("bertkit_inputs", "texts (or QA pairs) run through the model",
                              ["route"], registry=registry)
        self.tokens = Counter("bertkit_tokens", "tokens run through the model (special tokens "
                              "included, after truncation)", ["route"], registry=registry)
        self.truncated = Counter("bertkit_truncated_inputs", "inputs longer than the model "
                                 "takes, truncated as `bertkit predict` does", ["route"],
                                 registry=registry)
        self.model = Info("bertkit_model", "the served model", registry=registry)
        self.monitor: PredictionMonitor | None = None  # labels, confidence, drift: create_app

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # as in __init__
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                              "TRACE", "PATCH"})


class _AccessMiddleware:
    """Counts, times and logs every HTTP request; answers an unexpected error with a JSON 500
    so that the client gets the usual error shape and the server keeps going.

    Metric label values come from fixed sets -- the app's route templates and the standard
    methods, anything else "other" -- so made-up paths and methods cannot grow /metrics (each
    new label value is a new series, kept for the life of the process).
    """

    def __init__(self, app, metrics: Metrics, logger: logging.Logger, routes: frozenset[str]):
        self.app, self.metrics, self.logger, self.routes = app, metrics, logger, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        status, started = 500, False

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id",
                                                                  request_id.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        error = None
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:  # noqa: BLE001 -- a bug: logged with its traceback, answered 500
            error = e
            if not started:
                body = json.dumps(ApiError(500, "internal_error", "the server failed to answer "
                                           f"this request (request id {request_id})").body())
                await send_with_id({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"application/json")]})
                await send_with_id({"type": "http.response.body", "body": body.encode()})
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None)
            route = route if route in self.routes else "other"
            method = scope["method"] if scope["method"] in STANDARD_METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            entry = {"event": "request", "request_id": request_id, "method": scope["method"][:32],
                     "path": scope["path"][:512], "route": route, "status": status,
                     "duration_ms": round(elapsed * 1000, 2),
                     "client": (scope.get("client") or ("", 0))[0]}
            inputs = (scope.get("state") or {}).get("inputs")
            if inputs is not None:
                entry["inputs"] = inputs
            if error is not None:
                self.logger.error(entry, exc_info=(type(error), error, error.__traceback__))
            else:
                self.logger.info(entry)


class _HostMiddleware:
    """Answers 400 ``invalid_host`` to a request whose Host header is not on the allow-list
    (``names``; None: any), before any route runs. A keyless server on 127.0.0.1 is safe from
    other machines but not from a web page in the user's browser whose domain was re-pointed
    at 127.0.0.1 (DNS rebinding): such requests carry the page's domain as their Host."""

    def __init__(self, app, names: frozenset[str] | None):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.names is None:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host")
        host = None if host is None else host.decode("latin-1")
        if host_allowed(host, self.names):
            return await self.app(scope, receive, send)
        error = ApiError(400, "invalid_host", f"this server does not answer to the host "
                         f"{host[:100]!r}; it takes " + ", ".join(sorted(self.names))
                         + " (add names with --allowed-hosts)")
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(error.body()).encode()})


class _JSON:
    """JSON responses that also take numpy scalars (QA scores) and keep non-ASCII text."""

    @staticmethod
    def response(content, status_code: int = 200, headers: dict | None = None):
        from fastapi.responses import Response  # FastAPI: imported when an app is built

        def default(value):
            if hasattr(value, "item"):
                return value.item()
            raise TypeError(f"{type(value).__name__} is not JSON serialisable")

        body = json.dumps(content, ensure_ascii=False, separators=(",", ":"), default=default)
        return Response(body, status_code=status_code, headers=headers,
                        media_type="application/json")


# ============================================================================ the app


def _request_schema(properties: dict, required: list[str], example: dict) -> dict:
    """An OpenAPI request body (the routes read their JSON themselves, for clearer errors)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "properties": properties, "required": required,
                   "additionalProperties": False},
        "example": example}}}}


STRINGS = {"type": "array", "items": {"type": "string"}}


@dataclass
class _Service:
    """What the routes of one app share: the settings, the model and the work around it."""
    config: ServeConfig
    served: object  # a bertkit.serve.engine.ServedModel
    info: dict
    keys: KeyChecker
    metrics: Metrics
    batcher: MicroBatcher
    explainer: Explainer
    searcher: Searcher


def create_app(config: ServeConfig, served=None):
    """The FastAPI app serving ``config.model`` (or an already loaded ``served`` model).

    Loads the model and the API keys here, so that a bad folder or keys file fails before the
    server listens.
    """
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import FastAPI

    keys = KeyChecker(load_api_keys(config.api_keys_file))
    if served is None and is_language_model_folder(config.model):
        served = load_served_language_model(config.model, device=config.device)
    elif served is None:
        served = load_served_model(config.model, runtime=config.runtime, device=config.device)
    index = load_search_index(config.index, config.device) if config.index else None
    info = served.info()
    if index is not None:  # the index brings its own encoder: any served folder can search
        info = {**info, "routes": [*info["routes"], "search"], "index": index_info(index)}
    metrics = _model_metrics(info, keys)
    metrics.monitor = PredictionMonitor(metrics.registry, served.tokenizer,
                                        class_labels(served.task, served.labels),
                                        load_training_stats(served.folder), config.drift_window,
                                        public_labels=not keys.enabled)
    service = _Service(config, served, info, keys, metrics, _model_batcher(config, served, metrics),
                       Explainer(served, config.explain_max_queued),
                       Searcher(index, config.search_max_queued))
    watch_queue(metrics.registry, service.batcher, config.max_queued_tokens)
    hosts = allowed_host_names(config.host, config.allowed_hosts)
    app = FastAPI(title="bertkit serve", version=_version(), lifespan=_lifespan(service, hosts),
                  description=_api_description(info, keys))
    app.state.served, app.state.batcher, app.state.metrics = served, service.batcher, metrics
    _add_error_handlers(app)
    v1 = _model_routes(service)
    app.include_router(v1)
    _add_open_routes(app, service)
    # The middleware added last runs first: the access log sees every request, also those the
    # Host check turns away.
    app.add_middleware(_HostMiddleware, names=hosts)
    routes = frozenset(getattr(route, "path", None) for route in [*app.routes, *v1.routes])
    app.add_middleware(_AccessMiddleware, metrics=metrics, logger=_json_logger(ACCESS_LOG),
                       routes=routes - {None})
    return app


def _model_metrics(info: dict, keys: KeyChecker) -> Metrics:
    """A fresh Metrics, its model info set to what the open routes may tell."""
    # With keys, what /v1/info tells (name, task, labels ...) is for key holders only: the
    # open routes (/, /readyz, /docs, /metrics) leave it out.
    public = {"runtime": info["runtime"]} if keys.enabled else info
    metrics = Metrics()
    metrics.model.info({k: json.dumps(v) if isinstance(v, (list, dict, type(None))) else str(v)
                        for k, v in public.items()})
    return metrics


def _model_batcher(config: ServeConfig, served, metrics: Metrics) -> MicroBatcher:
    """The MicroBatcher that runs ``served`` and counts its work in ``metrics``."""

    def run(key, items, wanted):
        results, stats = served.run(key, items, config.max_padding, wanted)
        route = key[0]
        metrics.tokens.labels(route).inc(stats["tokens"])
        metrics.truncated.labels(route).inc(stats["truncated"])
        metrics.inputs.labels(route).inc(stats["inputs"])
        for size in stats["forward_sizes"]:
            metrics.batch_size.labels(route).observe(size)
        if route == "predict":
            metrics.monitor.observe(items, results)
        return results

    def on_batch(key, n_items, n_requests):
        metrics.batch_requests.labels(key[0]).observe(n_requests)

    return MicroBatcher(run, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                        enabled=config.batching, on_batch=on_batch,
                        max_queued=config.max_queued_tokens)


def _lifespan(service: _Service, hosts: frozenset[str] | None):
    """The app's lifespan: start the batcher and the explainer, log the settings; at shutdown
    stop them."""
    config, info, batcher = service.config, service.info, service.batcher
    server_log = _json_logger(SERVER_LOG)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        service.explainer.start()
        service.searcher.start()
        server_log.info({"event": "startup", "model": info["name"], "task": info["task"],
                         "runtime": info["runtime"], "routes": info["routes"],
                         "auth": service.keys.enabled, "batching": config.batching,
                         "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                         "max_padding": config.max_padding,
                         "max_queued_tokens": config.max_queued_tokens,
                         "request_timeout": config.request_timeout,
                         "explain_max_chars": config.explain_max_chars,
                         "explain_max_steps": config.explain_max_steps,
                         "explain_max_queued": config.explain_max_queued,
                         "index": info.get("index", {}).get("name"),
                         "allowed_hosts": "any" if hosts is None else sorted(hosts),
                         "pid": os.getpid()})
        yield
        await batcher.stop()  # uvicorn has let in-flight requests finish before this
        await asyncio.to_thread(service.explainer.stop)
        await asyncio.to_thread(service.searcher.stop)
        server_log.info({"event": "shutdown", "pid": os.getpid()})

    return lifespan


def _api_description(info: dict, keys: KeyChecker) -> str:
    """The /docs page's description (with keys, it says nothing of the model)."""
    if keys.enabled:
        return "The model is described by `GET /v1/info`. Routes under `/v1` need `Authorization: Bearer <key>`."
    return (f"Model **{info['name']}** (task: {info['task']}, architecture: {info['architecture']}). "
            "Routes under `/v1` are open (no API keys configured).")


# ---------------------------------------------------------------------------- errors


def _error_response(error: ApiError):
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else error.headers
    return _JSON.response(error.body(), error.status, headers)


def _add_error_handlers(app) -> None:
    """Every error, ours or FastAPI's, is answered as ``{"error": {code, message}}``."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException  # its 404s, 405s

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error):
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = {404: f"no route {request.url.path}; see /docs",
                   405: f"{request.method} is not allowed on {request.url.path}"}
        return _error_response(ApiError(error.status_code,
                                        codes.get(error.status_code, "http_error"),
                                        message.get(error.status_code, str(error.detail))))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        return _error_response(ApiError(422, "invalid_input", str(error.errors()[:1])))


# ---------------------------------------------------------------------------- /v1


def _model_routes(service: _Service):
    """The ``/v1`` router (behind the API key check when keys are configured)."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import APIRouter, Depends, Request
    from fastapi.security import HTTPBearer  # (built with the app too)

    bearer = HTTPBearer(auto_error=False, description="an API key from --api-keys-file or "
                                                      "$BERTKIT_API_KEYS")

    async def require_key(request: Request, _=Depends(bearer)):
        if not service.keys.check(request.headers.get("authorization")):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send the header "
                           "'Authorization: Bearer <key>'")

    v1 = APIRouter(prefix="/v1", tags=["model"],
                   dependencies=[Depends(require_key)] if service.keys.enabled else [])
    _add_predict_route(v1, service)
    _add_embed_route(v1, service)
    _add_fill_mask_route(v1, service)
    _add_explain_route(v1, service)
    _add_search_route(v1, service)
    add_generate_route(v1, service)

    @v1.get("/info", summary="the served model")
    async def model_info():
        return _JSON.response(service.info)

    return v1


async def _call_model(request, service: _Service, key: tuple, items: list) -> list:
    request.state.inputs = len(items)
    return await _answer_within_limits(request, service.batcher, service.served, service.config,
                                       key, items)


def _unsupported(info: dict, route: str, code: str, need: str) -> ApiError:
    """The 404 for a route this model cannot answer, naming the routes it can."""
    return ApiError(404, code, f"model {info['name']} ({info['architecture']}) cannot answer "
                    f"{route}: {need}. It serves: "
                    + (", ".join(f"/v1/{r}" for r in info["routes"]) or "nothing"))


def _add_predict_route(v1, service: _Service) -> None:
    """POST /v1/predict: one prediction per input, as `bertkit predict` answers."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import Request

    task, limits = service.served.task, service.config.limits
    if task == "qa":
        predict_doc = _request_schema({"questions": STRINGS, "contexts": STRINGS},
                                      ["questions", "contexts"],
                                      {"questions": ["Who wrote it?"],
                                       "contexts": ["It was written by Ada."]})
    else:
        predict_doc = _request_schema({"texts": STRINGS, "text_pairs": STRINGS}, ["texts"],
                                      {"texts": ["a text to classify"]})

    @v1.post("/predict", summary="predict" if service.keys.enabled else
             f"predict ({task or 'no task head'})",
             openapi_extra=predict_doc,
             description="One prediction per input, in order -- as `bertkit predict` answers: "
                         "classification {label, probabilities}, regression {score}, NER "
                         "{entities: [{entity, label, start, end}]}, QA {answer, start, end, "
                         "score}.")
    async def predict(request: Request):
        if task is None:
            raise _unsupported(service.info, "/v1/predict", "no_task_head",
                               "it has no task head (fine-tune it with `bertkit finetune`)")
        items = _predict_items(await read_json_object(request, limits), task, limits)
        results = await _call_model(request, service, ("predict", service.config.max_batch), items)
        return _JSON.response({"predictions": results})


def _predict_items(data: dict, task: str, limits: Limits) -> list:
    """The inputs of a /v1/predict body: texts, (text, pair) tuples, or (question, context)."""
    if task == "qa":
        check_fields(data, ("questions", "contexts"))
        questions = text_list(data, "questions", limits)
        contexts = text_list(data, "contexts", limits)
        same_length("questions", questions, "contexts", contexts)
        return list(zip(questions, contexts))
    check_fields(data, ("texts", "text_pairs"))
    texts = text_list(data, "texts", limits)
    pairs = text_list(data, "text_pairs", limits, required=False)
    if pairs is None:
        return texts
    if task == "ner":
        raise ApiError(422, "invalid_input", "an NER model takes single texts, not text_pairs")
    same_length("texts", texts, "text_pairs", pairs)
    return list(zip(texts, pairs))


def _add_embed_route(v1, service: _Service) -> None:
    """POST /v1/embed: sentence embeddings, as `bertkit embed`."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import Request

    served, limits = service.served, service.config.limits

    @v1.post("/embed", summary="sentence embeddings",
             openapi_extra=_request_schema({"texts": STRINGS, "normalize": {"type": "boolean"}},
                                           ["texts"], {"texts": ["a sentence"], "normalize": True}),
             description="The mean of the encoder's last hidden states over each text's tokens "
                         "(as `bertkit embed`); `normalize` scales them to unit length.")
    async def embed(request: Request):
        if served.encoder is None:
            raise _unsupported(service.info, "/v1/embed", "no_encoder",
                               f"the {service.info['runtime']} runtime has no torch encoder "
                               "(serve with --runtime torch for embeddings)")
        data = await read_json_object(request, limits)
        check_fields(data, ("texts", "normalize"))
        texts = text_list(data, "texts", limits)
        normalize = boolean(data, "normalize", False)
        key = ("embed", normalize, service.config.max_batch)
        return _JSON.response({"embeddings": await _call_model(request, service, key, texts)})


def _add_fill_mask_route(v1, service: _Service) -> None:
    """POST /v1/fill-mask: the top_k tokens for each [MASK] of each text."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import Request

    served, limits = service.served, service.config.limits

    @v1.post("/fill-mask", summary="fill [MASK] tokens",
             openapi_extra=_request_schema({"texts": STRINGS, "top_k": {"type": "integer"}},
                                           ["texts"], {"texts": ["the [MASK] sat on the mat"],
                                                       "top_k": 5}),
             description="Per text, per [MASK] in it: the top_k tokens {token, score, sequence}.")
    async def fill_mask(request: Request):
        if not served.has_mlm:
            raise _unsupported(service.info, "/v1/fill-mask", "no_mlm_head",
                               "it has no masked-language-model head (a folder from "
                               "`bertkit pretrain` has one)")
        data = await read_json_object(request, limits)
        check_fields(data, ("texts", "top_k"))
        texts = text_list(data, "texts", limits)
        top_k = integer(data, "top_k", 5, 1, limits.max_top_k)
        mask = served.tokenizer.mask_token
        for i, text in enumerate(texts):
            if mask not in text:
                raise ApiError(422, "no_mask_token", f"texts[{i}] has no {mask} token")
        results = await _call_model(request, service, ("fill-mask", top_k), texts)
        return _JSON.response({"results": results})


def _add_explain_route(v1, service: _Service) -> None:
    """POST /v1/explain: token attributions for one input (:func:`bertkit.explain.explain`),
    in a thread of its own beside the micro-batcher (see explaining.py)."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import Request

    served, config, metrics = service.served, service.config, service.metrics
    text_name, pair_name = ("question", "context") if served.task == "qa" else ("text", "text_pair")
    example = ({"question": "Who wrote it?", "context": "It was written by Ada."}
               if served.task == "qa" else {"text": "a text to explain", "method": "ig"})
    doc = _request_schema({text_name: {"type": "string"}, pair_name: {"type": "string"},
                           "target": {"type": "string"},
                           "method": {"type": "string", "enum": list(METHODS)},
                           "steps": {"type": "integer", "minimum": 1,
                                     "maximum": config.explain_max_steps}},
                          [text_name], example)

    @v1.post("/explain", summary="explain a prediction", openapi_extra=doc,
             description="Which words pushed the prediction up or down: per target (the "
                         "predicted label, each entity, the answer's start and end, each "
                         "[MASK]) one score per word; words carry their character span and "
                         "segment (0: text/question, 1: pair/context). Methods: ig (Integrated "
                         "Gradients, `steps` passes), gradxinput, occlusion, attention "
                         f"(rollout). Texts up to {config.explain_max_chars} characters.")
    async def explain_route(request: Request):
        if served.runtime != "torch":
            raise _unsupported(service.info, "/v1/explain", "no_gradients",
                               f"explanations need gradients, which the {served.runtime} "
                               "runtime does not compute (serve with --runtime torch)")
        data = await read_json_object(request, config.limits)
        job = _explain_request(data, service, text_name, pair_name)
        request.state.inputs = 1
        explanation = await _explain_within_limits(request, service, job)
        metrics.inputs.labels("explain").inc()
        metrics.tokens.labels("explain").inc(len(explanation.tokens))
        return _JSON.response(explanation_json(explanation))


def _explain_request(data: dict, service: _Service, text_name: str,
                     pair_name: str) -> ExplainRequest:
    """The checked fields of a /v1/explain body."""
    config, served = service.config, service.served
    check_fields(data, (text_name, pair_name, "target", "method", "steps"))
    limits = Limits(max_chars=min(config.max_chars, config.explain_max_chars))
    text = text_field(data, text_name, limits)
    text_pair = text_field(data, pair_name, limits, required=served.task == "qa")
    target = text_field(data, "target", Limits(max_chars=200), required=False)
    method = choice(data, "method", "ig", METHODS)
    steps = _explain_steps(data, config.explain_max_steps)
    if method != "attention" and served.task is None and not served.has_mlm:
        raise ApiError(422, "needs_task_head", f"method {method!r} explains a prediction, and "
                       f"model {service.info['name']} ({service.info['architecture']}) has no "
                       "task head: use method 'attention', or fine-tune it first")
    return ExplainRequest(text, text_pair, target, method, steps)


def _explain_steps(data: dict, max_steps: int) -> int | None:
    """IG steps: the body's (1..max_steps), else None -- as many as completeness needs, which
    the library caps at its MAX_STEPS -- or, where the server allows fewer, max_steps."""
    if data.get("steps") is None:
        return None if max_steps >= MAX_STEPS else max_steps
    return integer(data, "steps", 0, 1, max_steps)


async def _explain_within_limits(request, service: _Service, job: ExplainRequest):
    """The :class:`Explanation` of ``job``, within the explanation bound (429) and the
    request timeout (503); a request that goes away stops its explanation (499)."""
    try:
        answer = service.explainer.submit(job)
    except ExplainQueueFull as e:
        raise ApiError(429, "queue_full", str(e),
                       headers={"Retry-After": str(e.retry_after)}) from None
    except RuntimeError as e:
        raise ApiError(503, "shutting_down", str(e)) from None
    await _wait_for(request, answer, service.config,
                    on_give_up=lambda: setattr(job, "dropped", True))
    try:
        return answer.result()
    except (ValueError, TypeError) as e:  # the input: an unknown target, no [MASK] ...
        raise ApiError(422, "invalid_input", str(e)) from None


def _add_search_route(v1, service: _Service) -> None:
    """POST /v1/search: the nearest documents of the index served with --index (searching.py)."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi import Request

    limits = service.config.limits
    doc = _request_schema({"query": {"type": "string"}, "queries": STRINGS,
                           "top_k": {"type": "integer", "minimum": 1,
                                     "maximum": limits.max_top_k}},
                          [], {"query": "how do I read a file?", "top_k": 5})

    @v1.post("/search", summary="search the index", openapi_extra=doc,
             description="The top_k documents of the index (`bertkit serve --index INDEX`) "
                         "nearest the query by cosine, best first: {id, text, score, rank}. "
                         "'query' answers one list, 'queries' one list per query.")
    async def search_route(request: Request):
        if service.searcher.index is None:
            raise ApiError(404, "no_index", "no search index is loaded: start the server with "
                           "--index INDEX (a folder from `bertkit index`)")
        data = await read_json_object(request, limits)
        queries, single, top_k = search_request(data, limits)
        request.state.inputs = len(queries)
        try:
            job = service.searcher.submit(queries, top_k)
        except SearchQueueFull as e:
            raise ApiError(429, "queue_full", str(e),
                           headers={"Retry-After": str(e.retry_after)}) from None
        except RuntimeError as e:
            raise ApiError(503, "shutting_down", str(e)) from None
        await _wait_for(request, job, service.config)
        try:
            results = job.result()
        except ValueError as e:
            raise ApiError(422, "invalid_input", str(e)) from None
        service.metrics.inputs.labels("search").inc(len(queries))
        return _JSON.response({"results": results[0] if single else results})


# ---------------------------------------------------------------------------- open routes


def _add_open_routes(app, service: _Service) -> None:
    """/healthz, /readyz, /metrics and the / page: no key needed, and with keys they say
    nothing of the model."""
    # FastAPI is imported when an app is built, not whenever the CLI imports this module.
    from fastapi.responses import HTMLResponse, Response

    info, keys, batcher, metrics = service.info, service.keys, service.batcher, service.metrics

    @app.get("/healthz", tags=["ops"], summary="liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="readiness: the model is loaded and served")
    async def readyz():
        if not batcher.running:
            return _error_response(ApiError(503, "not_ready", "the model worker is not running"))
        if keys.enabled:
            return {"status": "ready"}
        return {"status": "ready", "model": info["name"], "task": info["task"]}

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    page = render_page(None if keys.enabled else info, auth=keys.enabled)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)


async def _answer_within_limits(request, batcher: MicroBatcher, served, config: ServeConfig,
                                key: tuple, items: list) -> list:
    """The model's answers for ``items``, within the queue bound (429) and the request
    timeout (503); the job is dropped as soon as the client disconnects (see batching.py)."""
    # Counting tokens is cheap next to the model, but not free: off the event loop.
    cost = sum((await asyncio.to_thread(served.token_lengths, key[0], items))[0])
    job = asyncio.ensure_future(batcher.submit(key, items, cost))
    await _wait_for(request, job, config)
    return _model_answer(job, batcher)


async def _wait_for(request, job: asyncio.Future, config: ServeConfig,
                    on_give_up=None) -> None:
    """Wait until ``job`` is done, within the request timeout (else 503) and while the client
    is there (else 499). Giving up cancels the job, after calling ``on_give_up()``."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({job, gone}, timeout=config.request_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this task is cancelled: the job must not outlive its request
        gone.cancel()
        if not job.done() and on_give_up is not None:
            on_give_up()
        job.cancel()  # a no-op once it is done
    if job in done:
        return
    if gone in done:  # nobody reads this answer; the access log shows the status
        raise ApiError(499, "client_closed_request", "the client closed the connection")
    raise ApiError(503, "timeout", f"no answer within the request timeout of "
                   f"{config.request_timeout:g} s; the server is busy, try again later",
                   headers={"Retry-After": str(math.ceil(config.request_timeout))})


def _model_answer(job: asyncio.Future, batcher: MicroBatcher) -> list:
    """A finished job's result, its errors turned into the answers the client gets."""
    try:
        return job.result()
    except QueueFull as e:
        raise ApiError(429, "queue_full", str(e),
                       headers={"Retry-After": str(e.retry_after)}) from None
    except (ValueError, TypeError) as e:  # the input, not the server (e.g. a lost [MASK])
        raise ApiError(422, "invalid_input", str(e)) from None
    except RuntimeError as e:
        if not batcher.running:
            raise ApiError(503, "shutting_down", str(e)) from None
        raise


async def _client_gone(request) -> None:
    """Returns once the client has closed the connection (call after reading the body: the
    server's next message is then ``http.disconnect``, when it comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _version() -> str:
    return __version__


def app_from_env():
    """App factory for ``uvicorn --factory`` and ``--workers N``: settings come from
    ``$BERTKIT_SERVE_CONFIG`` (JSON of :class:`ServeConfig`), keys from the keys file or
    ``$BERTKIT_API_KEYS``, as the parent process had them."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"${CONFIG_ENV} is not set; start the server with `bertkit serve`")
    config = ServeConfig.from_json(text)
    _quiet_truncation()
    if config.workers > 1:  # N processes share the cores: one model call per core group
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))
    return create_app(config)


def _quiet_truncation() -> None:
    # The predictor warns on every call that truncates; a server counts them instead
    # (bertkit_truncated_inputs_total) rather than print a line per request.
    warnings.filterwarnings("ignore", category=TruncationWarning)


def run_server(config: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish (up to ``graceful_timeout``)."""
    import uvicorn  # imported only to run a server, not whenever the CLI imports this module
    _quiet_truncation()
    if config.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {config.workers}")
    check_bind(config.host, load_api_keys(config.api_keys_file), config.insecure)
    common = dict(host=config.host, port=config.port, access_log=False, log_level="info",
                  timeout_graceful_shutdown=math.ceil(config.graceful_timeout),
                  # h11, whatever else is installed: uvicorn would pick httptools when present
                  # (ray[serve] pulls it in), which answers a made-up method 400, not 405
                  http="h11")
    if config.workers == 1:
        uvicorn.run(create_app(config), **common)
        return
    # Several processes need an import string: each worker builds its own app (and model)
    # from the settings in the environment it inherits.
    if not os.path.isdir(config.model):
        raise FileNotFoundError(f"model folder {config.model} does not exist")
    if config.index:
        read_index_info(config.index)  # a bad index: one line here, not a crash per worker
    os.environ[CONFIG_ENV] = config.to_json()
    uvicorn.run("bertkit.serve.app:app_from_env", factory=True, workers=config.workers, **common)
