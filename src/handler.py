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
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import result_store  # noqa: E402
import rp_schema  # noqa: E402
from fetch import AudioError  # noqa: E402
from logs import capture_request_logs, redact, setup_logging  # noqa: E402
from models import ModelLoadError  # noqa: E402
from predict import ProgressFn, Predictor, UserError  # noqa: E402
from settings import WorkerSettings  # noqa: E402

logger = logging.getLogger("handler")

USER_ERRORS = (rp_schema.ValidationError, AudioError, ModelLoadError, UserError)

# A response's log tail when the settings cannot be read (a bad ENV value): the default cap.
FALLBACK_LOG_TAIL_CHARS = WorkerSettings.log_tail_chars

_settings: WorkerSettings | None = None
_predictor: Predictor | None = None
_predictor_lock = threading.Lock()
_job_threads: ThreadPoolExecutor | None = None


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


def _state_may_be_corrupt(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "cuda error" in text or "device-side assert" in text or "illegal memory access" in text


def handler(job: dict) -> dict:
    """Run one RunPod job; always returns a dict (``{"error": ...}`` on failure)."""
    with capture_request_logs(_log_tail_chars()) as capture:
        started = time.perf_counter()
        try:
            settings = get_settings()
            job_input = job.get("input") if isinstance(job, dict) else None
            if job_input is None:
                raise rp_schema.ValidationError("input is required: send {\"input\": {\"audio_file\": ...}}")
            options = rp_schema.resolve_options(job_input, settings.request_env)
            logger.info("job %s started: %r", job.get("id", "-"), options)
            result = get_predictor().predict(options, progress=_progress_sender(job, settings))
        except USER_ERRORS as exc:
            message = redact(str(exc))
            logger.warning("job %s rejected: %s", job.get("id", "-") if isinstance(job, dict) else "-", message)
            return {"error": message, "logs": capture.text()}
        except Exception as exc:  # a bug or an OOM must not take the worker down
            logger.exception("job failed")
            response: dict[str, Any] = {"error": redact(f"internal error: {type(exc).__name__}: {str(exc)[:300]}"), "logs": capture.text()}
            if _state_may_be_corrupt(exc):
                # A CUDA context after a device-side error cannot be trusted: ask RunPod for
                # a fresh worker once this job is answered.
                response["refresh_worker"] = True
            return response
        logger.info("job %s done in %.2f s", job.get("id", "-"), time.perf_counter() - started)
        result = result_store.deliver(result, str(job.get("id", "local")), settings.results)
    result["logs"] = capture.text()
    return result


def concurrency_modifier(current: int) -> int:
    """RunPod's hook for how many jobs this worker takes at once: the Predictor's
    ``max_concurrent_jobs`` (``MAX_CONCURRENT_JOBS``, else chosen from the GPU's memory)."""
    return get_predictor().max_concurrent_jobs


def _threads() -> ThreadPoolExecutor:
    """The job threads: as many as jobs may run at once (more jobs wait for a thread)."""
    global _job_threads
    with _predictor_lock:
        if _job_threads is None:
            count = _predictor.max_concurrent_jobs if _predictor is not None else 1
            _job_threads = ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="job")
        return _job_threads


async def serve_job(job: dict) -> dict:
    """The RunPod SDK's handler: ``handler`` in a job thread, awaited, so the SDK's event loop
    keeps fetching jobs, sending heartbeats and answering while jobs run."""
    loop = asyncio.get_running_loop()
    # A copy of this task's context: the job's log capture, set in the thread, stays its own.
    return await loop.run_in_executor(_threads(), contextvars.copy_context().run, handler, job)


def main() -> None:
    settings = get_settings()
    setup_logging(settings.log_path, settings.log_level)
    import runpod

    get_predictor()  # load and warm up before taking jobs
    runpod.serverless.start({"handler": serve_job, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
