"""Materialise a request's audio source as a file in a per-request working directory.

:func:`fetch_audio` accepts an http(s) URL, a base64 payload or, when enabled, a
local path. URLs are checked against private/loopback/metadata addresses (every
DNS answer, every redirect hop, and the address each connection actually reached,
so DNS rebinding cannot slip through), downloaded with retries and back-off on
transient errors, and capped at a size limit (:class:`FetchPolicy`).

Decoding the file is :mod:`audio`'s job; :class:`AudioError`, raised by both, lives
here so this module does not import numpy or soundfile.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
from urllib3.exceptions import ReadTimeoutError

# Logged as "audio", the name these lines have always had in the job logs and container log.
logger = logging.getLogger("audio")

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_MAX_REDIRECTS = 5
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5

_CHUNK_BYTES = 64 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
_HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_HTML_MARKERS = (b"<!doctype", b"<html")
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


class _TransientDownloadError(Exception):
    """Private: a download failure worth retrying; message is user-safe."""


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

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
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
