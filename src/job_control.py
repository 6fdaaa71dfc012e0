"""One job's life: its deadline, its cancel token and the ways it can end early (stopped:
timed out or cancelled; or a worker fault that asks for a fresh worker).

Every stage, every wait (for the Whisper batcher, the torch thread, a diarization thread, a
download, ffmpeg) and every loop over windows, chunks or batches of a job consults the job's
``JobControl``: ``check(stage)`` raises ``JobTimeout`` once the time budget is spent and
``JobCancelled`` once the caller has gone (RunPod's stop, a client that disconnects);
``remaining()`` bounds a blocking wait. The control is the only owner of those facts, so
a stage never needs the Predictor, a door or a flag of its own to know when to stop.

This module imports nothing of the worker's: any stage may take a ``JobControl``.
"""

from __future__ import annotations

import threading
import time


class JobStopped(ValueError):
    """The job must end now (its deadline passed or it was cancelled); becomes ``{"error": ...}``."""

    kind = "stopped"


class JobTimeout(JobStopped):
    """The job ran past its time budget (``JOB_TIMEOUT_S``)."""

    kind = "timeout"


class JobCancelled(JobStopped):
    """Nobody waits for the job any more (RunPod cancelled it, the client went away)."""

    kind = "cancelled"


class WorkerFault(RuntimeError):
    """A failure that leaves the worker itself suspect (a CUDA error: the context may be
    corrupt): the job fails and RunPod is asked for a fresh worker (``refresh_worker``)."""

    kind = "worker fault"


_DEVICE_FAULT_MARKERS = ("cuda error", "device-side assert", "illegal memory access", "cudaerror",
                         "cublas_status_execution_failed", "cudnn_status_execution_failed",
                         "unspecified launch failure", "misaligned address")


def is_device_fault(exc: BaseException) -> bool:
    """True for GPU errors after which the process's CUDA context cannot be trusted (an
    out-of-memory error is not one: the context survives it)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if "out of memory" in text:
        return False
    return isinstance(exc, WorkerFault) or any(marker in text for marker in _DEVICE_FAULT_MARKERS)


def raise_if_device_fault(exc: BaseException, stage: str) -> None:
    """Re-raise ``exc`` as ``WorkerFault`` when it is a device fault; stages that turn their
    failures into warnings call this first, so a suspect context is never served again."""
    if is_device_fault(exc):
        raise WorkerFault(f"{stage} hit a GPU fault ({type(exc).__name__}: {str(exc)[:200]})") from exc


class JobControl:
    """A job's deadline and cancel token; thread-safe, shared by every thread working for it.

    ``budget_s``: the time budget in seconds from creation (0 or less = none).
    ``max_audio_s``, ``max_audio_name``: a door's own cap on the audio's length in seconds (0 =
    none) and how errors name it; the tighter of it and the worker's ``MAX_AUDIO_SECONDS`` applies.
    """

    def __init__(self, budget_s: float = 0.0, job_id: str = "-", max_audio_s: float = 0.0,
                 max_audio_name: str = "") -> None:
        self.job_id = job_id
        self.max_audio_s = max_audio_s if max_audio_s > 0 else 0.0
        self.max_audio_name = max_audio_name
        self.budget_s = budget_s if budget_s > 0 else 0.0
        self.started = time.monotonic()
        self._ends = self.started + budget_s if budget_s > 0 else None
        self._cancelled = threading.Event()
        self._cancel_reason = ""

    # ------------------------------------------------------------------ state
    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the job at its next check (idempotent; the first reason is kept)."""
        if not self._cancelled.is_set():
            self._cancel_reason = reason
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        return self._ends is not None and time.monotonic() > self._ends

    def stopped(self) -> bool:
        """True once the job must end (cancelled or past its deadline)."""
        return self.cancelled or self.expired()

    def remaining(self) -> float | None:
        """Seconds left (>= 0); None when there is no budget."""
        return None if self._ends is None else max(0.0, self._ends - time.monotonic())

    def audio_limit(self, worker_max_s: float) -> tuple[float, str]:
        """The audio cap that applies (seconds, 0 = none) and its name for errors: the worker's
        ``MAX_AUDIO_SECONDS`` or this job's door cap, whichever is tighter."""
        if self.max_audio_s and (not worker_max_s or self.max_audio_s < worker_max_s):
            return self.max_audio_s, self.max_audio_name
        return worker_max_s, "MAX_AUDIO_SECONDS"

    # ------------------------------------------------------------------ checks
    def error(self, stage: str) -> JobStopped:
        """The exception that ends the job in ``stage`` (cancel wins over the deadline)."""
        if self.cancelled:
            return JobCancelled(f"job {self._cancel_reason} during {stage}")
        return JobTimeout(f"job exceeded its time budget of {self.budget_s:g} s (JOB_TIMEOUT_S) during {stage}")

    def check(self, stage: str) -> None:
        """Raise ``JobCancelled`` / ``JobTimeout`` if the job must stop; ``stage`` names where."""
        if self.stopped():
            raise self.error(stage)

    def wait_time(self, cap_s: float | None = None) -> float | None:
        """How long a blocking wait may last before it must look again: the time left, at most
        ``cap_s`` (None = no limit)."""
        left = self.remaining()
        if cap_s is None:
            return left
        return cap_s if left is None else min(left, cap_s)

    def sleep(self, seconds: float, stage: str) -> None:
        """Wait ``seconds`` (a retry's back-off), waking early to raise when the job must stop."""
        self._cancelled.wait(self.wait_time(seconds))
        self.check(stage)


# A control that never stops: for warm-up and callers outside a job.
def unbounded() -> JobControl:
    return JobControl(0.0)
