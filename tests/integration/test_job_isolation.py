"""One job can never hurt the next (issue 13 #1, #6): a job that fails or runs out of its time
budget ends its diarization with it, and the budget is checked inside VAD, alignment and
diarization, on real weights and real speech (CPU)."""

from __future__ import annotations

import dataclasses
import time

import pytest
from fixtures_audio import CLIP, concat_clips
from offline_worker import REQUEST_ENV, offline_predictor, offline_process_env
from references import FESTVOX

import predict
import rp_schema
from stages import vad


@pytest.fixture(scope="module")
def env():
    with offline_process_env():
        yield REQUEST_ENV


@pytest.fixture(scope="module")
def predictor(env):
    return offline_predictor(preload_align_languages=("ru",))


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    path, seconds, _ = concat_clips(tmp_path_factory.mktemp("long") / "long.wav", 180.0)
    return path, seconds


def _clip_request(env, **fields) -> rp_schema.RequestOptions:
    return rp_schema.resolve_options({"audio_file": str(FESTVOX / "wav" / f"{CLIP}.wav"), "diarization": True,
                                      "align_output": False, "language": "ru", **fields}, env)


class _DiarizationStarts:
    """Wraps ``predictor.diarization.models().diarize`` to record when each run starts (monotonic s)."""

    def __init__(self, predictor, monkeypatch):
        self.starts: list[float] = []
        original = predictor.diarization.models().diarize

        def diarize(*args, **kwargs):
            self.starts.append(time.monotonic())
            return original(*args, **kwargs)

        monkeypatch.setattr(predictor.diarization.models(), "diarize", diarize)


def _next_job_diarization_queue_s(predictor, env, starts: _DiarizationStarts) -> tuple[float, dict]:
    """Run a normal diarized job; seconds from its start to its diarization's start."""
    before = len(starts.starts)
    started = time.monotonic()
    result = predictor.predict(_clip_request(env))
    assert len(starts.starts) == before + 1
    assert any(segment.get("speaker") for segment in result["segments"]), result["warnings"]
    return starts.starts[before] - started, result


def test_failed_job_does_not_hold_up_the_next_diarization(predictor, env, long_wav, monkeypatch):
    """A job that fails after submitting the diarization of 3 minutes of speech (~3 minutes of
    CPU work): its cleanup stops that run, so the next job's diarization starts at once."""
    starts = _DiarizationStarts(predictor, monkeypatch)

    def broken_vad(model, waveform, run):
        # Fail once the diarization is under way: cancelling a queued run is the easy case.
        deadline = time.monotonic() + 30
        while not starts.starts and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        raise RuntimeError("VAD exploded")

    with monkeypatch.context() as patch:
        patch.setattr(vad, "speech_scores_in_steps", broken_vad)
        failed_at = time.monotonic()
        with pytest.raises(RuntimeError, match="VAD exploded"):
            predictor.predict(rp_schema.resolve_options({"audio_file": str(long_wav[0]), "diarization": True}, env))
        cleanup_s = time.monotonic() - failed_at
    queue_s, _ = _next_job_diarization_queue_s(predictor, env, starts)
    print(f"failed job ended in {cleanup_s:.1f} s; next job's diarization queued {queue_s:.2f} s")
    assert starts.starts, "the failed job's diarization should have started"
    assert cleanup_s < predict.DIARIZATION_STOP_WAIT_S + 5
    assert queue_s < 3.0


def test_one_second_budget_ends_inside_the_stages(predictor, env, long_wav, monkeypatch):
    """JOB_TIMEOUT_S=1 on a 3-minute file with diarization and alignment: the budget is
    checked inside VAD (per batch of chunks) and diarization (per batch), so the job ends in
    seconds, not after the stages; the next job's diarization starts at once."""
    starts = _DiarizationStarts(predictor, monkeypatch)
    monkeypatch.setattr(predictor, "settings", dataclasses.replace(predictor.settings, job_timeout_s=1.0))
    started = time.monotonic()
    with pytest.raises(predict.JobTimeout, match=r"time budget of 1 s \(JOB_TIMEOUT_S\)"):
        predictor.predict(rp_schema.resolve_options({"audio_file": str(long_wav[0]), "diarization": True,
                                                     "align_output": True}, env))
    elapsed = time.monotonic() - started
    print(f"1 s budget on {long_wav[1]:.0f} s of audio: ended after {elapsed:.1f} s")
    assert elapsed < 10.0
    monkeypatch.setattr(predictor, "settings", dataclasses.replace(predictor.settings, job_timeout_s=0.0))
    queue_s, _ = _next_job_diarization_queue_s(predictor, env, starts)
    assert queue_s < 3.0
