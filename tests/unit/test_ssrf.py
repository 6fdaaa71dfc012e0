"""SSRF guard of src/stages/fetch.py and src/stages/url_guard.py (attacker review).

1. One URL parser decides the target: the host vetted is the host connected to, and URLs that
   parsers read differently (backslash, control characters, user-info tricks) are refused.
2. No port-scanning oracle: every resolved address is vetted before any connect, the connect
   is pinned to a vetted address, and a forbidden target gets one error text whether a port
   is open or closed. HTTPS keeps SNI and certificate checks on the host name.
3. Every address that is not globally reachable is blocked, including the IPv4 address
   embedded in IPv4-mapped, IPv4-compatible, 6to4, Teredo and NAT64 addresses.

Servers run on 127.0.0.1/127.0.0.2 only; "public" answers are faked at ``socket.getaddrinfo``
and never connected to (a spy on ``socket.socket.connect`` proves it).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
import requests.adapters
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stages import fetch
from stages import url_guard
from stages.fetch import AudioError, FetchPolicy, fetch_audio

PUBLIC = "93.184.216.34"
STRICT = FetchPolicy(retries=1, connect_timeout_s=2, read_timeout_s=2)
PRIVATE_OK = FetchPolicy(retries=1, connect_timeout_s=2, read_timeout_s=2, allow_private_urls=True)
BODY = b"RIFF\x00\x00\x00\x00WAVE audio bytes"


class _Server:
    """HTTP(S) server on ``address`` recording each request's path and Authorization header."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None):
        hits = self.hits = []
        self.auth: list[str | None] = []
        auth = self.auth

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                auth.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


def _closed_port() -> int:
    with socket.socket() as sock:  # free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _resolver(monkeypatch, host: str, answers: list[list[str]]) -> list[list[str]]:
    """``socket.getaddrinfo`` answers ``host`` with ``answers`` in turn (the last one from then
    on); other names (numeric addresses included) resolve normally. Returns the answers given."""
    real = socket.getaddrinfo
    given: list[list[str]] = []

    def getaddrinfo(name, port, *args, **kwargs):
        if name != host:
            return real(name, port, *args, **kwargs)
        answer = answers[min(len(given), len(answers) - 1)]
        given.append(answer)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port or 80))) for ip in answer]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return given


def _error(url: str, tmp_path: Path, policy: FetchPolicy = STRICT) -> str:
    with pytest.raises(AudioError) as info:
        fetch_audio(url, None, None, tmp_path, policy)
    return str(info.value)


# --------------------------------------------------------------------------
# 1. One parser decides the target
# --------------------------------------------------------------------------


def test_backslash_before_at_cannot_smuggle_loopback(server, connects, tmp_path):
    """urllib.parse sees host 93.184.216.34, requests/urllib3 connect to 127.0.0.1:port."""
    url = f"http://127.0.0.1:{server.port}\\@{PUBLIC}/a.wav"
    message = _error(url, tmp_path)
    assert message.startswith("audio_file: refused URL: it contains a backslash"), message
    assert connects == [] and server.hits == []


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:8080\\@93.184.216.34/", "backslash"),
    ("http://93.184.216.34/a\\..\\b.wav", "backslash"),
    ("http://a@b@93.184.216.34/a.wav", "more than one '@'"),
    ("http://[::1]@93.184.216.34/a.wav", "user-info part"),
    ("http://user name@93.184.216.34/a.wav", "blank"),
    ("http://93.184.216.34\u3000@127.0.0.1/a.wav", "blank"),
    ("http://exam\u200bple.com/a.wav", "invisible formatting character"),
    ("http://93.184.216.34\t@127.0.0.1/a.wav", "control character"),
    ("http://93.184.216.34/a.wav\x00", "control character"),
    ("http://93.184.216.34/a\r\nHost: evil.wav", "control character"),
])
@pytest.mark.parametrize("policy", [STRICT, PRIVATE_OK], ids=["strict", "private-ok"])
def test_ambiguous_urls_refused_before_any_traffic(url, reason, policy, connects, tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("no lookup for a refused URL"))
    message = _error(url, tmp_path, policy)
    assert message.startswith("audio_file: refused URL: ") and reason in message, message
    assert connects == []


def test_refused_url_never_echoes_user_info(tmp_path):
    message = _error("http://admin:s3cret\\@127.0.0.1/a.wav?token=T0KEN", tmp_path)
    assert "s3cret" not in message and "admin" not in message and "T0KEN" not in message


@pytest.mark.parametrize("spelling", ["%31%32%37.0.0.1", "0x7f000001", "127.1", "LOCALHOST"])
def test_host_is_judged_as_the_http_client_reads_it(spelling, server, connects, tmp_path):
    """Percent-encoded, hex, short and upper-case spellings of loopback are refused as loopback."""
    message = _error(f"http://{spelling}:{server.port}/a.wav", tmp_path)
    assert "refused URL host" in message and "ALLOW_PRIVATE_URLS" in message, message
    assert connects == [] and server.hits == []


def test_well_formed_user_info_still_works(server, tmp_path):
    path, kind = fetch_audio(f"http://user:pa%40ss@127.0.0.1:{server.port}/a.wav?x=1", None, None, tmp_path, PRIVATE_OK)
    assert kind == "url" and path.read_bytes() == BODY
    assert server.auth == ["Basic " + base64.b64encode(b"user:pa@ss").decode()]
    message = _error(f"http://user:pa%40ss@127.0.0.1:{server.port}/a.wav", tmp_path)
    assert "refused URL host '127.0.0.1'" in message and "pa%40ss" not in message and "user" not in message


# --------------------------------------------------------------------------
# 2. Vet before connect, pin the address: no port-scanning oracle
# --------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["literal", "rebinding-name"])
def test_open_and_closed_forbidden_ports_get_the_same_error(via, server, connects, tmp_path, monkeypatch):
    messages = []
    for port in (server.port, _closed_port()):
        if via == "literal":
            url = f"http://127.0.0.1:{port}/a.wav"
        else:  # checked as public, then the connection's own lookup says loopback
            _resolver(monkeypatch, "scan.test", [[PUBLIC], ["127.0.0.1"]])
            url = f"http://scan.test:{port}/a.wav"
        messages.append(_error(url, tmp_path))
    assert messages[0] == messages[1], messages
    assert "refused URL host" in messages[0] and "ALLOW_PRIVATE_URLS" in messages[0]
    assert connects == [] and server.hits == []  # not even a SYN to the internal address


def test_every_answer_is_vetted_before_any_connect(server, connects, tmp_path, monkeypatch):
    """The connection's lookup answers one public and one loopback address: neither is tried."""
    _resolver(monkeypatch, "mixed.test", [[PUBLIC], ["93.184.216.35", "127.0.0.1"]])
    message = _error(f"http://mixed.test:{server.port}/a.wav", tmp_path)
    assert "refused URL host 'mixed.test'" in message
    assert connects == [] and server.hits == []


@pytest.fixture
def loopback_one_is_public(monkeypatch):
    """In this world 127.0.0.1 is public and 127.0.0.2 is internal (two local servers stand in
    for an outside host and an internal one)."""
    internal = ipaddress.ip_address("127.0.0.2")
    real = url_guard.is_blocked_address
    monkeypatch.setattr(fetch, "_is_blocked_address", lambda ip: ip == internal or (real(ip) and not ip.is_loopback))


def test_connection_goes_to_the_vetted_address(loopback_one_is_public, connects, tmp_path, monkeypatch):
    outside = _Server("127.0.0.1")
    try:
        inside = _Server("127.0.0.2", port=outside.port)
    except OSError:
        outside.close()
        raise
    try:
        given = _resolver(monkeypatch, "pin.test", [["127.0.0.1"], ["127.0.0.1"], ["127.0.0.2"]])
        path, _ = fetch_audio(f"http://pin.test:{outside.port}/a.wav", None, None, tmp_path, STRICT)
        assert path.read_bytes() == BODY
        assert len(given) == 2  # the URL check and the connection; the connect itself looks nothing up
        assert connects == [("127.0.0.1", outside.port)] and inside.hits == []
    finally:
        outside.close()
        inside.close()


def _tls_context(name: str, tmp_path: Path, sni_seen: list[str]) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for ``name``; returns it and the cert file."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sock, server_name, ctx: sni_seen.append(server_name)
    return context, cert_file


@pytest.mark.parametrize("url_host, ok", [("tls.test", True), ("other.test", False)])
def test_https_keeps_sni_and_certificate_check_on_the_name(url_host, ok, loopback_one_is_public, connects,
                                                           tmp_path, monkeypatch):
    sni: list[str] = []
    context, cert_file = _tls_context("tls.test", tmp_path, sni)
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", str(cert_file))  # trust the test cert
    srv = _Server(tls=context)
    try:
        _resolver(monkeypatch, url_host, [["127.0.0.1"]])
        url = f"https://{url_host}:{srv.port}/a.wav"
        if ok:
            path, _ = fetch_audio(url, None, None, tmp_path, STRICT)
            assert path.read_bytes() == BODY
        else:  # a certificate for another name is still refused
            assert "TLS/SSL error" in _error(url, tmp_path)
        assert sni == [url_host]  # the name, not the pinned IP
        assert connects == [("127.0.0.1", srv.port)]
    finally:
        srv.close()


# --------------------------------------------------------------------------
# 3. Which addresses are blocked
# --------------------------------------------------------------------------

BLOCKED = [
    # IPv4 special-purpose ranges
    "0.0.0.0", "0.1.2.3", "10.0.0.1", "100.64.0.1", "127.0.0.1", "127.255.255.254", "169.254.169.254",
    "172.16.0.1", "172.31.255.255", "192.0.0.8", "192.0.0.170", "192.0.2.1", "192.88.99.1", "192.168.1.1",
    "198.18.0.1", "198.51.100.1", "203.0.113.1", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255",
    # IPv6 special-purpose ranges
    "::", "::1", "100::1", "2001:db8::1", "3fff::1", "5f00::1", "fc00::1", "fd00:ec2::254", "fe80::1",
    "fe80::1%eth0", "fec0::1", "ff02::1", "ff0e::1",
    # IPv4-mapped and IPv4-compatible
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::8.8.8.8",
    # 6to4 (2002::/16) around a private router address
    "2002:7f00:1::", "2002:7f00:1::1", "2002:a00:1::1", "2002:a9fe:a9fe::1", "2002:c0a8:101::1",
    # Teredo (2001::/32): server 65.54.227.120, client 192.0.2.45 / 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136:e378:8000:63bf:80ff:fffe",
    # NAT64: well-known prefix around private addresses, and the local-use prefix
    "64:ff9b::127.0.0.1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::c000:8", "64:ff9b:1::808:808",
]
ALLOWED = [
    "93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # IPv4-mapped public address
    "2002:808:808::1",  # 6to4 behind the public router 8.8.8.8
    "64:ff9b::808:808",  # NAT64 to 8.8.8.8
]


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked_addresses(address):
    assert url_guard.is_blocked_address(ipaddress.ip_address(address)), address


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed_addresses(address):
    assert not url_guard.is_blocked_address(ipaddress.ip_address(address)), address


@pytest.mark.parametrize("host", ["[2002:7f00:1::]", "[2002:a00:1::1]", "[2002:a9fe:a9fe::]", "192.0.0.8",
                                  "[64:ff9b::a9fe:a9fe]", "[::ffff:a9fe:a9fe]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]"])
def test_embedded_private_addresses_refused_as_urls(host, connects, tmp_path):
    message = _error(f"http://{host}/latest/meta-data", tmp_path)
    assert message.startswith("audio_file: refused URL host") and "ALLOW_PRIVATE_URLS" in message
    assert connects == []


def test_embedded_ipv4_extraction():
    v6 = ipaddress.IPv6Address
    assert url_guard.embedded_ipv4(v6("2002:7f00:1::")) == [ipaddress.IPv4Address("127.0.0.1")]
    assert url_guard.embedded_ipv4(v6("64:ff9b::a9fe:a9fe")) == [ipaddress.IPv4Address("169.254.169.254")]
    assert ipaddress.IPv4Address("127.0.0.1") in url_guard.embedded_ipv4(v6("2001:0:4136:e378:8000:63bf:80ff:fffe"))
    assert url_guard.embedded_ipv4(v6("2606:4700:4700::1111")) == []
