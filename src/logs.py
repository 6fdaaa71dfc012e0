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
from collections.abc import Iterator
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LOG_PATH = "container_log.txt"

_current_capture: contextvars.ContextVar[RequestLogCapture | None] = contextvars.ContextVar(
    "whisperx_worker_log_capture", default=None
)

# Anything that looks like a Hugging Face token is masked before it reaches a sink.
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{6,}")


def redact(text: str) -> str:
    """Mask Hugging Face tokens (``hf_...``) in ``text``."""
    return _TOKEN_PATTERN.sub("hf_***", text)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


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
    Calling it again with the same path is a no-op; returns the log file path.
    """
    global _configured_path
    log_path = Path(path).resolve()
    if _configured_path == log_path:
        return log_path
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_whisperx_worker", False):
            root.removeHandler(handler)
            handler.close()
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
