"""Render transcript segments as json, srt, vtt, txt or tsv.

Input is the worker's ``segments`` list: dicts with ``start``/``end`` in seconds (floats),
``text``, optionally ``speaker`` (diarized) and optionally ``words`` (aligned), each word a
dict with ``word``, usually ``start``/``end`` in seconds and optionally ``speaker``.

Subtitles (srt, vtt) are built from :func:`cues`:

* with word times, words are packed greedily into cues that fit ``max_lines`` lines of
  ``max_line_width`` characters and last at most ``max_cue_duration_s``; a cue never mixes
  two speakers and never spans two segments (segments are the model's own phrases, and the
  gap between two is usually a pause); when a cue overflows, it is cut after the last
  sentence end in it, else after a clause mark in its second half, else before the word
  that did not fit; cue times come from the first and last word;
* without word times, a segment's text is split at spaces and packed the same way, and the
  segment's time is shared out in proportion to characters, so its cues tile the segment;
* lines break at spaces (for languages written without spaces, between aligned words); a
  single word wider than ``max_line_width`` gets a line of its own and is never cut;
* every cue is time-ordered, non-overlapping and at least 1 ms long on the millisecond grid
  the files are written on; cues shorter than ``min_cue_duration_s`` are lengthened into the
  following silence, never past the next cue or the end of their segment.

Text formats are per segment: txt is one line per segment (``[SPEAKER_00] text`` when
diarized; consecutive segments of one speaker are not merged, so lines map 1:1 to
``segments``), tsv is whisper's ``start end text`` with integer milliseconds plus a
``speaker`` column. Segments with blank text are left out of every format but json.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

FORMATS = ("json", "srt", "vtt", "txt", "tsv")

# A cut after these reads as a sentence end; after the clause marks, as a pause.
_SENTENCE_END = tuple(".!?…。！？")
_CLAUSE_END = tuple(",;:，；：、—–")
# Closing quotes and brackets that may follow the punctuation ("Да.»").
_TRAILING_CLOSERS = "\"'”»)]}"
_TSV_HEADER = ("start", "end", "speaker", "text")


@dataclass(frozen=True)
class SubtitleOptions:
    """How transcript segments are cut into subtitle cues.

    Attributes:
        max_line_width: characters per line (42 is the common broadcast limit); the
            ``[SPEAKER_00] `` label counts towards the first line.
        max_lines: lines per cue.
        max_cue_duration_s: longest cue, seconds; a single word that lasts longer is shown
            for this long from its start.
        min_cue_duration_s: shortest cue, seconds (0.5 s: shorter cues flash by unread);
            a short cue is lengthened into the silence after it, never past the next cue
            or the end of its segment, so it may stay shorter when there is no room.
        speaker_labels: mark speakers on diarized cues: ``[SPEAKER_00] `` before the text
            in srt and txt, a ``<v SPEAKER_00>`` voice tag in vtt.
    """

    max_line_width: int = 42
    max_lines: int = 2
    max_cue_duration_s: float = 7.0
    min_cue_duration_s: float = 0.5
    speaker_labels: bool = True

    def __post_init__(self) -> None:
        if self.max_line_width < 1:
            raise ValueError(f"max_line_width must be >= 1, got {self.max_line_width}")
        if self.max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {self.max_lines}")
        if not self.max_cue_duration_s >= 0.001:  # also rejects NaN
            raise ValueError(f"max_cue_duration_s must be >= 0.001 s, got {self.max_cue_duration_s}")
        if not 0.0 <= self.min_cue_duration_s <= self.max_cue_duration_s:
            raise ValueError(
                f"min_cue_duration_s must be within [0, max_cue_duration_s={self.max_cue_duration_s}], got {self.min_cue_duration_s}"
            )


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: ``start``/``end`` in seconds (whole milliseconds), wrapped text lines
    without any speaker label, and the speaker (``None`` when not diarized)."""

    start: float
    end: float
    lines: tuple[str, ...]
    speaker: str | None = None

    @property
    def text(self) -> str:
        """The cue's text on one line."""
        return " ".join(self.lines)


@dataclass(frozen=True)
class _Token:
    """A word to place: ``sep`` is what joins it to the previous word on one line (" ", or
    "" for languages written without spaces); times in seconds."""

    text: str
    sep: str
    start: float
    end: float
    speaker: str | None


@dataclass(frozen=True)
class _Draft:
    """A cue before the millisecond clean-up; ``limit`` is the end of its segment, seconds."""

    start: float
    end: float
    tokens: tuple[_Token, ...]
    speaker: str | None
    limit: float


DEFAULT_OPTIONS = SubtitleOptions()


# --------------------------------------------------------------------------- public API


def render(segments: Sequence[dict], fmt: str, options: SubtitleOptions = DEFAULT_OPTIONS) -> str:
    """Render ``segments`` (times in seconds) as ``fmt``, one of :data:`FORMATS`."""
    if fmt == "json":
        return json.dumps(list(segments), ensure_ascii=False)
    if fmt == "srt":
        return _render_srt(cues(segments, options), options)
    if fmt == "vtt":
        return _render_vtt(cues(segments, options), options)
    if fmt == "txt":
        return _render_txt(segments, options)
    if fmt == "tsv":
        return _render_tsv(segments)
    raise ValueError(f"output_format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def cues(segments: Sequence[dict], options: SubtitleOptions = DEFAULT_OPTIONS) -> list[Cue]:
    """Cut ``segments`` into display cues (times in seconds, on a whole-millisecond grid)."""
    ordered = sorted(segments, key=lambda seg: _seconds(seg.get("start")) or 0.0)  # stable
    drafts: list[_Draft] = []
    for segment in ordered:
        drafts.extend(_segment_drafts(segment, options))
    return _finalize(drafts, options)


# --------------------------------------------------------------------------- time formats


def _format_ms(ms: int, decimal_marker: str) -> str:
    """``HH:MM:SS<marker>mmm`` for a non-negative count of milliseconds."""
    ms = max(ms, 0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _to_ms(seconds: float) -> int:
    """Seconds to whole milliseconds, rounding half away from zero like whisper's writers."""
    return int(math.floor(seconds * 1000.0 + 0.5))


def _seconds(value: object) -> float | None:
    """A finite time in seconds, or ``None`` for a missing or unusable one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- tokens


def _clean(text: object) -> str:
    """Text with every run of whitespace (tabs, newlines) folded into one space."""
    return " ".join(str(text or "").split())


def _separators(text: str, words: Sequence[str]) -> list[str]:
    """How each word joins the previous one: "" where ``text`` has them adjacent (Chinese,
    Japanese: whisperX aligns characters), " " otherwise or when a word is not found."""
    seps: list[str] = []
    pos = 0
    for word in words:
        idx = text.find(word, pos)
        if idx < 0:
            seps.append(" ")
            continue
        gap = text[pos:idx]
        seps.append("" if pos > 0 and not any(ch.isspace() for ch in gap) else " ")
        pos = idx + len(word)
    return seps


def _word_tokens(segment: dict, seg_start: float, seg_end: float) -> list[_Token] | None:
    """Tokens from the segment's aligned words, or ``None`` when no word has times.

    Untimed words (digits the aligner cannot place) fill the gap between their timed
    neighbours; starts are made non-decreasing so that cues come out in time order.
    A word without ``speaker`` takes its neighbour's, so it never forces a cue break.
    """
    words = [w for w in segment.get("words") or () if isinstance(w, dict) and _clean(w.get("word"))]
    if not words or not any(_seconds(w.get("start")) is not None for w in words):
        return None
    texts = [_clean(w.get("word")) for w in words]
    seps = _separators(_clean(segment.get("text")), texts)
    speakers = _fill_speakers([w.get("speaker") for w in words], segment.get("speaker"))

    starts = [_seconds(w.get("start")) for w in words]
    ends = [_seconds(w.get("end")) for w in words]
    tokens: list[_Token] = []
    previous_start, previous_end = -math.inf, seg_start
    for i, text in enumerate(texts):
        known_start = starts[i]
        start = previous_end if known_start is None else known_start
        start = max(start, previous_start)
        end = ends[i]
        if end is None:
            end = next((s for s in starts[i + 1 :] if s is not None), seg_end)
        end = max(end, start)
        tokens.append(_Token(text, seps[i], start, end, speakers[i]))
        previous_start, previous_end = start, end
    return tokens


def _fill_speakers(speakers: list[object], fallback: object) -> list[str | None]:
    """Each word's speaker; a missing one is the previous word's, else the next labelled
    word's, else the segment's."""
    labelled = [s if isinstance(s, str) and s else None for s in speakers]
    seg_speaker = fallback if isinstance(fallback, str) and fallback else None
    out: list[str | None] = []
    current = next((s for s in labelled if s), seg_speaker)
    for speaker in labelled:
        current = speaker or current
        out.append(current)
    return out


def _text_tokens(text: str, speaker: str | None, seg_start: float, seg_end: float) -> list[_Token]:
    """Tokens from plain text, each given the share of the segment's time that its characters
    (with the following space) take, so that consecutive tokens tile the segment."""
    parts = text.split()
    total = len(" ".join(parts))
    duration = max(seg_end - seg_start, 0.0)
    tokens: list[_Token] = []
    offset = 0
    for i, part in enumerate(parts):
        next_offset = total if i == len(parts) - 1 else offset + len(part) + 1
        start = seg_start + duration * offset / total
        end = seg_start + duration * next_offset / total
        tokens.append(_Token(part, " ", start, end, speaker))
        offset = next_offset
    return tokens


# --------------------------------------------------------------------------- packing


def _label_width(speaker: str | None, options: SubtitleOptions) -> int:
    """Characters that ``[speaker] `` takes on a cue's first line (0 without a label)."""
    return len(_label(speaker)) if options.speaker_labels and speaker else 0


def _label(speaker: str) -> str:
    """The srt/txt speaker prefix."""
    return f"[{speaker}] "


def _line_count(tokens: Sequence[_Token], width: int, first_width: int) -> int:
    """Lines that greedy wrapping at ``width`` characters needs (the fewest possible)."""
    lines = 0
    length = 0
    for tok in tokens:
        limit = first_width if lines <= 1 else width
        if lines and length + len(tok.sep) + len(tok.text) <= limit:
            length += len(tok.sep) + len(tok.text)
        else:
            lines += 1
            length = len(tok.text)
    return lines


def _fits(tokens: Sequence[_Token], options: SubtitleOptions) -> bool:
    """Whether ``tokens`` make one valid cue: one speaker, within the line limits and the
    longest duration. A single token always fits: words are never cut."""
    if len(tokens) <= 1:
        return True
    speaker = tokens[0].speaker
    if any(tok.speaker != speaker for tok in tokens):
        return False
    if max(tok.end for tok in tokens) - tokens[0].start > options.max_cue_duration_s:
        return False
    first_width = max(options.max_line_width - _label_width(speaker, options), 1)
    return _line_count(tokens, options.max_line_width, first_width) <= options.max_lines


def _ends_with(text: str, marks: tuple[str, ...]) -> bool:
    """Whether ``text`` ends with one of ``marks``, ignoring closing quotes and brackets."""
    return text.rstrip(_TRAILING_CLOSERS).endswith(marks)


def _preferred_cut(tokens: Sequence[_Token]) -> int:
    """Where to end a full cue: after its last sentence end; else after its last clause mark
    if that keeps at least half the text (a short fragment reads worse than a clean cut
    elsewhere); else after the last token. Returns the number of tokens kept, >= 1."""
    for i in range(len(tokens) - 1, 0, -1):
        if _ends_with(tokens[i - 1].text, _SENTENCE_END):
            return i
    total = sum(len(t.text) + 1 for t in tokens)
    kept = total
    for i in range(len(tokens) - 1, 0, -1):
        kept -= len(tokens[i].text) + 1
        if 2 * kept < total:
            break
        if _ends_with(tokens[i - 1].text, _CLAUSE_END):
            return i
    return len(tokens)


def _pack(tokens: Sequence[_Token], options: SubtitleOptions) -> list[list[_Token]]:
    """Greedily group consecutive tokens into cues (see :func:`_fits`, :func:`_preferred_cut`)."""
    groups: list[list[_Token]] = []
    current: list[_Token] = []
    for tok in tokens:
        while current and not _fits([*current, tok], options):
            speaker_change = tok.speaker != current[-1].speaker
            cut = len(current) if speaker_change else _preferred_cut(current)
            groups.append(current[:cut])
            current = current[cut:]
        current.append(tok)
    if current:
        groups.append(current)
    return groups


def _segment_drafts(segment: dict, options: SubtitleOptions) -> list[_Draft]:
    """Draft cues for one segment (times in seconds, not yet on the millisecond grid)."""
    seg_start = _seconds(segment.get("start"))
    seg_end = _seconds(segment.get("end"))
    if seg_start is None or seg_end is None:
        # Without segment times only the words can place the text.
        words = [w for w in segment.get("words") or () if isinstance(w, dict)]
        timed = [t for w in words for t in (_seconds(w.get("start")), _seconds(w.get("end"))) if t is not None]
        if not timed:
            if _clean(segment.get("text")):
                raise ValueError(f"segment without start/end times cannot be subtitled: {_clean(segment.get('text'))[:60]!r}")
            return []
        seg_start = min(timed) if seg_start is None else seg_start
        seg_end = max(timed) if seg_end is None else seg_end
    tokens = _word_tokens(segment, seg_start, seg_end)
    if tokens is None:
        tokens = _text_tokens(_clean(segment.get("text")), _segment_speaker(segment), seg_start, seg_end)
    limit = max([seg_end, *(t.end for t in tokens)])
    drafts = []
    for group in _pack(tokens, options):
        drafts.append(_Draft(group[0].start, max(t.end for t in group), tuple(group), group[0].speaker, limit))
    return drafts


# --------------------------------------------------------------------------- layout


def _wrap(tokens: Sequence[_Token], width: int, first_width: int) -> tuple[str, ...]:
    """Lay tokens out on as few lines as greedy wrapping needs, but balanced: among layouts
    with that many lines, the one with the least squared slack (so two lines come out of
    similar length instead of one full line and a lone word)."""
    n = len(tokens)
    target = _line_count(tokens, width, first_width)
    # best[lines][i] = (cost, end of first line) for tokens[i:] on exactly ``lines`` lines.
    best: list[list[tuple[float, int]]] = [[(math.inf, n)] * (n + 1) for _ in range(target + 1)]
    best[0][n] = (0.0, n)
    for lines in range(1, target + 1):
        limit = first_width if lines == target else width  # only (0, target) starts a cue
        for i in range(n - 1, -1, -1):
            choice = (math.inf, n)
            length = -len(tokens[i].sep)
            for j in range(i + 1, n + 1):
                length += len(tokens[j - 1].sep) + len(tokens[j - 1].text)
                if length > limit and j > i + 1:
                    break  # only a lone word may overflow its line
                cost = best[lines - 1][j][0] + max(limit - length, 0) ** 2
                if cost < choice[0]:
                    choice = (cost, j)
            best[lines][i] = choice
    if best[target][0][0] == math.inf:  # cannot happen (greedy's layout qualifies); be safe
        return _greedy_lines(tokens, width, first_width)
    out = []
    i, lines = 0, target
    while i < n:
        j = best[lines][i][1]
        out.append("".join((t.sep if k else "") + t.text for k, t in enumerate(tokens[i:j])))
        i, lines = j, lines - 1
    return tuple(out)


def _greedy_lines(tokens: Sequence[_Token], width: int, first_width: int) -> tuple[str, ...]:
    """Greedy wrapping: fill each line as far as it goes."""
    lines: list[str] = []
    for tok in tokens:
        limit = first_width if len(lines) <= 1 else width
        if lines and len(lines[-1]) + len(tok.sep) + len(tok.text) <= limit:
            lines[-1] += tok.sep + tok.text
        else:
            lines.append(tok.text)
    return tuple(lines)


def _finalize(drafts: Sequence[_Draft], options: SubtitleOptions) -> list[Cue]:
    """Place drafts on the millisecond grid the files use: at most ``max_cue_duration_s``
    long, lengthened towards ``min_cue_duration_s``, clipped so that none overlaps the next,
    and at least 1 ms long. Only when the source leaves less than 1 ms per cue (zero-length
    or coincident words) is a cue nudged later than its source times, to stay displayable."""
    max_ms = _to_ms(options.max_cue_duration_s)
    min_ms = _to_ms(options.min_cue_duration_s)
    starts = [max(_to_ms(d.start), 0) for d in drafts]  # files cannot show negative times
    ends = [min(_to_ms(d.end), s + max_ms) for d, s in zip(drafts, starts)]
    for i in range(1, len(starts)):
        starts[i] = max(starts[i], starts[i - 1] + 1)
    out: list[Cue] = []
    for i, draft in enumerate(drafts):
        start = starts[i]
        next_start = starts[i + 1] if i + 1 < len(drafts) else math.inf
        end = ends[i]
        if end - start < min_ms:
            end = max(end, int(min(start + min_ms, next_start, _to_ms(draft.limit))))
        end = int(min(max(end, start + 1), next_start))
        first_width = max(options.max_line_width - _label_width(draft.speaker, options), 1)
        lines = _wrap(draft.tokens, options.max_line_width, first_width)
        out.append(Cue(start / 1000.0, end / 1000.0, lines, draft.speaker))
    return out


# --------------------------------------------------------------------------- writers


def _render_srt(items: Sequence[Cue], options: SubtitleOptions) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times, a blank line after each cue."""
    blocks = []
    for number, cue in enumerate(items, start=1):
        lines = list(cue.lines)
        if options.speaker_labels and cue.speaker:
            lines[0] = _label(cue.speaker) + lines[0]
        times = f"{_format_ms(_to_ms(cue.start), ',')} --> {_format_ms(_to_ms(cue.end), ',')}"
        blocks.append("\n".join([str(number), times, *lines]) + "\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    """Cue text with the characters WebVTT reserves written as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render_vtt(items: Sequence[Cue], options: SubtitleOptions) -> str:
    """WebVTT: the ``WEBVTT`` header, ``HH:MM:SS.mmm`` times, ``<v speaker>`` voice tags."""
    blocks = ["WEBVTT\n"]
    for cue in items:
        lines = [_vtt_escape(line) for line in cue.lines]
        if options.speaker_labels and cue.speaker:
            lines[0] = f"<v {_vtt_escape(cue.speaker)}>" + lines[0]
        times = f"{_format_ms(_to_ms(cue.start), '.')} --> {_format_ms(_to_ms(cue.end), '.')}"
        blocks.append("\n".join([times, *lines]) + "\n")
    return "\n".join(blocks)


def _segment_speaker(segment: dict) -> str | None:
    """The segment's speaker label, or ``None`` when not diarized."""
    speaker = segment.get("speaker")
    return speaker if isinstance(speaker, str) and speaker else None


def _render_txt(segments: Sequence[dict], options: SubtitleOptions) -> str:
    """Plain text: one line per non-blank segment, ``[SPEAKER_00] `` first when diarized."""
    lines = []
    for segment in segments:
        text = _clean(segment.get("text"))
        if not text:
            continue
        speaker = _segment_speaker(segment)
        lines.append((_label(speaker) if options.speaker_labels and speaker else "") + text)
    return "".join(line + "\n" for line in lines)


def _render_tsv(segments: Sequence[dict]) -> str:
    """Tab-separated ``start end speaker text`` per non-blank segment, times in integer
    milliseconds as in whisper's tsv; the speaker column is empty when not diarized.

    Written with :mod:`csv` so a text containing ``"`` is quoted and the file reads back
    with csv/pandas; tabs and newlines in text become spaces first, so no other field is.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(_TSV_HEADER)
    for segment in segments:
        text = _clean(segment.get("text"))
        if not text:
            continue
        start = _seconds(segment.get("start"))
        end = _seconds(segment.get("end"))
        writer.writerow(
            [
                "" if start is None else _to_ms(start),
                "" if end is None else _to_ms(end),
                _segment_speaker(segment) or "",
                text,
            ]
        )
    return buffer.getvalue()
