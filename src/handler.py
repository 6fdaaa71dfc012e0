"""RunPod entry point: input in, JSON out, errors mapped to ``{"error": ...}``.

Start-up loads and warms the models before the worker takes jobs. Each job is validated by
``rp_schema`` (request -> ENV -> default), run by the resident ``Predictor``, and answered
with the transcript plus this job's own log lines. No exception escapes a job: user
mistakes get a message naming the field or the problem; anything else gets a short
internal-error message while the worker keeps serving.

Several jobs run at once (``MAX_CONCURRENT_JOBS``, told to RunPod through the SDK's
``concurrency_modifier``): the SDK awaits ``serve_job``, which runs ``handler`` in a job
thread of its own, so the SDK's event loop is never blocked; each thread carries its job's
log capture (a context variable), and the Predictor merges the jobs' Whisper calls.

Each job has one ``job_control.JobControl`` (deadline ``JOB_TIMEOUT_S`` and cancel token), made
when the job arrives: when RunPod stops a job (the SDK cancels ``serve_job``'s task), the
control is cancelled and the job's thread stops at its next check, freeing its slot.

A worker that cannot start (a bad setting, an unusable device) does not crash-loop: it logs
the cause once and answers every job with it. A GPU fault answers the job with
``refresh_worker: true``, so RunPod replaces the worker instead of reusing a suspect context.

Run it:
    python -u src/handler.py                      # RunPod Serverless
    python src/handler.py --rp_serve_api          # local HTTP API (/run, /runsync, /status)
    python src/handler.py --test_input '{"input": {...}}'
"""

from __future__ import annotations

if __name__ == "__main__":
    # The worker process gets a temp folder of its own before any library is imported:
    # torch, pyannote and whisperX leave files in the temp folder at import and load time.
    from settings import use_own_temp_dir

    use_own_temp_dir()

import asyncio  # noqa: E402
import contextvars  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import job_control  # noqa: E402
import result_store  # noqa: E402
import rp_schema  # noqa: E402
from stages.fetch import AudioError  # noqa: E402
from logs import capture_request_logs, quiet_sdk_logs, redact, setup_logging  # noqa: E402
from resident.models import ModelLoadError  # noqa: E402
from predict import ProgressFn, Predictor, UserError  # noqa: E402
from settings import WorkerSettings  # noqa: E402

logger = logging.getLogger("handler")

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


def _start_up() -> Predictor:
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


def _progress_sender(job: dict, settings: WorkerSettings) -> ProgressFn | None:
    """Forward stage progress to RunPod (visible in /status) when running under it."""
    # Only a real RunPod worker (RUNPOD_POD_ID set) has a job server to report progress to.
    if not job.get("id") or not settings.report_progress:
        return None
    try:
        from runpod.serverless import progress_update
    except ImportError:  # pragma: no cover
        return None
    last = {"t": 0.0}

    def send(stage: str, percent: float | None) -> None:
        now = time.monotonic()
        if stage == "transcribe" and percent not in (0.0, 100.0) and now - last["t"] < 1.0:
            return  # rate-limit percentage updates
        last["t"] = now
        message = stage if percent is None else f"{stage} {percent:.0f}%"
        try:
            progress_update(job, message)
        except Exception:  # progress is best effort; never fail a job over it
            logger.debug("progress update failed", exc_info=True)

    return send


def _job_id(job: object) -> str:
    return str(job.get("id", "-")) if isinstance(job, dict) else "-"


def handler(job: dict, control: job_control.JobControl | None = None) -> dict:
    """Run one RunPod job; always returns a JSON-safe dict (``{"error": ...}`` on failure).

    ``control``: the job's deadline and cancel token (``serve_job`` makes one per job; by
    default a budget of ``JOB_TIMEOUT_S`` from now).
    """
    return rp_schema.json_safe(_handle(job, control))


def _handle(job: dict, control: job_control.JobControl | None) -> dict:
    with capture_request_logs(_log_tail_chars()) as capture:
        started = time.perf_counter()
        job_id = _job_id(job)
        try:
            predictor = _start_up()
            settings = predictor.settings
            control = control or job_control.JobControl(settings.job_timeout_s, job_id)
            job_input = job.get("input") if isinstance(job, dict) else None
            if job_input is None:
                raise rp_schema.ValidationError("input is required: send {\"input\": {\"audio_file\": ...}}")
            options = rp_schema.resolve_options(job_input, settings.request_env)
            logger.info("job %s started: %r", job_id, options)
            result = predictor.predict(options, progress=_progress_sender(job, settings), control=control)
            logger.info("job %s done in %.2f s", job_id, time.perf_counter() - started)
            result = result_store.deliver(result, job_id if job_id != "-" else "local", settings.results)
        except WorkerUnavailable as exc:
            return {"error": str(exc), "logs": capture.text()}
        except USER_ERRORS as exc:
            message = redact(str(exc))
            logger.warning("job %s rejected: %s", job_id, message)
            return {"error": message, "logs": capture.text()}
        except Exception as exc:  # a bug or an OOM must not take the worker down
            logger.exception("job failed")
            response: dict[str, Any] = {"error": redact(f"internal error: {type(exc).__name__}: {str(exc)[:300]}"),
                                        "logs": capture.text()}
            if job_control.is_device_fault(exc):
                # A CUDA context after a device-side error cannot be trusted: ask RunPod for
                # a fresh worker once this job is answered.
                response["error"] = redact(f"GPU fault, this worker is being replaced: {str(exc)[:300]}")
                response["refresh_worker"] = True
            return response
    result["logs"] = capture.text()
    return result


def concurrency_modifier(current: int) -> int:
    """RunPod's hook for how many jobs this worker takes at once: the Predictor's
    ``max_concurrent_jobs`` (``MAX_CONCURRENT_JOBS``, else chosen from the GPU's memory);
    1 while the worker cannot start (each job is then answered with the cause)."""
    try:
        return _start_up().max_concurrent_jobs
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


async def serve_job(job: dict) -> dict:
    """The RunPod SDK's handler: ``handler`` in a job thread, awaited, so the SDK's event loop
    keeps fetching jobs, sending heartbeats and answering while jobs run.

    The job's deadline starts now, when the job arrives (a wait for a job thread counts).
    When RunPod stops the job, the SDK cancels this coroutine's task: the job's control is
    cancelled, so its thread stops at its next check and its slot frees up.
    """
    loop = asyncio.get_running_loop()
    control = job_control.JobControl(_budget_s(), _job_id(job))
    # A copy of this task's context: the job's log capture, set in the thread, stays its own.
    running = loop.run_in_executor(_threads(), contextvars.copy_context().run, handler, job, control)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        control.cancel("cancelled by RunPod")
        logger.info("job %s cancelled: its work stops at the next check", control.job_id)
        raise


def main() -> None:
    # Before the SDK is imported: its default DEBUG level prints every job's output.
    quiet_sdk_logs()
    try:
        settings = get_settings()
    except ValueError:
        # The settings are bad, but the log file's path is a plain string: keep the operator's.
        setup_logging(os.environ.get("CONTAINER_LOG_PATH", "").strip() or WorkerSettings.log_path, "INFO")
    else:
        setup_logging(settings.log_path, settings.log_level)
    import runpod

    try:
        _start_up()  # load and warm up before taking jobs
    except WorkerUnavailable:
        pass  # logged once; jobs are answered with the cause instead of a crash loop
    runpod.serverless.start({"handler": serve_job, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
