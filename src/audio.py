"""Turn a request's audio source into 16 kHz mono float32 samples.

Two steps, both confined to a per-request working directory that the caller
creates and deletes:

* :func:`fetch_audio` materialises the source (http(s) URL, base64 payload or,
  when enabled, a local path) as a file, with SSRF and size protection for URLs.
* :func:`prepare_audio` probes that file and either reads it directly (already a
  16 kHz mono WAV/FLAC) or decodes/resamples it with ffmpeg, reporting which
  path it took and why.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import math
import os
import re
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
import requests.adapters
import soundfile as sf
import urllib3
import urllib3.connection
from urllib3.exceptions import ReadTimeoutError

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16_000
TARGET_CHANNELS = 1

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_MAX_REDIRECTS = 5
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5

# ffprobe only reads headers; ffmpeg decodes the whole file, which for a
# multi-hour recording can take a few minutes on a busy CPU.
FFPROBE_TIMEOUT_S = 60.0
FFMPEG_TIMEOUT_S = 1800.0

# Shortest audio accepted, in seconds: below this there is nothing to transcribe (a Whisper
# token spans 20 ms, a syllable ~0.1 s), and such a file is almost always a broken upload.
MIN_DURATION_S = 0.1
# A WAV counts as truncated when its data chunk declares more than the file holds by more
# than both of these (seconds, fraction of the declared length): some writers round the
# declared size or drop a pad byte, which must not fail a good file.
TRUNCATION_TOLERANCE_S = 0.1
TRUNCATION_TOLERANCE_FRACTION = 0.01
# RIFF chunk sizes that mean "length unknown" (streaming writers, RF64), not a real promise.
_RIFF_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF})
_RIFF_MAX_CHUNKS = 64  # chunks walked before the data chunk; real files have a handful

_CHUNK_BYTES = 64 * 1024
_STDERR_MAX_CHARS = 300
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_HTML_MARKERS = (b"<!doctype", b"<html")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SUFFIX_RE = re.compile(r"^\.[A-Za-z0-9]{1,10}$")
_DATA_URI_RE = re.compile(r"^data:[^,]*?;base64,", re.IGNORECASE)

# Cloud instance-metadata endpoints: most fall in link-local/private ranges
# already, but they are listed explicitly so a change in how ipaddress
# classifies a range can never open them up.
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
    }
)
# Playlist/concatenation demuxers open further inputs named inside the file;
# a downloaded file must never make ffmpeg read other resources.
_REFUSED_FORMATS = frozenset({"hls", "applehttp", "concat", "ffconcat"})
# WAV/FLAC are the containers soundfile reads reliably and exactly; anything
# else (including MP3, which newer libsndfile can read) goes through ffmpeg
# so decoding behaves the same as in whisperX.
_DIRECT_FORMATS = frozenset({"WAV", "WAVEX", "FLAC"})
_SF_SUBTYPE_CODECS = {
    "PCM_U8": "pcm_u8",
    "PCM_S8": "pcm_s8",
    "PCM_16": "pcm_s16le",
    "PCM_24": "pcm_s24le",
    "PCM_32": "pcm_s32le",
    "FLOAT": "pcm_f32le",
    "DOUBLE": "pcm_f64le",
    "ULAW": "pcm_mulaw",
    "ALAW": "pcm_alaw",
}


class AudioError(ValueError):
    """User-facing problem with the audio or its source; message says what and which field."""


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and permissions for materialising an audio source.

    Sizes are in bytes, timeouts and back-off in seconds.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    retries: int = DEFAULT_RETRIES
    allow_private_urls: bool = False
    allow_local_files: bool = False
    backoff_s: float = DEFAULT_BACKOFF_S  # first retry delay; doubles per attempt

    def __post_init__(self) -> None:
        """Reject nonsensical limits early, at configuration time."""
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        if self.retries < 1:
            raise ValueError("retries (total attempts) must be >= 1")
        if self.backoff_s < 0:
            raise ValueError("backoff_s must be >= 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FetchPolicy:
        """Build a policy from environment variables (``os.environ`` by default).

        MAX_AUDIO_BYTES (bytes), DOWNLOAD_CONNECT_TIMEOUT and DOWNLOAD_READ_TIMEOUT
        (seconds), ALLOW_PRIVATE_URLS and ALLOW_LOCAL_FILES (true/1/yes/on).
        Raises ValueError on unparsable values, since that is a deployment bug.
        """
        env = os.environ if environ is None else environ
        return cls(
            max_bytes=_env_int(env, "MAX_AUDIO_BYTES", DEFAULT_MAX_BYTES),
            connect_timeout_s=_env_float(env, "DOWNLOAD_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_S),
            read_timeout_s=_env_float(env, "DOWNLOAD_READ_TIMEOUT", DEFAULT_READ_TIMEOUT_S),
            allow_private_urls=_env_bool(env, "ALLOW_PRIVATE_URLS"),
            allow_local_files=_env_bool(env, "ALLOW_LOCAL_FILES"),
        )


@dataclass(frozen=True)
class AudioProbe:
    """What ffprobe/soundfile saw in the input (None where unknown)."""

    sample_rate: int | None  # Hz
    channels: int | None
    codec: str | None  # ffprobe codec name, e.g. "pcm_s16le", "mp3", "aac"
    container: str | None  # ffprobe format name, e.g. "wav", "mov,mp4,m4a,3gp,3g2,mj2"
    duration_s: float | None  # seconds, as declared by the container

    def as_dict(self) -> dict:
        """JSON-native dict of the fields."""
        return {
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "codec": self.codec,
            "container": self.container,
            "duration_s": None if self.duration_s is None else round(float(self.duration_s), 3),
        }


@dataclass(frozen=True)
class PreparedAudio:
    """Decoded audio ready for WhisperX, plus a record of how it was obtained."""

    waveform: np.ndarray  # float32, mono, 16 kHz, shape (n_samples,), values in [-1, 1]
    wav_path: Path  # 16 kHz mono PCM16 WAV of the same audio
    duration_s: float  # seconds, = n_samples / 16000
    is_compatible: bool  # input already 16 kHz mono (no resampling needed)
    expected: dict  # {"sample_rate": 16000, "channels": 1}
    actual: dict  # {"sample_rate", "channels", "codec", "container", "duration_s"} of the input
    used_fallback: bool  # ffmpeg was used to decode/resample
    source: str  # "url" | "base64" | "local"
    reason: str  # one sentence: why the fallback was or was not used

    def debug_dict(self) -> dict:
        """JSON-native summary for the response's debug section (no waveform)."""
        return {
            "is_compatible": bool(self.is_compatible),
            "expected": dict(self.expected),
            "actual": dict(self.actual),
            "used_fallback": bool(self.used_fallback),
            "source": self.source,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class _FfprobeResult:
    """Private: the first audio stream's probe plus container facts."""

    probe: AudioProbe
    has_audio: bool
    has_video: bool  # a real video stream, not cover art


class _TransientDownloadError(Exception):
    """Private: a download failure worth retrying; message is user-safe."""


# --------------------------------------------------------------------------
# Environment parsing
# --------------------------------------------------------------------------


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """Read an integer (e.g. bytes) from env, allowing '_' separators."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    """Read a float (e.g. seconds) from env."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    """Read a boolean flag from env; unknown words raise so typos are not silently 'off'."""
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE_WORDS:
        return True
    if raw in _FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be one of true/1/yes/on or false/0/no/off, got {raw!r}")


# --------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------


def fetch_audio(
    audio_file: str | None,
    audio_base64: str | None,
    audio_filename: str | None,
    workdir: Path,
    policy: FetchPolicy,
) -> tuple[Path, str]:
    """Materialise the source into workdir; returns (path, source kind).

    Exactly one of ``audio_file`` (http(s) URL, or a local path when
    ``policy.allow_local_files``) and ``audio_base64`` must be given.
    ``audio_filename`` only supplies a file-name extension hint. The source kind
    is "url", "base64" or "local"; a local path is returned as-is, not copied.
    """
    audio_file = (audio_file or "").strip() or None
    audio_base64 = (audio_base64 or "").strip() or None
    if audio_file and audio_base64:
        raise AudioError("give only one of audio_file or audio_base64, not both")
    if not audio_file and not audio_base64:
        raise AudioError("no audio given: set audio_file (URL) or audio_base64")
    workdir = Path(workdir)

    if audio_base64:
        dest = workdir / f"input{_safe_suffix(audio_filename)}"
        _write_base64(audio_base64, dest, policy)
        return dest, "base64"

    assert audio_file is not None
    scheme_match = _SCHEME_RE.match(audio_file)
    if scheme_match is None:
        return _local_path(audio_file, policy), "local"
    scheme = scheme_match.group(0)[:-1].lower()
    if scheme not in ("http", "https"):
        raise AudioError(f"audio_file: unsupported URL scheme '{scheme}' (only http and https are allowed)")
    try:
        url_path = urlsplit(audio_file).path
    except ValueError as exc:  # e.g. "http://[::1": urllib refuses it before any connection
        raise AudioError(f"audio_file: not a valid URL ({exc})") from None
    suffix = _safe_suffix(url_path) or _safe_suffix(audio_filename)
    dest = workdir / f"input{suffix or '.bin'}"
    _download(audio_file, dest, policy)
    return dest, "url"


def _safe_suffix(name: str | None) -> str:
    """File extension of ``name`` if it is short and alphanumeric, else ''.

    Only a hint for ffprobe; never used to build paths outside workdir.
    """
    if not name:
        return ""
    suffix = Path(name.replace("\\", "/")).suffix
    return suffix.lower() if _SUFFIX_RE.match(suffix) else ""


def _local_path(audio_file: str, policy: FetchPolicy) -> Path:
    """Validate a local path source; local reads are opt-in (ALLOW_LOCAL_FILES)."""
    if not policy.allow_local_files:
        raise AudioError(
            "audio_file: local paths are disabled; give an http(s) URL or audio_base64 "
            "(set ALLOW_LOCAL_FILES=true to allow paths on the worker)"
        )
    path = Path(audio_file).expanduser()
    if not path.is_file():
        raise AudioError(f"audio_file: local file not found: {audio_file}")
    return path


def _write_base64(payload: str, dest: Path, policy: FetchPolicy) -> None:
    """Decode a base64 string (optionally a data: URI) into ``dest`` (bytes on disk)."""
    data_uri = _DATA_URI_RE.match(payload)
    if data_uri:
        payload = payload[data_uri.end():]
    elif payload[:5].lower() == "data:":
        raise AudioError("audio_base64: data: URI must be base64-encoded (';base64,')")
    compact = "".join(payload.split())  # line breaks from MIME encoders are harmless
    # Upper bound of the decoded size, checked before allocating it.
    if len(compact) * 3 // 4 > policy.max_bytes:
        raise AudioError(
            f"audio_base64: audio is larger than the limit of {policy.max_bytes} bytes (MAX_AUDIO_BYTES)"
        )
    compact += "=" * (-len(compact) % 4)  # tolerate stripped padding
    altchars = b"-_" if ("-" in compact or "_" in compact) else None
    try:
        data = base64.b64decode(compact, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise AudioError("audio_base64: not valid base64") from None
    dest.write_bytes(data)
    logger.info("wrote %d bytes of base64 audio to %s", len(data), dest.name)


def _redact_url(url: str) -> str:
    """scheme://host[:port]/path of ``url``: no credentials, query or fragment (may hold tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _resolve_addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """All IP addresses ``host`` stands for: itself if a literal IP, else every DNS answer."""
    literal = host.strip("[]").split("%", 1)[0]
    try:
        return [ipaddress.ip_address(literal)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # sockaddr[0] may carry an IPv6 scope ("fe80::1%eth0"); the scope is irrelevant here.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _is_blocked_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for addresses a public download must not reach (private, loopback, metadata...)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return (
        ip in _METADATA_ADDRESSES
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        # is_global also excludes ranges the flags above miss, e.g. 100.64.0.0/10 (CGNAT).
        or not ip.is_global
    )


def _check_url(url: str, policy: FetchPolicy) -> None:
    """Refuse a URL (the first or any redirect hop) with a bad scheme or a non-public host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AudioError(f"audio_file: not a valid URL: {_redact_url(url)}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise AudioError(f"audio_file: unsupported URL scheme '{scheme}' (only http and https are allowed)")
    host = parts.hostname
    if not host:
        raise AudioError(f"audio_file: URL has no host: {_redact_url(url)}")
    if policy.allow_private_urls:
        return
    try:
        addresses = _resolve_addresses(host, port or (443 if scheme == "https" else 80))
    except (OSError, UnicodeError):
        raise AudioError(f"audio_file: could not resolve host '{host}'") from None
    blocked = [str(ip) for ip in addresses if _is_blocked_address(ip)]
    if not addresses or blocked:
        logger.warning("refused URL %s: host %s resolves to %s", _redact_url(url), host, blocked)
        raise _refused_host_error(host)


def _refused_host_error(host: str) -> AudioError:
    return AudioError(
        f"audio_file: refused URL host '{host}': it resolves to a private, loopback, "
        "link-local or otherwise non-public address (set ALLOW_PRIVATE_URLS=true to allow)"
    )


def _check_peer(sock: socket.socket, host: str) -> None:
    """Refuse a connected socket whose peer is not a public address (closing it).

    The URL check resolves the host once; the connection resolves it again, and a DNS
    server may answer differently the second time (DNS rebinding: public, then 127.0.0.1).
    Checking the address actually connected to closes that gap, before a byte is sent and
    before TLS, which still verifies the certificate for the host name (SNI unchanged).
    """
    peer = sock.getpeername()[0]
    ip = ipaddress.ip_address(str(peer).split("%", 1)[0])
    if _is_blocked_address(ip):
        sock.close()
        logger.warning("refused connection to %s: it connected to %s", host, ip)
        raise _refused_host_error(host)


class _PeerCheckedHTTPConnection(urllib3.connection.HTTPConnection):
    """urllib3 connection that checks the peer address of each new socket (``_check_peer``)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _PeerCheckedHTTPSConnection(urllib3.connection.HTTPSConnection):
    """HTTPS twin of ``_PeerCheckedHTTPConnection``: the peer is checked before the TLS handshake."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _PeerCheckedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _PeerCheckedHTTPConnection


class _PeerCheckedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _PeerCheckedHTTPSConnection


class _PeerCheckedAdapter(requests.adapters.HTTPAdapter):
    """requests adapter whose every connection (each redirect hop, each retry) is checked
    against the address it actually reached."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PeerCheckedHTTPPool, "https": _PeerCheckedHTTPSPool}


def _download(url: str, dest: Path, policy: FetchPolicy) -> None:
    """Download ``url`` to ``dest`` with retries and exponential back-off on transient errors.

    Each attempt starts again from the original URL, so a short-lived redirect
    target is re-issued by the origin. Permanent failures raise AudioError at once.
    """
    _check_url(url, policy)  # refuse bad URLs before any network traffic
    try:
        _download_with_retries(url, dest, policy)
    except BaseException:
        dest.unlink(missing_ok=True)  # never leave a partial or oversized file to be decoded
        raise


def _download_with_retries(url: str, dest: Path, policy: FetchPolicy) -> None:
    """Attempt loop of :func:`_download`: back-off 0.5 s, 1 s, ... between attempts."""
    with requests.Session() as session:
        # No proxies/.netrc from the environment: the host checks above assume a
        # direct connection, and ambient credentials must not be sent anywhere.
        session.trust_env = False
        if not policy.allow_private_urls:
            for prefix in ("http://", "https://"):
                session.mount(prefix, _PeerCheckedAdapter())
        for attempt in range(1, policy.retries + 1):
            started = time.monotonic()
            try:
                size = _download_once(session, url, dest, policy)
            except _TransientDownloadError as exc:
                if attempt >= policy.retries:
                    raise AudioError(f"{exc} (after {attempt} attempts)") from None
                delay = policy.backoff_s * 2 ** (attempt - 1)
                logger.warning("attempt %d/%d: %s; retrying in %.2f s", attempt, policy.retries, exc, delay)
                time.sleep(delay)
                continue
            logger.info(
                "downloaded %d bytes from %s in %.2f s", size, _redact_url(url), time.monotonic() - started
            )
            return


def _download_once(session: requests.Session, url: str, dest: Path, policy: FetchPolicy) -> int:
    """One attempt: follow redirects manually (re-checking each hop), then stream the body.

    Returns the number of bytes written to ``dest``.
    """
    current = url
    for hop in range(policy.max_redirects + 1):
        if hop:
            _check_url(current, policy)
        shown = _redact_url(current)
        try:
            with session.get(
                current,
                stream=True,
                allow_redirects=False,
                timeout=(policy.connect_timeout_s, policy.read_timeout_s),
                # Identity encoding keeps Content-Length meaningful for the size check.
                headers={"Accept-Encoding": "identity", "User-Agent": "whisperx-worker/1.0"},
            ) as response:
                status = response.status_code
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise AudioError(f"download failed: HTTP {status} without a Location for {shown}")
                    current = urljoin(current, location)
                    continue
                _raise_for_status(status, shown)
                return _stream_body(response, dest, policy, shown)
        except requests.RequestException as exc:
            raise _map_request_error(exc, current, policy) from None
    raise AudioError(
        f"download failed: too many redirects (more than {policy.max_redirects}) for {_redact_url(url)}"
    )


def _raise_for_status(status: int, shown_url: str) -> None:
    """Raise for any non-2xx status; 408/429/5xx are retryable."""
    if 200 <= status < 300:
        return
    message = f"download failed: HTTP {status} for {shown_url}"
    if status in _TRANSIENT_STATUSES:
        raise _TransientDownloadError(message)
    raise AudioError(message)


def _map_request_error(exc: requests.RequestException, url: str, policy: FetchPolicy) -> Exception:
    """Turn a requests exception into a user-safe error (never ``str(exc)``: it holds the query)."""
    shown = _redact_url(url)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return _TransientDownloadError(
            f"download failed: connecting to {shown} timed out after {policy.connect_timeout_s:g} s"
        )
    # A stall mid-body surfaces as ConnectionError wrapping urllib3's ReadTimeoutError.
    stalled = isinstance(exc, requests.exceptions.ReadTimeout) or (
        bool(exc.args) and isinstance(exc.args[0], ReadTimeoutError)
    )
    if stalled:
        return _TransientDownloadError(
            f"download failed: {shown} sent no data for {policy.read_timeout_s:g} s (read timeout)"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return AudioError(f"download failed: TLS/SSL error for {shown}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return _TransientDownloadError(f"download failed: could not connect to {shown}")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return _TransientDownloadError(f"download failed: connection broke while reading {shown}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return AudioError(f"audio_file: not a valid URL: {shown}")
    return AudioError(f"download failed: {type(exc).__name__} for {shown}")


def _looks_like_html(first_bytes: bytes) -> bool:
    """True if the start of a body is an HTML document (error/login pages served with 200)."""
    head = first_bytes[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(_HTML_MARKERS)


def _stream_body(response: requests.Response, dest: Path, policy: FetchPolicy, shown_url: str) -> int:
    """Stream a 2xx body to ``dest``, enforcing the byte limit as data arrives; returns bytes written."""
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type in _HTML_CONTENT_TYPES:
        raise AudioError(f"the URL returned an HTML page, not audio ({shown_url})")
    if content_type == "text/plain":
        raise AudioError(f"the URL returned a text page (text/plain), not audio ({shown_url})")
    too_large = (
        f"audio at {shown_url} is larger than the limit of {policy.max_bytes} bytes (MAX_AUDIO_BYTES)"
    )
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise AudioError(too_large)

    written = 0
    with dest.open("wb") as out:
        for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
            if not chunk:
                continue
            if written == 0 and _looks_like_html(chunk):
                raise AudioError(f"the URL returned an HTML page, not audio ({shown_url})")
            written += len(chunk)
            # Checked per chunk so a lying or missing Content-Length cannot fill the disk.
            if written > policy.max_bytes:
                raise AudioError(too_large)
            out.write(chunk)
    return written


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def prepare_audio(path: Path, source: str, workdir: Path) -> PreparedAudio:
    """Probe; if 16 kHz mono WAV/FLAC read directly with soundfile, else decode+resample with ffmpeg.

    ffmpeg runs as ``ffmpeg -nostdin -i in -vn -ac 1 -ar 16000 -f wav out`` (first
    audio stream only), which also extracts audio from video containers. The
    result is a float32 16 kHz mono waveform plus a 16 kHz mono PCM16 WAV in
    ``workdir`` (or the input itself when it already is one).

    Refused with an ``AudioError`` naming the problem: an empty file, a WAV whose header
    promises clearly more audio than the file holds (truncated), audio with no samples, and
    audio shorter than ``MIN_DURATION_S`` (0.1 s).
    """
    path = Path(path)
    workdir = Path(workdir)
    try:
        size = path.stat().st_size
    except OSError:
        raise AudioError("audio file could not be read") from None
    if size == 0:
        raise AudioError("audio file is empty")
    _check_wav_not_truncated(path, size)

    prepared = _try_direct(path, source, workdir) or _decode_with_ffmpeg(path, source, workdir)
    _check_long_enough(prepared.duration_s)
    return prepared


def _check_long_enough(duration_s: float) -> None:
    """Refuse audio shorter than MIN_DURATION_S seconds (it would only give an empty transcript)."""
    if duration_s < MIN_DURATION_S:
        # Rounded down, so 0.0996 s never reads as "0.100 s (at least 0.1 s needed)".
        shown = math.floor(duration_s * 1000 + 1e-6) / 1000
        raise AudioError(f"audio is too short: {shown:.3f} s (at least {MIN_DURATION_S:g} s needed)")


@dataclass(frozen=True)
class _WavLayout:
    """Private: where a RIFF/WAVE file's samples are and how many its header promises."""

    declared_bytes: int  # the data chunk's size field
    present_bytes: int  # bytes after the data chunk header, up to the end of the file
    bytes_per_second: int  # the fmt chunk's average byte rate


def _read_wav_layout(path: Path, file_size: int) -> _WavLayout | None:
    """Walk a RIFF/WAVE file's chunks up to ``data``; None when it is not one, has no usable
    fmt/data chunk, or declares an unknown length (0 or 0xFFFFFFFF: streamed WAVs, RF64).

    Only headers are read (seeks over other chunks), so this costs the same for any size.
    """
    byte_rate = None
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not a little-endian WAV (RIFX, RF64, other formats): no promise to check
        for _ in range(_RIFF_MAX_CHUNKS):
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                if byte_rate is None or chunk_size in _RIFF_UNKNOWN_SIZES:
                    return None
                return _WavLayout(chunk_size, max(0, file_size - f.tell()), byte_rate)
            if chunk_id == b"fmt " and chunk_size >= 16:
                fmt = f.read(16)
                if len(fmt) < 16:
                    return None
                byte_rate = int.from_bytes(fmt[8:12], "little") or None
                f.seek(chunk_size - 16 + (chunk_size & 1), os.SEEK_CUR)
            else:
                f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def _check_wav_not_truncated(path: Path, file_size: int) -> None:
    """Refuse a WAV whose header promises clearly more audio than the file holds (a cut
    download or upload): decoding it would give a few ms and a misleading empty transcript."""
    layout = _read_wav_layout(path, file_size)
    if layout is None:
        return
    declared_s = layout.declared_bytes / layout.bytes_per_second
    present_s = min(layout.present_bytes, layout.declared_bytes) / layout.bytes_per_second
    missing_s = declared_s - present_s
    if missing_s > TRUNCATION_TOLERANCE_S and missing_s > TRUNCATION_TOLERANCE_FRACTION * declared_s:
        promised = f"{declared_s:.1f}" if declared_s >= 1 else f"{declared_s:.3f}"
        raise AudioError(f"audio file is truncated: the WAV header promises {promised} s but the file holds {present_s:.3f} s")


def _expected() -> dict:
    """The format WhisperX wants: 16 kHz mono."""
    return {"sample_rate": TARGET_SAMPLE_RATE, "channels": TARGET_CHANNELS}


def _is_target_format(probe: AudioProbe) -> bool:
    """True if the probed stream is already 16 kHz mono."""
    return probe.sample_rate == TARGET_SAMPLE_RATE and probe.channels == TARGET_CHANNELS


def _try_direct(path: Path, source: str, workdir: Path) -> PreparedAudio | None:
    """Read a 16 kHz mono WAV/FLAC with soundfile; None if the input needs ffmpeg."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None  # not something libsndfile knows: let ffprobe/ffmpeg decide
    if info.format not in _DIRECT_FORMATS or info.samplerate != TARGET_SAMPLE_RATE or info.channels != 1:
        return None
    try:
        samples, _ = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        logger.info("soundfile could not read %s (%s); falling back to ffmpeg", path.name, exc)
        return None

    probe = AudioProbe(
        sample_rate=info.samplerate,
        channels=info.channels,
        codec="flac" if info.format == "FLAC" else _SF_SUBTYPE_CODECS.get(info.subtype, info.subtype.lower()),
        container="flac" if info.format == "FLAC" else "wav",
        duration_s=float(info.frames) / info.samplerate,
    )
    waveform = _finish_waveform(samples)
    if info.format in ("WAV", "WAVEX") and info.subtype == "PCM_16":
        wav_path = path  # already exactly what path-based tools want
    else:
        # FLAC or non-PCM16 WAV: tools expecting a PCM16 WAV get a copy (no resampling).
        wav_path = workdir / "audio_16k.wav"
        sf.write(str(wav_path), waveform, TARGET_SAMPLE_RATE, subtype="PCM_16", format="WAV")
    kind = "FLAC" if info.format == "FLAC" else "WAV"
    return PreparedAudio(
        waveform=waveform,
        wav_path=wav_path,
        duration_s=waveform.shape[0] / TARGET_SAMPLE_RATE,
        is_compatible=True,
        expected=_expected(),
        actual=probe.as_dict(),
        used_fallback=False,
        source=source,
        reason=f"input is already 16 kHz mono {kind}: read directly with soundfile, no ffmpeg needed",
    )


def _finish_waveform(samples: np.ndarray) -> np.ndarray:
    """Make samples a contiguous float32 1-D array in [-1, 1]; raise if there are none."""
    waveform = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if waveform.size == 0:
        raise AudioError("audio has no samples")
    # Float WAVs may exceed full scale; clip rather than let the model see >1.0.
    np.clip(waveform, -1.0, 1.0, out=waveform)
    return waveform


def _decode_with_ffmpeg(path: Path, source: str, workdir: Path) -> PreparedAudio:
    """Probe with ffprobe, then decode the first audio stream to 16 kHz mono PCM16 WAV and read it."""
    probed = _ffprobe(path)
    if not probed.has_audio:
        container = probed.probe.container or "unknown"
        if probed.has_video:
            raise AudioError(f"no audio stream found in the video (container: {container})")
        raise AudioError(f"could not decode audio: no audio stream found (detected format: {container})")
    if probed.probe.container in _REFUSED_FORMATS:
        raise AudioError(f"unsupported input: {probed.probe.container} playlists are not accepted")

    wav_path = workdir / "audio_16k.wav"
    _run_tool(
        [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            # Only plain files may be opened, so a crafted input cannot make ffmpeg fetch URLs.
            "-protocol_whitelist", "file",
            "-i", f"file:{path.resolve()}",
            "-map", "0:a:0",  # the stream ffprobe reported, not ffmpeg's own pick
            "-vn", "-sn", "-dn", "-map_metadata", "-1",
            "-ac", str(TARGET_CHANNELS), "-ar", str(TARGET_SAMPLE_RATE),
            "-c:a", "pcm_s16le", "-f", "wav",
            f"file:{wav_path.resolve()}",
        ],
        timeout_s=FFMPEG_TIMEOUT_S,
        display_name=path.name,
    )
    try:
        samples, rate = sf.read(str(wav_path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError):
        # ffmpeg writes only a header when it decodes nothing; libsndfile may reject that.
        raise AudioError("audio has no samples") from None
    if rate != TARGET_SAMPLE_RATE:  # would be an ffmpeg bug; never hand the model wrong-rate audio
        raise AudioError(f"could not decode audio: ffmpeg produced {rate} Hz instead of 16000 Hz")
    waveform = _finish_waveform(samples)
    probe = probed.probe
    return PreparedAudio(
        waveform=waveform,
        wav_path=wav_path,
        duration_s=waveform.shape[0] / TARGET_SAMPLE_RATE,
        is_compatible=_is_target_format(probe),
        expected=_expected(),
        actual=probe.as_dict(),
        used_fallback=True,
        source=source,
        reason=_fallback_reason(probe, probed.has_video),
    )


def _fallback_reason(probe: AudioProbe, has_video: bool) -> str:
    """One sentence on why ffmpeg was needed for this input."""
    rate = f"{probe.sample_rate} Hz" if probe.sample_rate else "unknown sample rate"
    channels = probe.channels
    layout = "mono" if channels == 1 else (f"{channels} channels" if channels else "unknown channels")
    codec = probe.codec or "unknown codec"
    if not _is_target_format(probe):
        action = "resampled/downmixed to 16 kHz mono with ffmpeg"
        if has_video:
            action = "audio extracted and " + action
        return f"input is {rate}, {layout} ({codec}): {action}"
    if has_video:
        return f"input is a video container ({probe.container}) with 16 kHz mono {codec} audio: extracted with ffmpeg"
    return f"input is 16 kHz mono but {codec} in {probe.container}, not WAV/FLAC: decoded with ffmpeg"


def _ffprobe(path: Path) -> _FfprobeResult:
    """Describe the file's first audio stream and container with ffprobe (JSON output)."""
    stdout = _run_tool(
        [
            "ffprobe", "-v", "error", "-protocol_whitelist", "file",
            "-show_entries",
            "stream=codec_type,codec_name,sample_rate,channels,duration:stream_disposition=attached_pic"
            ":format=format_name,duration",
            "-of", "json",
            f"file:{path.resolve()}",
        ],
        timeout_s=FFPROBE_TIMEOUT_S,
        display_name=path.name,
    )
    try:
        info = json.loads(stdout or "{}")
    except json.JSONDecodeError:
        raise AudioError("could not decode audio: unreadable ffprobe output") from None
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    container = fmt.get("format_name")
    has_video = not _is_still_or_text_format(container) and any(
        s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
        for s in streams
    )
    stream = audio or {}
    duration = _to_float(stream.get("duration"))
    if duration is None:
        duration = _to_float(fmt.get("duration"))  # e.g. Matroska keeps it on the container only
    probe = AudioProbe(
        sample_rate=_to_int(stream.get("sample_rate")),
        channels=_to_int(stream.get("channels")),
        codec=stream.get("codec_name"),
        container=container,
        duration_s=duration,
    )
    return _FfprobeResult(probe=probe, has_audio=audio is not None, has_video=has_video)


def _is_still_or_text_format(container: str | None) -> bool:
    """True for demuxers that turn images or text into a 'video' stream (e.g. .txt -> tty).

    Such inputs are not videos; calling them that would mislead the user.
    """
    if not container:
        return False
    return container in ("tty", "image2") or container.endswith("_pipe")


def _to_int(value: object) -> int | None:
    """ffprobe numbers arrive as strings or ints; None if absent or unparsable."""
    try:
        return int(value) if value not in (None, "", "N/A") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _to_float(value: object) -> float | None:
    """Parse an ffprobe float (seconds); None if absent or unparsable."""
    try:
        return float(value) if value not in (None, "", "N/A") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _run_tool(args: list[str], timeout_s: float, display_name: str) -> str:
    """Run ffmpeg/ffprobe (argument list, no shell, no stdin) and return stdout.

    Failures become AudioError("could not decode audio: ...") with a short stderr excerpt.
    """
    tool = args[0]
    try:
        completed = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AudioError(f"could not decode audio: {tool} timed out after {timeout_s:g} s") from None
    except FileNotFoundError:
        # A missing binary is a deployment bug, not the user's fault.
        raise RuntimeError(f"{tool} is not installed or not on PATH") from None
    if completed.returncode != 0:
        detail = _trim_stderr(completed.stderr, display_name)
        logger.info("%s failed on %s (rc=%d): %s", tool, display_name, completed.returncode, detail)
        raise AudioError(f"could not decode audio: {detail}")
    return completed.stdout


def _trim_stderr(stderr: str, display_name: str) -> str:
    """Last meaningful stderr line(s), with our temp paths shortened, capped at ~300 chars."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    # The final line usually names the failure ("Invalid data found when processing input").
    text = " / ".join(lines[-2:])
    text = re.sub(r"file:\S*?" + re.escape(display_name), display_name, text)
    text = re.sub(r"\[[^\]]+ @ 0x[0-9a-f]+\] ", "", text)  # "[mov,mp4 @ 0x55..]" noise
    if len(text) > _STDERR_MAX_CHARS:
        text = text[: _STDERR_MAX_CHARS - 3] + "..."
    return text
