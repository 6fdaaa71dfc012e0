"""The load-balancing door's mapping of OpenAI's form to a job's input (src/openai_door.py), its
error objects, and ``/ping`` while the worker loads; the real door runs end to end in
tests/e2e/test_openai_door.py."""

from __future__ import annotations

import asyncio
import io

import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import FormData, Headers, UploadFile

import jobs
import openai_door
import rp_schema


def _form(*fields: tuple[str, str], audio: bytes | None = b"RIFF....") -> FormData:
    items: list[tuple[str, str | UploadFile]] = list(fields)
    if audio is not None:
        items.append(("file", UploadFile(io.BytesIO(audio), filename="a.wav", headers=Headers({}))))
    return FormData(items)


def _job_input(form: FormData, translate: bool = False) -> dict:
    return asyncio.run(openai_door.job_input_from_form(form, translate))


def test_openais_fields_become_the_workers_and_its_model_names_mean_the_default():
    job = _job_input(_form(("model", "whisper-1"), ("language", "ru"), ("prompt", "Имена: Пётр"), ("temperature", "0.2"),
                           ("response_format", "verbose_json"), ("timestamp_granularities[]", "word"),
                           ("timestamp_granularities[]", "segment")))
    assert "model" not in job and job["language"] == "ru" and job["initial_prompt"] == "Имена: Пётр"
    assert job["temperature"] == 0.2 and job["timestamp_granularities"] == ["word", "segment"]
    assert job["audio_filename"] == "a.wav" and job["audio_base64"]
    options = rp_schema.resolve_options(job, {})
    assert options.response_format == "verbose_json" and options.timestamp_granularities == "word,segment"


def test_door_defaults_speakers_only_for_diarized_json_and_words_only_where_times_are_reported():
    assert _job_input(_form())["diarization"] is False and _job_input(_form())["align_output"] is False
    diarized = _job_input(_form(("response_format", "diarized_json")))
    assert diarized["diarization"] is True and diarized["align_output"] is True
    asked = _job_input(_form(("diarization", "true"), ("align_output", "false"), ("response_format", "srt")))
    assert asked["diarization"] is True and asked["align_output"] is False


def test_extra_fields_are_typed_by_the_request_schema():
    job = _job_input(_form(("min_speakers", "2"), ("debug", "true"), ("beam_size", "many"), ("no_speech_threshold", "null")))
    assert job["min_speakers"] == 2 and job["debug"] is True and job["no_speech_threshold"] is None
    with pytest.raises(rp_schema.ValidationError, match="beam_size must be an integer"):
        rp_schema.resolve_options(job, {})


def test_a_model_of_this_worker_is_passed_on():
    assert _job_input(_form(("model", "faster-whisper-large-v3-russian")))["model"] == "faster-whisper-large-v3-russian"


def test_the_translation_route_translates_and_refuses_diarized_json():
    assert _job_input(_form(), translate=True)["task"] == "translate"
    with pytest.raises(openai_door.OpenAIError) as caught:
        _job_input(_form(("response_format", "diarized_json")), translate=True)
    assert caught.value.param == "response_format"


@pytest.mark.parametrize("form, param", [
    (_form(audio=None), "file"),
    (_form(audio=b""), "file"),
    (_form(("url", "https://example.com/a.wav")), "file"),
    (_form(("include[]", "logprobs")), "include"),
])
def test_requests_the_door_cannot_serve_name_the_field(form, param):
    with pytest.raises(openai_door.OpenAIError) as caught:
        _job_input(form)
    assert caught.value.status == 400 and caught.value.param == param


def test_stream_is_a_form_boolean_and_never_a_job_field():
    assert "stream" not in _job_input(_form(("stream", "true")))
    assert openai_door.wants_stream(_form(("stream", "true"))) and not openai_door.wants_stream(_form())
    with pytest.raises(openai_door.OpenAIError) as caught:
        openai_door.wants_stream(_form(("stream", "sometimes")))
    assert caught.value.param == "stream"


def test_an_empty_file_stands_aside_for_a_url():
    job = _job_input(_form(("url", "https://example.com/a.wav"), audio=b""))
    assert job["audio_file"] == "https://example.com/a.wav" and "audio_base64" not in job


def test_a_url_alone_is_fine():
    assert _job_input(_form(("url", "https://example.com/a.wav"), audio=None))["audio_file"] == "https://example.com/a.wav"


@pytest.mark.parametrize("kind, status, retry", [
    ("invalid_request", 400, "false"), ("timeout", 408, "false"), ("unavailable", 503, "false"),
    ("internal", 500, "true"), ("gpu_fault", 500, "true"),
])
def test_failures_render_as_openais_error_object(kind, status, retry):
    response = openai_door.failure_response(jobs.JobFailure("it broke", kind, "language"))
    assert response.status_code == status and response.headers["x-should-retry"] == retry
    assert response.body.startswith(b'{"error":{"message":"it broke"')


def test_ping_answers_204_while_loading_and_requests_get_503():
    class Loading(openai_door.Readiness):
        def begin(self) -> None:  # never finishes loading
            pass

    app = openai_door.create_app(openai_door.DoorSettings(), Loading())
    with TestClient(app) as client:
        assert client.get("/ping").status_code == 204
        refused = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")}, data={"model": "whisper-1"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "loading"


def test_the_audio_cap_of_a_request_that_is_not_streamed():
    door = openai_door.DoorSettings(request_timeout_s=330.0)
    assert door.audio_cap("cuda")[0] == 3300.0 and door.audio_cap("cpu")[0] == 165.0
    assert openai_door.DoorSettings(max_audio_s=60.0).audio_cap("cuda")[0] == 60.0
    assert "stream=true" in door.audio_cap("cpu")[1]


def test_the_tighter_audio_cap_applies():
    import job_control

    assert job_control.JobControl(0, "j", 60.0, "LB cap").audio_limit(14400.0) == (60.0, "LB cap")
    assert job_control.JobControl(0, "j", 60.0, "LB cap").audio_limit(0.0) == (60.0, "LB cap")
    assert job_control.JobControl(0, "j", 600.0, "LB cap").audio_limit(300.0) == (300.0, "MAX_AUDIO_SECONDS")
    assert job_control.JobControl(0, "j").audio_limit(300.0) == (300.0, "MAX_AUDIO_SECONDS")
