"""A job's ``Transcript`` in the shapes of OpenAI's ``/v1/audio/transcriptions`` (``response_format``).

- ``json``: ``{"text", "usage"}``.
- ``text``, ``srt``, ``vtt``: the body as a string (subtitles without speaker labels, as OpenAI's).
- ``verbose_json``: ``task``, ``language`` (Whisper's lowercase English name: ``"russian"``),
  ``duration``, ``text``, ``usage``, and as ``timestamp_granularities`` asks (default
  ``segment``) ``segments`` (one per decoded Whisper window: its token ids, temperature,
  ``avg_logprob``, ``compression_ratio``, ``no_speech_prob``; ``seek`` is the window's start in
  10 ms frames) and ``words`` (each aligned word with ``start``/``end``).
- ``diarized_json``: ``task``, ``duration``, ``text``, ``usage``, and ``segments`` of one
  speaker each (``id`` ``"seg_0"``, ..., ``type: "transcript.text.segment"``, speakers ``A``,
  ``B``, ... in order of first appearance).

Times are seconds from the audio's start. What the worker knows beyond OpenAI's fields goes
into one extra object, ``whisperx`` (language code and probability, warnings; per word its
alignment score and speaker, index for index with ``words``; the diarizer's label of each
speaker letter), never into OpenAI's own objects.
"""

from __future__ import annotations

import string
from collections.abc import Collection, Sequence
from typing import Any

from rp_schema import RequestOptions
from stages import formats
from transcript import Transcript, response_dict

# Languages written without spaces between words: their segment texts join without one.
_UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "yue"})
# Token ids are kept as Whisper's; "seek" counts Whisper's 10 ms mel frames.
_FRAMES_PER_SECOND = 100


def queue_response(transcript: Transcript, options: RequestOptions) -> dict | str:
    """RunPod's queue answer: OpenAI's shape when the request names ``response_format``, else
    the worker's own response (``transcript.response_dict``)."""
    if options.response_format is None:
        return response_dict(transcript)
    return render(transcript, options.response_format, granularities(options))


def granularities(options: RequestOptions) -> tuple[str, ...]:
    """The timestamp granularities asked for (OpenAI's default: ``segment`` only)."""
    return tuple((options.timestamp_granularities or "segment").split(","))


def render(transcript: Transcript, response_format: str, granularities: Sequence[str] = ("segment",)) -> dict | str:
    """``transcript`` in OpenAI's ``response_format`` (see the module docstring)."""
    if response_format == "text":
        return full_text(transcript) + "\n"
    if response_format in ("srt", "vtt"):
        return formats.render([_unlabelled(segment) for segment in transcript.segments], response_format)
    if response_format == "json":
        return {"text": full_text(transcript), "usage": _usage(transcript), "whisperx": _extra(transcript)}
    if response_format == "verbose_json":
        return _verbose(transcript, granularities)
    if response_format == "diarized_json":
        return _diarized(transcript)
    raise ValueError(f"unknown response_format {response_format!r}")


def language_name(code: str | None) -> str:
    """Whisper's lowercase English name of a language code (``ru`` -> ``russian``), as OpenAI
    writes ``language``; ``""`` when no speech gave a language."""
    if code is None:
        return ""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES  # code -> name, Whisper's own table

    return str(LANGUAGES.get(code, code))


def full_text(transcript: Transcript) -> str:
    """The transcript's text: segment texts joined (by a space where the language uses them)."""
    joiner = "" if transcript.language in _UNSPACED_LANGUAGES else " "
    return joiner.join(text for text in (str(segment.get("text", "")).strip() for segment in transcript.segments) if text)


def _duration(transcript: Transcript) -> float:
    if transcript.duration_s is not None:
        return round(transcript.duration_s, 3)
    return max((float(segment.get("end", 0.0)) for segment in transcript.segments), default=0.0)


def _usage(transcript: Transcript) -> dict:
    """OpenAI's usage of duration-billed models: the input audio's seconds."""
    return {"type": "duration", "seconds": _duration(transcript)}


def _unlabelled(segment: dict) -> dict:
    """A segment without speaker labels (OpenAI's subtitles carry none)."""
    plain = {key: value for key, value in segment.items() if key not in ("speaker", "words")}
    if "words" in segment:
        plain["words"] = [{key: value for key, value in word.items() if key != "speaker"} for word in segment["words"]]
    return plain


def _words(transcript: Transcript) -> list[dict]:
    """Every aligned word, in order. A word the aligner could not time (a rare digit or symbol)
    takes the end of the word before it (else its segment's start) as both its times."""
    words = []
    for segment in transcript.segments:
        last = float(segment["start"])
        for word in segment.get("words", []):
            start = float(word["start"]) if "start" in word else last
            end = float(word["end"]) if "end" in word else start
            last = end
            words.append({"word": str(word["word"]).strip(), "start": start, "end": end,
                          "score": word.get("score"), "speaker": word.get("speaker")})
    return words


def _segments(transcript: Transcript) -> list[dict]:
    """One OpenAI segment per decoded window: Whisper's own decode statistics, and the span of
    the aligned words inside it where alignment ran (else the window's span)."""
    words = _words(transcript)
    segments = []
    for number, window in enumerate(transcript.decoded):
        inside = [word for word in words if window.start <= (word["start"] + word["end"]) / 2 <= window.end]
        start = min((word["start"] for word in inside), default=window.start)
        end = max((word["end"] for word in inside), default=window.end)
        segments.append({
            "id": number, "seek": round(window.start * _FRAMES_PER_SECOND), "start": round(start, 3),
            "end": round(end, 3), "text": window.text.strip(), "tokens": list(window.tokens),
            "temperature": float(window.temperature), "avg_logprob": float(window.avg_logprob),
            "compression_ratio": float(window.compression_ratio), "no_speech_prob": float(window.no_speech_prob),
        })
    return segments


def _verbose(transcript: Transcript, granularities: Sequence[str]) -> dict:
    response: dict[str, Any] = {
        "task": transcript.task, "language": language_name(transcript.language), "duration": _duration(transcript),
        "text": full_text(transcript),
    }
    extra = _extra(transcript)
    if "segment" in granularities:
        response["segments"] = _segments(transcript)
    if "word" in granularities:
        words = _words(transcript)
        response["words"] = [{"word": word["word"], "start": word["start"], "end": word["end"]} for word in words]
        extra["words"] = [{"score": word["score"], "speaker": word["speaker"]} for word in words]
    response["usage"] = _usage(transcript)
    response["whisperx"] = extra
    return response


def speaker_letters(segments: Sequence[dict], names: Collection[str] = ()) -> dict[str, str]:
    """Diarizer label -> ``A``, ``B``, ... in order of first appearance (``AA``, ``AB``, ...
    after ``Z``); a known speaker's ``names`` stand for themselves, and no letter repeats one."""
    letters: dict[str, str] = {}
    taken = set(names)
    count = 0
    for segment in segments:
        label = segment.get("speaker")
        if label is None or label in letters:
            continue
        if label in taken:
            letters[label] = label
            continue
        while _letter(count) in taken:
            count += 1
        letters[label] = _letter(count)
        count += 1
    return letters


def _letter(number: int) -> str:
    if number < 26:
        return string.ascii_uppercase[number]
    return _letter(number // 26 - 1) + string.ascii_uppercase[number % 26]


def _diarized(transcript: Transcript) -> dict:
    letters = speaker_letters(transcript.segments, transcript.speaker_names)
    segments: list[dict] = []
    for segment in transcript.segments:
        text = str(segment.get("text", "")).strip()
        if not text:
            continue
        label = segment.get("speaker")
        segments.append({"type": "transcript.text.segment", "id": f"seg_{len(segments)}",
                         "start": float(segment["start"]), "end": float(segment["end"]), "text": text,
                         # Diarization that found no speaker at all leaves segments without one.
                         "speaker": letters[label] if label is not None else "unknown"})
    extra = _extra(transcript)
    extra["speakers"] = {letter: label for label, letter in letters.items()}
    return {"task": transcript.task, "duration": _duration(transcript), "text": full_text(transcript),
            "segments": segments, "usage": _usage(transcript), "whisperx": extra}


def _extra(transcript: Transcript) -> dict[str, Any]:
    """What the worker knows beyond OpenAI's fields."""
    return {"language_code": transcript.language, "language_probability": transcript.language_probability,
            "warnings": list(transcript.warnings)}
