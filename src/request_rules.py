"""Rules across request fields (which audio source, speaker counts, OpenAI's shape rules), and
the error every request check raises. Only the standard library: ``rp_schema`` imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# The labels diarization gives speakers it cannot name; a known name must not look like one.
_DIARIZER_LABEL = re.compile(r"SPEAKER_\d+", re.IGNORECASE)


class ValidationError(ValueError):
    """A request or ENV value that cannot be used; the message is user-facing.

    ``field`` names the offending request field (``None`` when the problem is
    the request as a whole, e.g. unknown keys).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def origin(source: str) -> str:
    """Phrase a value's source for error messages ("" for the request)."""
    if source.startswith("env:"):
        return f" from environment variable {source[4:]}"
    if source == "default":
        return " from the default"
    return ""


def check_audio_source(values: Mapping[str, Any]) -> None:
    """Require exactly one of audio_file / audio_base64 (blank = absent)."""
    has_file = values["audio_file"] is not None
    has_base64 = values["audio_base64"] is not None
    if not has_file and not has_base64:
        raise ValidationError("audio_file is required (or audio_base64)", "audio_file")
    if has_file and has_base64:
        raise ValidationError("give either audio_file or audio_base64, not both", "audio_file")
    if values["audio_filename"] is not None and not has_base64:
        raise ValidationError(
            "audio_filename is only allowed together with audio_base64",
            "audio_filename",
        )


def check_speakers(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Check min_speakers <= max_speakers and num_speakers within them."""

    def shown(name: str) -> str:
        return f"{name} ({values[name]}{origin(sources[name])})"

    low, high, exact = (
        values["min_speakers"], values["max_speakers"], values["num_speakers"]
    )  # fmt: skip
    if low is not None and high is not None and low > high:
        raise ValidationError(
            f"{shown('min_speakers')} must be <= {shown('max_speakers')}",
            "min_speakers",
        )
    if exact is None:
        return
    if low is not None and exact < low:
        raise ValidationError(
            f"{shown('num_speakers')} must be >= {shown('min_speakers')}",
            "num_speakers",
        )
    if high is not None and exact > high:
        raise ValidationError(
            f"{shown('num_speakers')} must be <= {shown('max_speakers')}",
            "num_speakers",
        )


def check_response_shape(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """OpenAI's shape rules: one of output_format / response_format; granularities only with
    verbose_json; the stages a shape reports must run."""
    shape = values["response_format"]
    if shape is None:
        if values["timestamp_granularities"] is not None:
            raise ValidationError("timestamp_granularities needs response_format verbose_json", "timestamp_granularities")
        return
    if sources["output_format"] == "request":
        raise ValidationError("give either output_format (this worker's response) or response_format "
                              "(OpenAI's), not both", "response_format")
    granularities = values["timestamp_granularities"]
    if granularities is not None and shape != "verbose_json":
        raise ValidationError(f"timestamp_granularities needs response_format verbose_json (got {shape!r})",
                              "timestamp_granularities")
    if granularities is not None and "word" in granularities.split(",") and not values["align_output"]:
        raise ValidationError(f"timestamp_granularities word needs align_output=true (align_output is false"
                              f"{origin(sources['align_output'])})", "timestamp_granularities")
    if shape == "diarized_json" and not values["diarization"]:
        raise ValidationError(f"response_format diarized_json needs diarization=true (diarization is false"
                              f"{origin(sources['diarization'])})", "response_format")


#: Longest known speaker name (characters): names label words and subtitles.
MAX_SPEAKER_NAME_CHARS = 64


def check_known_speakers(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """OpenAI's known-speaker rules: one reference sample per name, distinct names, and
    diarization on (the names label its speakers)."""
    names, references = values["known_speaker_names"], values["known_speaker_references"]
    if names is None and references is None:
        return
    if names is None or references is None:
        given, missing = ("known_speaker_names", "known_speaker_references") if references is None else (
            "known_speaker_references", "known_speaker_names")
        raise ValidationError(f"{given} needs {missing} (one reference sample per name)", missing)
    if len(names) != len(references):
        raise ValidationError(f"known_speaker_names has {len(names)} name(s) but known_speaker_references "
                              f"{len(references)} sample(s): give one sample per name", "known_speaker_references")
    for name in names:
        if len(name) > MAX_SPEAKER_NAME_CHARS:
            raise ValidationError(f"known_speaker_names: {name[:20]!r}... is longer than {MAX_SPEAKER_NAME_CHARS} "
                                  "characters", "known_speaker_names")
        if _DIARIZER_LABEL.fullmatch(name):
            raise ValidationError(f"known_speaker_names: {name!r} looks like the diarizer's own labels "
                                  "(SPEAKER_00, ...); choose another name", "known_speaker_names")
    if len(set(names)) != len(names):
        raise ValidationError("known_speaker_names: each name may appear once", "known_speaker_names")
    if not values["diarization"]:
        raise ValidationError(f"known_speaker_names needs diarization=true (diarization is false"
                              f"{origin(sources['diarization'])})", "known_speaker_names")
