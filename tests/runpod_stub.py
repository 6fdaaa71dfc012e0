"""A stand-in for RunPod's job server on 127.0.0.1, so the worker runs its real SDK job loop.

The RunPod SDK (``runpod.serverless.start`` without ``--rp_serve_api``) polls
``RUNPOD_WEBHOOK_GET_JOB`` for jobs, long-polls the derived ``/job-stop/`` channel for jobs
to stop (SDK >= 1.10: it cancels that job's task), and posts progress and results to
``RUNPOD_WEBHOOK_POST_OUTPUT``. This server speaks that protocol: tests ``submit`` jobs,
``stop`` one, and read what the worker posted (``results``, ``progress``) and when.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Posted:
    """One post from the worker: a progress update (status IN_PROGRESS) or a final result."""

    job_id: str
    data: dict
    at: float = field(default_factory=time.monotonic)
    stream: bool = False  # a chunk posted to the stream URL (a generator handler's output)


class RunPodStub:
    """Job queue, stop channel and result sink of one fake endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: list[dict] = []
        self._stops: list[str] = []
        self.posts: list[Posted] = []
        self.taken: dict[str, float] = {}  # job id -> when the worker took it
        self._watch: Callable[[], None] = lambda: None
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, payload: object | None) -> None:
                body = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith("/job-take/"):  # one job (the SDK's legacy API)
                    taken = stub._take(1)
                    self._json(200, taken[0]) if taken else self._json(204, None)
                elif path.startswith("/job-take-batch/"):  # a list, with several slots free
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    taken = stub._take(int(query.get("batch_size", ["1"])[0]))
                    self._json(200, taken) if taken else self._json(204, None)
                elif path.startswith("/job-stop/"):
                    ids = stub._take_stops()
                    self._json(200, {"jobsToStop": ids}) if ids else self._json(204, None)
                else:
                    self._json(404, None)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode("utf-8")
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                with stub._lock:
                    stub.posts.append(Posted(query.get("id", [""])[0], json.loads(body) if body else {},
                                             stream=url.path.startswith("/job-stream/")))
                    stub._lock.notify_all()
                self._json(200, {})

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ the worker's side
    def _take(self, count: int) -> list[dict]:
        with self._lock:
            taken, self._queue = self._queue[:count], self._queue[count:]
            for job in taken:
                self.taken[job["id"]] = time.monotonic()
            return taken

    def _take_stops(self) -> list[str]:
        with self._lock:
            ids, self._stops = self._stops, []
        if not ids:
            time.sleep(0.2)  # a short long-poll
        return ids

    # ------------------------------------------------------------------ the test's side
    def env(self) -> dict[str, str]:
        """The ENV that points a worker's SDK at this stub."""
        base = f"http://127.0.0.1:{self.port}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID?id=$ID",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID?id=$ID",
            "RUNPOD_POD_ID": "test-pod",
        }

    def watch(self, check: Callable[[], None]) -> None:
        """Call ``check`` about once a second while a test waits; it raises when the worker
        process is gone, so a dead worker fails the wait at once with its cause, not after
        the wait's whole timeout."""
        self._watch = check

    def submit(self, job_id: str, job_input: dict) -> None:
        with self._lock:
            self._queue.append({"id": job_id, "input": job_input})

    def stop(self, job_id: str) -> None:
        """Tell the worker (through its stop channel) to stop ``job_id``."""
        with self._lock:
            self._stops.append(job_id)

    def progress(self, job_id: str) -> list[Posted]:
        with self._lock:
            return [p for p in self.posts if p.job_id == job_id and not p.stream and p.data.get("status") == "IN_PROGRESS"]

    def streamed(self, job_id: str) -> list[Posted]:
        """The chunks a generator handler streamed for ``job_id``, in order."""
        with self._lock:
            return [p for p in self.posts if p.job_id == job_id and p.stream]

    def result(self, job_id: str, timeout_s: float) -> Posted:
        """The job's final post (output or error), waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for post in self.posts:
                    if post.job_id == job_id and not post.stream and post.data.get("status") != "IN_PROGRESS":
                        return post
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no result for {job_id} after {timeout_s} s")
                self._wait(left)

    def wait_for_progress(self, job_id: str, prefix: str, timeout_s: float) -> Posted:
        """The first progress post of ``job_id`` whose text starts with ``prefix``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for post in self.posts:
                    if (post.job_id == job_id and not post.stream and post.data.get("status") == "IN_PROGRESS"
                            and str(post.data.get("output", "")).startswith(prefix)):
                        return post
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {prefix!r} progress for {job_id} after {timeout_s} s")
                self._wait(left)

    def _wait(self, left: float) -> None:
        """Wait (holding the condition) for a post, at most ``left`` s, checking the worker."""
        self._lock.wait(min(left, 1.0))
        self._watch()

    def __enter__(self) -> RunPodStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
