"""Tests of the request contract in src/rp_schema.py.

The expected tables below are written from the specification, not derived
from the module, so a changed default or alias fails loudly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import pytest

import rp_schema
from languages import WHISPER_LANGUAGE_CODES
from rp_schema import (
    INPUT_SCHEMA,
    RequestOptions,
    ValidationError,
    defaults,
    env_aliases,
    resolve_options,
)

AUDIO = {"audio_file": "https://example.com/a.wav"}

EXPECTED_DEFAULTS: dict[str, Any] = {
    "audio_file": None,
    "audio_base64": None,
    "audio_filename": None,
    "model": "faster-whisper-large-v3-russian",
    "language": None,
    "compute_type": "float16",
    "batch_size": 32,
    "beam_size": 5,
    "temperature": 0.0,
    "temperature_increment_on_fallback": 0.2,
    "vad_onset": 0.300,
    "vad_offset": 0.250,
    "min_duration_on": 0.08,
    "min_duration_off": 0.08,
    "pad_onset": 0.0,
    "pad_offset": 0.0,
    "align_output": True,
    "diarization": True,
    "diarization_model": "pyannote/speaker-diarization-3.1",
    "huggingface_access_token": None,
    "min_speakers": None,
    "max_speakers": None,
    "num_speakers": None,
    "length_penalty": 1.1,
    "no_speech_threshold": 0.6,
    "log_prob_threshold": -1.0,
    "compression_ratio_threshold": 2.4,
    "language_detection_min_prob": 0.5,
    "language_detection_max_tries": 3,
    "output_format": "json",
    "debug": False,
    "initial_prompt": None,
    "hotwords": None,
    "suppress_numerals": False,
    "task": "transcribe",
    "return_speaker_embeddings": False,
    "response_format": None,
    "timestamp_granularities": None,
    "known_speaker_names": None,
    "known_speaker_references": None,
    "known_speaker_min_similarity": 0.6,
}

EXPECTED_ENV: dict[str, tuple[str, ...]] = {
    "model": ("MODEL",),
    "compute_type": ("COMPUTE_TYPE",),
    "batch_size": ("BATCH_SIZE",),
    "beam_size": ("BEAM_SIZE",),
    "temperature": ("TEMPERATURE",),
    "temperature_increment_on_fallback": ("TEMPERATURE_INCREMENT_ON_FALLBACK",),
    "vad_onset": ("VAD_ONSET",),
    "vad_offset": ("VAD_OFFSET",),
    "min_duration_on": ("MIN_DURATION_ON",),
    "min_duration_off": ("MIN_DURATION_OFF",),
    "pad_onset": ("PAD_ONSET",),
    "pad_offset": ("PAD_OFFSET",),
    "align_output": ("ALIGN_OUTPUT",),
    "diarization": ("DIARIZATION", "DIARIZE"),
    "diarization_model": ("DIARIZATION_MODEL",),
    "huggingface_access_token": ("HUGGINGFACE_ACCESS_TOKEN", "HF_TOKEN"),
    "min_speakers": ("MIN_SPEAKERS",),
    "max_speakers": ("MAX_SPEAKERS",),
    "length_penalty": ("LENGTH_PENALTY",),
    "no_speech_threshold": ("NO_SPEECH_THRESHOLD",),
    "log_prob_threshold": ("LOG_PROB_THRESHOLD", "LOGPROB_THRESHOLD"),
    "compression_ratio_threshold": ("COMPRESSION_RATIO_THRESHOLD",),
    "language_detection_min_prob": ("LANGUAGE_DETECTION_MIN_PROB",),
    "language_detection_max_tries": ("LANGUAGE_DETECTION_MAX_TRIES",),
    "output_format": ("OUTPUT_FORMAT",),
    "debug": ("DEBUG",),
    "known_speaker_min_similarity": ("KNOWN_SPEAKER_MIN_SIMILARITY",),
}

# field -> (ENV string, parsed value); every value differs from the default.
ENV_SAMPLES: dict[str, tuple[str, Any]] = {
    "model": ("large-v3", "large-v3"),
    "compute_type": ("int8", "int8"),
    "batch_size": ("4", 4),
    "beam_size": ("2", 2),
    "temperature": ("0.35", 0.35),
    "temperature_increment_on_fallback": ("0.1", 0.1),
    "vad_onset": ("0.5", 0.5),
    "vad_offset": ("0.4", 0.4),
    "min_duration_on": ("0.2", 0.2),
    "min_duration_off": ("0", 0.0),
    "pad_onset": ("1.5", 1.5),
    "pad_offset": ("2", 2.0),
    "align_output": ("false", False),
    "diarization": ("off", False),
    "diarization_model": ("/models/pyannote", "/models/pyannote"),
    "huggingface_access_token": ("hf_abc", "hf_abc"),
    "min_speakers": ("2", 2),
    "max_speakers": ("5", 5),
    "length_penalty": ("1.0", 1.0),
    "no_speech_threshold": ("0.4", 0.4),
    "log_prob_threshold": ("-0.8", -0.8),
    "compression_ratio_threshold": ("2.0", 2.0),
    "language_detection_min_prob": ("0.7", 0.7),
    "language_detection_max_tries": ("5", 5),
    "output_format": ("srt", "srt"),
    "debug": ("yes", True),
    "known_speaker_min_similarity": ("0.7", 0.7),
}

# field -> a valid request value different from both default and ENV sample.
REQUEST_SAMPLES: dict[str, Any] = {
    "model": "medium",
    "compute_type": "float32",
    "batch_size": 8,
    "beam_size": 3,
    "temperature": 0.5,
    "temperature_increment_on_fallback": 0.3,
    "vad_onset": 0.6,
    "vad_offset": 0.3,
    "min_duration_on": 0.5,
    "min_duration_off": 0.5,
    "pad_onset": 0.25,
    "pad_offset": 0.75,
    "align_output": True,
    "diarization": True,
    "diarization_model": "org/other",
    "huggingface_access_token": "hf_request",
    "min_speakers": 1,
    "max_speakers": 3,
    "length_penalty": 2.0,
    "no_speech_threshold": 0.9,
    "log_prob_threshold": -2.0,
    "compression_ratio_threshold": 3.0,
    "language_detection_min_prob": 0.9,
    "language_detection_max_tries": 10,
    "output_format": "vtt",
    "debug": False,
    "known_speaker_min_similarity": 0.4,
}


def resolve(overrides: dict[str, Any] | None = None, **env: str) -> RequestOptions:
    """Resolve AUDIO plus overrides against an explicit, isolated environment."""
    return resolve_options({**AUDIO, **(overrides or {})}, environ=env)


def error_of(job_input: Any, env: dict[str, str] | None = None) -> ValidationError:
    """Return the ValidationError raised for job_input (fails if none)."""
    with pytest.raises(ValidationError) as info:
        resolve_options(job_input, environ=env or {})
    return info.value


# --- tables agree with the module -------------------------------------------


def test_schema_fields_match_spec_table() -> None:
    option_fields = {f.name for f in dataclasses.fields(RequestOptions)}
    assert set(INPUT_SCHEMA) == set(EXPECTED_DEFAULTS)
    assert option_fields - {"sources"} == set(EXPECTED_DEFAULTS)


def test_defaults_function_matches_spec() -> None:
    assert defaults() == EXPECTED_DEFAULTS


def test_env_aliases_match_spec() -> None:
    assert env_aliases() == EXPECTED_ENV
    assert "language" not in env_aliases()


def test_schema_entries_are_complete() -> None:
    for name, entry in INPUT_SCHEMA.items():
        assert {"type", "default", "env", "nullable", "help"} <= set(entry), name
        assert entry["help"], name
        if entry["default"] is None:
            assert entry["nullable"], name
        else:
            assert isinstance(entry["default"], entry["type"]), name


def test_dataclass_defaults_equal_schema_defaults() -> None:
    bare = RequestOptions()
    for name, value in EXPECTED_DEFAULTS.items():
        assert getattr(bare, name) == value, name


def test_language_codes_match_faster_whisper() -> None:
    import faster_whisper.tokenizer as faster_whisper_tokenizer  # a requirement: missing = failure

    assert len(WHISPER_LANGUAGE_CODES) == len(set(WHISPER_LANGUAGE_CODES))
    assert set(WHISPER_LANGUAGE_CODES) == set(faster_whisper_tokenizer._LANGUAGE_CODES)


# --- defaults, ENV, precedence ----------------------------------------------


@pytest.mark.parametrize("name", sorted(set(EXPECTED_DEFAULTS) - {"audio_file"}))
def test_default_when_nothing_set(name: str) -> None:
    options = resolve()
    assert getattr(options, name) == EXPECTED_DEFAULTS[name]
    assert type(getattr(options, name)) is type(EXPECTED_DEFAULTS[name])
    assert options.sources[name] == "default"


@pytest.mark.parametrize(
    ("name", "env_name"),
    [(name, env) for name, envs in env_aliases().items() for env in envs],
)
def test_every_env_alias_is_honoured(name: str, env_name: str) -> None:
    text, expected = ENV_SAMPLES[name]
    options = resolve(**{env_name: text})
    value = getattr(options, name)
    assert value == expected
    assert type(value) is type(expected)
    assert options.sources[name] == f"env:{env_name}"


def test_env_samples_cover_every_alias() -> None:
    assert set(ENV_SAMPLES) == set(env_aliases())
    assert set(REQUEST_SAMPLES) == set(env_aliases())


@pytest.mark.parametrize("name", sorted(EXPECTED_ENV))
def test_request_beats_env_beats_default(name: str) -> None:
    env_name = EXPECTED_ENV[name][0]
    text, env_value = ENV_SAMPLES[name]
    request_value = REQUEST_SAMPLES[name]
    from_request = resolve({name: request_value}, **{env_name: text})
    assert getattr(from_request, name) == request_value
    assert from_request.sources[name] == "request"
    from_env = resolve(**{env_name: text})
    assert getattr(from_env, name) == env_value
    assert getattr(resolve(), name) == EXPECTED_DEFAULTS[name]


def test_environ_defaults_to_os_environ_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BEAM_SIZE", "9")
    assert resolve_options(AUDIO).beam_size == 9
    monkeypatch.setenv("BEAM_SIZE", "4")
    assert resolve_options(AUDIO).beam_size == 4


@pytest.mark.parametrize(
    ("env", "expected", "source"),
    [
        ({"LOGPROB_THRESHOLD": "-0.5"}, -0.5, "env:LOGPROB_THRESHOLD"),
        ({"LOG_PROB_THRESHOLD": "-0.7"}, -0.7, "env:LOG_PROB_THRESHOLD"),
        (
            {"LOG_PROB_THRESHOLD": "-0.7", "LOGPROB_THRESHOLD": "-0.5"},
            -0.7,
            "env:LOG_PROB_THRESHOLD",
        ),
        ({"LOG_PROB_THRESHOLD": "", "LOGPROB_THRESHOLD": "-0.5"}, -0.5,
         "env:LOGPROB_THRESHOLD"),
    ],
)  # fmt: skip
def test_log_prob_threshold_aliases(
    env: dict[str, str], expected: float, source: str
) -> None:
    options = resolve(**env)
    assert options.log_prob_threshold == expected
    assert options.sources["log_prob_threshold"] == source


@pytest.mark.parametrize(
    ("env", "expected", "source"),
    [
        ({"HF_TOKEN": "hf_b"}, "hf_b", "env:HF_TOKEN"),
        ({"HUGGINGFACE_ACCESS_TOKEN": "hf_a"}, "hf_a", "env:HUGGINGFACE_ACCESS_TOKEN"),
        (
            {"HUGGINGFACE_ACCESS_TOKEN": "hf_a", "HF_TOKEN": "hf_b"},
            "hf_a",
            "env:HUGGINGFACE_ACCESS_TOKEN",
        ),
        ({"HUGGINGFACE_ACCESS_TOKEN": "  ", "HF_TOKEN": "hf_b"}, "hf_b",
         "env:HF_TOKEN"),
    ],
)  # fmt: skip
def test_hf_token_alias_order(env: dict[str, str], expected: str, source: str) -> None:
    options = resolve(**env)
    assert options.huggingface_access_token == expected
    assert options.sources["huggingface_access_token"] == source


def test_shadowed_env_alias_is_logged_without_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="rp_schema"):
        resolve(HUGGINGFACE_ACCESS_TOKEN="hf_secret_a", HF_TOKEN="hf_secret_b")
    assert "HF_TOKEN" in caplog.text
    assert "hf_secret" not in caplog.text


@pytest.mark.parametrize(
    ("env", "expected", "source"),
    [
        ({"DIARIZE": "false"}, False, "env:DIARIZE"),
        ({"DIARIZATION": "0"}, False, "env:DIARIZATION"),
        ({"DIARIZATION": "true", "DIARIZE": "false"}, True, "env:DIARIZATION"),
        ({"DIARIZATION": "no", "DIARIZE": "yes"}, False, "env:DIARIZATION"),
    ],
)
def test_diarization_env_alias_order(
    env: dict[str, str], expected: bool, source: str
) -> None:
    options = resolve(**env)
    assert options.diarization is expected
    assert options.sources["diarization"] == source


@pytest.mark.parametrize(
    ("request_keys", "expected"),
    [
        ({"diarize": False}, False),
        ({"diarize": True, "diarization": True}, True),
        ({"diarize": False, "diarization": None}, False),
        ({"diarize": None, "diarization": False}, False),
        ({"diarize": None}, True),  # null = not given -> default
    ],
)
def test_diarize_request_alias(request_keys: dict[str, Any], expected: bool) -> None:
    options = resolve(request_keys)
    assert options.diarization is expected
    assert not hasattr(options, "diarize")


def test_diarize_request_alias_beats_env() -> None:
    options = resolve({"diarize": True}, DIARIZATION="false")
    assert options.diarization is True
    assert options.sources["diarization"] == "request"


def test_diarize_and_diarization_disagreeing_is_an_error() -> None:
    message = str(error_of({**AUDIO, "diarization": True, "diarize": False}))
    assert "diarization" in message and "diarize" in message


@pytest.mark.parametrize("env_name", ["LANGUAGE", "LANG", "LC_ALL"])
def test_language_has_no_env_alias(env_name: str) -> None:
    options = resolve(**{env_name: "fr"})
    assert options.language is None
    assert options.sources["language"] == "default"


# --- accepted coercions and null handling -----------------------------------


@pytest.mark.parametrize(
    ("overrides", "name", "expected"),
    [
        ({"batch_size": 4.0}, "batch_size", 4),
        ({"temperature": 0}, "temperature", 0.0),
        ({"temperature": 1}, "temperature", 1.0),
        ({"length_penalty": 10}, "length_penalty", 10.0),
        ({"language": "RU"}, "language", "ru"),
        ({"language": " yue "}, "language", "yue"),
        ({"compute_type": "INT8"}, "compute_type", "int8"),
        ({"output_format": "Srt"}, "output_format", "srt"),
        ({"task": "translate"}, "task", "translate"),
        ({"model": "  large-v3 "}, "model", "large-v3"),
        ({"initial_prompt": " Привет. "}, "initial_prompt", " Привет. "),
        ({"hotwords": "WhisperX RunPod"}, "hotwords", "WhisperX RunPod"),
        ({"suppress_numerals": True}, "suppress_numerals", True),
        ({"return_speaker_embeddings": True}, "return_speaker_embeddings", True),
        ({"num_speakers": 2}, "num_speakers", 2),
        ({"min_speakers": 2, "max_speakers": 2}, "max_speakers", 2),
        ({"min_speakers": 2, "max_speakers": 4, "num_speakers": 3}, "num_speakers", 3),
        ({"temperature_increment_on_fallback": 0}, "temperature_increment_on_fallback",
         0.0),
        ({"log_prob_threshold": 0}, "log_prob_threshold", 0.0),
        ({"min_duration_on": 0}, "min_duration_on", 0.0),
        ({"pad_offset": 10}, "pad_offset", 10.0),
        ({"vad_onset": 0.999}, "vad_onset", 0.999),
    ],
)  # fmt: skip
def test_valid_request_values(
    overrides: dict[str, Any], name: str, expected: Any
) -> None:
    value = getattr(resolve(overrides), name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "env_name"),
    [
        ("no_speech_threshold", "NO_SPEECH_THRESHOLD"),
        ("log_prob_threshold", "LOG_PROB_THRESHOLD"),
        ("compression_ratio_threshold", "COMPRESSION_RATIO_THRESHOLD"),
        ("temperature_increment_on_fallback", "TEMPERATURE_INCREMENT_ON_FALLBACK"),
        ("huggingface_access_token", "HF_TOKEN"),
        ("min_speakers", "MIN_SPEAKERS"),
    ],
)
def test_nullable_null_in_request_overrides_env(name: str, env_name: str) -> None:
    options = resolve({name: None}, **{env_name: ENV_SAMPLES[name][0]})
    assert getattr(options, name) is None
    assert options.sources[name] == "request"


@pytest.mark.parametrize("word", ["none", "NULL", "None"])
def test_nullable_env_accepts_none_words(word: str) -> None:
    options = resolve(NO_SPEECH_THRESHOLD=word, MAX_SPEAKERS=word)
    assert options.no_speech_threshold is None
    assert options.max_speakers is None
    assert options.sources["no_speech_threshold"] == "env:NO_SPEECH_THRESHOLD"


@pytest.mark.parametrize(
    ("name", "env_name"),
    [
        ("beam_size", "BEAM_SIZE"),
        ("debug", "DEBUG"),
        ("model", "MODEL"),
        ("vad_onset", "VAD_ONSET"),
        ("compute_type", "COMPUTE_TYPE"),
    ],
)
@pytest.mark.parametrize("blank", [None, "", "  "])
def test_non_nullable_blank_in_request_falls_through(
    name: str, env_name: str, blank: Any
) -> None:
    text, expected = ENV_SAMPLES[name]
    assert getattr(resolve({name: blank}, **{env_name: text}), name) == expected
    assert getattr(resolve({name: blank}), name) == EXPECTED_DEFAULTS[name]


@pytest.mark.parametrize("text", ["", "   "])
def test_blank_env_counts_as_unset(text: str) -> None:
    options = resolve(BEAM_SIZE=text, DEBUG=text, MODEL=text)
    assert options.beam_size == 5 and options.debug is False
    assert options.sources["beam_size"] == "default"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("TRUE", True), ("1", True), ("On", True), ("yes", True),
     ("False", False), ("0", False), ("OFF", False), ("no", False)],
)  # fmt: skip
def test_env_bool_words(text: str, expected: bool) -> None:
    assert resolve(DEBUG=text).debug is expected


@pytest.mark.parametrize(("text", "expected"), [(" 4 ", 4), ("4.0", 4), ("1e1", 10)])
def test_env_int_forms(text: str, expected: int) -> None:
    value = resolve(BATCH_SIZE=text).batch_size
    assert value == expected and type(value) is int


def test_base64_source_with_filename() -> None:
    options = resolve_options(
        {"audio_base64": "UklGRg==", "audio_filename": "a.wav"}, environ={}
    )
    assert options.audio_base64 == "UklGRg=="
    assert options.audio_file is None
    assert options.audio_filename == "a.wav"


def test_blank_audio_file_next_to_base64_is_ignored() -> None:
    options = resolve_options({"audio_file": "", "audio_base64": "UklGRg=="}, {})
    assert options.audio_file is None and options.audio_base64 == "UklGRg=="


# --- validation errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        # beam_size=-3/0 are ints like the default 5 and must still fail.
        ({"beam_size": -3}, "beam_size"),
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 21}, "beam_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 257}, "batch_size"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature_increment_on_fallback": 1.1}, "temperature_increment_on_fallback"),
        ({"vad_onset": 0}, "vad_onset"),
        ({"vad_onset": 1}, "vad_onset"),
        ({"vad_offset": 0.0}, "vad_offset"),
        ({"vad_offset": 1.0}, "vad_offset"),
        ({"min_duration_on": -0.01}, "min_duration_on"),
        ({"min_duration_off": -1}, "min_duration_off"),
        ({"pad_onset": -0.5}, "pad_onset"),
        ({"pad_offset": 10.5}, "pad_offset"),
        ({"length_penalty": 0}, "length_penalty"),
        ({"length_penalty": 11}, "length_penalty"),
        ({"no_speech_threshold": 1.2}, "no_speech_threshold"),
        ({"log_prob_threshold": 0.5}, "log_prob_threshold"),
        ({"compression_ratio_threshold": 0}, "compression_ratio_threshold"),
        ({"language_detection_min_prob": 1.01}, "language_detection_min_prob"),
        ({"language_detection_max_tries": 0}, "language_detection_max_tries"),
        ({"language_detection_max_tries": 21}, "language_detection_max_tries"),
        ({"min_speakers": 0}, "min_speakers"),
        ({"max_speakers": -1}, "max_speakers"),
        ({"num_speakers": 0}, "num_speakers"),
        ({"compute_type": "bf16"}, "compute_type"),
        ({"output_format": "docx"}, "output_format"),
        ({"task": "summarize"}, "task"),
        ({"language": "xx"}, "language"),
        ({"language": "russian"}, "language"),
        ({"min_speakers": 3, "max_speakers": 2}, "min_speakers"),
        ({"min_speakers": 2, "max_speakers": 4, "num_speakers": 5}, "num_speakers"),
        ({"min_speakers": 3, "num_speakers": 2}, "num_speakers"),
        # wrong types
        ({"debug": "true"}, "debug"),
        ({"align_output": 1}, "align_output"),
        ({"diarization": "false"}, "diarization"),
        ({"diarize": "yes"}, "diarize"),
        ({"beam_size": True}, "beam_size"),
        ({"beam_size": 4.5}, "beam_size"),
        ({"beam_size": "4"}, "beam_size"),
        ({"min_speakers": 1.5}, "min_speakers"),
        ({"temperature": False}, "temperature"),
        ({"temperature": "0.2"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"length_penalty": float("inf")}, "length_penalty"),
        ({"model": 5}, "model"),
        ({"language": ["ru"]}, "language"),
        ({"initial_prompt": {"text": "x"}}, "initial_prompt"),
        ({"huggingface_access_token": 123}, "huggingface_access_token"),
        ({"audio_file": 42}, "audio_file"),
    ],
)
def test_request_validation_errors(overrides: dict[str, Any], field: str) -> None:
    error = error_of({**AUDIO, **overrides})
    assert field in str(error)
    assert error.field == field.replace("diarize", "diarization")


def test_bool_given_as_string_has_clear_message() -> None:
    message = str(error_of({**AUDIO, "debug": "true"}))
    assert "debug" in message and "boolean" in message


def test_language_error_says_not_a_whisper_code() -> None:
    message = str(error_of({**AUDIO, "language": "XX"}))
    assert "language" in message and "not a Whisper language code" in message


def test_range_error_states_bound_and_value() -> None:
    message = str(error_of({**AUDIO, "beam_size": -3}))
    assert message == "beam_size must be >= 1 and <= 20 (got -3)"


@pytest.mark.parametrize(
    ("env", "field", "env_name", "shown"),
    [
        ({"BEAM_SIZE": "abc"}, "beam_size", "BEAM_SIZE", "abc"),
        ({"BEAM_SIZE": "4.5"}, "beam_size", "BEAM_SIZE", "4.5"),
        ({"BEAM_SIZE": "0"}, "beam_size", "BEAM_SIZE", "0"),
        ({"DEBUG": "maybe"}, "debug", "DEBUG", "maybe"),
        ({"DIARIZE": "2"}, "diarization", "DIARIZE", "2"),
        ({"TEMPERATURE": "warm"}, "temperature", "TEMPERATURE", "warm"),
        ({"TEMPERATURE": "nan"}, "temperature", "TEMPERATURE", "nan"),
        ({"VAD_ONSET": "1"}, "vad_onset", "VAD_ONSET", "1"),
        ({"COMPUTE_TYPE": "bf16"}, "compute_type", "COMPUTE_TYPE", "bf16"),
        ({"OUTPUT_FORMAT": "pdf"}, "output_format", "OUTPUT_FORMAT", "pdf"),
        ({"MIN_SPEAKERS": "none-ish"}, "min_speakers", "MIN_SPEAKERS", "none-ish"),
        ({"LOGPROB_THRESHOLD": "1"}, "log_prob_threshold", "LOGPROB_THRESHOLD", "1"),
        ({"BATCH_SIZE": "none"}, "batch_size", "BATCH_SIZE", "none"),
    ],
)
def test_bad_env_values(
    env: dict[str, str], field: str, env_name: str, shown: str
) -> None:
    error = error_of(dict(AUDIO), env)
    message = str(error)
    assert field in message and env_name in message and shown in message
    assert error.field == field


def test_bad_env_value_is_ignored_when_request_gives_the_field() -> None:
    assert resolve({"beam_size": 3}, BEAM_SIZE="abc").beam_size == 3


def test_cross_field_check_uses_env_values() -> None:
    message = str(error_of({**AUDIO, "num_speakers": 5}, {"MAX_SPEAKERS": "4"}))
    assert "num_speakers" in message and "MAX_SPEAKERS" in message


def test_unknown_keys_listed_sorted() -> None:
    error = error_of({**AUDIO, "foo": 1, "bar": 2, "Beam_Size": 3})
    assert str(error) == "unknown input field(s): Beam_Size, bar, foo"


def test_unknown_key_with_a_lone_surrogate_or_control_character_is_shown_escaped() -> None:
    message = str(error_of({**AUDIO, "b\ud800d": 1, "nul\x00": 2, "tab\there": 3}))
    assert message == "unknown input field(s): 'b\\ud800d', 'nul\\x00', 'tab\\there'"
    message.encode("utf-8")  # a response can carry it


def test_unknown_keys_are_listed_up_to_a_cap() -> None:
    message = str(error_of({**AUDIO, **{f"k{i:03d}": i for i in range(500)}}))
    assert message.startswith("unknown input field(s): k000, k001, ") and message.endswith(" and 480 more")


STRING_FIELDS = sorted(spec.name for spec in rp_schema._SPECS if spec.type is str)


@pytest.mark.parametrize("name", STRING_FIELDS)
@pytest.mark.parametrize(("char", "described"), [("\ud800", "lone surrogate U+D800"), ("\udfff", "lone surrogate U+DFFF"),
                                                 ("\x00", "NUL U+0000")])
def test_every_string_field_refuses_lone_surrogates_and_nul(name: str, char: str, described: str) -> None:
    job_input = {"audio_base64": "UklGRg=="} if name == "audio_file" else dict(AUDIO)
    if name == "audio_base64":
        job_input = {}
    job_input[name] = f"text {char} more"
    error = error_of(job_input)
    assert str(error) == f"{name}: contains an invalid character ({described})" and error.field == name


def test_valid_non_ascii_text_is_accepted() -> None:
    assert resolve({"initial_prompt": "Привет, 😀 мир"}).initial_prompt == "Привет, 😀 мир"


def test_env_string_with_a_lone_surrogate_is_refused_naming_the_variable() -> None:
    # os.environ carries bytes that are not UTF-8 as lone surrogates ("surrogateescape").
    error = error_of(AUDIO, {"MODEL": "model\udcff"})
    assert str(error) == "environment variable MODEL: contains an invalid character (lone surrogate U+DCFF)"


def test_json_safe_replaces_lone_surrogates_in_keys_and_values() -> None:
    value = {"ok": "fine", "b\ud800d": ["x\udfff", ("\ud83d\ude00", 1)], "n": {"deep\udc00": "v"}, "count": 3}
    safe = rp_schema.json_safe(value)
    assert safe == {"ok": "fine", "b\ufffdd": ["x\ufffd", ("\U0001f600", 1)], "n": {"deep\ufffd": "v"}, "count": 3}
    json.dumps(safe, ensure_ascii=False).encode("utf-8")
    assert value["b\ud800d"] == ["x\udfff", ("\ud83d\ude00", 1)]  # the input is not changed


def test_json_safe_turns_non_finite_numbers_into_null_and_keeps_clean_values() -> None:
    assert rp_schema.json_safe({"p": float("nan"), "q": [float("inf"), -float("inf"), 0.5]}) == {"p": None, "q": [None, None, 0.5]}
    clean = {"segments": [{"text": "Привет", "start": 0.0, "words": []}], "flag": True, "none": None}
    assert rp_schema.json_safe(clean) is clean  # nothing to change: no copy
    assert rp_schema.json_safe("\ud800") == "\ufffd" and rp_schema.json_safe(7) == 7


@pytest.mark.parametrize("job_input", [None, [], "audio.wav", 5, [("audio_file", "x")]])
def test_input_must_be_an_object(job_input: Any) -> None:
    assert str(error_of(job_input)) == "input must be a JSON object"


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        ({}, "audio_file is required (or audio_base64)"),
        ({"audio_file": None}, "audio_file is required (or audio_base64)"),
        ({"audio_file": ""}, "audio_file is required (or audio_base64)"),
        ({"audio_file": "   "}, "audio_file is required (or audio_base64)"),
        ({"audio_base64": ""}, "audio_file is required (or audio_base64)"),
        ({"audio_file": "https://x/a.wav", "audio_base64": "UklGRg=="},
         "give either audio_file or audio_base64, not both"),
        ({"audio_file": "https://x/a.wav", "audio_filename": "a.wav"},
         "audio_filename is only allowed together with audio_base64"),
    ],
)  # fmt: skip
def test_audio_source_errors(job_input: dict[str, Any], message: str) -> None:
    assert str(error_of(job_input)) == message


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)


def test_secret_is_not_echoed_in_type_error() -> None:
    message = str(error_of({**AUDIO, "huggingface_access_token": ["hf_leak"]}))
    assert "huggingface_access_token" in message and "hf_leak" not in message


# --- output: to_dict, repr, sources -----------------------------------------


def test_to_dict_redacts_token_and_is_json_native() -> None:
    options = resolve({"huggingface_access_token": "hf_secret"})
    data = options.to_dict()
    assert data["huggingface_access_token"] == rp_schema.REDACTED == "***"
    assert "hf_secret" not in json.dumps(data)
    assert "hf_secret" not in repr(options)
    assert set(data) == set(EXPECTED_DEFAULTS)
    assert options.to_dict(redact=False)["huggingface_access_token"] == "hf_secret"


def test_to_dict_leaves_absent_token_as_none() -> None:
    assert resolve().to_dict()["huggingface_access_token"] is None


def test_to_dict_from_env_token_is_redacted() -> None:
    assert resolve(HF_TOKEN="hf_env").to_dict()["huggingface_access_token"] == "***"


def test_to_dict_masks_url_credentials_and_base64() -> None:
    options = resolve({"audio_file": "https://u:pw@s3.example/a.wav?X-Amz-Signature=s"})
    shown = options.to_dict()["audio_file"]
    assert shown == "https://***@s3.example/a.wav?***"
    assert resolve({"audio_file": "/tmp/a.wav"}).to_dict()["audio_file"] == "/tmp/a.wav"
    blob = resolve_options({"audio_base64": "A" * 1000}, {}).to_dict()
    assert blob["audio_base64"] == "<base64, 1000 chars>"
    raw = resolve_options({"audio_base64": "A" * 1000}, {}).to_dict(redact=False)
    assert raw["audio_base64"] == "A" * 1000


def test_sources_report_origin_of_each_value() -> None:
    options = resolve(
        {"beam_size": 3, "language": None, "diarize": False},
        BATCH_SIZE="8",
        LOGPROB_THRESHOLD="-0.5",
        HF_TOKEN="hf_x",
    )
    expected = {name: "default" for name in EXPECTED_DEFAULTS}
    expected.update(
        audio_file="request",
        beam_size="request",
        language="request",
        diarization="request",
        batch_size="env:BATCH_SIZE",
        log_prob_threshold="env:LOGPROB_THRESHOLD",
        huggingface_access_token="env:HF_TOKEN",
    )
    assert dict(options.sources) == expected


def test_options_are_frozen_and_hashable() -> None:
    options = resolve()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.beam_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.sources["beam_size"] = "request"  # type: ignore[index]
    assert hash(options) == hash(resolve())


# --- ENV read once (issue 16) ---------------------------------------------------------------


def test_request_env_is_read_once_and_not_again() -> None:
    """The worker resolves requests from the ENV it read at start-up: changing the process ENV
    afterwards changes nothing (a Mapping given to resolve_options is read when given)."""
    from rp_schema import read_request_env

    environ = {"BEAM_SIZE": "7"}
    snapshot = read_request_env(environ)
    environ["BEAM_SIZE"] = "2"
    options = resolve_options(AUDIO, snapshot)
    assert options.beam_size == 7
    assert options.sources["beam_size"] == "env:BEAM_SIZE"


def test_bad_env_value_is_a_fresh_error_for_each_request_that_uses_it() -> None:
    """A bad ENV value fails each request that falls back to it with a new error naming the
    variable (no traceback of an earlier request is kept alive); a request that sets the field
    itself is served."""
    from rp_schema import read_request_env

    snapshot = read_request_env({"BEAM_SIZE": "lots"})
    errors = []
    for _ in range(2):
        with pytest.raises(ValidationError, match="environment variable BEAM_SIZE='lots'") as caught:
            resolve_options(AUDIO, snapshot)
        errors.append(caught.value)
        assert caught.value.field == "beam_size"
    assert errors[0] is not errors[1]
    assert resolve_options({**AUDIO, "beam_size": 3}, snapshot).beam_size == 3


def test_shadowed_alias_warning_is_logged_by_each_request_that_uses_it(caplog: pytest.LogCaptureFixture) -> None:
    from rp_schema import read_request_env

    snapshot = read_request_env({"HUGGINGFACE_ACCESS_TOKEN": "hf_one", "HF_TOKEN": "hf_two"})
    for _ in range(2):
        resolve_options(AUDIO, snapshot)
    warnings = [r.getMessage() for r in caplog.records if "is ignored for huggingface_access_token" in r.getMessage()]
    assert len(warnings) == 2
    assert not any("hf_one" in text or "hf_two" in text for text in warnings)


def test_settings_repr_never_shows_a_token() -> None:
    from settings import WorkerSettings

    shown = repr(WorkerSettings.from_env({"HF_TOKEN": "hf_secret_value", "MODEL": "m"}))
    assert "hf_secret_value" not in shown
    assert "huggingface_access_token=HF_TOKEN" in shown
