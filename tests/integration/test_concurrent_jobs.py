"""Jobs in flight together give what they give one at a time (issue 15 #2), on real weights and
real speech (CPU): the same handler, once job by job and once with every job awaited at once
through ``serve_job`` (what the RunPod SDK awaits), where the Predictor merges the jobs'
Whisper calls. Each job keeps its own options, language, warnings, result and logs."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from offline_worker import REQUEST_ENV, offline_predictor, offline_process_env
from references import FESTVOX, PYANNOTE_SAMPLE

import handler as handler_module
import jobs
from logs import setup_logging
from rp_schema import read_request_env

# Jobs with options that share decoding (merged) and options that must split a batch
# (beam size, prompt, language, task), a diarized one, a subtitle one and a failing one.
JOBS = {
    "c-auto": {"audio_file": str(FESTVOX / "wav" / "ru_0003.wav")},
    "c-ru": {"audio_file": str(FESTVOX / "wav" / "ru_0006.wav"), "language": "ru"},
    "c-ru2": {"audio_file": str(FESTVOX / "wav" / "ru_0011.wav"), "language": "ru", "output_format": "srt"},
    "c-beam1": {"audio_file": str(FESTVOX / "wav" / "ru_0015.wav"), "language": "ru", "beam_size": 1},
    "c-prompt": {"audio_file": str(FESTVOX / "wav" / "ru_0017.wav"), "initial_prompt": "Литература, история."},
    "c-en-diarized": {"audio_file": str(PYANNOTE_SAMPLE / "sample.wav"), "diarization": True, "align_output": False},
    "c-missing": {"audio_file": str(FESTVOX / "wav" / "no_such_clip.wav")},
}
COMPARED = ("segments", "detected_language", "language_probability", "warnings", "output", "error")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """``handler`` with a resident CPU Predictor that runs up to 4 jobs at once, logging as the
    worker does (container log + per-job capture)."""
    setup_logging(tmp_path_factory.mktemp("logs") / "container_log.txt")
    with offline_process_env(), pytest.MonkeyPatch.context() as mp:
        predictor = offline_predictor(preload_align_languages=("ru",), max_concurrent_jobs=4,
                                      request_env=read_request_env(REQUEST_ENV))
        mp.setattr(jobs, "_predictor", predictor)  # the job runner holds the worker's Predictor
        mp.setattr(jobs, "_job_threads", None)
        yield predictor


def _job(job_id: str) -> dict:
    return {"id": job_id, "input": {"diarization": False, **JOBS[job_id]}}


def _lines(logs: str) -> list[str]:
    """Log lines without their time stamp, numbers blanked (durations differ run to run)."""
    return [re.sub(r"\d+(\.\d+)?", "#", line.split(" ", 2)[-1]) for line in logs.splitlines()]


def _job_thread_lines(lines: list[str]) -> list[str]:
    """The lines a job's own thread logs: all but the diarization thread's (logger "diarization")."""
    return [line for line in lines if not line.split(" ", 1)[-1].startswith("diarization:")]


async def _all_at_once() -> dict[str, dict]:
    results = await asyncio.gather(*(handler_module.serve_job(_job(job_id)) for job_id in JOBS))
    return dict(zip(JOBS, results))


def _all_at_once_meeting_in_one_call(worker, calls: int = 4, wait_s: float = 300.0) -> dict[str, dict]:
    """``_all_at_once`` with the batcher held until ``calls`` Whisper calls of the jobs in flight
    (one per job in flight) wait together, so that merging does not depend on how the jobs' earlier stages happen to
    overlap on this machine (on 2 cores they may arrive one by one)."""
    answers: dict[str, dict] = {}
    with worker.whisper_calls.held():
        runner = threading.Thread(target=lambda: answers.update(asyncio.run(_all_at_once())))
        runner.start()
        deadline = time.monotonic() + wait_s
        while worker.whisper_calls.waiting_calls < calls and time.monotonic() < deadline:
            time.sleep(0.01)
    runner.join()
    return answers


def test_concurrent_jobs_answer_as_sequential_ones(worker):
    assert worker.max_concurrent_jobs == 4
    sequential = {job_id: handler_module.handler(_job(job_id)) for job_id in JOBS}
    before = worker.whisper_calls.stats.merged_calls
    concurrent = _all_at_once_meeting_in_one_call(worker)

    # The Whisper calls of different jobs really shared model calls.
    assert worker.whisper_calls.stats.merged_calls > before
    assert worker.whisper_calls.stats.most_callers >= 2

    assert "no_such_clip" in sequential["c-missing"]["error"]
    assert sequential["c-en-diarized"]["detected_language"] == "en"
    assert {s.get("speaker") for s in sequential["c-en-diarized"]["segments"]} - {None}
    assert sequential["c-ru2"]["output"].startswith("1\n")
    for job_id in JOBS:
        for key in COMPARED:
            assert concurrent[job_id].get(key) == sequential[job_id].get(key), (job_id, key)


def test_concurrent_jobs_keep_their_own_logs(worker):
    sequential = {job_id: handler_module.handler(_job(job_id)) for job_id in JOBS}
    concurrent = asyncio.run(_all_at_once())
    for job_id in JOBS:
        logs = concurrent[job_id]["logs"]
        assert f"job {job_id} started" in logs
        for other in JOBS:
            if other != job_id:
                assert f"job {other} " not in logs, (job_id, other)
        # The same lines as alone: nothing of another job, nothing lost; in the same order,
        # except that the diarization thread's lines (it runs beside transcription by design,
        # alone too) may come before or after the job thread's.
        alone = _lines(sequential[job_id]["logs"])
        assert sorted(_lines(logs)) == sorted(alone), job_id
        assert _job_thread_lines(_lines(logs)) == _job_thread_lines(alone), job_id
