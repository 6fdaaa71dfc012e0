"""The job's control (deadline, cancel) through the real Predictor and handler on the offline
assets: a deadline after transcription keeps the transcript, a cancel ends the job and
leaves nothing behind, a GPU fault in any stage asks RunPod for a fresh worker.

The controls below stop a job at a named stage (not after a number of seconds), so what is
asserted does not depend on the machine's speed."""

from __future__ import annotations

import threading
import time

import pytest
from fixtures_audio import CLIP, festvox_wav
from references import BASE_MODEL

from stages import alignment
import handler
import jobs
import job_control
import predict
import rp_schema
from offline_worker import REQUEST_ENV, offline_predictor, offline_process_env


class ExpiresAt(job_control.JobControl):
    """A job whose deadline passes when it first reaches ``stage`` (a budget of an hour
    otherwise)."""

    def __init__(self, stage: str) -> None:
        super().__init__(3600.0)
        self.stage = stage

    def check(self, stage: str) -> None:
        if stage.startswith(self.stage):
            self._ends = time.monotonic() - 1.0
        super().check(stage)


class CancelledAt(job_control.JobControl):
    """A job that RunPod cancels when it first reaches ``stage``."""

    def __init__(self, stage: str) -> None:
        super().__init__(0.0)
        self.stage = stage

    def check(self, stage: str) -> None:
        if stage.startswith(self.stage):
            self.cancel("cancelled by RunPod")
        super().check(stage)


@pytest.fixture(scope="module")
def predictor():
    with offline_process_env():
        yield offline_predictor()


def _options(**fields) -> rp_schema.RequestOptions:
    return rp_schema.resolve_options({"audio_file": str(festvox_wav(CLIP)), "language": "ru", **fields}, REQUEST_ENV)


@pytest.mark.parametrize("stage, skipped, kept_words", [("align", "alignment and diarization", False),
                                                       ("diarize", "diarization", True)])
def test_deadline_after_transcription_keeps_the_transcript(predictor, stage, skipped, kept_words):
    result = predictor.predict(_options(diarization=True, align_output=True), control=ExpiresAt(stage))
    assert result["segments"] and result["segments"][0]["text"]
    assert any("time budget" in w and f"without {skipped}" in w for w in result["warnings"]), result["warnings"]
    assert all("speaker" not in s for s in result["segments"])
    assert all(bool(s.get("words")) == kept_words for s in result["segments"])


@pytest.mark.parametrize("stage", ["download", "vad", "transcribe", "align", "diarize"])
def test_cancel_ends_the_job_at_any_stage_and_leaves_no_threads(predictor, stage):
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(job_control.JobCancelled, match=f"cancelled by RunPod during {stage}"):
        predictor.predict(_options(diarization=True), control=CancelledAt(stage))
    time.sleep(0.5)
    leftover = {t.name for t in threading.enumerate()} - before
    # Pools start their threads lazily: a first job may add the diarization/torch threads, never a per-job one.
    assert not [name for name in leftover if not name.startswith(("diarize", "torch", "whisper-batcher"))], leftover
    # The worker goes on serving.
    assert predictor.predict(_options(diarization=False))["segments"]


def test_gpu_fault_in_alignment_replaces_the_worker(predictor, monkeypatch):
    """A CUDA error where a failure would otherwise become a warning: the job fails with
    ``refresh_worker`` so that RunPod starts a fresh worker instead of reusing the context."""

    def fault(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(alignment, "whisper_word_timings", fault)
    monkeypatch.setattr(alignment, "align_with_wav2vec2", fault)
    with pytest.raises(predict.WorkerFault, match="alignment hit a GPU fault"):
        predictor.predict(_options(diarization=False, align_output=True))
    monkeypatch.setattr(jobs, "start_up", lambda: predictor)  # the job runner starts the worker
    answer = handler.handler({"id": "fault-1", "input": {"audio_file": str(festvox_wav(CLIP)), "language": "ru",
                                                         "diarization": False, "model": BASE_MODEL}})
    assert answer.get("refresh_worker") is True and "GPU fault" in answer["error"], answer


def test_out_of_memory_is_not_a_fault():
    assert not predict.is_device_fault(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert predict.is_device_fault(RuntimeError("CUDA error: device-side assert triggered"))
