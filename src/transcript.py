"""What the Predictor returns for one job (``Transcript``), and today's response rendered from
it (``response_dict``: the dict RunPod's door sends, key for key and in the same order).

Times are in seconds. A door renders the Transcript in its own shape; the stages and the
Predictor know no door's shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DecodedWindow:
    """One speech window as Whisper decoded it, before alignment re-cut its text into segments.

    start, end: the window's span in seconds from the audio's start. tokens: the text's token
    ids. temperature: the sampling temperature of the kept decode. avg_logprob: mean log
    probability per token (natural log). compression_ratio: gzip ratio of the text.
    no_speech_prob: Whisper's probability that the window holds no speech.
    """

    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass
class Transcript:
    """One job's result.

    segments: the transcript's segments (``start``/``end`` in seconds, ``text``; ``words``
        after alignment; ``speaker`` after diarization), as the stages produce them.
    language: the language of the speech (given or detected); None when there was no speech.
    language_probability: the detection's probability (4 decimals); None when not detected.
    warnings: what the job's stages warned about, in order.
    output_format: the requested rendering (``json``, ``srt``, ``vtt``, ``txt``, ``tsv``).
    output: the segments rendered in ``output_format`` (None for ``json``, or when the build has
        no renderer).
    speaker_embeddings: speaker -> embedding, when asked for and diarization ran.
    debug_info: how the job was run (``debug: true``), else None.
    duration_s: the audio's length in seconds (None where a test builds a Transcript by hand).
    task: ``transcribe``, or ``translate`` (into English).
    decoded: the decoded windows whose text the segments hold, in time order.
    speaker_names: the known speakers' names that label speakers (the others keep the
        diarizer's labels).
    """

    segments: list[dict]
    language: str | None
    language_probability: float | None
    warnings: list[str]
    output_format: str
    output: str | None = None
    speaker_embeddings: dict[str, list[float]] | None = None
    debug_info: dict[str, Any] | None = None
    duration_s: float | None = None
    task: str = "transcribe"
    decoded: list[DecodedWindow] = field(default_factory=list)
    speaker_names: tuple[str, ...] = ()


def response_dict(transcript: Transcript) -> dict:
    """The worker's response (without ``logs``): ``segments``, ``detected_language``,
    ``language_probability``, ``warnings``, then ``speaker_embeddings``, ``output_format``,
    ``output`` and ``debug_info`` where present."""
    response: dict = {"segments": transcript.segments, "detected_language": transcript.language,
                      "language_probability": transcript.language_probability, "warnings": transcript.warnings}
    # In this order, each only where present (output_format always is).
    present = (("speaker_embeddings", transcript.speaker_embeddings), ("output_format", transcript.output_format),
               ("output", transcript.output), ("debug_info", transcript.debug_info))
    response.update((key, value) for key, value in present if value is not None)
    return response
