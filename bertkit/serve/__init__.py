"""``bertkit serve``: a FastAPI app over a model folder (predict, embed, fill-mask, explain),
with API keys, request limits, micro-batching, Prometheus metrics, JSON access logs and a
try-it page.

Public API: :class:`~bertkit.serve.app.ServeConfig`, :func:`~bertkit.serve.app.create_app`,
:func:`~bertkit.serve.app.run_server`.
"""

from bertkit.serve.app import ServeConfig, create_app, run_server

__all__ = ["ServeConfig", "create_app", "run_server"]
