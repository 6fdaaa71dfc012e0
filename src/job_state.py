"""What one job carries through the Predictor's stages (``RequestState``: warnings, timings,
its control, its diarization's future) and the errors the Predictor names for the caller
(``UserError``; out-of-memory recognised by ``is_out_of_memory``).

Per-job state lives here, never on the shared Predictor: several jobs run at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import job_control

if TYPE_CHECKING:
    from stages import diarization

logger = logging.getLogger("predict")  # the Predictor's log lines, as before the split


class UserError(ValueError):
    """A problem the caller can fix (bad audio, unknown model); becomes ``{"error": ...}``."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU allocation failures from torch or CTranslate2."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "out of memory" in text or "outofmemory" in text or "cublas_status_alloc_failed" in text


@dataclass
class RequestState:
    """What one request accumulates on its way through the stages."""

    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # The job's deadline and cancel token: every stage, wait and loop checks it.
    control: job_control.JobControl = field(default_factory=job_control.JobControl)
    # Set when the job is over (answered, failed): its diarization stops at the next batch.
    stop: threading.Event = field(default_factory=threading.Event)
    diarization_job: Future[diarization.DiarizationOutput] | None = None
    # Speakers the diarization found (before words were assigned), for debug_info.
    diarization_speakers: int | None = None
    # Known speaker name -> its best cosine similarity with a diarized speaker, for debug_info.
    known_speaker_similarities: dict[str, float | None] | None = None
    speaker_names: tuple[str, ...] = ()  # the known names that label speakers
    # Gets each decoded window's segment ({start, end, text}; seconds) as soon as ASR has it,
    # in time order: what a door streams. None: nobody listens.
    partial: Callable[[dict], None] | None = None
    partial_until: float = -1.0  # start of the last window sent to ``partial``

    def emit_partial(self, decoded: Sequence[Any]) -> None:
        """Send the kept windows of one finished ASR batch to ``partial``, each once (an
        out-of-memory retry decodes a file's windows again from its start)."""
        if self.partial is None:
            return
        for window in decoded:
            text = window.text.strip()
            if window.silent or not text or window.start <= self.partial_until:
                continue
            self.partial_until = window.start
            self.partial({"start": round(window.start, 3), "end": round(window.end, 3), "text": text})

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - started, 4)

    def warn(self, message: str) -> None:
        logger.warning(message)
        self.warnings.append(message)
