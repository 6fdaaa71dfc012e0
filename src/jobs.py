"""The job runner: one job's life, from arrival to answer, whatever door it came through.

It owns what every job goes through around the Predictor's stages: the worker's start-up
(once; a failure is remembered and answered to every job, not retried), the job's control
(deadline ``JOB_TIMEOUT_S`` from arrival and cancel token, ``job_control.JobControl``), its
own log capture, the job threads (as many as jobs may run at once, ``MAX_CONCURRENT_JOBS``),
validation of the input (``rp_schema``), result delivery (``result_store``: inline or a
bucket) and the kinds of failure: a user's mistake gets a message naming the field or the
problem, a GPU fault asks for a fresh worker (``refresh_worker``), anything else a short
internal-error message while the worker keeps serving. No exception escapes a job.

A door (``handler`` for RunPod's queue, ``local_run`` for the CLI) turns its own request into
``run_job``'s arguments and its answer into its own shape.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import job_control
import result_store
import rp_schema
from logs import capture_request_logs, redact
from predict import Predictor, ProgressFn, UserError
from resident.models import ModelLoadError
from settings import WorkerSettings
from stages.fetch import AudioError
from transcript import Transcript, response_dict

logger = logging.getLogger("handler")  # a job's log lines read as they did when the handler ran jobs

USER_ERRORS = (rp_schema.ValidationError, AudioError, ModelLoadError, UserError, job_control.JobStopped,
               result_store.ResultError)

# A response's log tail when the settings cannot be read (a bad ENV value): the default cap.
FALLBACK_LOG_TAIL_CHARS = WorkerSettings.log_tail_chars

_settings: WorkerSettings | None = None
_predictor: Predictor | None = None
_predictor_lock = threading.Lock()
_job_threads: ThreadPoolExecutor | None = None
# Why this worker cannot serve (a bad setting, an unusable device), said once in the log and
# then in every job's answer; None while it can.
_startup_failure: str | None = None


def get_settings() -> WorkerSettings:
    """The worker's settings: the resident Predictor's, else the ENV read once, now."""
    global _settings
    with _predictor_lock:
        if _predictor is not None:
            return _predictor.settings
        if _settings is None:
            _settings = WorkerSettings.from_env()
        return _settings


def get_predictor() -> Predictor:
    """The process-wide Predictor, created (with :func:`get_settings`) and set up on first use."""
    global _predictor
    settings = get_settings()
    with _predictor_lock:
        if _predictor is None:
            predictor = Predictor(settings)
            predictor.setup()
            _predictor = predictor
        return _predictor


class WorkerUnavailable(RuntimeError):
    """The worker could not start; every job is answered with the cause."""


@dataclass(frozen=True)
class JobFailure:
    """Why a job has no transcript, built once here; each door renders it its own way.

    message: user-facing, credentials redacted. kind: ``invalid_request`` (the input: a field,
    the audio, a model name, a result too large), ``timeout`` (the job's deadline), ``cancelled``
    (nobody waits any more), ``unavailable`` (the worker cannot start), ``upload`` (the result
    bucket failed), ``gpu_fault`` (the worker must be replaced) or ``internal``. field: the
    request field at fault, where one is. logs: the job's own log lines.
    """

    message: str
    kind: str
    field: str | None = None
    logs: str = ""


def queue_error(failure: JobFailure) -> dict:
    """RunPod's answer to a failed job: ``{"error", "logs"}``, and ``refresh_worker: true``
    after a GPU fault (RunPod then replaces this worker once the job is answered)."""
    response: dict[str, Any] = {"error": failure.message, "logs": failure.logs}
    if failure.kind == "gpu_fault":
        response["refresh_worker"] = True
    return response


def _failure_kind(exc: BaseException) -> str:
    """The ``JobFailure.kind`` of a user-side exception (one of ``USER_ERRORS``)."""
    if isinstance(exc, job_control.JobTimeout):
        return "timeout"
    if isinstance(exc, job_control.JobStopped):
        return "cancelled"
    if isinstance(exc, result_store.ResultUploadFailed):
        return "upload"
    return "invalid_request"


def start_up() -> Predictor:
    """The Predictor, or ``WorkerUnavailable`` naming why there is none. A start-up failure
    (bad settings, no usable device) is remembered and logged once, not retried per job:
    the same ENV and machine would fail the same way."""
    global _startup_failure
    if _startup_failure is not None:
        raise WorkerUnavailable(_startup_failure)
    try:
        return get_predictor()
    except (ValueError, ModelLoadError, OSError) as exc:
        _startup_failure = f"worker start-up failed: {redact(str(exc))}"
        logger.error("%s (every job is answered with this until the endpoint's settings are fixed)", _startup_failure)
        raise WorkerUnavailable(_startup_failure) from None


def _log_tail_chars() -> int:
    """Cap of a response's ``logs`` (``LOG_TAIL_CHARS``); the default when the settings cannot be
    read, so that the job can still answer with the error that names the bad value."""
    try:
        return get_settings().log_tail_chars
    except ValueError:
        return FALLBACK_LOG_TAIL_CHARS


def run_job(job_id: str, job_input: Any, control: job_control.JobControl | None = None,
            progress: Callable[[WorkerSettings], ProgressFn | None] = lambda _settings: None,
            render: Callable[[Transcript, rp_schema.RequestOptions], Any] = lambda transcript, _options: response_dict(transcript),
            render_error: Callable[[JobFailure], Any] = queue_error,
            partial: Callable[[dict], None] | None = None) -> Any:
    """Run one job; always returns the rendered transcript (a dict gets the job's ``logs``; a
    text body, such as OpenAI's ``srt``, is returned as it is), or ``{"error": ..., "logs": ...}``
    (and ``refresh_worker: true`` after a GPU fault).

    job_id: "-" when the door has none. control: the job's deadline and cancel token (default:
    a budget of ``JOB_TIMEOUT_S`` from now). progress: the door's progress reporter for this
    job, given the worker's settings (None: no reports). render: the door's shape of the
    Predictor's ``Transcript`` for the job's options (default: today's response,
    ``transcript.response_dict``). render_error: the door's shape of a ``JobFailure`` (default:
    RunPod's, ``queue_error``). partial: gets each decoded window's segment as ASR finishes it
    (a door's stream; ``Predictor.transcribe``).
    """
    with capture_request_logs(_log_tail_chars()) as capture:
        started = time.perf_counter()
        try:
            predictor = start_up()
            settings = predictor.settings
            control = control or job_control.JobControl(settings.job_timeout_s, job_id)
            if job_input is None:
                raise rp_schema.ValidationError("input is required: send {\"input\": {\"audio_file\": ...}}")
            options = rp_schema.resolve_options(job_input, settings.request_env)
            logger.info("job %s started: %r", job_id, options)
            result = render(predictor.transcribe(options, progress=progress(settings), control=control, partial=partial),
                            options)
            logger.info("job %s done in %.2f s", job_id, time.perf_counter() - started)
            result = result_store.deliver(result, job_id if job_id != "-" else "local", settings.results)
        except WorkerUnavailable as exc:
            return render_error(JobFailure(str(exc), "unavailable", logs=capture.text()))
        except USER_ERRORS as exc:
            message = redact(str(exc))
            logger.warning("job %s rejected: %s", job_id, message)
            return render_error(JobFailure(message, _failure_kind(exc), getattr(exc, "field", None), capture.text()))
        except Exception as exc:  # a bug or an OOM must not take the worker down
            logger.exception("job failed")
            if job_control.is_device_fault(exc):
                # A CUDA context after a device-side error cannot be trusted: ask for a fresh
                # worker once this job is answered.
                return render_error(JobFailure(redact(f"GPU fault, this worker is being replaced: {str(exc)[:300]}"),
                                               "gpu_fault", logs=capture.text()))
            return render_error(JobFailure(redact(f"internal error: {type(exc).__name__}: {str(exc)[:300]}"), "internal",
                                           logs=capture.text()))
    if isinstance(result, dict):
        result["logs"] = capture.text()
    return result


def max_concurrent_jobs() -> int:
    """How many jobs this worker takes at once: the Predictor's ``max_concurrent_jobs``
    (``MAX_CONCURRENT_JOBS``, else chosen from the GPU's memory); 1 while the worker cannot
    start (each job is then answered with the cause)."""
    try:
        return start_up().max_concurrent_jobs
    except WorkerUnavailable:
        return 1


def _threads() -> ThreadPoolExecutor:
    """The job threads: as many as jobs may run at once (more jobs wait for a thread)."""
    global _job_threads
    with _predictor_lock:
        if _job_threads is None:
            count = _predictor.max_concurrent_jobs if _predictor is not None else 1
            _job_threads = ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="job")
        return _job_threads


def _budget_s() -> float:
    try:
        return get_settings().job_timeout_s
    except ValueError:
        return 0.0


async def run_in_job_thread(run: Callable[[job_control.JobControl], Any], job_id: str,
                            cancelled_by: str = "RunPod", budget_s: float | None = None,
                            max_audio: tuple[float, str] = (0.0, "")) -> Any:
    """``run(control)`` in a job thread, awaited, so the caller's event loop keeps serving while
    jobs run.

    The job's deadline starts now, when the job arrives (a wait for a job thread counts).
    When the awaiting task is cancelled (RunPod stops the job, a client goes away: ``cancelled_by``
    names who, for the log and the error), the job's control is cancelled, so its thread stops at
    its next check and its slot frees up. ``budget_s``: a door's tighter time budget (seconds;
    the smaller of it and ``JOB_TIMEOUT_S`` applies). ``max_audio``: a door's cap on the audio's
    length (seconds, and its name for errors; ``JobControl.audio_limit``).
    """
    loop = asyncio.get_running_loop()
    budget = _budget_s()
    if budget_s is not None and budget_s > 0:
        budget = min(budget, budget_s) if budget > 0 else budget_s
    control = job_control.JobControl(budget, job_id, *max_audio)
    # A copy of this task's context: the job's log capture, set in the thread, stays its own.
    running = loop.run_in_executor(_threads(), contextvars.copy_context().run, run, control)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        control.cancel(f"cancelled by {cancelled_by}")
        logger.info("job %s cancelled: its work stops at the next check", control.job_id)
        raise


async def stream_job(run: Callable[[job_control.JobControl, Callable[[dict], None]], Any], job_id: str,
                     cancelled_by: str) -> AsyncIterator[tuple[str, Any]]:
    """``run(control, partial)`` in a job thread (``run_in_job_thread``), as a stream: a
    ``("partial", segment)`` item for each segment the job hands to ``partial`` (from its
    thread), then one ``("result", answer)``. Closing the stream early (the reader left)
    cancels the job."""
    loop = asyncio.get_running_loop()
    partials: asyncio.Queue[dict] = asyncio.Queue()

    def send(segment: dict) -> None:  # called in the job's thread
        loop.call_soon_threadsafe(partials.put_nowait, segment)

    task = asyncio.ensure_future(run_in_job_thread(lambda control: run(control, send), job_id, cancelled_by))
    try:
        while not (task.done() and partials.empty()):
            getter = asyncio.ensure_future(partials.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield "partial", getter.result()
            else:
                getter.cancel()
        yield "result", task.result()
    finally:
        if not task.done():
            task.cancel()
