"""Load (issue 5): a bounded burst of mixed good and bad requests against a fresh worker.

24 requests, at most 4 in flight, through ``/runsync`` and (a few) ``/run`` + ``/status``;
every good one must come back COMPLETED with its own clip's text and its own logs, every bad
one FAILED with the expected message, none may be lost, and the worker must still be alive
with no job folder left behind. The whole burst is capped at 10 minutes.
"""

from __future__ import annotations

import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import pytest

from fixtures_audio import SHORT_CLIPS, festvox_wav, job_dirs, run_and_poll, transcript
from references import assert_transcript_of, nearest_festvox_clip, normalise, require_assets
from servers import FileServer, WorkerApi

REQUESTS = 24
IN_FLIGHT = 4
OVERALL_CAP_S = 600.0
REQUEST_TIMEOUT_S = 300.0
FAST = {"diarization": False, "align_output": False}


@dataclass(frozen=True)
class Job:
    name: str
    route: str  # "runsync" or "run" (then polled on /status)
    input: dict
    clip: str | None = None  # good job: the festvox clip it must transcribe
    error: str | None = None  # bad job: a substring of the expected error


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    require_assets()
    root = tmp_path_factory.mktemp("load-media")
    for clip in SHORT_CLIPS:
        shutil.copy(festvox_wav(clip), root / f"{clip}.wav")
    (root / "empty.wav").write_bytes(b"")
    with FileServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def worker_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("load-worker-tmp")


@pytest.fixture(scope="module")
def api(tmp_path_factory, worker_tmp):
    with WorkerApi(tmp_path_factory.mktemp("load-worker") / "worker.log", TMPDIR=str(worker_tmp)) as worker:
        yield worker


def _jobs(media) -> list[Job]:
    jobs: list[Job] = []
    variants = [{}, {"language": "ru"}, {"debug": True}, {"batch_size": 4}, {"output_format": "srt"}]
    for i in range(14):
        clip = SHORT_CLIPS[i % len(SHORT_CLIPS)]
        jobs.append(Job(f"good-{i}", "runsync", {"audio_file": media.url(f"{clip}.wav"), **FAST, **variants[i % len(variants)]}, clip=clip))
    for i in range(4):
        clip = SHORT_CLIPS[(i + 2) % len(SHORT_CLIPS)]
        jobs.append(Job(f"good-run-{i}", "run", {"audio_file": media.url(f"{clip}.wav"), **FAST}, clip=clip))
    good = media.url(f"{SHORT_CLIPS[0]}.wav")
    jobs += [
        Job("bad-beam-size", "runsync", {"audio_file": good, "beam_size": -3}, error="beam_size must be >= 1 and <= 20"),
        Job("bad-404", "runsync", {"audio_file": media.url("missing.wav"), **FAST}, error="download failed: HTTP 404"),
        Job("bad-base64", "runsync", {"audio_base64": "%%% not base64 %%%", **FAST}, error="audio_base64: not valid base64"),
        Job("bad-unknown-field", "runsync", {"audio_file": good, "speed": 2}, error="unknown input field(s): speed"),
        Job("bad-empty-audio", "runsync", {"audio_file": media.url("empty.wav"), **FAST}, error="audio file is empty"),
        Job("bad-language-run", "run", {"audio_file": good, "language": "xx"}, error="is not a Whisper language code"),
    ]
    assert len(jobs) == REQUESTS
    random.Random(5).shuffle(jobs)
    return jobs


def _send(api: WorkerApi, job: Job) -> tuple[dict, float]:
    started = time.monotonic()
    if job.route == "runsync":
        envelope = api.runsync(job.input, timeout_s=REQUEST_TIMEOUT_S)
    else:
        envelope = run_and_poll(api.base, job.input, timeout_s=REQUEST_TIMEOUT_S)
    return envelope, time.monotonic() - started


def test_burst_of_mixed_requests(api, media, worker_tmp):
    jobs = _jobs(media)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        futures = {pool.submit(_send, api, job): job for job in jobs}
        done, not_done = wait(futures, timeout=OVERALL_CAP_S)
        for future in not_done:
            future.cancel()
    wall = time.monotonic() - started

    completed, failed_as_expected, problems, lost = 0, 0, [], len(not_done)
    envelopes: dict[str, dict] = {}
    for future in done:
        job = futures[future]
        try:
            envelope, _ = future.result()
        except Exception as exc:  # a request that errored at the HTTP level is lost
            lost += 1
            problems.append(f"{job.name}: {type(exc).__name__}: {exc}")
            continue
        envelopes[job.name] = envelope
        if job.clip is not None:
            if envelope.get("status") != "COMPLETED":
                problems.append(f"{job.name}: expected COMPLETED, got {envelope}")
                continue
            text = transcript(envelope["output"])
            nearest = nearest_festvox_clip(text) if normalise(text) else None
            if nearest != job.clip:  # its own clip's text, not another job's (nor none)
                problems.append(f"{job.name}: transcript of {nearest}, not {job.clip}: {text!r}")
                continue
            completed += 1
        else:
            if envelope.get("status") != "FAILED" or job.error not in envelope.get("error", ""):
                problems.append(f"{job.name}: expected FAILED with {job.error!r}, got {envelope}")
                continue
            failed_as_expected += 1

    # Each completed response's logs hold its own job id and no other job's.
    ids = {name: envelope["id"] for name, envelope in envelopes.items() if envelope.get("id")}
    for name, envelope in envelopes.items():
        if envelope.get("status") != "COMPLETED":
            continue
        logs = envelope["output"]["logs"]
        if ids.get(name) not in logs:
            problems.append(f"{name}: its own job id is missing from its logs")
        foreign = [other for other, job_id in ids.items() if other != name and job_id in logs]
        if foreign:
            problems.append(f"{name}: logs mention other jobs: {foreign}")

    print(f"load: sent {len(jobs)} ({IN_FLIGHT} in flight), completed {completed}, failed as expected "
          f"{failed_as_expected}, lost {lost}, wall {wall:.1f} s")
    assert lost == 0 and not problems, problems
    assert completed == sum(job.clip is not None for job in jobs)
    assert failed_as_expected == sum(job.error is not None for job in jobs)
    assert api.proc.poll() is None, "worker died during the burst"
    assert job_dirs(worker_tmp) == []
    # And it still serves a plain request afterwards.
    after = api.runsync({"audio_file": media.url(f"{SHORT_CLIPS[1]}.wav"), **FAST})
    assert after["status"] == "COMPLETED"
    assert_transcript_of(SHORT_CLIPS[1], transcript(after["output"]))
