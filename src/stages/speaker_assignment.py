"""Word -> speaker assignment: which words each speaker said, given speaker turns.

Torch-free (standard library only), so it can be used and tested without the models.

Speaker assignment (``assign_speakers``)
----------------------------------------
Each timed word gets the speaker whose turns overlap it the longest (the nearest turn when
none overlaps); a word without times takes the speaker of the previous timed word in its
segment (the next one for leading words). A segment whose words change speaker is **split**
at every change rather than given one label for two people: each part keeps the segment's
other fields, its text is the words re-joined with single spaces and its start/end are those
of its first/last timed word. An unsplit segment keeps its original text and times and gets
the speaker of its words (the majority by word duration); a segment without timed words gets
the speaker that overlaps its own span the longest.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SpeakerTurn:
    """One speaker talking from ``start`` to ``end`` (seconds from the start of the audio)."""

    start: float
    end: float
    speaker: str


def clip_turns(turns: list[SpeakerTurn], duration: float) -> list[SpeakerTurn]:
    """Turns cut to [0, duration] seconds; pyannote's 10 s windows can run past the audio's end."""
    clipped = []
    for turn in turns:
        start, end = max(0.0, turn.start), min(turn.end, round(duration, 3))
        if end > start:
            clipped.append(SpeakerTurn(start, end, turn.speaker) if (start, end) != (turn.start, turn.end) else turn)
    return clipped


def longest_spans(spans: Iterable[tuple[float, float]], seconds: float) -> list[tuple[float, float]]:
    """The longest of ``spans`` (start, end in seconds) up to ``seconds`` in all, the last one cut
    short to fit, in time order: a speaker's voice for an embedding, their clearest stretches."""
    chosen, total = [], 0.0
    for start, end in sorted(spans, key=lambda span: span[0] - span[1]):
        take = min(end - start, seconds - total)
        if take <= 0:
            break
        chosen.append((start, start + take))
        total += take
    return sorted(chosen)


def _timed(word: dict) -> bool:
    """Whether a word has numeric, finite start and end (seconds) with end >= start."""
    start, end = word.get("start"), word.get("end")
    return (
        isinstance(start, (int, float))
        and isinstance(end, (int, float))
        and math.isfinite(start)
        and math.isfinite(end)
        and end >= start
    )


class _TurnIndex:
    """Speaker turns indexed for overlap and nearest-turn queries in O(log n + k)."""

    def __init__(self, turns: list[SpeakerTurn]) -> None:
        ordered = sorted(turns, key=lambda turn: (turn.start, turn.end))
        self.turns = ordered
        self.starts = [turn.start for turn in ordered]
        self.longest = max((turn.end - turn.start for turn in ordered), default=0.0)
        # Running maximum of turn ends: the latest-ending turn that starts before a time.
        self.best_end_index: list[int] = []
        best = -1
        for index, turn in enumerate(ordered):
            if best < 0 or turn.end > ordered[best].end:
                best = index
            self.best_end_index.append(best)

    def overlaps(self, start: float, end: float) -> dict[str, float]:
        """Speaker -> seconds of overlap with [start, end] (zero-length spans count turns covering them)."""
        totals: dict[str, float] = {}
        index = bisect.bisect_right(self.starts, end) - 1
        while index >= 0 and self.starts[index] >= start - self.longest:
            turn = self.turns[index]
            if turn.end >= start and turn.start <= end:
                overlap = min(turn.end, end) - max(turn.start, start)
                # A point (or touching) span inside a turn still belongs to it: count a tiny share.
                totals[turn.speaker] = totals.get(turn.speaker, 0.0) + max(overlap, 1e-9)
            index -= 1
        return totals

    def nearest(self, start: float, end: float) -> str | None:
        """Speaker of the turn closest to [start, end] (by gap in seconds), None without turns."""
        if not self.turns:
            return None
        candidates: list[tuple[float, str]] = []
        after = bisect.bisect_left(self.starts, end)
        if after < len(self.turns):
            candidates.append((self.turns[after].start - end, self.turns[after].speaker))
        before = bisect.bisect_right(self.starts, start) - 1
        if before >= 0:
            turn = self.turns[self.best_end_index[before]]
            candidates.append((max(0.0, start - turn.end), turn.speaker))
        return min(candidates)[1] if candidates else None

    def speaker_for(self, start: float, end: float) -> str | None:
        """Speaker overlapping [start, end] the longest, else the nearest one."""
        totals = self.overlaps(start, end)
        if totals:
            return max(totals.items(), key=lambda item: (item[1], item[0]))[0]
        return self.nearest(start, end)


def _word_speakers(words: list[dict], index: _TurnIndex) -> list[str | None]:
    """Speaker of each word; untimed words inherit from the previous (else next) timed word."""
    speakers: list[str | None] = [
        index.speaker_for(float(word["start"]), float(word["end"])) if _timed(word) else None for word in words
    ]
    previous: str | None = None
    for position, speaker in enumerate(speakers):
        if speaker is None:
            speakers[position] = previous
        else:
            previous = speaker
    following: str | None = None
    for position in range(len(speakers) - 1, -1, -1):
        if speakers[position] is None:
            speakers[position] = following
        else:
            following = speakers[position]
    return speakers


def _majority_speaker(words: list[dict], speakers: list[str | None]) -> str | None:
    """Speaker with the most word time (seconds); word count breaks ties and untimed segments."""
    duration: dict[str, float] = {}
    count: dict[str, int] = {}
    for word, speaker in zip(words, speakers):
        if speaker is None:
            continue
        count[speaker] = count.get(speaker, 0) + 1
        if _timed(word):
            duration[speaker] = duration.get(speaker, 0.0) + float(word["end"]) - float(word["start"])
    if not count:
        return None
    return max(count, key=lambda speaker: (duration.get(speaker, 0.0), count[speaker], speaker))


def _runs(speakers: list[str | None]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive words with the same speaker."""
    runs: list[tuple[int, int]] = []
    begin = 0
    for position in range(1, len(speakers) + 1):
        if position == len(speakers) or speakers[position] != speakers[begin]:
            runs.append((begin, position))
            begin = position
    return runs


def _word_spans(text: str, words: list[dict]) -> list[tuple[int, int] | None]:
    """Character span of each word in the segment ``text`` (searched in order), None where a
    word is not found verbatim (an aligner that normalised it)."""
    spans: list[tuple[int, int] | None] = []
    position = 0
    for word in words:
        token = str(word.get("word", "")).strip()
        found = text.find(token, position) if token else -1
        if found < 0:
            spans.append(None)
            continue
        spans.append((found, found + len(token)))
        position = found + len(token)
    return spans


def _rejoin(text: str, words: list[dict], spans: list[tuple[int, int] | None]) -> str:
    """The text of a run of ``words`` of a segment whose text is ``text``.

    The original characters from the first word to the last when every word was found, so
    punctuation and spacing stay as Whisper wrote them: no spaces appear between the
    characters of Chinese, Japanese or Thai, which whisperX aligns one "word" per character.
    Otherwise the words joined by a space, or by nothing when the segment has no spaces.
    """
    if spans and all(span is not None for span in spans):
        first, last = spans[0], spans[-1]
        assert first is not None and last is not None  # checked just above (for mypy)
        return text[first[0] : last[1]].strip()
    separator = " " if any(ch.isspace() for ch in text.strip()) else ""
    return separator.join(str(word.get("word", "")).strip() for word in words if str(word.get("word", "")).strip())


def _split_part(segment: dict, words: list[dict], speaker: str | None, spans: list[tuple[int, int] | None]) -> dict:
    """A sub-segment made of ``words`` (``spans``: their places in the segment's text): the
    segment's other fields, re-joined text, word times (seconds)."""
    timed = [word for word in words if _timed(word)]
    part = {key: value for key, value in segment.items() if key not in {"words", "text", "start", "end"}}
    part["start"] = float(timed[0]["start"]) if timed else segment.get("start")
    part["end"] = float(timed[-1]["end"]) if timed else segment.get("end")
    part["text"] = _rejoin(str(segment.get("text") or ""), words, spans)
    part["words"] = words
    if speaker is not None:
        part["speaker"] = speaker
    return part


def _assign_segment(segment: dict, index: _TurnIndex) -> list[dict]:
    """Speaker labels for one (already copied) segment, split where its words change speaker."""
    words = segment.get("words") or []
    if not any(_timed(word) for word in words):
        start, end = segment.get("start"), segment.get("end")
        if _timed({"start": start, "end": end}):
            assert start is not None and end is not None  # numbers: _timed checked them (for mypy)
            speaker = index.speaker_for(float(start), float(end))
            if speaker is not None:
                segment["speaker"] = speaker
                for word in words:
                    word["speaker"] = speaker
        return [segment]

    speakers = _word_speakers(words, index)
    for word, speaker in zip(words, speakers):
        if speaker is not None:
            word["speaker"] = speaker
    runs = _runs(speakers)
    if len(runs) == 1:
        speaker = _majority_speaker(words, speakers)
        if speaker is not None:
            segment["speaker"] = speaker
        return [segment]
    spans = _word_spans(str(segment.get("text") or ""), words)
    return [_split_part(segment, words[begin:stop], speakers[begin], spans[begin:stop]) for begin, stop in runs]


def assign_speakers(segments: list[dict], turns: list[SpeakerTurn]) -> list[dict]:
    """Speaker labels on words and segments; segments split at speaker changes.

    segments: ``[{"start", "end", "text", "words": [{"word", "start", "end", ...}]}]`` with
    times in seconds; words may lack times and segments may lack ``words``. Returns new dicts
    (the input is not modified); see the module docstring for the rules. Without turns the
    segments come back as unlabelled copies.
    """
    copied = copy.deepcopy(segments)
    if not turns:
        return copied
    index = _TurnIndex(list(turns))
    result: list[dict] = []
    for segment in copied:
        result.extend(_assign_segment(segment, index))
    return result
