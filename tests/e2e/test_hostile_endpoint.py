"""Hostile requests through the worker's RunPod local API (real ffmpeg, real models): each
gets a clear ``{"error": ...}`` that names the problem, never "internal error", and the
worker goes on serving. One case per hole of the attacker review: decode bombs, files that
name other files, SSRF parser tricks and port probes, text that is not valid Unicode, a
download that never ends."""

from __future__ import annotations

import base64
import json
import socket
import subprocess

import pytest
from fixtures_audio import CLIP, HostileServer, build_media, festvox_wav, post_raw, transcript
from hostile_files import dash, hls, set_flac_total_samples, wav
from references import FESTVOX, assert_transcript_of, require_assets
from servers import WorkerApi

pytestmark = pytest.mark.slow

FAST = {"diarization": False, "align_output": False, "language": "ru"}


def _b64(data: bytes, name: str) -> dict:
    return {"audio_base64": base64.b64encode(data).decode(), "audio_filename": name}


def _error(envelope: dict) -> str:
    """The job's error message (RunPod puts a handler's ``{"error"}`` in the envelope's ``error``)."""
    if envelope.get("output") and "error" not in envelope["output"]:
        raise AssertionError(f"expected an error, got a result: {json.dumps(envelope)[:400]}")
    error = str(envelope.get("error") or envelope["output"]["error"])
    assert "internal error" not in error and "Traceback" not in error, error
    return error


@pytest.fixture(scope="module")
def public_worker(tmp_path_factory):
    """A worker as deployed: no private URLs, no local files, a 10-minute audio cap."""
    require_assets()
    folder = tmp_path_factory.mktemp("public-worker")
    with WorkerApi(folder / "worker.log", ALLOW_PRIVATE_URLS="false", MAX_AUDIO_SECONDS="600", WARMUP="false") as api:
        yield api


def test_header_bombs_are_refused_before_any_decoding(public_worker, tmp_path):
    """A 4.8 KB WAV whose header says 1 Hz, one whose byte rate claims hours, a FLAC claiming
    2^36 samples: each a short error naming the sample rate or MAX_AUDIO_SECONDS."""
    one_hz = _error(public_worker.runsync({**FAST, **_b64(wav(1, 1, 4800), "bomb.wav")}))
    assert "sample rate" in one_hz
    hours = _error(public_worker.runsync({**FAST, **_b64(wav(16000, 1, 4800, byte_rate=1), "hours.wav")}))
    assert "MAX_AUDIO_SECONDS" in hours
    flac = tmp_path / "claims.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(festvox_wav(CLIP)), str(flac)], check=True)
    set_flac_total_samples(flac, 2**36 - 1)
    huge = _error(public_worker.runsync({**FAST, **_b64(flac.read_bytes(), "claims.flac")}))
    assert "MAX_AUDIO_SECONDS" in huge and "600" in huge


@pytest.mark.parametrize("render, name", [(dash, "manifest.mpd"), (hls, "playlist.m3u8")])
def test_files_naming_other_files_get_one_answer(public_worker, render, name):
    """A manifest or playlist pointing at a file on the worker's disk (here a festvox clip)
    or at a missing one: the same refusal, word for word, and no transcript."""
    existing = str(festvox_wav(CLIP))
    missing = str(FESTVOX / "wav" / "no_such_clip.wav")
    answers = [_error(public_worker.runsync({**FAST, **_b64(render(target).encode(), name)}))
               for target in (existing, "file://" + existing, missing)]
    assert len(set(answers)) == 1, answers
    assert "unsupported container" in answers[0] and existing not in answers[0]


def test_ssrf_parser_tricks_and_port_probes(public_worker):
    """The backslash trick is refused outright; a forbidden host gets the same error whether a
    port is open (the worker's own API) or closed; 6to4 and 192.0.0.8 are private too."""
    trick = _error(public_worker.runsync({**FAST, "audio_file": f"http://127.0.0.1:{public_worker.port}\\@93.184.216.34/a.wav"}))
    assert "audio_file" in trick and "refused" in trick
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # bound, not listening: connections are refused
        open_answer = _error(public_worker.runsync({**FAST, "audio_file": f"http://127.0.0.1:{public_worker.port}/a.wav"}))
        closed_answer = _error(public_worker.runsync({**FAST, "audio_file": f"http://127.0.0.1:{closed}/a.wav"}))
    assert open_answer.replace(str(public_worker.port), "PORT") == closed_answer.replace(str(closed), "PORT")
    for host in ("[2002:7f00:1::1]", "[2002:a9fe:a9fe::1]", "192.0.0.8", "[::ffff:127.0.0.1]"):
        assert "refused" in _error(public_worker.runsync({**FAST, "audio_file": f"http://{host}/a.wav"})), host


def test_text_that_is_not_unicode_gets_an_error_not_a_crash(public_worker):
    """A lone surrogate in a field name or in a text field: HTTP 200 with an error naming it."""
    body = '{"input": {"audio_file": "https://example.com/a.wav", "\\ud800x": 1}}'
    response = post_raw(public_worker.base, "runsync", body)
    assert response.status_code == 200, response.text[:300]
    assert "\\ud800" in _error(response.json())  # the field named, escaped
    prompt = '{"input": {"audio_file": "https://example.com/a.wav", "initial_prompt": "a\\ud800b"}}'
    answer = _error(post_raw(public_worker.base, "runsync", prompt).json())
    assert "initial_prompt" in answer


def test_worker_still_serves_after_the_hostile_requests(public_worker):
    output = public_worker.runsync({**FAST, **_b64(festvox_wav(CLIP).read_bytes(), "clip.wav")})["output"]
    assert_transcript_of(CLIP, transcript(output))
    assert public_worker.proc is not None and public_worker.proc.poll() is None


def test_a_download_that_never_ends_is_bounded_by_the_job_deadline(tmp_path_factory):
    """A server sending one byte a second: the job ends with the deadline, naming the
    download, instead of running on until ffmpeg's own limit."""
    require_assets()
    folder = tmp_path_factory.mktemp("deadline-worker")
    media = build_media(folder / "media")
    with HostileServer(media) as server, WorkerApi(folder / "worker.log", JOB_TIMEOUT_S="5", WARMUP="false") as api:
        error = _error(api.runsync({**FAST, "audio_file": server.url("drip")}))
        assert "time budget of 5 s (JOB_TIMEOUT_S) during download" in error, error

