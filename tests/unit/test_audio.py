"""Tests for src/stages/fetch.py and src/stages/audio.py: sources, download safety and decoding.

Media fixtures are made at test time with ffmpeg from one real speech file;
downloads go to a throw-away HTTP server on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stages import audio
from stages import fetch
from stages.audio import PreparedAudio, prepare_audio
from stages.fetch import AudioError, FetchPolicy, fetch_audio
from settings import fetch_policy_from_env

from references import FESTVOX, require_assets

SPEECH = FESTVOX / "wav" / "ru_0001.wav"
SPEECH_SECONDS = 16.08  # ru_0001.wav is 257278 samples at 16 kHz


@pytest.fixture(scope="module", autouse=True)
def _speech_and_ffmpeg() -> None:
    """Fail (never skip) when the speech file or ffmpeg is missing: both come from setup.sh."""
    require_assets()
    assert SPEECH.is_file(), f"speech fixture missing: {SPEECH} (run bash scripts/setup.sh)"
    assert shutil.which("ffmpeg"), "ffmpeg is not installed (run bash scripts/setup.sh)"


# Test policy: private URLs allowed (the server is on 127.0.0.1), tiny back-off.
POLICY = FetchPolicy(allow_private_urls=True, connect_timeout_s=2, read_timeout_s=2, backoff_s=0.01)
SERVER_LIFETIME_S = 120  # the server stops itself even if teardown never runs


# --------------------------------------------------------------------------
# Media fixtures
# --------------------------------------------------------------------------


def _ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly, failing the test run on error."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input variant, built once per module from the speech file."""
    d = tmp_path_factory.mktemp("media")
    src = str(SPEECH)
    files = {name: d / name for name in (
        "compatible.wav", "stereo44.wav", "speech.mp3", "speech22k.mp3", "tel8k.wav", "six.wav",
        "speech.flac", "float16k.wav", "video.mkv", "video.mp4", "silent_video.mp4", "empty.wav",
        "text.txt", "text.bin", "garbage.bin", "truncated.mp4", "no_data_chunk.wav", "header_only.wav", "zero_frames.wav", "short5ms.wav",
        "short5ms_44k.wav", "cut.wav", "cut.mp3", "promises11s.wav", "min100ms.wav", "almost100ms.wav", "streamed.wav",
        "one_sample_short.wav",
    )}
    shutil.copy(SPEECH, files["compatible.wav"])
    _ffmpeg("-i", src, "-ac", "2", "-ar", "44100", str(files["stereo44.wav"]))
    _ffmpeg("-i", src, "-c:a", "libmp3lame", "-b:a", "48k", str(files["speech.mp3"]))
    _ffmpeg("-i", src, "-ar", "22050", "-c:a", "libmp3lame", "-b:a", "48k", str(files["speech22k.mp3"]))
    _ffmpeg("-i", src, "-ar", "8000", "-c:a", "pcm_mulaw", str(files["tel8k.wav"]))
    _ffmpeg("-i", src, "-ac", "6", "-ar", "48000", str(files["six.wav"]))
    _ffmpeg("-i", src, "-c:a", "flac", str(files["speech.flac"]))
    _ffmpeg("-i", src, "-c:a", "pcm_f32le", str(files["float16k.wav"]))
    color = ["-f", "lavfi", "-i", "color=c=blue:s=64x48:r=5"]
    _ffmpeg(*color, "-i", src, "-map", "0:v", "-map", "1:a", "-shortest",
            "-c:v", "mpeg4", "-c:a", "libopus", str(files["video.mkv"]))
    _ffmpeg(*color, "-i", src, "-map", "0:v", "-map", "1:a", "-shortest",
            "-c:v", "mpeg4", "-c:a", "aac", "-ar", "44100", "-ac", "2", str(files["video.mp4"]))
    _ffmpeg(*color, "-t", "1", "-c:v", "mpeg4", str(files["silent_video.mp4"]))
    files["empty.wav"].write_bytes(b"")
    files["text.txt"].write_text("this is a plain text file, not audio\n" * 20)
    shutil.copy(files["text.txt"], files["text.bin"])
    files["garbage.bin"].write_bytes(bytes(range(7, 250)) * 40)
    # mp4 keeps its index (moov) at the end by default: half a file cannot be decoded.
    mp4 = files["video.mp4"].read_bytes()
    files["truncated.mp4"].write_bytes(mp4[: len(mp4) // 2])
    stereo = files["stereo44.wav"].read_bytes()
    files["header_only.wav"].write_bytes(stereo[: stereo.index(b"data") + 8])  # all chunks, no samples
    files["no_data_chunk.wav"].write_bytes(stereo[:36])
    sf.write(str(files["zero_frames.wav"]), np.zeros(0, dtype=np.int16), 16_000, subtype="PCM_16")
    sf.write(str(files["short5ms.wav"]), np.full(80, 0.1, dtype=np.float32), 16_000, subtype="PCM_16")
    _ffmpeg("-i", src, "-t", "0.005", "-ar", "44100", str(files["short5ms_44k.wav"]))
    # A WAV cut mid-data: its header still promises the whole 16 s.
    wav = files["stereo44.wav"].read_bytes()
    files["cut.wav"].write_bytes(wav[: len(wav) // 4])
    # 100 bytes of a WAV whose header promises 11 s (a 44-byte header and 28 samples).
    sf.write(str(files["promises11s.wav"]), np.full(11 * 16_000, 0.1, dtype=np.float32), 16_000, subtype="PCM_16")
    files["promises11s.wav"].write_bytes(files["promises11s.wav"].read_bytes()[:100])
    # MP3 frames are independent and the length is not a promise: half a file decodes.
    mp3 = files["speech.mp3"].read_bytes()
    files["cut.mp3"].write_bytes(mp3[: len(mp3) // 2])
    sf.write(str(files["min100ms.wav"]), np.full(1600, 0.1, dtype=np.float32), 16_000, subtype="PCM_16")
    sf.write(str(files["almost100ms.wav"]), np.full(1599, 0.1, dtype=np.float32), 16_000, subtype="PCM_16")
    # What ffmpeg writes to a pipe: RIFF and data sizes 0xFFFFFFFF ("unknown"), not a promise.
    with open(files["streamed.wav"], "wb") as out:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", src, "-f", "wav", "pipe:1"],
                       stdout=out, check=True, timeout=60, stdin=subprocess.DEVNULL)
    # The last sample missing (a writer that rounded the size): within the tolerance.
    compatible = files["compatible.wav"].read_bytes()
    files["one_sample_short.wav"].write_bytes(compatible[:-2])
    return files


# --------------------------------------------------------------------------
# Local HTTP server
# --------------------------------------------------------------------------

_CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".mp4": "video/mp4", ".mkv": "video/x-matroska"}
_HTML = b"<!DOCTYPE html><html><body>Please log in</body></html>"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # sleeping handlers must not block shutdown

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        """Clients abort on purpose (size limit, timeouts); keep test output clean."""


def _make_handler(files: dict[str, Path], hits: Counter):
    """Handler class serving ``files`` plus the special routes used by the tests."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            """Silence per-request logging."""

        def _send(self, status: int, body: bytes = b"", ctype: str = "application/octet-stream",
                  length: bool = True, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if length:
                self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

        def _file(self, name: str) -> None:
            path = files[name]
            self._send(200, path.read_bytes(), _CONTENT_TYPES.get(path.suffix, "application/octet-stream"))

        def _redirect(self, location: str) -> None:
            self._send(302, headers={"Location": location})

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            path = self.path.split("?", 1)[0]
            hits[path] += 1
            parts = path.strip("/").split("/")
            route = parts[0]
            port = self.server.server_address[1]
            if route == "files":
                self._file(parts[1])
            elif route == "status":
                self._send(int(parts[1]), b"error")
            elif route == "flaky":  # /flaky/<key>/<name>: 500 once, then the file
                if hits[path] == 1:
                    self._send(500, b"boom")
                else:
                    self._file(parts[2])
            elif route == "redirect":  # /redirect/<n>/<name>: n relative hops, then the file
                n = int(parts[1])
                if n > 0:
                    self._redirect(f"/redirect/{n - 1}/{parts[2]}")
                else:
                    self._file(parts[2])
            elif route == "redirect-metadata":
                self._redirect("http://169.254.169.254/latest/meta-data/")
            elif route == "redirect-localhost":
                self._redirect(f"http://localhost:{port}/files/compatible.wav")
            elif route == "redirect-ftp":
                self._redirect("ftp://example.com/a.wav")
            elif route == "html":
                self._send(200, _HTML, "text/html; charset=utf-8")
            elif route == "html-sniff":  # wrong Content-Type, HTML body
                self._send(200, b"\n  " + _HTML, "application/octet-stream")
            elif route == "plain":
                self._send(200, b"hello", "text/plain")
            elif route in ("big", "big-nolen"):  # 1 MiB, with or without Content-Length
                self._stream_big(with_length=route == "big")
            elif route == "slow-headers":
                time.sleep(1.5)
                self._send(200, b"late")
            elif route == "slow-body":
                self._stream_slow_body()
            else:
                self._send(404, b"not found")

        def _stream_big(self, with_length: bool) -> None:
            chunk, count = b"\0" * 65536, 16
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            if with_length:
                self.send_header("Content-Length", str(len(chunk) * count))
            self.end_headers()
            try:
                for _ in range(count):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the client gave up, as intended

        def _stream_slow_body(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", "2000")
            self.end_headers()
            try:
                self.wfile.write(b"RIFF" + b"\0" * 996)
                self.wfile.flush()
                time.sleep(1.5)
                self.wfile.write(b"\0" * 1000)
            except OSError:
                pass

    return Handler


@dataclasses.dataclass
class Server:
    base: str
    hits: Counter

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture(scope="module")
def server(media: dict[str, Path]):
    """Threaded HTTP server on 127.0.0.1 (port 0); stops at teardown or after SERVER_LIFETIME_S."""
    hits: Counter = Counter()
    httpd = _QuietServer(("127.0.0.1", 0), _make_handler(media, hits))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    stopper = threading.Timer(SERVER_LIFETIME_S, httpd.shutdown)
    stopper.daemon = True
    stopper.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", hits)
    finally:
        stopper.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _fetch_url(url: str, tmp_path: Path, policy: FetchPolicy = POLICY) -> Path:
    path, kind = fetch_audio(url, None, None, tmp_path, policy)
    assert kind == "url"
    return path


# --------------------------------------------------------------------------
# FetchPolicy
# --------------------------------------------------------------------------


def test_policy_defaults_from_empty_env():
    p = fetch_policy_from_env({})
    assert p == FetchPolicy()
    assert (p.max_bytes, p.connect_timeout_s, p.read_timeout_s) == (2 * 1024**3, 10.0, 60.0)
    assert (p.max_redirects, p.retries, p.allow_private_urls, p.allow_local_files) == (5, 3, False, False)


def test_policy_from_env_values():
    p = fetch_policy_from_env({
        "MAX_AUDIO_BYTES": "1_000", "DOWNLOAD_CONNECT_TIMEOUT": "2.5", "DOWNLOAD_READ_TIMEOUT": "7",
        "ALLOW_PRIVATE_URLS": "Yes", "ALLOW_LOCAL_FILES": "1",
    })
    assert (p.max_bytes, p.connect_timeout_s, p.read_timeout_s) == (1000, 2.5, 7.0)
    assert p.allow_private_urls and p.allow_local_files


@pytest.mark.parametrize("env", [
    {"ALLOW_LOCAL_FILES": "maybe"}, {"MAX_AUDIO_BYTES": "lots"}, {"DOWNLOAD_READ_TIMEOUT": "x"},
    {"MAX_AUDIO_BYTES": "0"},
])
def test_policy_from_env_rejects_bad_values(env):
    with pytest.raises(ValueError):
        fetch_policy_from_env(env)


# --------------------------------------------------------------------------
# Source selection, schemes, base64, local paths
# --------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "ftp://example.com/a.wav", "file:///etc/passwd", "gopher://example.com/", "s3://bucket/key.wav",
    "data:audio/wav;base64,AAAA",
])
def test_unsupported_schemes_name_audio_file(url, tmp_path):
    with pytest.raises(AudioError, match="audio_file: unsupported URL scheme"):
        fetch_audio(url, None, None, tmp_path, POLICY)


@pytest.mark.parametrize("file_, b64, message", [
    (None, None, "no audio given"),
    ("  ", "", "no audio given"),
    ("https://example.com/a.wav", "AAAA", "only one of"),
])
def test_source_must_be_exactly_one(file_, b64, message, tmp_path):
    with pytest.raises(AudioError, match=message):
        fetch_audio(file_, b64, None, tmp_path, POLICY)


_RAW = b"RIFF\x00\x01binary\xff\xfe payload"


@pytest.mark.parametrize("payload, filename, suffix", [
    (base64.b64encode(_RAW).decode(), "talk.mp3", ".mp3"),
    ("data:audio/wav;base64," + base64.b64encode(_RAW).decode(), None, ""),
    ("DATA:;base64," + base64.b64encode(_RAW).decode(), "x", ""),
    (base64.urlsafe_b64encode(_RAW).decode().rstrip("="), "../../evil.wav", ".wav"),  # urlsafe, no padding
    ("\n".join(base64.encodebytes(_RAW).decode().split("\n")), "a.bad$ext", ""),  # MIME line breaks
])
def test_base64_good(payload, filename, suffix, tmp_path):
    path, kind = fetch_audio(None, payload, filename, tmp_path, POLICY)
    assert kind == "base64"
    assert path.parent == tmp_path and path.suffix == suffix
    assert path.read_bytes() == _RAW


@pytest.mark.parametrize("payload, message", [
    ("this is not base64!!!", "audio_base64: not valid base64"),
    ("QUJD$RA==", "audio_base64: not valid base64"),
    ("A", "audio_base64: not valid base64"),
    ("data:audio/wav,plainbytes", "audio_base64: data: URI must be base64"),
])
def test_base64_bad(payload, message, tmp_path):
    with pytest.raises(AudioError, match=message):
        fetch_audio(None, payload, None, tmp_path, POLICY)


def test_base64_over_size_limit(tmp_path):
    policy = dataclasses.replace(POLICY, max_bytes=100)
    with pytest.raises(AudioError, match="audio_base64: .*larger than the limit"):
        fetch_audio(None, base64.b64encode(b"x" * 200).decode(), None, tmp_path, policy)


def test_local_path_refused_by_default(media, tmp_path):
    with pytest.raises(AudioError, match="local paths are disabled.*ALLOW_LOCAL_FILES"):
        fetch_audio(str(media["compatible.wav"]), None, None, tmp_path, FetchPolicy())


def test_local_path_allowed(media, tmp_path):
    policy = FetchPolicy(allow_local_files=True)
    path, kind = fetch_audio(str(media["compatible.wav"]), None, None, tmp_path, policy)
    assert (path, kind) == (media["compatible.wav"], "local")
    with pytest.raises(AudioError, match="audio_file: local file not found"):
        fetch_audio(str(tmp_path / "missing.wav"), None, None, tmp_path, policy)


# --------------------------------------------------------------------------
# SSRF policy (no traffic: refused before connecting)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/a.wav", "http://127.8.9.10:8080/a.wav", "http://10.1.2.3/a.wav",
    "http://192.168.1.1/a.wav", "http://172.16.0.5/a.wav", "http://169.254.169.254/latest/meta-data/",
    "http://localhost/a.wav", "http://[::1]/a.wav", "http://[::ffff:127.0.0.1]/a.wav",
    "http://[fd00:ec2::254]/latest", "http://0.0.0.0/a.wav", "http://100.64.0.1/a.wav",
    "http://224.0.0.1/a.wav", "https://240.0.0.1/a.wav",
])
def test_private_hosts_refused(url, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must be refused before any request")

    monkeypatch.setattr(fetch.requests.Session, "get", no_network)
    with pytest.raises(AudioError, match="ALLOW_PRIVATE_URLS"):
        fetch_audio(url, None, None, tmp_path, FetchPolicy())


def test_every_resolved_address_is_checked(tmp_path, monkeypatch):
    """One private answer among public ones is enough to refuse (DNS tricks)."""
    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
        ]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(AudioError, match="refused URL host 'mixed.example'"):
        fetch_audio("https://mixed.example/a.wav", None, None, tmp_path, FetchPolicy())


def test_unresolvable_host(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(fetch.socket, "getaddrinfo", fail)
    with pytest.raises(AudioError, match="could not resolve host 'nowhere.example'"):
        fetch_audio("https://nowhere.example/a.wav", None, None, tmp_path, FetchPolicy())


# --------------------------------------------------------------------------
# Downloads against the local server
# --------------------------------------------------------------------------


def test_download_ok(server, media, tmp_path):
    path = _fetch_url(server.url("/files/speech.mp3?sig=abc"), tmp_path)
    assert path.parent == tmp_path and path.suffix == ".mp3"
    assert path.read_bytes() == media["speech.mp3"].read_bytes()


@pytest.mark.parametrize("route, policy_changes, message, attempts", [
    ("/status/404", {}, r"download failed: HTTP 404 for http://127\.0\.0\.1:\d+/status/404$", 1),
    ("/status/403", {}, "HTTP 403", 1),
    ("/status/500", {}, r"HTTP 500 .*\(after 3 attempts\)", 3),
    ("/status/503", {"retries": 2}, r"HTTP 503 .*\(after 2 attempts\)", 2),
    ("/status/429", {}, "HTTP 429", 3),
    ("/status/408", {}, "HTTP 408", 3),
    ("/redirect/6/compatible.wav", {}, r"too many redirects \(more than 5\)", 1),
    ("/redirect/2/compatible.wav", {"max_redirects": 1}, r"too many redirects \(more than 1\)", 1),
    ("/redirect-ftp", {}, "audio_file: unsupported URL scheme 'ftp'", 1),
    ("/html", {}, "the URL returned an HTML page, not audio", 1),
    ("/html-sniff", {}, "the URL returned an HTML page, not audio", 1),
    ("/plain", {}, "text page", 1),
    ("/big", {"max_bytes": 100_000}, "larger than the limit of 100000 bytes", 1),
    ("/big-nolen", {"max_bytes": 100_000}, "larger than the limit of 100000 bytes", 1),
    ("/slow-headers", {"read_timeout_s": 0.3}, r"read timeout\) \(after 3 attempts\)", 3),
    ("/slow-body", {"read_timeout_s": 0.3, "retries": 2}, r"read timeout\) \(after 2 attempts\)", 2),
])
def test_download_errors(server, tmp_path, route, policy_changes, message, attempts):
    policy = dataclasses.replace(POLICY, **policy_changes)
    before = server.hits[route] if not route.startswith("/redirect/") else None
    with pytest.raises(AudioError, match=message):
        _fetch_url(server.url(route), tmp_path, policy)
    if before is not None:
        assert server.hits[route] - before == attempts  # 4xx other than 408/429 never retried


def test_download_size_limit_aborts_early(server, tmp_path, monkeypatch):
    """Without Content-Length the download stops right after the limit, not at the end."""
    received = []
    real_stream = fetch._stream_body

    def spy(response, dest, policy, shown_url):
        try:
            return real_stream(response, dest, policy, shown_url)
        finally:
            received.append(dest.stat().st_size if dest.exists() else 0)

    monkeypatch.setattr(fetch, "_stream_body", spy)
    policy = dataclasses.replace(POLICY, max_bytes=100_000)
    with pytest.raises(AudioError):
        _fetch_url(server.url("/big-nolen"), tmp_path, policy)
    assert received and received[0] <= 100_000  # stopped at the limit, 1 MiB was on offer
    assert not list(tmp_path.iterdir())  # the partial file is removed


def test_retry_after_500_then_200(server, media, tmp_path):
    path = _fetch_url(server.url("/flaky/a/compatible.wav"), tmp_path)
    assert server.hits["/flaky/a/compatible.wav"] == 2
    assert path.read_bytes() == media["compatible.wav"].read_bytes()


def test_redirect_chain_within_limit(server, media, tmp_path):
    path = _fetch_url(server.url("/redirect/5/compatible.wav"), tmp_path)
    assert path.read_bytes() == media["compatible.wav"].read_bytes()
    assert server.hits["/redirect/0/compatible.wav"] >= 1


@pytest.fixture
def loopback_is_public(monkeypatch):
    """Let the test server's own 127.0.0.1 pass the SSRF check, so redirects can be tested."""
    real = fetch._resolve_addresses

    def fake(host, port):
        if host == "127.0.0.1":
            return [ipaddress.ip_address("93.184.216.34")]
        return real(host, port)

    monkeypatch.setattr(fetch, "_resolve_addresses", fake)
    real_peer = fetch._check_peer

    def peer(sock, host):  # the connection to that host reaches 127.0.0.1: let it pass too
        if host != "127.0.0.1":
            real_peer(sock, host)

    monkeypatch.setattr(fetch, "_check_peer", peer)


@pytest.mark.parametrize("route", ["/redirect-metadata", "/redirect-localhost"])
def test_redirect_to_private_refused(server, tmp_path, loopback_is_public, route):
    policy = dataclasses.replace(POLICY, allow_private_urls=False)
    assert _fetch_url(server.url("/files/compatible.wav"), tmp_path, policy).is_file()  # first hop passes
    with pytest.raises(AudioError, match="refused URL host .*ALLOW_PRIVATE_URLS"):
        _fetch_url(server.url(route), tmp_path, policy)


def test_query_string_never_in_errors_or_logs(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="audio")
    for route in ("/status/404", "/status/500", "/slow-headers", "/redirect/9/x.wav"):
        policy = dataclasses.replace(POLICY, read_timeout_s=0.3, retries=2)
        with pytest.raises(AudioError) as info:
            _fetch_url(server.url(route + "?X-Amz-Signature=SECRET123&token=SECRET456"), tmp_path, policy)
        assert "SECRET" not in str(info.value)
    _fetch_url(server.url("/files/compatible.wav?token=SECRET789"), tmp_path)
    assert "SECRET" not in caplog.text
    assert "retrying" in caplog.text and "downloaded" in caplog.text


def test_connection_refused_is_retried(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AudioError, match=r"could not connect to .*\(after 3 attempts\)"):
        _fetch_url(f"http://127.0.0.1:{port}/a.wav", tmp_path)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def _check_waveform(prepared: PreparedAudio) -> None:
    """Invariants every PreparedAudio must satisfy."""
    w = prepared.waveform
    assert w.dtype == np.float32 and w.ndim == 1 and w.size > 0
    assert float(np.abs(w).max()) <= 1.0
    assert prepared.duration_s == pytest.approx(w.size / 16_000)
    assert prepared.expected == {"sample_rate": 16000, "channels": 1}
    info = sf.info(str(prepared.wav_path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == w.size
    import json

    json.dumps(prepared.debug_dict())  # JSON-native


# name, is_compatible, used_fallback, actual sample_rate, channels, codec, container substring, seconds
DECODE_CASES = [
    ("compatible.wav", True, False, 16000, 1, "pcm_s16le", "wav", SPEECH_SECONDS),
    ("speech.flac", True, False, 16000, 1, "flac", "flac", SPEECH_SECONDS),
    ("float16k.wav", True, False, 16000, 1, "pcm_f32le", "wav", SPEECH_SECONDS),
    ("stereo44.wav", False, True, 44100, 2, "pcm_s16le", "wav", SPEECH_SECONDS),
    ("speech.mp3", True, True, 16000, 1, "mp3", "mp3", SPEECH_SECONDS),
    ("speech22k.mp3", False, True, 22050, 1, "mp3", "mp3", SPEECH_SECONDS),
    ("tel8k.wav", False, True, 8000, 1, "pcm_mulaw", "wav", SPEECH_SECONDS),
    ("six.wav", False, True, 48000, 6, "pcm_s16le", "wav", SPEECH_SECONDS),
    ("video.mkv", False, True, 48000, 1, "opus", "matroska", SPEECH_SECONDS),
    ("video.mp4", False, True, 44100, 2, "aac", "mp4", SPEECH_SECONDS),
    ("min100ms.wav", True, False, 16000, 1, "pcm_s16le", "wav", 0.1),
    ("cut.mp3", True, True, 16000, 1, "mp3", "mp3", 8.0),  # half the bytes: ~half of 16.08 s (whole frames)
    ("streamed.wav", True, False, 16000, 1, "pcm_s16le", "wav", SPEECH_SECONDS),
    ("one_sample_short.wav", True, False, 16000, 1, "pcm_s16le", "wav", SPEECH_SECONDS),
]


@pytest.mark.parametrize("name, compatible, fallback, rate, channels, codec, container, seconds", DECODE_CASES)
def test_prepare_audio(media, tmp_path, name, compatible, fallback, rate, channels, codec, container, seconds):
    prepared = prepare_audio(media[name], "url", tmp_path)
    _check_waveform(prepared)
    assert (prepared.is_compatible, prepared.used_fallback, prepared.source) == (compatible, fallback, "url")
    actual = prepared.actual
    assert (actual["sample_rate"], actual["channels"], actual["codec"]) == (rate, channels, codec)
    assert container in actual["container"]
    assert prepared.duration_s == pytest.approx(seconds, abs=0.06 if seconds > 1 else 0.002)
    assert ("with ffmpeg" in prepared.reason) == fallback
    if fallback:
        assert prepared.wav_path == tmp_path / "audio_16k.wav"
    else:
        assert prepared.wav_path.parent in (tmp_path, media[name].parent)
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())  # nothing written elsewhere


def test_compatible_wav_does_not_run_ffmpeg(media, tmp_path, monkeypatch):
    def no_tools(*args, **kwargs):
        raise AssertionError("ffmpeg/ffprobe must not run for a compatible WAV")

    monkeypatch.setattr(audio, "_run_tool", no_tools)
    prepared = prepare_audio(media["compatible.wav"], "local", tmp_path)
    assert prepared.wav_path == media["compatible.wav"]  # used as-is, no copy
    assert not list(tmp_path.iterdir())
    assert prepared.debug_dict() == {
        "is_compatible": True,
        "expected": {"sample_rate": 16000, "channels": 1},
        "actual": {"sample_rate": 16000, "channels": 1, "codec": "pcm_s16le", "container": "wav",
                   "duration_s": 16.08},
        "used_fallback": False,
        "source": "local",
        "reason": "input is already 16 kHz mono WAV: read directly with soundfile, no ffmpeg needed",
    }


def test_stereo_debug_dict_and_waveform_matches_original(media, tmp_path):
    prepared = prepare_audio(media["stereo44.wav"], "base64", tmp_path)
    debug = prepared.debug_dict()
    assert debug["actual"] == {"sample_rate": 44100, "channels": 2, "codec": "pcm_s16le",
                               "container": "wav", "duration_s": pytest.approx(16.08, abs=0.01)}
    assert debug["reason"] == "input is 44100 Hz, 2 channels (pcm_s16le): resampled/downmixed to 16 kHz mono with ffmpeg"
    original, _ = sf.read(str(media["compatible.wav"]), dtype="float32")
    n = min(original.size, prepared.waveform.size)
    # Same speech after the 16k -> 44.1k stereo -> 16k mono round trip.
    assert np.corrcoef(original[:n], prepared.waveform[:n])[0, 1] > 0.95


def test_video_reason_mentions_extraction(media, tmp_path):
    prepared = prepare_audio(media["video.mp4"], "url", tmp_path)
    assert prepared.reason.startswith("input is 44100 Hz, 2 channels (aac): audio extracted")


@pytest.mark.parametrize("name, message", [
    ("empty.wav", "^audio file is empty$"),
    ("text.txt", "^could not decode audio: no audio stream found"),  # probed as 'tty' (ANSI art)
    ("text.bin", "^could not decode audio: .*Invalid data"),
    ("garbage.bin", "^could not decode audio: "),
    ("no_data_chunk.wav", "^could not decode audio: "),
    ("truncated.mp4", "^could not decode audio: "),
    ("silent_video.mp4", "^no audio stream found in the video"),
    ("header_only.wav", r"^audio file is truncated: the WAV header promises 16\.1 s but the file holds 0\.000 s$"),
    ("zero_frames.wav", "^audio has no samples$"),
    ("promises11s.wav", r"^audio file is truncated: the WAV header promises 11\.0 s but the file holds 0\.002 s$"),
    ("cut.wav", r"^audio file is truncated: the WAV header promises 16\.1 s but the file holds 4\.0\d\d s$"),
    ("short5ms.wav", r"^audio is too short: 0\.005 s \(at least 0\.1 s needed\)$"),
    ("short5ms_44k.wav", r"^audio is too short: 0\.005 s \(at least 0\.1 s needed\)$"),
    ("almost100ms.wav", r"^audio is too short: 0\.099 s \(at least 0\.1 s needed\)$"),  # rounded down
])
def test_prepare_audio_errors(media, tmp_path, name, message):
    with pytest.raises(AudioError, match=message) as info:
        prepare_audio(media[name], "url", tmp_path)
    assert len(str(info.value)) < 400  # short, never a full ffmpeg dump
    assert str(tmp_path) not in str(info.value)


def _riff(*chunks: tuple[bytes, bytes]) -> bytes:
    """A RIFF/WAVE file from (id, payload) chunks, each padded to an even size as RIFF wants."""
    body = b"".join(cid + len(data).to_bytes(4, "little") + data + b"\0" * (len(data) & 1) for cid, data in chunks)
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body


def _fmt_pcm16_mono_16k() -> bytes:
    """fmt chunk payload: PCM, 1 channel, 16 kHz, 32000 bytes/s, block align 2, 16 bits."""
    return (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16_000).to_bytes(4, "little") \
        + (32_000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")


def test_wav_truncation_check_walks_chunks(tmp_path):
    """An odd-sized chunk before fmt and a LIST chunk after the data are no truncation; the
    same file cut inside its data is, and the message gives both lengths."""
    samples = (np.sin(np.arange(16_000) / 9.0) * 8000).astype("<i2").tobytes()  # 1 s
    whole = _riff((b"junk", b"odd"), (b"fmt ", _fmt_pcm16_mono_16k()), (b"data", samples), (b"LIST", b"INFOxxxx"))
    good = tmp_path / "chunks.wav"
    good.write_bytes(whole)
    prepared = prepare_audio(good, "url", tmp_path)
    assert prepared.duration_s == pytest.approx(1.0)
    cut = tmp_path / "cut_chunks.wav"
    cut.write_bytes(whole[: whole.index(b"data") + 8 + 8000])  # 0.25 s of the promised 1 s
    with pytest.raises(AudioError, match=r"^audio file is truncated: the WAV header promises 1\.0 s but the file holds 0\.250 s$"):
        prepare_audio(cut, "url", tmp_path)


def test_url_to_waveform_end_to_end(server, tmp_path):
    path = _fetch_url(server.url("/redirect/1/video.mkv"), tmp_path)
    prepared = prepare_audio(path, "url", tmp_path)
    _check_waveform(prepared)
    assert prepared.used_fallback and prepared.duration_s == pytest.approx(SPEECH_SECONDS, abs=0.06)
