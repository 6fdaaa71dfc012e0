"""Two Whisper replicas (``WHISPER_REPLICAS=2``), on real weights and real speech (CPU): two
merged calls run at once, one per replica, and every job gets what it gets alone. On a GPU
this lets a call start while another decodes (issue 26); here it checks the path through
faster-whisper's workers and the batcher's two threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from offline_worker import REQUEST_ENV, offline_predictor, offline_process_env
from references import FESTVOX

import handler as handler_module
import jobs
from rp_schema import read_request_env
from stages import asr

# Options that split decoding (language, beam, prompt), so no two jobs merge into one call and
# each waiting call needs a replica of its own.
JOBS = {
    "r-ru": {"audio_file": str(FESTVOX / "wav" / "ru_0006.wav"), "language": "ru"},
    "r-beam1": {"audio_file": str(FESTVOX / "wav" / "ru_0015.wav"), "language": "ru", "beam_size": 1},
    "r-prompt": {"audio_file": str(FESTVOX / "wav" / "ru_0017.wav"), "language": "ru", "initial_prompt": "Литература."},
    "r-beam2": {"audio_file": str(FESTVOX / "wav" / "ru_0011.wav"), "language": "ru", "beam_size": 2},
}
COMPARED = ("segments", "detected_language", "warnings", "error")


@pytest.fixture(scope="module")
def worker():
    with offline_process_env(), pytest.MonkeyPatch.context() as mp:
        predictor = offline_predictor(max_concurrent_jobs=4, whisper_replicas=2, request_env=read_request_env(REQUEST_ENV))
        mp.setattr(jobs, "_predictor", predictor)
        mp.setattr(jobs, "_job_threads", None)
        yield predictor


def _job(job_id: str) -> dict:
    return {"id": job_id, "input": {"diarization": False, "align_output": False, **JOBS[job_id]}}


class _CallsAtOnce:
    """Wraps the real ``asr.generate`` and counts how many of its calls overlap."""

    def __init__(self, real) -> None:
        self.real, self.lock = real, threading.Lock()
        self.running = self.most = 0

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_two_replicas_run_two_calls_at_once_and_jobs_answer_as_alone(worker, monkeypatch):
    assert worker.asr_models.replicas == 2 and worker.whisper_calls.parallel_calls == 2
    alone = {job_id: handler_module.handler(_job(job_id)) for job_id in JOBS}

    counter = _CallsAtOnce(asr.generate)
    monkeypatch.setattr(asr, "generate", counter)
    answers: dict[str, dict] = {}

    async def all_at_once() -> None:
        results = await asyncio.gather(*(handler_module.serve_job(_job(job_id)) for job_id in JOBS))
        answers.update(zip(JOBS, results))

    # Held until every job's first generate call waits, so the two replicas find work together.
    with worker.whisper_calls.held():
        runner = threading.Thread(target=lambda: asyncio.run(all_at_once()))
        runner.start()
        deadline = time.monotonic() + 300
        while worker.whisper_calls.waiting_calls < len(JOBS) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.whisper_calls.waiting_calls == len(JOBS)
    runner.join()

    assert counter.most == 2
    for job_id in JOBS:
        assert alone[job_id].get("error") is None, alone[job_id].get("error")
        assert alone[job_id]["segments"], job_id
        for key in COMPARED:
            assert answers[job_id].get(key) == alone[job_id].get(key), (job_id, key)
