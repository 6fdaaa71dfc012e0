"""Known speakers (OpenAI's ``known_speaker_names[]`` + ``known_speaker_references[]``): each
name comes with a short sample of that person's voice; the diarized speaker whose voice matches
a sample is labelled with its name instead of ``SPEAKER_NN``.

Two steps, one per function:

1. ``load_references`` turns each sample (a data URL, bare base64, an http(s) link through the
   job's guarded downloader, or a local path where the worker allows them) into 16 kHz mono
   float32 audio, with the same format checks and limits as the job's audio, each 1-30 s long.
2. ``name_speakers`` compares the samples' embeddings with the diarized speakers' centroid
   embeddings (both from the diarization pipeline's own embedding model, so they share one
   space) by cosine similarity, pairs names and speakers one to one (the pairing with the
   highest total similarity), and keeps a pair only at or above a threshold: a sample that
   matches nobody leaves that speaker's label alone, and a warning says so.

The default threshold (the request field ``known_speaker_min_similarity``) was chosen with ``bench/known_speakers.py``
on the offline pipeline's CAM++ embeddings; its docstring gives the measured similarities.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from job_control import JobControl
from stages import audio, fetch
from stages.speaker_assignment import SpeakerTurn

logger = logging.getLogger("diarization")

#: Shortest and longest sample accepted (seconds). OpenAI asks for 2-10 s; a little more either
#: way still gives a usable embedding, and 30 s bounds the work a sample can ask for.
MIN_REFERENCE_S = 1.0
MAX_REFERENCE_S = 30.0

# Base64 text (standard or URL-safe alphabet, MIME line breaks) of at least this many characters
# is inline audio; shorter text is a path (no sample of a second of audio is that short).
_SHORTEST_BASE64 = 256
_BASE64 = re.compile(r"[A-Za-z0-9+/_=\s-]+")
_LINK = re.compile(r"https?://", re.IGNORECASE)
_FIELD_PREFIX = re.compile(r"^(audio_file|audio_base64): ")


@dataclass(frozen=True)
class Naming:
    """What ``name_speakers`` decided.

    names: diarizer label -> known name, for the speakers that matched.
    similarities: known name -> its best cosine similarity with any speaker (None: no speakers).
    warnings: one line per name that matched nobody, for the response.
    """

    names: dict[str, str]
    similarities: dict[str, float | None]
    warnings: list[str] = field(default_factory=list)


def load_references(references: Sequence[str], workdir: Path, policy: fetch.FetchPolicy,
                    control: JobControl | None = None) -> list[np.ndarray]:
    """Each sample as 16 kHz mono float32 audio, in order.

    Raises ``fetch.AudioError`` naming ``known_speaker_references[i]`` and the problem (bad
    base64, a refused link, undecodable audio, too short or too long).
    """
    waveforms = []
    for index, reference in enumerate(references):
        where = f"known_speaker_references[{index}]"
        folder = Path(workdir) / f"reference{index}"
        folder.mkdir(parents=True, exist_ok=True)
        text = reference.strip()
        try:
            if _is_inline(text):
                path, source = fetch.fetch_audio(None, text, None, folder, policy, control=control)
            else:  # a link, or a path where the worker allows them
                path, source = fetch.fetch_audio(text, None, None, folder, policy, control=control)
            prepared = audio.prepare_audio(path, source, folder, max_audio_seconds=MAX_REFERENCE_S, control=control,
                                           limit_name="the known speaker sample limit")
        except fetch.AudioError as exc:
            raise fetch.AudioError(f"{where}: {_FIELD_PREFIX.sub('', str(exc))}") from None
        if prepared.duration_s < MIN_REFERENCE_S:
            raise fetch.AudioError(f"{where}: the sample is {prepared.duration_s:.2f} s long; known speakers need "
                                   f"{MIN_REFERENCE_S:g}-{MAX_REFERENCE_S:g} s of their voice (2-10 s is best)")
        waveforms.append(prepared.waveform)
    return waveforms


def _is_inline(text: str) -> bool:
    """Whether a sample is inline audio (a data: URL, or base64) rather than a link or a path.
    Base64 may start with "/" like a path; it is told apart by its alphabet (no ".") and length
    (a second of audio takes kilobytes)."""
    if _LINK.match(text):
        return False
    return text[:5].lower() == "data:" or (len(text) > _SHORTEST_BASE64 and _BASE64.fullmatch(text) is not None)


def rename(turns: Sequence[SpeakerTurn], names: Mapping[str, str]) -> list[SpeakerTurn]:
    """``turns`` with each named speaker's label replaced by its name."""
    return [SpeakerTurn(turn.start, turn.end, names.get(turn.speaker, turn.speaker)) for turn in turns]


def name_speakers(names: Sequence[str], reference_embeddings: np.ndarray, centroids: Mapping[str, Sequence[float]],
                  min_similarity: float) -> Naming:
    """Pair known names with diarized speakers.

    names: the known names, row for row with ``reference_embeddings`` (n_names x dim).
    centroids: diarizer label -> centroid embedding (same space and dim).
    min_similarity: the cosine similarity a pair needs (in [-1, 1]).
    """
    labels = list(centroids)
    if not labels:
        return Naming({}, dict.fromkeys(names), [f"known speaker {name!r}: diarization found no speakers to name"
                                                 for name in names])
    similarity = _cosine(np.asarray(reference_embeddings, dtype=np.float64),
                         np.asarray([centroids[label] for label in labels], dtype=np.float64))
    # scipy.optimize is imported here, by the first job that names speakers, not by the
    # handler's import on the way to "ready" (it took ~0.7 s of it: python -X importtime)
    from scipy.optimize import linear_sum_assignment

    rows, columns = linear_sum_assignment(similarity, maximize=True)
    named: dict[str, str] = {}
    best = {name: round(float(similarity[i].max()), 4) for i, name in enumerate(names)}
    warnings = []
    paired = dict(zip(rows.tolist(), columns.tolist(), strict=True))
    for i, name in enumerate(names):
        column = paired.get(i)
        if column is not None and similarity[i, column] >= min_similarity:
            named[labels[column]] = name
            continue
        warnings.append(f"known speaker {name!r} was not recognised (closest voice: cosine similarity "
                        f"{best[name]:.2f}, {min_similarity:g} needed); that speaker keeps its label")
    logger.info("known speakers: %s", ", ".join(f"{name}={best[name]:.2f}" for name in names))
    return Naming(named, dict(best), warnings)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``; a NaN or zero row scores -1."""
    a = np.nan_to_num(a)
    b = np.nan_to_num(b)
    norms = np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        result = (a @ b.T) / norms
    return np.where(norms > 0, result, -1.0)
