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

import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from types import ModuleType  # noqa: E402

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


def handler(job: dict, control: job_control.JobControl | None = None,
            partial: Callable[[dict], None] | None = None) -> dict | str:
    """Run one RunPod job; always returns a JSON-safe answer: the worker's response, or OpenAI's
    shape when the input names ``response_format`` (a string for ``text``/``srt``/``vtt``), or
    ``{"error": ...}`` on failure.

    ``control``: the job's deadline and cancel token (``serve_job`` makes one per job; by
    default a budget of ``JOB_TIMEOUT_S`` from now). ``partial``: gets each decoded window's
    segment as ASR finishes it (``serve_job_streaming``).
    """
    job_input = job.get("input") if isinstance(job, dict) else None
    return rp_schema.json_safe(jobs.run_job(_job_id(job), job_input, control,
                                            progress=lambda settings: _progress_sender(job, settings),
                                            render=openai_shapes.queue_response, partial=partial))


def concurrency_modifier(current: int) -> int:
    """RunPod's hook for how many jobs this worker takes at once (``jobs.max_concurrent_jobs``)."""
    return jobs.max_concurrent_jobs()


async def serve_job(job: dict) -> dict | str:
    """The RunPod SDK's handler: ``handler`` in a job thread, awaited, so the SDK's event loop
    keeps fetching jobs, sending heartbeats and answering while jobs run
    (``jobs.run_in_job_thread``: the deadline starts on arrival; RunPod's stop cancels the job).
    """
    return await jobs.run_in_job_thread(lambda control: handler(job, control), _job_id(job))


# RunPod's /stream carries at most 1 MB per chunk: a larger answer is sent as JSON text in parts.
STREAM_CHUNK_BYTES = 900_000


def answer_chunks(answer: dict | str) -> list[dict]:
    """The final answer as stream chunks: ``{"result": answer}`` when it fits one chunk, else
    ``{"result_json": part, "part": i, "parts": n}`` pieces of its JSON text (join and parse)."""
    text = json.dumps(answer, ensure_ascii=False)
    if len(text.encode("utf-8")) <= STREAM_CHUNK_BYTES:
        return [{"result": answer}]
    # Characters, not bytes, are cut: a UTF-8 character takes at most 4 bytes.
    step = STREAM_CHUNK_BYTES // 4
    parts = [text[start:start + step] for start in range(0, len(text), step)]
    return [{"result_json": part, "part": index, "parts": len(parts)} for index, part in enumerate(parts)]


async def serve_job_streaming(job: dict) -> AsyncIterator[dict]:
    """The SDK's handler with ``QUEUE_STREAMING=true``: a generator, so ``/stream`` gets
    ``{"partial": {"start", "end", "text"}}`` for each decoded window as ASR finishes it, then
    the answer (``answer_chunks``); ``/run`` and ``/runsync`` get the list of every chunk
    (``return_aggregate_stream``). A failure is first streamed as ``{"failed": {"error": ...}}``
    (runpod-python streams no chunk holding an ``error`` key), then yielded as ``{"error": ...}``,
    which ends the job as failed. RunPod's stop cancels the job, as in ``serve_job``."""
    async for kind, item in jobs.stream_job(lambda control, partial: handler(job, control, partial), _job_id(job),
                                            cancelled_by="RunPod"):
        if kind == "partial":
            yield {"partial": item}
        elif isinstance(item, dict) and "error" in item:
            yield {"failed": item}
            yield item
        else:
            for chunk in answer_chunks(item):
                yield chunk


def _switch(name: str, fallback: object) -> object:
    """A start-up switch (``ENDPOINT_TYPE``, ``QUEUE_STREAMING``); a bad value gives ``fallback``
    (the queue door, whose jobs are then answered with the settings error)."""
    try:
        return read_env(os.environ, (name,))[name]
    except ValueError:
        return fallback


def start_up_beside_sdk_import() -> ModuleType:
    """Load and warm up the models (``jobs.start_up``) while the RunPod SDK is imported in
    another thread, and return the SDK. Its import (aiohttp, fastapi, boto3; 1.6-2.0 s of a
    2-core CPU, ``/usr/bin/time python -c "import runpod"``) is needed only to take jobs, so
    it overlaps start-up's GPU work instead of coming before it. A start-up failure is logged
    by ``jobs`` and answered per job; an SDK that cannot be imported raises here, as before."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-sdk") as pool:
        sdk = pool.submit(importlib.import_module, "runpod")
        try:
            jobs.start_up()  # load and warm up before taking jobs
        except jobs.WorkerUnavailable:
            pass  # logged once; jobs are answered with the cause instead of a crash loop
        return sdk.result()


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
    if _switch("ENDPOINT_TYPE", "queue") == "load_balancer":
        import openai_door

        openai_door.serve(os.environ)  # OpenAI's routes over HTTP; start-up runs beside /ping
        return
    runpod = start_up_beside_sdk_import()
    if _switch("QUEUE_STREAMING", False):
        runpod.serverless.start({"handler": serve_job_streaming, "concurrency_modifier": concurrency_modifier,
                                 "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": serve_job, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
