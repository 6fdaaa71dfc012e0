"""Materialise a request's audio source as a file in a per-request working directory.

:func:`fetch_audio` accepts an http(s) URL, a base64 payload or, when enabled, a
local path. Contract for URLs:

- One parser decides the target: the host and port the guard vets are the ones requests
  and urllib3 connect to (requests' URL preparation, then ``urllib3.util.parse_url``), and
  spellings that parsers read differently (backslashes, control characters, odd user-info)
  are refused outright (:mod:`url_guard`).
- Unless ``ALLOW_PRIVATE_URLS``, every connection (first URL, each redirect hop, each retry)
  resolves its host once, vets EVERY answer before any connect, and connects only to a
  vetted address (IP pinned; TLS SNI, certificate check and Host header keep the name).
  A forbidden target gets the same error whether or not anything listens there, so the
  worker cannot be used as a port scanner, and DNS rebinding gains nothing.
- Downloads retry transient errors with back-off and stop at a size limit and at a total
  time limit (``download_timeout_s``); each socket wait is bounded by the time left. A bound
  :class:`job_control.JobControl`'s deadline or cancel stops a download within a fraction of a
  second (its ``JobTimeout`` / ``JobCancelled`` propagate unchanged).
- No message or log line holds a URL's query, fragment or user-info (:func:`_redact_url`).

Decoding the file is :mod:`audio`'s job; :class:`AudioError`, raised by both, lives
here so this module does not import numpy or soundfile.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import ipaddress
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    LocationParseError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util import parse_url

from job_control import JobControl
from stages import url_guard

# Logged as "audio", the name these lines have always had in the job logs and container log.
logger = logging.getLogger("audio")

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_DOWNLOAD_TIMEOUT_S = 600.0
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
# How iter_content reports urllib3's errors while reading a body (what _map_request_error expects).
_BODY_ERRORS: tuple[tuple[type[Exception], type[requests.RequestException]], ...] = (
    (ProtocolError, requests.exceptions.ChunkedEncodingError),
    (DecodeError, requests.exceptions.ContentDecodingError),
    (ReadTimeoutError, requests.exceptions.ConnectionError),
    (Urllib3SSLError, requests.exceptions.SSLError),
)
_STOP_POLL_S = 0.2  # how often the watchdog looks at a job's cancel flag
_MIN_WAIT_S = 0.001  # a socket timeout of 0 would make it non-blocking, not "expired"

# Kept under its old name: the tests swap it, and the connection code looks it up here.
_is_blocked_address = url_guard.is_blocked_address


class AudioError(ValueError):
    """User-facing problem with the audio or its source; message says what and which field."""


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and permissions for materialising an audio source.

    Sizes are in bytes, timeouts and back-off in seconds.

    - ``max_bytes``: largest download or decoded base64 payload (``MAX_AUDIO_BYTES``).
    - ``connect_timeout_s`` / ``read_timeout_s``: per connect, and per wait for data
      (``DOWNLOAD_CONNECT_TIMEOUT`` / ``DOWNLOAD_READ_TIMEOUT``).
    - ``download_timeout_s``: total wall time of one download, every redirect, retry and
      back-off included (``DOWNLOAD_TIMEOUT``); 0 = no total limit. A server that trickles
      bytes just fast enough to beat the read timeout is stopped by this one.
    - ``max_redirects``, ``retries`` (total attempts), ``backoff_s`` (first retry delay,
      doubling per attempt).
    - ``allow_private_urls``: let URLs reach private/loopback/link-local/metadata addresses.
    - ``allow_local_files``: accept a local path as ``audio_file``.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    retries: int = DEFAULT_RETRIES
    allow_private_urls: bool = False
    allow_local_files: bool = False
    backoff_s: float = DEFAULT_BACKOFF_S  # first retry delay; doubles per attempt
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S

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
        if not self.download_timeout_s >= 0:  # also refuses NaN
            raise ValueError("download_timeout_s must be >= 0 (0 = no limit)")


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
    *,
    control: JobControl | None = None,
) -> tuple[Path, str]:
    """Materialise the source into workdir; returns (path, source kind).

    Exactly one of ``audio_file`` (http(s) URL, or a local path when
    ``policy.allow_local_files``) and ``audio_base64`` must be given.
    ``audio_filename`` only supplies a file-name extension hint. The source kind
    is "url", "base64" or "local"; a local path is returned as-is, not copied.
    ``control`` binds a download to a job: its deadline and cancel stop the download
    (``JobTimeout`` / ``JobCancelled`` are raised as they are); None = no job.
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
    _download(audio_file, dest, policy, control)
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
    """scheme://host[:port]/path of ``url`` as the HTTP client parses it: no credentials,
    query or fragment (they may hold tokens)."""
    try:
        parts = parse_url(url)
    except (LocationParseError, ValueError):
        return "<invalid URL>"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or ''}://{parts.host or ''}{port}{parts.path or ''}"


def _resolve_addresses(host: str, port: int) -> list[url_guard.IPAddress]:
    """All IP addresses ``host`` stands for (the one seam every lookup of this module uses)."""
    return url_guard.resolve(host, port)


def _url_target(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) that requests/urllib3 will connect to for ``url``: the URL goes
    through requests' own preparation (IDNA, percent-decoded host...) and urllib3's parser,
    exactly as ``session.get`` will, so the host checked is the host connected to."""
    problem = url_guard.url_syntax_problem(url)
    if problem:
        logger.warning("refused URL: %s", problem)  # the URL itself is not logged: unparseable, unredactable
        raise AudioError(f"audio_file: refused URL: {problem}")
    try:
        raw = parse_url(url)
    except (LocationParseError, ValueError):
        raise AudioError(f"audio_file: not a valid URL: {_redact_url(url)}") from None
    scheme = (raw.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise AudioError(f"audio_file: unsupported URL scheme '{scheme}' (only http and https are allowed)")
    if not raw.host:
        raise AudioError(f"audio_file: URL has no host: {_redact_url(url)}")
    try:
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url, None)
        target = parse_url(prepared.url or "")
    except (requests.RequestException, LocationParseError, ValueError, UnicodeError):
        raise AudioError(f"audio_file: not a valid URL: {_redact_url(url)}") from None
    port = target.port or (443 if scheme == "https" else 80)
    try:  # requests hands urllib3 the pool's host from urllib.parse: both must agree
        split = urlsplit(prepared.url)
        agree = (split.hostname or "", split.port or port) == ((target.host or "").strip("[]").lower(), port)
    except ValueError:
        agree = False
    if not target.host or not agree:
        raise AudioError(f"audio_file: not a valid URL (ambiguous host): {_redact_url(url)}")
    return scheme, target.host, port


def _check_url(url: str, policy: FetchPolicy) -> None:
    """Refuse a URL (the first or any redirect hop) that is malformed, has a bad scheme or a
    non-public host. Connections check again (see ``_GuardedHTTPConnection``); this check
    answers before any traffic."""
    scheme, host, port = _url_target(url)
    if policy.allow_private_urls:
        return
    try:
        addresses = _resolve_addresses(host, port)
    except (OSError, UnicodeError):
        raise AudioError(f"audio_file: could not resolve host '{host}'") from None
    _vet_addresses(host, addresses, _redact_url(url))


def _vet_addresses(host: str, addresses: list[url_guard.IPAddress], shown: str) -> None:
    """Raise the refused-host error unless every address is allowed (one bad DNS answer is enough)."""
    blocked = [str(ip) for ip in addresses if _is_blocked_address(ip)]
    if not addresses or blocked:
        logger.warning("refused URL %s: host %s resolves to %s", shown, host, blocked)
        raise _refused_host_error(host)


def _refused_host_error(host: str) -> AudioError:
    # The same text whatever listens (or not) at the address: no port-scanning oracle.
    return AudioError(
        f"audio_file: refused URL host '{host}': it resolves to a private, loopback, "
        "link-local or otherwise non-public address (set ALLOW_PRIVATE_URLS=true to allow)"
    )


def _check_peer(sock: socket.socket, host: str) -> None:
    """Refuse a connected socket whose peer is not a public address (closing it): cannot fire
    while connections are pinned to vetted addresses; the last line should pinning be bypassed."""
    peer = sock.getpeername()[0]
    ip = ipaddress.ip_address(str(peer).split("%", 1)[0])
    if _is_blocked_address(ip):
        sock.close()
        logger.warning("refused connection to %s: it connected to %s", host, ip)
        raise _refused_host_error(host)


# --------------------------------------------------------------------------
# One download's clock, job binding and sockets
# --------------------------------------------------------------------------


class _Transfer:
    """Time limits and stop signals of one download (all its hops, attempts and back-offs).

    ``check()`` raises when the download must end: ``JobCancelled``/``JobTimeout`` from the
    job's control, or AudioError once ``download_timeout_s`` has passed. A watchdog thread
    then shuts the download's sockets down, which wakes a blocked connect or read at once (a
    socket timeout cannot see a cancel); the downloading thread learns why from ``check()``.
    """

    def __init__(self, url: str, policy: FetchPolicy, control: JobControl | None) -> None:
        self.control = control
        self.policy = policy
        self.shown = _redact_url(url)
        self.started = time.monotonic()
        limit = policy.download_timeout_s
        self.deadline = self.started + limit if limit > 0 else None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._aborted = False
        self._finished = threading.Event()

    def left(self) -> float | None:
        """Seconds until the download or the job must end; None = no limit."""
        own = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        return own if self.control is None else self.control.wait_time(own)  # the job's time left caps it

    def bounded(self, cap_s: float) -> float:
        """A single wait's timeout: ``cap_s``, but never past the time left."""
        left = self.left()
        return cap_s if left is None else max(_MIN_WAIT_S, min(cap_s, left))

    def stopped(self) -> bool:
        return (self.deadline is not None and time.monotonic() >= self.deadline) or bool(self.control and self.control.stopped())

    def check(self) -> None:
        """Raise if the download must end now (the job's stop wins over the download limit)."""
        if self.control is not None:
            self.control.check("download")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise AudioError(
                f"download of {self.shown} took longer than {self.policy.download_timeout_s:g} s (DOWNLOAD_TIMEOUT)"
            )

    def sleep(self, seconds: float) -> None:
        """Back-off between attempts: cut short by the limits, woken by a cancel."""
        left = self.left()
        seconds = seconds if left is None else min(seconds, left)
        if self.control is not None:
            self.control.sleep(seconds, "download")
        else:
            time.sleep(seconds)
        self.check()

    # ---------------------------------------------------------------- watchdog
    def start(self) -> None:
        """Start the watchdog (not needed without any limit or job)."""
        if self.deadline is not None or self.control is not None:
            threading.Thread(target=self._watch, name="download-watchdog", daemon=True).start()

    def finish(self) -> None:
        self._finished.set()  # ends the watchdog

    def register(self, sock: socket.socket) -> None:
        """Track a new socket (before its connect) so that a stop can shut it down."""
        with self._lock:
            self._sockets.append(sock)
            if self._aborted:
                _shutdown(sock)

    def _watch(self) -> None:
        while not self._finished.wait(self._next_look_s()):
            if self.stopped():
                with self._lock:
                    self._aborted = True
                    for sock in self._sockets:
                        _shutdown(sock)
                return

    def _next_look_s(self) -> float:
        left = self.left()
        poll = _STOP_POLL_S if self.control is not None or left is None else left
        return poll if left is None else min(poll, left)


def _shutdown(sock: socket.socket) -> None:
    """Wake whoever blocks on ``sock`` (a connect or a read returns at once on Linux)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected yet or already closed: nothing to wake


# requests and urllib3 build the connections themselves, so the running download is handed
# to them here; set for exactly the duration of one ``_download`` call (per thread/context).
_ACTIVE: contextvars.ContextVar[_Transfer | None] = contextvars.ContextVar("fetch_active_transfer", default=None)


# --------------------------------------------------------------------------
# Connections: resolve once, vet every address, connect only to a vetted one
# --------------------------------------------------------------------------


def _guarded_new_conn(conn: urllib3.connection.HTTPConnection) -> socket.socket:
    """``_new_conn`` of the guarded connections: the socket, connected to a vetted address.

    The name is resolved once; unless private URLs are allowed every answer is vetted before
    any connect, so a forbidden target gets the same error whether a port is open, closed or
    filtered. The connect goes to the vetted IP; TLS and the Host header keep the name.
    """
    transfer = _ACTIVE.get()
    vet = transfer is None or not transfer.policy.allow_private_urls  # outside a download: fail closed
    host, port = conn.host, conn.port
    try:
        addresses = _resolve_addresses(getattr(conn, "_dns_host", host), port)  # keeps a trailing dot
    except socket.gaierror as exc:
        raise NameResolutionError(host, conn, exc) from exc
    except (OSError, UnicodeError) as exc:
        raise NewConnectionError(conn, f"Failed to resolve '{host}' ({exc})") from exc
    if vet:
        _vet_addresses(host, addresses, host)
    literal = url_guard.ip_literal(host)
    if literal is not None:
        addresses = [literal]  # an IP host is connected to as written, whatever a resolver says
    try:
        sock = url_guard.connect_first(
            addresses, port, conn.timeout if isinstance(conn.timeout, int | float) else socket.getdefaulttimeout(),
            conn.source_address, conn.socket_options, transfer.register if transfer is not None else None,
        )
    except TimeoutError as exc:
        raise ConnectTimeoutError(conn, f"Connection to {host} timed out. (connect timeout={conn.timeout})") from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", conn, host, port)
    if vet:
        _check_peer(sock, host)
    return sock


class _GuardedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _guarded_new_conn(self)


class _GuardedHTTPSConnection(urllib3.connection.HTTPSConnection):
    """HTTPS twin: the address is vetted and pinned before the TLS handshake, which still
    verifies the certificate for the host name (SNI unchanged)."""

    def _new_conn(self) -> socket.socket:
        return _guarded_new_conn(self)

    def connect(self) -> None:
        super().connect()
        transfer = _ACTIVE.get()
        if transfer is not None and self.sock is not None:
            transfer.register(self.sock)  # the TLS socket took over the plain one's descriptor


class _GuardedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """requests adapter whose every connection (each redirect hop, each retry) is guarded."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


# --------------------------------------------------------------------------
# Download loop
# --------------------------------------------------------------------------


def _download(url: str, dest: Path, policy: FetchPolicy, control: JobControl | None = None) -> None:
    """Download ``url`` to ``dest`` with retries and exponential back-off on transient errors.

    Each attempt starts again from the original URL, so a short-lived redirect
    target is re-issued by the origin. Permanent failures raise AudioError at once;
    a stopped job raises its ``JobStopped`` error.
    """
    transfer = _Transfer(url, policy, control)
    transfer.check()  # a job stopped already: not even a DNS lookup
    _check_url(url, policy)  # refuse bad URLs before any network traffic
    token = _ACTIVE.set(transfer)
    try:
        transfer.start()
        _download_with_retries(url, dest, policy, transfer)
    except BaseException:
        dest.unlink(missing_ok=True)  # never leave a partial or oversized file to be decoded
        raise
    finally:
        transfer.finish()
        _ACTIVE.reset(token)


def _download_with_retries(url: str, dest: Path, policy: FetchPolicy, transfer: _Transfer) -> None:
    """Attempt loop of :func:`_download`: back-off 0.5 s, 1 s, ... between attempts."""
    with requests.Session() as session:
        # No proxies/.netrc from the environment: the host checks above assume a
        # direct connection, and ambient credentials must not be sent anywhere.
        session.trust_env = False
        for prefix in ("http://", "https://"):
            session.mount(prefix, _GuardedAdapter())
        for attempt in range(1, policy.retries + 1):
            transfer.check()
            started = time.monotonic()
            try:
                size = _download_once(session, url, dest, policy, transfer)
            except _TransientDownloadError as exc:
                transfer.check()  # a stop explains the failure better than the network error
                if attempt >= policy.retries:
                    raise AudioError(f"{exc} (after {attempt} attempts)") from None
                delay = policy.backoff_s * 2 ** (attempt - 1)
                logger.warning("attempt %d/%d: %s; retrying in %.2f s", attempt, policy.retries, exc, delay)
                transfer.sleep(delay)
                continue
            logger.info(
                "downloaded %d bytes from %s in %.2f s", size, _redact_url(url), time.monotonic() - started
            )
            return


def _download_once(
    session: requests.Session, url: str, dest: Path, policy: FetchPolicy, transfer: _Transfer
) -> int:
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
                timeout=(transfer.bounded(policy.connect_timeout_s), transfer.bounded(policy.read_timeout_s)),
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
            transfer.check()  # a broken connection may be the watchdog's doing: say why
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

    transfer = _ACTIVE.get()
    written, head = 0, b""
    with dest.open("wb") as out:
        for chunk in _body_chunks(response, policy.read_timeout_s, transfer):
            if len(head) < 1024:  # sniffed as it grows: chunks come as they arrive, maybe byte by byte
                head += chunk[:1024]
                if _looks_like_html(head):
                    raise AudioError(f"the URL returned an HTML page, not audio ({shown_url})")
            written += len(chunk)
            # Checked per chunk so a lying or missing Content-Length cannot fill the disk.
            if written > policy.max_bytes:
                raise AudioError(too_large)
            out.write(chunk)
            if transfer is not None:
                transfer.check()
    if transfer is not None:
        transfer.check()  # an end of data may be the watchdog closing the socket, not the server
    return written


def _body_chunks(response: requests.Response, read_timeout_s: float, transfer: _Transfer | None) -> Iterator[bytes]:
    """The body as it arrives (``read1``: whatever is there, up to a chunk), each socket wait
    bounded by the time left; urllib3 errors mapped as ``iter_content`` maps them."""
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    while True:
        if transfer is not None and sock is not None:
            sock.settimeout(transfer.bounded(read_timeout_s))
        try:
            chunk = raw.read1(_CHUNK_BYTES, decode_content=True)
        except (ProtocolError, DecodeError, ReadTimeoutError, Urllib3SSLError) as exc:
            raise next(ours(exc) for theirs, ours in _BODY_ERRORS if isinstance(exc, theirs)) from None
        if not chunk:
            return
        yield chunk
