"""``bertkit serve --ray``: the same app (routes, API keys, limits, micro-batching, metrics) as
replicas of a Ray Serve deployment, scaled between ``min_replicas`` and ``max_replicas`` by
Ray's autoscaler on the requests each replica has in flight.

::

    client ──HTTP──▶ Ray Serve proxy (host:port) ──▶ replica 1: create_app(config)  (model,
                                                  └─▶ replica 2: create_app(config)   batcher,
                                                  └─▶ ...  (autoscaled)               metrics)

Each replica builds its app with :func:`bertkit.serve.app.create_app` from the
:class:`~bertkit.serve.app.ServeConfig` (FastAPI's lifespan starts its micro-batcher), so a
replica answers exactly what one ``bertkit serve`` process answers; requests a replica gets
at once share its forward passes. Every answer carries the ``x-bertkit-replica`` header.
``/metrics`` through the proxy is the metrics of the replica that answered: scrape each
replica, or use Ray's own metrics (``ray_serve_*``), to see the whole deployment.

Two ways to start it::

    bertkit serve --model DIR --ray --min-replicas 1 --max-replicas 4 --target-ongoing-requests 4
    serve run bertkit.serve.ray:app model=DIR min_replicas=1 max_replicas=4

Ray itself is an optional extra (``pip install bertkit[ray]``); this module imports it only
when a deployment is built. Multi-machine: ``ray start --head`` on one machine, ``ray start
--address HEAD:6379`` on the others, then ``--ray-address auto`` (docs/deploy.md).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, fields

from bertkit.serve.app import ServeConfig, create_app
from bertkit.serve.auth import check_bind, load_api_keys

APP_NAME = "bertkit"
REPLICA_HEADER = "x-bertkit-replica"
KEYS_ENV = "BERTKIT_API_KEYS"


@dataclass
class RayOptions:
    """How the deployment scales (Ray Serve's ``autoscaling_config``) and where it runs."""
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 4.0  # requests in flight per replica the scaler aims at
    max_ongoing_requests: int = 64        # a replica takes at most this many at once
    upscale_delay_s: float = 30.0         # load must last this long before a replica is added
    downscale_delay_s: float = 120.0      # ... or be gone this long before one is removed
    look_back_period_s: float = 30.0      # the window the load is averaged over
    replica_cpus: float = 1.0             # CPUs Ray reserves per replica (= torch threads)
    address: str | None = None            # a Ray cluster ("auto", "HOST:6379"); None: local

    def __post_init__(self) -> None:
        for name in ("min_replicas", "max_replicas", "max_ongoing_requests"):
            value = getattr(self, name)
            low = 0 if name == "min_replicas" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at "
                                 f"least {low}, got {value!r}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"--max-replicas {self.max_replicas} is below --min-replicas "
                             f"{self.min_replicas}")
        for name in ("target_ongoing_requests", "replica_cpus", "upscale_delay_s",
                     "downscale_delay_s", "look_back_period_s"):
            value = getattr(self, name)
            positive = name in ("target_ongoing_requests", "look_back_period_s")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or value < 0 or (positive and value == 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a number "
                                 f"{'above' if positive else 'of at least'} 0, got {value!r}")

    def autoscaling_config(self) -> dict:
        """Ray Serve's ``autoscaling_config`` of these options."""
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
                "look_back_period_s": self.look_back_period_s,
                **({} if self.look_back_period_s > 10 else  # Ray's report interval is 10 s:
                   {"metrics_interval_s": self.look_back_period_s / 2})}  # several a window


class ReplicaHeader:
    """ASGI middleware: every HTTP answer names the replica that made it."""

    def __init__(self, app, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_replica(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (REPLICA_HEADER.encode(), self.replica)]
            await send(message)

        await self.app(scope, receive, send_with_replica)


def build_replica_app(config_json: str, threads: int, replica: str):
    """The ASGI app of one replica: ``create_app`` of the settings, with the replica header."""
    # torch is already loaded by bertkit.serve.app; one replica's share of the cores.
    import torch  # (a deferred heavy import: only replicas set their thread count)
    torch.set_num_threads(max(1, threads))
    app = create_app(ServeConfig.from_json(config_json))
    app.add_middleware(ReplicaHeader, replica=replica)
    return app


def ray_app(config: ServeConfig, options: RayOptions):
    """The bound Ray Serve application (``serve.run`` it) of ``config`` and ``options``."""
    # Ray is an optional extra (bertkit[ray]), imported only to build a deployment.
    from ray import serve
    if not os.path.isdir(config.model):
        raise FileNotFoundError(f"model folder {config.model} does not exist")
    check_bind(config.host, load_api_keys(config.api_keys_file), config.insecure)

    @serve.ingress()
    class BertkitReplica:
        """One replica: builds the bertkit app when Ray starts it (``__serve_build_asgi_app__``)."""

        def __init__(self, config_json: str, threads: int):
            self.config_json, self.threads = config_json, threads

        def __serve_build_asgi_app__(self):
            replica = serve.get_replica_context().replica_id.unique_id
            return build_replica_app(self.config_json, self.threads, replica)

    env = {"OMP_NUM_THREADS": str(max(1, int(options.replica_cpus)))}
    if os.environ.get(KEYS_ENV):  # keys given in the environment reach every replica
        env[KEYS_ENV] = os.environ[KEYS_ENV]
    deployment = serve.deployment(
        BertkitReplica, name="bertkit",
        autoscaling_config=options.autoscaling_config(),
        max_ongoing_requests=options.max_ongoing_requests,
        # a replica drains in-flight requests as `bertkit serve` does on SIGTERM
        graceful_shutdown_timeout_s=config.graceful_timeout,
        ray_actor_options={"num_cpus": options.replica_cpus, "runtime_env": {"env_vars": env}})
    return deployment.bind(config.to_json(), max(1, int(options.replica_cpus)))


def start_ray_app(config: ServeConfig, options: RayOptions) -> str:
    """Connect to (or start) Ray, start Serve's proxy on ``config.host:config.port`` and deploy
    the app; returns its URL once the first replicas are ready."""
    app = ray_app(config, options)  # checks the folder and the bind before Ray starts
    _connect(options)
    return _deploy(app, config)


def _connect(options: RayOptions) -> None:
    # Ray is an optional extra (bertkit[ray]), imported only to deploy.
    import ray
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)


def _deploy(app, config: ServeConfig) -> str:
    # Ray is an optional extra (bertkit[ray]), imported only to deploy.
    from ray import serve
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{config.host}:{config.port}"


def run_ray_server(config: ServeConfig, options: RayOptions) -> None:
    """``bertkit serve --ray``: deploy, then serve until Ctrl-C / SIGTERM, then shut Serve
    down (replicas finish their in-flight requests)."""
    # Ray is an optional extra (bertkit[ray]), imported only to deploy.
    from ray import serve
    app = ray_app(config, options)
    _connect(options)
    # SIGTERM (docker stop, kubectl delete) as Ctrl-C: both shut down gracefully. Set after
    # connecting: ray.init installs handlers of its own that would replace these.
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    try:
        url = _deploy(app, config)
        print(f"bertkit serve --ray: {url} ({options.min_replicas}-{options.max_replicas} "
              f"replicas, target {options.target_ongoing_requests:g} requests in flight each)",
              flush=True)
        stop.wait()
    finally:
        print("bertkit serve --ray: shutting down (replicas finish their requests)", flush=True)
        serve.delete(APP_NAME)
        serve.shutdown()


def _typed(name: str, value: str, field_type) -> object:
    """A ``serve run`` argument (text) as the type its field holds."""
    kind = field_type if isinstance(field_type, str) else getattr(field_type, "__name__", "")
    if not isinstance(value, str):
        return value
    if kind.startswith("bool"):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"serve run argument {name}={value!r}: expected true or false")
        return value.lower() in ("true", "1", "yes")
    if kind.startswith("list"):
        return [part for part in value.split(",") if part]
    for number in ("int", "float"):
        if kind.startswith(number):
            try:
                return int(value) if number == "int" else float(value)
            except ValueError:
                raise ValueError(f"serve run argument {name}={value!r}: expected "
                                 f"{'a whole number' if number == 'int' else 'a number'}") from None
    return value


def app(args: dict):
    """Application builder for ``serve run bertkit.serve.ray:app model=DIR [key=value ...]``:
    keys are :class:`ServeConfig` and :class:`RayOptions` field names (``min_replicas=1
    max_replicas=4 api_keys_file=keys.txt``)."""
    serve_fields = {f.name: f for f in fields(ServeConfig)}
    ray_fields = {f.name: f for f in fields(RayOptions)}
    unknown = sorted(set(args) - set(serve_fields) - set(ray_fields))
    if unknown:
        raise ValueError(f"serve run: unknown argument {unknown[0]!r}; arguments are "
                         + ", ".join(sorted(set(serve_fields) | set(ray_fields))))
    if "model" not in args:
        raise ValueError("serve run: missing argument model=DIR (a model folder)")
    config = ServeConfig(**{k: _typed(k, v, serve_fields[k].type) for k, v in args.items()
                            if k in serve_fields})
    options = RayOptions(**{k: _typed(k, v, ray_fields[k].type) for k, v in args.items()
                            if k in ray_fields})
    return ray_app(config, options)

