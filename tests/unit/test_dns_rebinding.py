"""DNS rebinding (issue 13 #5): the URL check resolves the host, the connection resolves it
again; a resolver that answers a public address first and loopback second must not get a
request through to loopback, on the first URL or on any redirect hop. The connection vets
its own answer before connecting, so not even a TCP connect reaches the rebound address
(a refusal after the connect would tell an open port from a closed one)."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading

import pytest

from stages import fetch

PUBLIC = "93.184.216.34"


class _Server:
    """An HTTP server on ``address`` counting hits; ``/redirect`` sends to ``location``."""

    def __init__(self, address: str, location: str = ""):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", location.format(port=self.server.target_port))
                    self.end_headers()
                    return
                body = b"RIFF secret internal data"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.httpd.target_port = 0
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _rebinding_resolver(monkeypatch, host: str, answers: list[str]) -> list[str]:
    """Make ``socket.getaddrinfo`` answer ``host`` with ``answers`` in turn (the last one
    from then on); other hosts resolve normally. Returns the answers given, in order."""
    real = socket.getaddrinfo
    given: list[str] = []

    def getaddrinfo(name, port, *args, **kwargs):
        if name != host:
            return real(name, port, *args, **kwargs)
        answer = answers[min(len(given), len(answers) - 1)]
        given.append(answer)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answer, int(port or 80)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return given


POLICY = fetch.FetchPolicy(retries=1, connect_timeout_s=2, read_timeout_s=2)


def test_rebinding_to_loopback_is_refused(monkeypatch, tmp_path, connects):
    server = _Server("127.0.0.1")
    try:
        given = _rebinding_resolver(monkeypatch, "rebind.test", [PUBLIC, "127.0.0.1"])
        with pytest.raises(fetch.AudioError, match="refused URL host 'rebind.test'.*ALLOW_PRIVATE_URLS"):
            fetch._download(f"http://rebind.test:{server.port}/secret.wav", tmp_path / "a.wav", POLICY)
        assert given == [PUBLIC, "127.0.0.1"]  # the URL check's answer, then the connection's own
        assert connects == []  # the second answer was refused before any connect
        assert server.hits == []  # not a byte of the request reached loopback
        assert not (tmp_path / "a.wav").exists()
    finally:
        server.close()


def test_rebinding_on_a_redirect_hop_is_refused(monkeypatch, tmp_path, connects):
    """In this test's world 127.0.0.1 is "public" and 127.0.0.2 is internal: the first hop
    (allowed) redirects to a host that checks as public and connects to the internal one."""
    internal = ipaddress.ip_address("127.0.0.2")
    real_blocked = fetch._is_blocked_address
    monkeypatch.setattr(fetch, "_is_blocked_address",
                        lambda ip: ip == internal or (real_blocked(ip) and not ip.is_loopback))
    target = _Server("127.0.0.2")
    origin = _Server("127.0.0.1", location="http://hop.test:{port}/secret.wav")
    origin.httpd.target_port = target.port
    try:
        given = _rebinding_resolver(monkeypatch, "hop.test", ["127.0.0.1", "127.0.0.2"])
        with pytest.raises(fetch.AudioError, match="refused URL host 'hop.test'"):
            fetch._download(f"http://127.0.0.1:{origin.port}/redirect", tmp_path / "a.wav", POLICY)
        assert origin.hits == ["/redirect"] and given[:2] == ["127.0.0.1", "127.0.0.2"]
        assert target.hits == [] and ("127.0.0.2", target.port) not in connects
    finally:
        origin.close()
        target.close()


def test_public_answer_both_times_downloads(monkeypatch, tmp_path):
    """The peer check does not get in the way of a host whose answers stay allowed (here:
    loopback counted as public), nor does ALLOW_PRIVATE_URLS lose its meaning."""
    server = _Server("127.0.0.1")
    try:
        _rebinding_resolver(monkeypatch, "stable.test", ["127.0.0.1"])
        allowed = fetch.FetchPolicy(retries=1, allow_private_urls=True)
        fetch._download(f"http://stable.test:{server.port}/a.wav", tmp_path / "a.wav", allowed)
        assert (tmp_path / "a.wav").read_bytes().startswith(b"RIFF")
    finally:
        server.close()
