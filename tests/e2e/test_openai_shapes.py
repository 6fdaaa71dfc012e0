"""OpenAI's response shapes on the queue API (``response_format``), end to end through the RunPod
SDK's local API (/runsync) with real weights on real speech (pyannote's two-speaker sample):
each answer validates strictly against the official ``openai`` package's types, and its words,
times, segments and speakers are the worker's own response for the same audio."""

from __future__ import annotations

import shutil

import pytest
import soundfile as sf
import srt
from fixtures_audio import sample_speaker_voice
from openai.types.audio import TranscriptionDiarized, TranscriptionVerbose
from references import PYANNOTE_SAMPLE, require_assets
from servers import FileServer, WorkerApi

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The sample and one speaker's voice from it, served over HTTP."""
    require_assets()
    root = tmp_path_factory.mktemp("media")
    shutil.copy(PYANNOTE_SAMPLE / "sample.wav", root / "sample.wav")
    sf.write(root / "speaker91.wav", *sample_speaker_voice("speaker91"))
    with FileServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def sample_url(media):
    return media.url("sample.wav")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with WorkerApi(tmp_path_factory.mktemp("worker") / "worker.log") as worker:
        yield worker


@pytest.fixture(scope="module")
def own(api, sample_url) -> dict:
    """The worker's own response (diarization and alignment on, their defaults)."""
    return _ok(api.runsync({"audio_file": sample_url}))


def _ok(envelope: dict):
    assert envelope.get("status") == "COMPLETED", envelope
    return envelope["output"]


def _own_text(own: dict) -> str:
    return " ".join(segment["text"].strip() for segment in own["segments"] if segment["text"].strip())


def test_verbose_json_words_and_times_are_the_workers_own(api, sample_url, own):
    body = _ok(api.runsync({"audio_file": sample_url, "response_format": "verbose_json",
                            "timestamp_granularities": ["word", "segment"]}))
    parsed = TranscriptionVerbose.model_validate(body, strict=True)
    assert parsed.language == "english" and body["task"] == "transcribe"
    assert parsed.text == _own_text(own)
    own_words = [(w["word"].strip(), w["start"], w["end"]) for s in own["segments"] for w in s["words"]]
    assert [(w.word, w.start, w.end) for w in parsed.words or []] == own_words  # the sample's words are all timed
    segments = parsed.segments or []
    assert segments and all(s.tokens and s.avg_logprob <= 0 and 0 <= s.no_speech_prob <= 1 for s in segments)
    assert " ".join(s.text for s in segments) == parsed.text
    assert all(a.end <= b.start + 1e-6 for a, b in zip(segments, segments[1:]))
    assert 0 < parsed.duration and parsed.usage is not None and parsed.usage.seconds == parsed.duration
    assert {w["speaker"] for w in body["whisperx"]["words"]} == {w.get("speaker") for s in own["segments"] for w in s["words"]}
    assert "logs" in body  # the queue API's own field, beside OpenAI's


def test_diarized_json_segments_and_speakers_are_the_workers_own(api, sample_url, own):
    body = _ok(api.runsync({"audio_file": sample_url, "response_format": "diarized_json"}))
    parsed = TranscriptionDiarized.model_validate(body, strict=True)
    own_segments = [s for s in own["segments"] if s["text"].strip()]
    assert [(s.start, s.end, s.text) for s in parsed.segments] == [(s["start"], s["end"], s["text"].strip()) for s in own_segments]
    letters = body["whisperx"]["speakers"]
    assert sorted(letters) == ["A", "B"]  # the sample's two speakers
    assert [letters[s.speaker] for s in parsed.segments] == [s["speaker"] for s in own_segments]


def test_text_and_srt_bodies(api, sample_url, own):
    text = _ok(api.runsync({"audio_file": sample_url, "response_format": "text"}))
    assert text == _own_text(own) + "\n"
    subtitles = _ok(api.runsync({"audio_file": sample_url, "response_format": "srt", "diarization": False}))
    cues = list(srt.parse(subtitles))
    assert cues and " ".join(" ".join(cue.content.split()) for cue in cues) == _own_text(own)


@pytest.mark.parametrize("request_fields, named", [
    ({"response_format": "xml"}, "response_format must be one of"),
    ({"response_format": "diarized_json", "diarization": False}, "diarized_json needs diarization=true"),
    ({"timestamp_granularities": ["word"]}, "timestamp_granularities needs response_format verbose_json"),
])
def test_a_bad_shape_request_is_a_clear_error(api, sample_url, request_fields, named):
    envelope = api.runsync({"audio_file": sample_url, **request_fields})
    error = str(envelope.get("error") or envelope["output"]["error"])
    assert named in error, envelope


def test_a_known_speaker_by_link_is_named_in_every_shape(api, media, own):
    """One known speaker, their sample a link (fetched like ``audio_file``): their segments carry the
    name in the worker's own answer and in ``diarized_json``, where the other speaker still gets a
    letter; the grouping of segments by speaker is the one the unnamed answer has."""
    known = {"audio_file": media.url("sample.wav"), "known_speaker_names": ["Bob"],
             "known_speaker_references": [media.url("speaker91.wav")]}
    named = _ok(api.runsync({**known, "debug": True}))
    own_labels = [s.get("speaker") for s in own["segments"]]
    named_labels = [s.get("speaker") for s in named["segments"]]
    assert "Bob" in named_labels and len(own_labels) == len(named_labels)
    bob = {own_label for own_label, label in zip(own_labels, named_labels, strict=True) if label == "Bob"}
    assert len(bob) == 1 and [label == "Bob" for label in named_labels] == [label in bob for label in own_labels]
    assert named["debug_info"]["output"]["known_speaker_similarities"]["Bob"] >= 0.6
    diarized = TranscriptionDiarized.model_validate(_ok(api.runsync({**known, "response_format": "diarized_json"})),
                                                    strict=True)
    assert {s.speaker for s in diarized.segments} == {"Bob", "A"}
