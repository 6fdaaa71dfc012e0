"""RunPod's door: a queue job in, JSON out, errors mapped to ``{"error": ...}``.

This module speaks RunPod only (the job dict, ``progress_update``, ``concurrency_modifier``,
``refresh_worker``); a job's life is the job runner's (``jobs``): start-up (models loaded and
warmed before the worker takes jobs), validation by ``rp_schema`` (request -> ENV -> default),
the resident ``Predictor``, the answer with this job's own log lines. No exception escapes a
job: user mistakes get a message naming the field or the problem; anything else gets a short
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
    python -u src/handler.py                      # RunPod Serverless (ENDPOINT_TYPE=load_balancer:
                                                  # OpenAI's routes instead, openai_door.py)
    python src/handler.py --rp_serve_api          # local HTTP API (/run, /runsync, /status)
    python src/handler.py --test_input '{"input": {...}}'
"""

from __future__ import annotations

if __name__ == "__main__":
    # The worker process gets a temp folder of its own before any library is imported:
    # torch, pyannote and whisperX leave files in the temp folder at import and load time.
    from settings import use_own_temp_dir

    use_own_temp_dir()

import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import job_control  # noqa: E402
import jobs  # noqa: E402
import openai_shapes  # noqa: E402
import rp_schema  # noqa: E402
from jobs import get_predictor as get_predictor  # noqa: E402  (re-exported: benches start the worker here)
from jobs import get_settings as get_settings  # noqa: E402  (re-exported: local_run reads them here)
from logs import quiet_sdk_logs, setup_logging  # noqa: E402
from predict import ProgressFn  # noqa: E402
from settings import WorkerSettings, read_env  # noqa: E402

logger = logging.getLogger("handler")


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


def handler(job: dict, control: job_control.JobControl | None = None) -> dict | str:
    """Run one RunPod job; always returns a JSON-safe answer: the worker's response, or OpenAI's
    shape when the input names ``response_format`` (a string for ``text``/``srt``/``vtt``), or
    ``{"error": ...}`` on failure.

    ``control``: the job's deadline and cancel token (``serve_job`` makes one per job; by
    default a budget of ``JOB_TIMEOUT_S`` from now).
    """
    job_input = job.get("input") if isinstance(job, dict) else None
    return rp_schema.json_safe(jobs.run_job(_job_id(job), job_input, control,
                                            progress=lambda settings: _progress_sender(job, settings),
                                            render=openai_shapes.queue_response))


def concurrency_modifier(current: int) -> int:
    """RunPod's hook for how many jobs this worker takes at once (``jobs.max_concurrent_jobs``)."""
    return jobs.max_concurrent_jobs()


async def serve_job(job: dict) -> dict | str:
    """The RunPod SDK's handler: ``handler`` in a job thread, awaited, so the SDK's event loop
    keeps fetching jobs, sending heartbeats and answering while jobs run
    (``jobs.run_in_job_thread``: the deadline starts on arrival; RunPod's stop cancels the job).
    """
    return await jobs.run_in_job_thread(lambda control: handler(job, control), _job_id(job))


def _endpoint_type() -> str:
    """``ENDPOINT_TYPE``: ``queue`` (RunPod's queue API), or ``load_balancer`` (OpenAI's routes);
    a bad value leaves the queue door, whose jobs are answered with the settings error."""
    try:
        return str(read_env(os.environ, ("ENDPOINT_TYPE",))["ENDPOINT_TYPE"])
    except ValueError:
        return "queue"


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
    if _endpoint_type() == "load_balancer":
        import openai_door

        openai_door.serve(os.environ)  # OpenAI's routes over HTTP; start-up runs beside /ping
        return
    import runpod

    try:
        jobs.start_up()  # load and warm up before taking jobs
    except jobs.WorkerUnavailable:
        pass  # logged once; jobs are answered with the cause instead of a crash loop
    runpod.serverless.start({"handler": serve_job, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
