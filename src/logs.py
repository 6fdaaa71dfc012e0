"""Container log and per-request log capture.

Every log record of the worker goes to stderr and to ``container_log.txt`` (the file the
seed names; path from ``CONTAINER_LOG_PATH``). While a request runs, the records emitted
*for that request* are also collected in memory, so the response's ``logs`` field holds this
request's lines only. Capture is keyed by a context variable, not by time, so a line from a
background thread or an earlier request never lands in another request's ``logs``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LOG_PATH = "container_log.txt"

_current_capture: contextvars.ContextVar[RequestLogCapture | None] = contextvars.ContextVar(
    "whisperx_worker_log_capture", default=None
)

# Masked in every line before it reaches a sink (stderr, the container log, a response's logs):
# Hugging Face tokens; "Bearer <token>" headers; AWS access key ids; the user info and query
# string of URLs (a presigned link carries its signature in the query); and the values of the
# secret ENV variables below, once setup_logging has registered them.
REDACTED = "***"
_TOKEN_PATTERN = re.compile(r"(?:hf|api_org)_[A-Za-z0-9]{6,}")
_BEARER_PATTERN = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}")
_AWS_KEY_ID_PATTERN = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
# scheme://[userinfo@]host/path[?query]; quotes, brackets and whitespace end a URL.
_URL_PATTERN = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s?#@'\"<>]*@)?(?P<rest>[^\s?#'\"<>]*)(?P<query>\?[^\s#'\"<>]*)?"
)
# urllib3's "Max retries exceeded with url: /path?query" names the URL without its host.
_RELATIVE_URL_PATTERN = re.compile(r"(\burl: /[^\s?'\"<>]*)\?[^\s#'\"<>]*")
#: ENV variables whose values are secrets (masked wherever they appear in a log line).
SECRET_ENV = (
    "BUCKET_ACCESS_KEY_ID",
    "BUCKET_SECRET_ACCESS_KEY",
    "HF_TOKEN",
    "HUGGINGFACE_ACCESS_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
# Shorter values are not masked: they would blank ordinary words ("test") all over the log.
MIN_SECRET_CHARS = 8
_secrets: tuple[str, ...] = ()

#: The RunPod SDK's own log level (its ``RunPodLogger`` prints to stdout, outside ``logging``).
SDK_LOG_LEVEL_ENV = "RUNPOD_LOG_LEVEL"
SDK_LEGACY_LOG_LEVEL_ENV = "RUNPOD_DEBUG_LEVEL"
DEFAULT_SDK_LOG_LEVEL = "INFO"
SDK_LOG_LEVELS = ("NOTSET", "TRACE", "DEBUG", "INFO", "WARN", "ERROR")  # what the SDK accepts


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these values (and the ones registered before) in every log line from now on."""
    global _secrets
    new = {value.strip() for value in values if value and len(value.strip()) >= MIN_SECRET_CHARS}
    # Longest first, so a secret that contains another is masked whole.
    _secrets = tuple(sorted(set(_secrets) | new, key=len, reverse=True))


def secret_env_values(environ: Mapping[str, str]) -> list[str]:
    """The values of the :data:`SECRET_ENV` variables set in ``environ``."""
    return [environ[name] for name in SECRET_ENV if environ.get(name)]


def _mask_url(match: re.Match[str]) -> str:
    userinfo = f"{REDACTED}@" if match["userinfo"] else ""
    query = f"?{REDACTED}" if match["query"] else ""
    return f"{match['scheme']}{userinfo}{match['rest']}{query}"


def redact(text: str) -> str:
    """Mask secrets in ``text``: Hugging Face tokens (``hf_...``), bearer tokens, AWS key ids,
    registered secret values (:func:`register_secrets`), and the user info and query string
    of URLs."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _TOKEN_PATTERN.sub(lambda match: match[0].split("_", 1)[0] + "_" + REDACTED, text)
    text = _BEARER_PATTERN.sub(lambda match: match[1] + REDACTED, text)
    text = _AWS_KEY_ID_PATTERN.sub(REDACTED, text)
    if "://" in text:
        text = _URL_PATTERN.sub(_mask_url, text)
    if "url: /" in text:
        text = _RELATIVE_URL_PATTERN.sub(lambda match: f"{match[1]}?{REDACTED}", text)
    return text


def quiet_sdk_logs(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the RunPod SDK's log level to INFO unless the operator chose one; call it before
    ``runpod`` is imported (the SDK reads it at import).

    The SDK's default, DEBUG, prints every job's output ("Handler output: {...}": whole
    transcripts and presigned result links) to stdout. A level the SDK would refuse (it raises
    at import, which kills the worker) is replaced by INFO too.
    """
    env = os.environ if environ is None else environ
    # The SDK reads RUNPOD_LOG_LEVEL when it is set at all, else the older RUNPOD_DEBUG_LEVEL.
    name = next((name for name in (SDK_LOG_LEVEL_ENV, SDK_LEGACY_LOG_LEVEL_ENV) if name in env), None)
    if name is not None:
        chosen = env[name]
        if chosen.upper() in SDK_LOG_LEVELS:
            return
        logging.getLogger(__name__).warning("ENV %s=%r is not a RunPod SDK log level (%s); using %s",
                                            name, chosen, ", ".join(SDK_LOG_LEVELS), DEFAULT_SDK_LOG_LEVEL)
    env[SDK_LOG_LEVEL_ENV] = DEFAULT_SDK_LOG_LEVEL


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _RedactingFilter(logging.Filter):
    """Masks a record's message and traceback in place, for root handlers this module did not
    create (e.g. one added by a library's ``logging.basicConfig`` before start-up)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RequestLogCapture:
    """Collects the formatted lines of one request, capped at ``max_chars`` (the tail is kept)."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._lines: list[str] = []
        self._size = 0
        self.dropped = 0

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        while self._size > self.max_chars and len(self._lines) > 1:
            self._size -= len(self._lines.pop(0)) + 1
            self.dropped += 1

    def text(self) -> str:
        head = f"[{self.dropped} earlier line(s) omitted]\n" if self.dropped else ""
        body = "\n".join(self._lines)
        return (head + body)[-self.max_chars :] if self.max_chars else ""


class _CaptureHandler(logging.Handler):
    """Routes each record to the capture of the request that emitted it (if any)."""

    def emit(self, record: logging.LogRecord) -> None:
        capture = _current_capture.get()
        if capture is not None:
            try:
                capture.add(self.format(record))
            except Exception:  # never let logging break a request
                self.handleError(record)


_configured_path: Path | None = None


def setup_logging(path: str | os.PathLike[str] = DEFAULT_LOG_PATH, level: str = "INFO") -> Path:
    """Configure the root logger once: stderr + ``container_log.txt`` + per-request capture.

    ``path`` and ``level`` come from the worker's settings (``CONTAINER_LOG_PATH``, ``LOG_LEVEL``).
    Every line is redacted (:func:`redact`), also in root handlers that were there before.
    Calling it again with the same path is a no-op; returns the log file path.
    """
    global _configured_path
    # Secret ENV values (bucket keys, HF tokens) are masked in every line from now on.
    register_secrets(secret_env_values(os.environ))
    log_path = Path(path).resolve()
    if _configured_path == log_path:
        return log_path
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_whisperx_worker", False):
            root.removeHandler(handler)
            handler.close()
        elif not any(isinstance(existing, _RedactingFilter) for existing in handler.filters):
            handler.addFilter(_RedactingFilter())
    formatter = _RedactingFormatter(LOG_FORMAT)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(),
        logging.FileHandler(log_path, encoding="utf-8"),
        _CaptureHandler(),
    ]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._whisperx_worker = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # Third-party libraries are chatty at INFO; keep their warnings only.
    for noisy in ("urllib3", "httpx", "numba", "matplotlib", "speechbrain", "fsspec", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured_path = log_path
    return log_path


@contextlib.contextmanager
def capture_request_logs(max_chars: int) -> Iterator[RequestLogCapture]:
    """Collect the log lines emitted inside the ``with`` block (this context only)."""
    capture = RequestLogCapture(max_chars)
    token = _current_capture.set(capture)
    try:
        yield capture
    finally:
        _current_capture.reset(token)
