"""Helpers for the server tests: tiny model folders, free ports, a `bertkit serve` subprocess.

The folders hold randomly initialised tiny models (transformers' tester sizes: hidden 32,
2 layers) with the labels and ``bertkit_task`` a fine-tuned folder has: serving does not care
whether a model is any good, and skipping training keeps the tests fast.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import torch

from bertkit import BertConfig, Tokenizer
from conftest import TINY, TINY_VOCAB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_folder(path, model_class, task: str | None = None, labels: list[str] | None = None,
                seed: int = 0, **sizes) -> str:
    """Save a tiny ``model_class`` (+ the cased tiny vocab) as an HF folder at ``path``;
    ``sizes`` override the tiny config (e.g. ``hidden_size=128`` for a slower model)."""
    torch.manual_seed(seed)
    extra = {}
    if labels:
        extra = {"id2label": dict(enumerate(labels)),
                 "label2id": {name: i for i, name in enumerate(labels)}}
    config = BertConfig(**{**TINY, "vocab_size": len(TINY_VOCAB), **sizes}, **extra)
    if task:
        config.extra["bertkit_task"] = task
    model_class(config).save_pretrained(path)
    Tokenizer.from_vocab(TINY_VOCAB, do_lower_case=False).save_pretrained(path)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m bertkit serve --model FOLDER ...` on 127.0.0.1 and a free port.

    ``start()`` returns at once; ``wait_ready()`` polls /readyz. stderr (the JSON access log)
    goes to ``log_path``.
    """

    def __init__(self, folder: str, log_path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = str(log_path)
        self.command = [sys.executable, "-m", "bertkit", "serve", "--model", folder,
                        "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.env = dict(os.environ)
        self.env.pop("BERTKIT_API_KEYS", None)  # only the keys a test gives
        # One thread: the models are tiny and the test machine has 2 busy cores.
        self.env.update({"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **(env or {})})
        self.process: subprocess.Popen | None = None

    @classmethod
    def from_config(cls, log_path, env: dict | None = None, **options) -> "ServerProcess":
        """The app of ``ServeConfig(**options)`` in a uvicorn process, given its settings the
        way ``--workers N`` does (``$BERTKIT_SERVE_CONFIG``): for options the command line
        does not take."""
        from bertkit.serve.app import CONFIG_ENV, ServeConfig
        server = cls(options["model"], log_path, env=env)
        config = ServeConfig(**options, host="127.0.0.1", port=server.port)
        server.command = [sys.executable, "-m", "uvicorn", "bertkit.serve.app:app_from_env",
                          "--factory", "--host", "127.0.0.1", "--port", str(server.port),
                          "--no-access-log"]
        server.env[CONFIG_ENV] = config.to_json()
        return server

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=self.env, cwd=REPO)
        return self

    def wait_ready(self, timeout: float = 90.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it hangs; the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
