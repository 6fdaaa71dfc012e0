"""Time limits of a download (src/stages/fetch.py) against real local HTTP servers that misbehave.

A server that sends one byte a second never trips a read timeout, so before the total limit
a job with ``JOB_TIMEOUT_S=17`` got its answer after ~58 s. Now:

- ``FetchPolicy.download_timeout_s`` (``DOWNLOAD_TIMEOUT``) caps one download, retries and
  back-off included, with an AudioError naming the redacted URL;
- a bound ``JobControl`` stops the download at the job's deadline (``JobTimeout``) and within
  a fraction of a second of ``cancel()`` (``JobCancelled``), even while the server sends
  nothing at all or the worker waits between retries.

Servers run on 127.0.0.1, so the policies allow private URLs.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from stages.fetch import AudioError, FetchPolicy, fetch_audio
from job_control import JobCancelled, JobControl, JobTimeout

POLICY = FetchPolicy(allow_private_urls=True, connect_timeout_s=5, read_timeout_s=30, retries=3, backoff_s=0.05)


class _Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # the client hanging up mid-drip is the point of these tests


class MisbehavingServer:
    """``/drip``: 1 byte a second of a 1000-byte body; ``/stall``: headers, then silence;
    ``/fail``: HTTP 503 every time; ``/html-drip``: an HTML page (sent as octet-stream) a byte
    at a time. ``hits`` counts requests per route."""

    def __init__(self) -> None:
        hits = self.hits = Counter()
        stop = self.stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                route = self.path.split("?", 1)[0].strip("/")
                hits[route] += 1
                if route == "fail":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route == "html-drip":
                    page = b"\n <!DOCTYPE html><html><body>Please log in</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    try:
                        for byte in page:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.01)
                    except OSError:
                        pass
                    return
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                try:
                    self.wfile.write(b"R")
                    self.wfile.flush()
                    while not stop.wait(1.0):
                        if route == "drip":
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = _Quiet(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{route}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    srv = MisbehavingServer()
    yield srv
    srv.close()


def _timed(url: str, tmp_path: Path, policy: FetchPolicy, control: JobControl | None, error: type[Exception]):
    """Run fetch_audio expecting ``error``; returns (exception, seconds taken)."""
    started = time.monotonic()
    with pytest.raises(error) as info:
        fetch_audio(url, None, None, tmp_path, policy, control=control)
    elapsed = time.monotonic() - started
    assert not list(tmp_path.iterdir()), "a partial download was left behind"
    return info.value, elapsed


def _cancel_after(control: JobControl, seconds: float) -> None:
    timer = threading.Timer(seconds, control.cancel, kwargs={"reason": "cancelled by the test"})
    timer.daemon = True
    timer.start()


def test_job_budget_stops_a_dripping_download(server, tmp_path):
    exc, elapsed = _timed(server.url("drip.wav"), tmp_path, POLICY, JobControl(budget_s=3), JobTimeout)
    assert 2.5 < elapsed < 6, elapsed
    assert "during download" in str(exc) and "JOB_TIMEOUT_S" in str(exc)


def test_cancel_stops_a_dripping_download_promptly(server, tmp_path):
    control = JobControl()
    _cancel_after(control, 1.0)
    exc, elapsed = _timed(server.url("drip.wav"), tmp_path, POLICY, control, JobCancelled)
    assert elapsed < 2.0, elapsed
    assert "cancelled by the test during download" in str(exc)


def test_cancel_wakes_a_read_that_gets_no_data(server, tmp_path):
    """The read timeout is 30 s: only the watchdog can end this wait early."""
    control = JobControl()
    _cancel_after(control, 0.5)
    _, elapsed = _timed(server.url("stall.wav"), tmp_path, POLICY, control, JobCancelled)
    assert elapsed < 1.5, elapsed


def test_download_timeout_caps_a_dripping_download(server, tmp_path):
    policy = FetchPolicy(allow_private_urls=True, read_timeout_s=30, download_timeout_s=2)
    exc, elapsed = _timed(server.url("drip.wav?token=SECRET"), tmp_path, policy, None, AudioError)
    assert 1.8 < elapsed < 4, elapsed
    assert str(exc) == f"download of {server.url('drip.wav')} took longer than 2 s (DOWNLOAD_TIMEOUT)"


def test_download_timeout_bounds_a_silent_server(server, tmp_path):
    """Each socket wait is at most the time left, not the (long) read timeout."""
    policy = FetchPolicy(allow_private_urls=True, read_timeout_s=30, download_timeout_s=1.5)
    exc, elapsed = _timed(server.url("stall.wav"), tmp_path, policy, None, AudioError)
    assert elapsed < 3, elapsed
    assert "took longer than 1.5 s (DOWNLOAD_TIMEOUT)" in str(exc)


def test_job_deadline_shortens_retry_back_off(server, tmp_path):
    policy = FetchPolicy(allow_private_urls=True, retries=5, backoff_s=30)
    before = server.hits["fail.wav"]
    _, elapsed = _timed(server.url("fail.wav"), tmp_path, policy, JobControl(budget_s=1), JobTimeout)
    assert elapsed < 2.5, elapsed
    assert server.hits["fail.wav"] - before == 1  # no retry after the deadline


def test_cancel_during_retry_back_off(server, tmp_path):
    policy = FetchPolicy(allow_private_urls=True, retries=5, backoff_s=30)
    control = JobControl()
    _cancel_after(control, 0.5)
    _, elapsed = _timed(server.url("fail.wav"), tmp_path, policy, control, JobCancelled)
    assert elapsed < 1.5, elapsed


def test_download_timeout_includes_back_off(server, tmp_path):
    policy = FetchPolicy(allow_private_urls=True, retries=5, backoff_s=30, download_timeout_s=1)
    exc, elapsed = _timed(server.url("fail.wav"), tmp_path, policy, None, AudioError)
    assert elapsed < 2.5, elapsed
    assert "took longer than 1 s (DOWNLOAD_TIMEOUT)" in str(exc)


def test_stopped_job_makes_no_request(server, tmp_path):
    control = JobControl()
    control.cancel()
    before = server.hits["drip.wav"]
    _timed(server.url("drip.wav"), tmp_path, POLICY, control, JobCancelled)
    assert server.hits["drip.wav"] == before


def test_unbound_download_still_completes(tmp_path):
    """No control, no total limit: a normal download is unaffected."""
    body = b"RIFF" + bytes(100_000)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = _Quiet(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/a.wav"
        for policy, control in ((FetchPolicy(allow_private_urls=True, download_timeout_s=0), None),
                                (POLICY, JobControl(budget_s=60))):
            path, kind = fetch_audio(url, None, None, tmp_path, policy, control=control)
            assert kind == "url" and path.read_bytes() == body
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_html_sniffed_when_it_arrives_byte_by_byte(server, tmp_path):
    """Chunks are handed over as they arrive, so the HTML check must not judge a 1-byte start."""
    exc, _ = _timed(server.url("html-drip"), tmp_path, POLICY, JobControl(budget_s=30), AudioError)
    assert "returned an HTML page, not audio" in str(exc)


@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_download_timeout_must_not_be_negative(value):
    with pytest.raises(ValueError, match="download_timeout_s"):
        FetchPolicy(download_timeout_s=value)


def test_download_timeout_default():
    assert FetchPolicy().download_timeout_s == 600.0 and FetchPolicy(download_timeout_s=0).download_timeout_s == 0
