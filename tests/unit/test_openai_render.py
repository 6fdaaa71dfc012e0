"""OpenAI's response shapes (src/openai_shapes.py) from a hand-built Transcript, each checked
strictly against the official ``openai`` package's own types, and the request rules of
``response_format`` / ``timestamp_granularities`` (rp_schema)."""

from __future__ import annotations

import pytest
import srt
import webvtt
from openai.types.audio import Transcription, TranscriptionDiarized, TranscriptionVerbose

import openai_shapes
import rp_schema
from transcript import DecodedWindow, Transcript

URL = "https://example.com/a.wav"


def _transcript(language: str = "ru") -> Transcript:
    """Two decoded windows; alignment cut the first into two segments; two speakers; one word
    the aligner could not time."""
    segments = [
        {"start": 0.5, "end": 1.6, "text": " Привет, мир.", "speaker": "SPEAKER_01", "words": [
            {"word": "Привет,", "start": 0.52, "end": 1.0, "score": 0.9, "speaker": "SPEAKER_01"},
            {"word": "мир.", "start": 1.1, "end": 1.58, "score": 0.8, "speaker": "SPEAKER_01"}]},
        {"start": 1.8, "end": 2.9, "text": "Как дела?", "speaker": "SPEAKER_00", "words": [
            {"word": "Как", "start": 1.82, "end": 2.1, "score": 0.7, "speaker": "SPEAKER_00"},
            {"word": "дела?", "start": 2.2, "end": 2.88, "score": 0.6, "speaker": "SPEAKER_00"}]},
        {"start": 31.0, "end": 33.0, "text": "В 2024 году.", "speaker": "SPEAKER_01", "words": [
            {"word": "В", "start": 31.05, "end": 31.2, "score": 0.5, "speaker": "SPEAKER_01"},
            {"word": "2024", "speaker": "SPEAKER_01"},
            {"word": "году.", "start": 32.0, "end": 32.9, "score": 0.4, "speaker": "SPEAKER_01"}]},
    ]
    decoded = [
        DecodedWindow(0.4, 3.0, " Привет, мир. Как дела?", [50364, 1, 2, 3], 0.0, -0.25, 1.3, 0.01),
        DecodedWindow(30.9, 33.2, " В 2024 году.", [50364, 4, 5], 0.2, -0.5, 1.1, 0.05),
    ]
    return Transcript(segments=segments, language=language, language_probability=0.98, warnings=["w1"],
                      output_format="json", duration_s=34.25, task="transcribe", decoded=decoded)


def _options(**request: object) -> rp_schema.RequestOptions:
    return rp_schema.resolve_options({"audio_file": URL, **request}, {})


def test_verbose_json_with_both_granularities_is_openais_type():
    options = _options(response_format="verbose_json", timestamp_granularities=["word", "segment"])
    body = openai_shapes.queue_response(_transcript(), options)
    parsed = TranscriptionVerbose.model_validate(body, strict=True)
    assert parsed.language == "russian" and parsed.duration == 34.25
    assert parsed.text == "Привет, мир. Как дела? В 2024 году."
    assert body["task"] == "transcribe"
    assert parsed.segments is not None and [s.id for s in parsed.segments] == [0, 1]
    first = parsed.segments[0]
    # Whisper's own decode statistics; the span of the aligned words inside the window.
    assert (first.tokens, first.avg_logprob, first.no_speech_prob, first.seek) == ([50364, 1, 2, 3], -0.25, 0.01, 40)
    assert (first.start, first.end, first.text) == (0.52, 2.88, "Привет, мир. Как дела?")
    assert parsed.words is not None and [w.word for w in parsed.words] == ["Привет,", "мир.", "Как", "дела?", "В", "2024", "году."]
    untimed = parsed.words[5]
    assert untimed.start == untimed.end == 31.2  # the end of the word before it
    assert parsed.usage is not None and parsed.usage.seconds == 34.25
    # Extras live in one object, index for index with the words; OpenAI's objects hold only theirs.
    assert set(body) - set(TranscriptionVerbose.model_fields) == {"task", "whisperx"}
    assert all(set(word) == {"word", "start", "end"} for word in body["words"])
    assert [w["speaker"] for w in body["whisperx"]["words"]][:3] == ["SPEAKER_01", "SPEAKER_01", "SPEAKER_00"]
    assert body["whisperx"]["language_code"] == "ru" and body["whisperx"]["warnings"] == ["w1"]


def test_verbose_json_gives_segments_only_by_default_and_words_only_when_asked():
    body = openai_shapes.queue_response(_transcript(), _options(response_format="verbose_json"))
    assert "segments" in body and "words" not in body
    words_only = openai_shapes.queue_response(_transcript(), _options(response_format="verbose_json",
                                                                      timestamp_granularities="word"))
    assert "words" in words_only and "segments" not in words_only
    TranscriptionVerbose.model_validate(words_only, strict=True)


def test_diarized_json_is_openais_type_with_letters_in_order_of_appearance():
    body = openai_shapes.queue_response(_transcript(), _options(response_format="diarized_json"))
    parsed = TranscriptionDiarized.model_validate(body, strict=True)
    assert [(s.id, s.speaker, s.type) for s in parsed.segments] == [
        ("seg_0", "A", "transcript.text.segment"), ("seg_1", "B", "transcript.text.segment"),
        ("seg_2", "A", "transcript.text.segment")]
    assert body["whisperx"]["speakers"] == {"A": "SPEAKER_01", "B": "SPEAKER_00"}
    assert parsed.text == "Привет, мир. Как дела? В 2024 году."


def test_json_text_and_subtitles():
    transcript = _transcript()
    body = openai_shapes.render(transcript, "json")
    assert Transcription.model_validate(body, strict=True).text == "Привет, мир. Как дела? В 2024 году."
    assert openai_shapes.render(transcript, "text") == "Привет, мир. Как дела? В 2024 году.\n"
    cues = list(srt.parse(openai_shapes.render(transcript, "srt")))
    assert " ".join(cue.content for cue in cues) == "Привет, мир. Как дела? В 2024 году."
    assert all("SPEAKER" not in cue.content for cue in cues)  # OpenAI's subtitles carry no speakers
    vtt = webvtt.from_buffer(__import__("io").StringIO(openai_shapes.render(transcript, "vtt")))
    assert all("SPEAKER" not in caption.raw_text and "<v" not in caption.raw_text for caption in vtt)


def test_language_names_are_whispers_and_unspaced_languages_join_without_spaces():
    assert openai_shapes.language_name("ru") == "russian"
    assert openai_shapes.language_name("yue") == "cantonese"
    assert openai_shapes.language_name(None) == ""
    transcript = _transcript(language="ja")
    transcript.segments = [{"start": 0.0, "end": 1.0, "text": "こんにちは"}, {"start": 1.0, "end": 2.0, "text": "世界"}]
    assert openai_shapes.full_text(transcript) == "こんにちは世界"


def test_no_speech_still_gives_valid_shapes():
    empty = Transcript(segments=[], language=None, language_probability=None, warnings=["no speech"],
                       output_format="json", duration_s=5.0)
    TranscriptionVerbose.model_validate(openai_shapes.render(empty, "verbose_json", ("word", "segment")), strict=True)
    TranscriptionDiarized.model_validate(openai_shapes.render(empty, "diarized_json"), strict=True)
    assert openai_shapes.render(empty, "text") == "\n"


def test_speaker_letters_go_past_z():
    segments = [{"speaker": f"SPEAKER_{n:02d}"} for n in range(28)]
    letters = openai_shapes.speaker_letters(segments)
    assert [letters["SPEAKER_00"], letters["SPEAKER_25"], letters["SPEAKER_26"], letters["SPEAKER_27"]] == ["A", "Z", "AA", "AB"]


def test_without_response_format_the_workers_own_response_is_unchanged():
    body = openai_shapes.queue_response(_transcript(), _options())
    assert list(body) == ["segments", "detected_language", "language_probability", "warnings", "output_format"]


@pytest.mark.parametrize("given, expected", [
    (["word", "segment"], "word,segment"), (["segment", "word", "segment"], "word,segment"),
    ("segment, WORD", "word,segment"), ("segment", "segment"),
])
def test_granularities_accept_a_list_or_a_comma_separated_string(given, expected):
    options = _options(response_format="verbose_json", timestamp_granularities=given)
    assert options.timestamp_granularities == expected


def test_granularities_accept_openais_form_field_name():
    options = _options(response_format="verbose_json", **{"timestamp_granularities[]": ["word"]})
    assert options.timestamp_granularities == "word"


@pytest.mark.parametrize("request_fields, field, words", [
    ({"response_format": "xml"}, "response_format", "must be one of"),
    ({"timestamp_granularities": ["word"]}, "timestamp_granularities", "needs response_format verbose_json"),
    ({"response_format": "json", "timestamp_granularities": "word"}, "timestamp_granularities", "verbose_json"),
    ({"response_format": "verbose_json", "timestamp_granularities": ["char"]}, "timestamp_granularities", "must be one of"),
    ({"response_format": "verbose_json", "timestamp_granularities": [1]}, "timestamp_granularities", "list of strings"),
    ({"response_format": "verbose_json", "timestamp_granularities": []}, "timestamp_granularities", "at least one"),
    ({"response_format": "srt", "output_format": "vtt"}, "response_format", "not both"),
    ({"response_format": "diarized_json", "diarization": False}, "response_format", "diarization=true"),
    ({"response_format": "verbose_json", "timestamp_granularities": "word", "align_output": False},
     "timestamp_granularities", "align_output=true"),
])
def test_bad_shape_requests_name_the_field(request_fields, field, words):
    with pytest.raises(rp_schema.ValidationError) as caught:
        _options(**request_fields)
    assert caught.value.field == field and words in str(caught.value)


def test_an_env_that_turns_diarization_off_is_named_when_diarized_json_needs_it():
    with pytest.raises(rp_schema.ValidationError, match="environment variable DIARIZATION"):
        rp_schema.resolve_options({"audio_file": URL, "response_format": "diarized_json"}, {"DIARIZATION": "false"})
