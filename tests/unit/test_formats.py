"""Tests for src/stages/formats.py: subtitle cues and the json/srt/vtt/txt/tsv renderings.

SRT and VTT output is read back with the ``srt`` and ``webvtt-py`` parsers, and every
check runs on what they parse. Realistic input is Russian sentences from the festvox
corpus with made-up but plausible word times (about 60 ms per character, short pauses).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import random
import re
from dataclasses import dataclass

import pytest
import srt
import webvtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages import formats
from stages.formats import Cue, SubtitleOptions
from references import FESTVOX

_PROMPTS = FESTVOX / "etc" / "txt.done.data"
# Used when the corpus is not checked out, so the tests never skip.
_FALLBACK_SENTENCES = (
    "Корреспондент, американской газеты, Арчибальд, Скайлс, проходя мимо, увидел стоявшую перед объявлением "
    "босую, молодую женщину, в ситцевом опрятном платье, - она читала, шевеля губами.",
    "Она завела, прядь волнистых волос за ухо, подняла с тротуара корзинку с зеленью, и пошла через улицу.",
    "Со спокойным мужеством, Скайлс, ожидал всего, в этом безумном городе.",
    "Окна многоэтажных домов, иные разбитые, иные заколоченные досками, казались нежилыми, - ни одна голова, "
    "не выглядывала на улицу.",
)
_LABEL = re.compile(r"^\[([^\]]+)\] (.*)$")


def _sentences(count: int) -> list[str]:
    """The first ``count`` corpus sentences, stress marks (``вол+ос``) removed."""
    if _PROMPTS.is_file():
        found = re.findall(r'^\( \S+ "(.*)" \)$', _PROMPTS.read_text(encoding="utf-8"), flags=re.M)
        sentences = [s.replace("+", "") for s in found]
    else:
        sentences = list(_FALLBACK_SENTENCES)
    return [sentences[i % len(sentences)] for i in range(count)]


def _segment(text: str, start: float, rng: random.Random, speaker: str | None = None, speakers: list | None = None) -> dict:
    """A whisperX-like aligned segment: ~60 ms per character, 40-200 ms pauses, times rounded
    to the millisecond as whisperX does; ``speakers`` gives each word's speaker (None: absent)."""
    words = []
    t = start
    for i, word in enumerate(text.split()):
        duration = round(0.06 * len(word) + rng.uniform(0.02, 0.12), 3)
        entry = {"word": word, "start": round(t, 3), "end": round(t + duration, 3), "score": round(rng.uniform(0.5, 1.0), 3)}
        who = speakers[i] if speakers is not None else speaker
        if who is not None:
            entry["speaker"] = who
        words.append(entry)
        t += duration + rng.uniform(0.04, 0.2)
    segment = {"start": words[0]["start"], "end": words[-1]["end"], "text": text, "words": words}
    if speaker is not None:
        segment["speaker"] = speaker
    return segment


def _transcript(count: int, diarized: bool, seed: int = 1) -> list[dict]:
    """``count`` consecutive segments; when diarized, speakers alternate every two segments."""
    rng = random.Random(seed)
    segments = []
    t = 0.368
    for i, text in enumerate(_sentences(count)):
        speaker = f"SPEAKER_0{(i // 2) % 2}" if diarized else None
        segment = _segment(text, t, rng, speaker)
        segments.append(segment)
        t = segment["end"] + rng.uniform(0.3, 1.5)
    return segments


def _ms(seconds: float) -> int:
    """Seconds to whole milliseconds, as the files are written."""
    return int(math.floor(seconds * 1000 + 0.5))


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Parsed:
    """A cue as read back by a parser: times in ms, display lines (with any srt label), text
    lines without the label, and the speaker the label or voice tag names."""

    start: int
    end: int
    display: tuple[str, ...]
    lines: tuple[str, ...]
    speaker: str | None


def parse_srt(text: str) -> list[Parsed]:
    """Read SRT with the ``srt`` library."""
    out = []
    for sub in srt.parse(text):
        display = tuple(sub.content.split("\n"))
        lines = list(display)
        speaker = None
        match = _LABEL.match(lines[0])
        if match:
            speaker, lines[0] = match.group(1), match.group(2)
        out.append(Parsed(_td_ms(sub.start), _td_ms(sub.end), display, tuple(lines), speaker))
    return out


def _td_ms(delta) -> int:
    """A timedelta in whole milliseconds."""
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def parse_vtt(text: str) -> list[Parsed]:
    """Read WebVTT with ``webvtt-py``; entities unescaped as a player would show them."""
    out = []
    for caption in webvtt.from_string(text).captions:
        lines = tuple(html.unescape(line) for line in caption.text.split("\n"))
        out.append(Parsed(_ts_ms(caption.start_time), _ts_ms(caption.end_time), lines, lines, caption.voice))
    return out


def _ts_ms(stamp) -> int:
    """A webvtt-py Timestamp in whole milliseconds."""
    return ((stamp.hours * 60 + stamp.minutes) * 60 + stamp.seconds) * 1000 + stamp.milliseconds


# --------------------------------------------------------------------------- invariants


def _speakers_of(segment: dict) -> list[str | None]:
    """Expected speaker of each word: its own, else the previous word's, else the next
    labelled word's, else the segment's."""
    seg_speaker = segment.get("speaker")
    own = [w.get("speaker") for w in segment["words"]]
    out = []
    for i, speaker in enumerate(own):
        before = [s for s in own[:i] if s]
        after = [s for s in own[i:] if s]
        out.append(speaker or (before[-1] if before else None) or (after[0] if after else None) or seg_speaker)
    return out


def _units(segments: list[dict]) -> list[tuple[str, int, dict | None, str | None]]:
    """(word, segment index, word dict or None, expected speaker) in display order."""
    order = sorted(range(len(segments)), key=lambda i: segments[i]["start"])
    units = []
    for index in order:
        segment = segments[index]
        words = segment.get("words") or []
        if any(w.get("start") is not None for w in words):
            for word, speaker in zip(words, _speakers_of(segment)):
                units.extend((part, index, word, speaker) for part in word["word"].split())
        else:
            units.extend((part, index, None, segment.get("speaker")) for part in segment["text"].split())
    return units


def check_cues(parsed: list[Parsed], segments: list[dict], options: SubtitleOptions, exact_times: bool = True) -> None:
    """Assert every invariant of a rendered subtitle file.

    ``exact_times``: the source gives every cue at least 1 ms, so cues must also lie within
    their source segment, start at their first word and only end early to avoid overlap.
    """
    max_ms = _ms(options.max_cue_duration_s)
    min_ms = _ms(options.min_cue_duration_s)
    units = _units(segments)
    # Text: every word, once, in order.
    shown = [word for cue in parsed for line in cue.lines for word in line.split()]
    assert shown == [u[0] for u in units]
    position = 0
    for i, cue in enumerate(parsed):
        # Layout.
        assert 1 <= len(cue.lines) <= options.max_lines, cue
        for display, line in zip(cue.display, cue.lines):
            assert line and line == line.strip()
            assert len(display) <= options.max_line_width or " " not in line, (display, options.max_line_width)
        # Timing on the millisecond grid.
        assert 0 <= cue.start < cue.end, cue
        assert cue.end - cue.start <= max_ms, cue
        if i:
            assert cue.start >= parsed[i - 1].end, (parsed[i - 1], cue)
        # Source: one segment, one speaker.
        count = sum(len(line.split()) for line in cue.lines)
        source = units[position : position + count]
        position += count
        assert len({u[1] for u in source}) == 1, f"cue spans segments: {cue}"
        assert len({u[3] for u in source}) == 1, f"cue mixes speakers: {cue}"
        expected_speaker = source[0][3] if options.speaker_labels else None
        assert cue.speaker == expected_speaker, cue
        if not exact_times:
            continue
        segment = segments[source[0][1]]
        seg_start, seg_end = _ms(segment["start"]), _ms(segment["end"])
        assert seg_start <= cue.start and cue.end <= seg_end, (cue, seg_start, seg_end)
        next_start = parsed[i + 1].start if i + 1 < len(parsed) else math.inf
        if source[0][2] is not None:  # aligned words
            first, last = source[0][2], source[-1][2]
            assert cue.start == _ms(first["start"]), cue
            assert cue.end >= min(_ms(last["end"]), cue.start + max_ms, next_start), cue
        room = min(next_start, seg_end) - cue.start
        assert cue.end - cue.start >= min(min_ms, room), cue
    assert position == len(units)


# --------------------------------------------------------------------------- realistic


DEFAULT = SubtitleOptions()


def test_srt_realistic_russian_transcript():
    segments = _transcript(12, diarized=False)
    text = formats.render(segments, "srt")
    parsed = parse_srt(text)
    check_cues(parsed, segments, DEFAULT)
    assert len(parsed) == len(formats.cues(segments, DEFAULT))
    assert len(parsed) > len(segments)  # long festvox sentences need several cues
    assert [int(block.split("\n")[0]) for block in text.strip().split("\n\n")] == list(range(1, len(parsed) + 1))
    assert "[SPEAKER" not in text
    assert all(not cue.speaker for cue in parsed)


def test_vtt_realistic_russian_transcript_with_voices():
    segments = _transcript(12, diarized=True)
    text = formats.render(segments, "vtt")
    assert text.split("\n")[0] == "WEBVTT"
    parsed = parse_vtt(text)
    check_cues(parsed, segments, DEFAULT)
    assert len(parsed) == len(formats.cues(segments, DEFAULT))
    assert {cue.speaker for cue in parsed} == {"SPEAKER_00", "SPEAKER_01"}
    assert "[SPEAKER" not in text  # vtt names speakers with voice tags only
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}$", text, flags=re.M)


def test_srt_diarized_labels_every_cue_and_counts_towards_width():
    segments = _transcript(8, diarized=True)
    parsed = parse_srt(formats.render(segments, "srt"))
    check_cues(parsed, segments, DEFAULT)
    assert all(cue.speaker in ("SPEAKER_00", "SPEAKER_01") for cue in parsed)
    assert all(cue.display[0].startswith(f"[{cue.speaker}] ") for cue in parsed)


def test_vtt_and_srt_share_cue_times():
    segments = _transcript(6, diarized=True)
    from_srt = [(c.start, c.end, c.lines) for c in parse_srt(formats.render(segments, "srt"))]
    from_vtt = [(c.start, c.end, c.lines) for c in parse_vtt(formats.render(segments, "vtt"))]
    assert from_srt == from_vtt


def test_speaker_labels_off():
    segments = _transcript(4, diarized=True)
    options = SubtitleOptions(speaker_labels=False)
    srt_text = formats.render(segments, "srt", options)
    vtt_text = formats.render(segments, "vtt", options)
    check_cues(parse_srt(srt_text), segments, options)
    check_cues(parse_vtt(vtt_text), segments, options)
    assert "[SPEAKER" not in srt_text and "<v" not in vtt_text
    assert "SPEAKER" not in formats.render(segments, "txt", options)


@pytest.mark.parametrize(
    "options",
    [
        SubtitleOptions(max_line_width=20, max_lines=1),
        SubtitleOptions(max_line_width=32, max_lines=3, max_cue_duration_s=3.0),
        SubtitleOptions(max_line_width=60, max_lines=2, max_cue_duration_s=10.0, min_cue_duration_s=1.5),
    ],
    ids=["narrow-1-line", "32x3-3s", "60x2-10s"],
)
def test_limits_follow_options(options):
    segments = _transcript(10, diarized=True, seed=7)
    check_cues(parse_srt(formats.render(segments, "srt", options)), segments, options)
    check_cues(parse_vtt(formats.render(segments, "vtt", options)), segments, options)


def test_two_line_cues_are_balanced():
    # Greedy filling would give "Она завела прядь волнистых волос за ухо и" + "ушла".
    words = "Она завела прядь волнистых волос за ухо и ушла".split()
    segment = {"start": 0.0, "end": 4.0, "text": " ".join(words),
               "words": [{"word": w, "start": 0.4 * i, "end": 0.4 * i + 0.3} for i, w in enumerate(words)]}
    (cue,) = parse_srt(formats.render([segment], "srt"))
    assert cue.lines == ("Она завела прядь волнистых", "волос за ухо и ушла")


def test_cue_prefers_to_end_at_sentence_end():
    rng = random.Random(5)
    text = "Она читала объявление на стене. Потом подняла корзинку с зеленью и пошла через улицу."
    segments = [_segment(text, 1.0, rng)]
    parsed = parse_srt(formats.render(segments, "srt"))
    check_cues(parsed, segments, DEFAULT)
    assert " ".join(parsed[0].lines) == "Она читала объявление на стене."
    assert " ".join(parsed[1].lines) == "Потом подняла корзинку с зеленью и пошла через улицу."


def test_cue_prefers_clause_mark_over_mid_phrase_cut():
    rng = random.Random(2)
    text = "Она завела, прядь волнистых волос за ухо, подняла с тротуара корзинку с зеленью, и пошла через улицу."
    segments = [_segment(text, 0.368, rng)]
    parsed = parse_srt(formats.render(segments, "srt"))
    check_cues(parsed, segments, DEFAULT)
    assert parsed[0].lines[-1].endswith(",")


def test_cue_counts_of_simple_inputs():
    rng = random.Random(0)
    segments = [_segment("Добрый день.", 0.5, rng), _segment("Как дела?", 3.0, rng, speaker="SPEAKER_01")]
    parsed = parse_srt(formats.render(segments, "srt"))
    assert [(c.lines, c.speaker) for c in parsed] == [(("Добрый день.",), None), (("Как дела?",), "SPEAKER_01")]
    assert len(parse_vtt(formats.render(segments, "vtt"))) == 2


# --------------------------------------------------------------------------- edge cases


def test_empty_segments_list():
    assert formats.render([], "srt") == ""
    assert list(srt.parse(formats.render([], "srt"))) == []
    vtt_text = formats.render([], "vtt")
    assert vtt_text == "WEBVTT\n"
    assert webvtt.from_string(vtt_text).captions == []
    assert formats.render([], "txt") == ""
    assert formats.render([], "tsv") == "start\tend\tspeaker\ttext\n"
    assert formats.render([], "json") == "[]"
    assert formats.cues([]) == []


def test_blank_segments_are_left_out():
    segments = [{"start": 0.0, "end": 1.0, "text": "  "}, {"start": 1.0, "end": 2.0, "text": "Да.", "words": []}]
    assert [c.lines for c in parse_srt(formats.render(segments, "srt"))] == [("Да.",)]
    assert formats.render(segments, "txt") == "Да.\n"
    assert len(list(csv.reader(io.StringIO(formats.render(segments, "tsv")), delimiter="\t"))) == 2


def test_segment_without_words_shares_time_by_characters():
    text = "Со спокойным мужеством ожидал всего в этом безумном городе"
    segment = {"start": 2.0, "end": 6.0, "text": text}
    options = SubtitleOptions(max_line_width=20, max_lines=1)
    parsed = parse_srt(formats.render([segment], "srt", options))
    check_cues(parsed, [segment], options)
    assert [" ".join(c.lines) for c in parsed] == ["Со спокойным", "мужеством ожидал", "всего в этом", "безумном городе"]
    # Cues tile the segment; each lasts its share of characters (the following space included).
    assert parsed[0].start == 2000 and parsed[-1].end == 6000
    assert all(a.end == b.start for a, b in zip(parsed, parsed[1:]))
    offsets = [0, len("Со спокойным "), len("Со спокойным мужеством ожидал "), len("Со спокойным мужеством ожидал всего в этом ")]
    assert [c.start for c in parsed] == [_ms(2.0 + 4.0 * o / len(text)) for o in offsets]


def test_long_segment_without_words_is_split_by_duration():
    text = "Окна многоэтажных домов казались нежилыми"
    segment = {"start": 10.0, "end": 40.0, "text": text}
    parsed = parse_vtt(formats.render([segment], "vtt"))
    check_cues(parsed, [segment], DEFAULT)
    assert len(parsed) >= math.ceil(30.0 / DEFAULT.max_cue_duration_s)
    assert all(c.end - c.start <= 7000 for c in parsed)
    assert parsed[0].start == 10000


def test_word_longer_than_line_gets_own_line():
    long_word = "Превысокомногорассмотрительствующийдостопримечательнейший"
    assert len(long_word) > DEFAULT.max_line_width
    rng = random.Random(4)
    segments = [_segment(f"Это слово {long_word} очень длинное.", 0.0, rng, speaker="SPEAKER_00")]
    for parsed in (parse_srt(formats.render(segments, "srt")), parse_vtt(formats.render(segments, "vtt"))):
        check_cues(parsed, segments, DEFAULT)
        lines = [line for cue in parsed for line in cue.lines]
        assert long_word in lines  # whole, uncut, alone on its line


def test_word_longer_than_max_duration_is_shown_for_max_duration():
    segments = [{"start": 1.0, "end": 12.0, "text": "Ааааа", "words": [{"word": "Ааааа", "start": 1.0, "end": 12.0}]}]
    (cue,) = parse_srt(formats.render(segments, "srt"))
    assert (cue.start, cue.end) == (1000, 8000)


def test_speaker_change_between_consecutive_segments_and_within_one():
    rng = random.Random(9)
    first = _segment("Вы видели это объявление?", 0.2, rng, speaker="SPEAKER_00")
    second = _segment("Да, видел. А вы кто такой?", first["end"] + 0.05, rng, speaker="SPEAKER_01",
                      speakers=["SPEAKER_01", "SPEAKER_01", "SPEAKER_00", "SPEAKER_00", "SPEAKER_00", "SPEAKER_00"])
    segments = [first, second]
    for parsed in (parse_srt(formats.render(segments, "srt")), parse_vtt(formats.render(segments, "vtt"))):
        check_cues(parsed, segments, DEFAULT)
        assert [(" ".join(c.lines), c.speaker) for c in parsed] == [
            ("Вы видели это объявление?", "SPEAKER_00"),
            ("Да, видел.", "SPEAKER_01"),
            ("А вы кто такой?", "SPEAKER_00"),
        ]


def test_words_missing_speaker_take_their_neighbours():
    rng = random.Random(11)
    speakers = [None, "SPEAKER_01", None, "SPEAKER_01", None]
    segment = _segment("Солдат остановился перед объявлением молча", 3.0, rng, speaker="SPEAKER_00", speakers=speakers)
    parsed = parse_srt(formats.render([segment], "srt"))
    check_cues(parsed, [segment], DEFAULT)
    assert [(" ".join(c.lines), c.speaker) for c in parsed] == [("Солдат остановился перед объявлением молча", "SPEAKER_01")]


def test_words_without_speakers_in_a_diarized_segment_use_the_segment():
    rng = random.Random(12)
    segment = _segment("Скайлс ожидал всего", 0.0, rng, speaker="SPEAKER_00", speakers=[None, None, None])
    (cue,) = parse_vtt(formats.render([segment], "vtt"))
    assert cue.speaker == "SPEAKER_00"


def test_untimed_words_fill_the_gap_between_neighbours():
    segment = {
        "start": 0.0, "end": 3.0, "text": "В 1918 году",
        "words": [{"word": "В", "start": 0.5, "end": 0.6}, {"word": "1918"}, {"word": "году", "start": 2.0, "end": 2.6}],
    }
    (cue,) = formats.cues([segment])
    assert (cue.start, cue.end, cue.text) == (0.5, 2.6, "В 1918 году")


def test_short_cue_is_lengthened_into_silence_only():
    words = [{"word": "Да.", "start": 1.0, "end": 1.1}, {"word": "Нет.", "start": 1.3, "end": 1.4}]
    segments = [
        {"start": 1.0, "end": 1.4, "text": "Да. Нет.", "words": words},
        {"start": 5.0, "end": 5.2, "text": "Ну", "words": [{"word": "Ну", "start": 5.0, "end": 5.1}]},
    ]
    options = SubtitleOptions(max_line_width=5, max_lines=1)
    parsed = parse_srt(formats.render(segments, "srt", options))
    check_cues(parsed, segments, options)
    # "Да." stops where "Нет." starts; "Нет." and "Ну" stop at their segment's end.
    assert [(c.start, c.end) for c in parsed] == [(1000, 1300), (1300, 1400), (5000, 5200)]


def test_zero_length_and_coincident_words_still_give_valid_cues():
    words = [{"word": w, "start": 2.0, "end": 2.0} for w in ("раз", "два", "три", "четыре")]
    segments = [{"start": 2.0, "end": 2.0, "text": "раз два три четыре", "words": words}]
    options = SubtitleOptions(max_line_width=4, max_lines=1)
    parsed = parse_srt(formats.render(segments, "srt", options))
    check_cues(parsed, segments, options, exact_times=False)
    assert len(parsed) == 4


def test_overlapping_segments_are_clipped():
    segments = [
        {"start": 0.0, "end": 3.0, "text": "первый сегмент"},
        {"start": 2.0, "end": 4.0, "text": "второй сегмент"},
    ]
    parsed = parse_vtt(formats.render(segments, "vtt"))
    check_cues(parsed, segments, DEFAULT, exact_times=False)
    assert [(c.start, c.end) for c in parsed] == [(0, 2000), (2000, 4000)]


def test_languages_without_spaces_keep_words_joined():
    segment = {"start": 0.0, "end": 1.0, "text": "你好世界", "words": [
        {"word": ch, "start": 0.25 * i, "end": 0.25 * i + 0.2} for i, ch in enumerate("你好世界")]}
    (cue,) = formats.cues([segment])
    assert cue.lines == ("你好世界",)
    narrow = formats.cues([segment], SubtitleOptions(max_line_width=2))
    assert narrow[0].lines == ("你好", "世界")


def test_vtt_escapes_markup_characters():
    segment = {"start": 0.0, "end": 2.0, "text": "a<b & c>d --> e", "speaker": "S & <1>"}
    text = formats.render([segment], "vtt")
    assert "<b" not in text and "-->" not in text.split("\n", 3)[3]
    (cue,) = parse_vtt(text)
    assert cue.lines == ("a<b & c>d --> e",)


# --------------------------------------------------------------------------- txt / tsv / json


def test_txt_one_line_per_segment_with_labels_when_diarized():
    plain = _transcript(3, diarized=False)
    assert formats.render(plain, "txt") == "".join(s["text"] + "\n" for s in plain)
    diarized = _transcript(3, diarized=True)
    lines = formats.render(diarized, "txt").split("\n")
    assert lines[-1] == ""
    assert lines[:-1] == [f"[{s['speaker']}] {s['text']}" for s in diarized]
    # Consecutive segments of one speaker stay separate lines.
    assert diarized[0]["speaker"] == diarized[1]["speaker"]


def test_txt_folds_newlines():
    segments = [{"start": 0.0, "end": 1.0, "text": " Она\nчитала\tобъявление "}]
    assert formats.render(segments, "txt") == "Она читала объявление\n"


def test_tsv_parses_with_csv_and_has_millisecond_times():
    segments = _transcript(4, diarized=True)
    segments.append({"start": 99.9996, "end": 101.25, "text": 'Он сказал:\t"Стой!"\nи ушёл.'})
    rows = list(csv.reader(io.StringIO(formats.render(segments, "tsv")), delimiter="\t"))
    assert rows[0] == ["start", "end", "speaker", "text"]
    assert len(rows) == len(segments) + 1
    for row, segment in zip(rows[1:], segments):
        assert len(row) == 4
        assert (int(row[0]), int(row[1])) == (_ms(segment["start"]), _ms(segment["end"]))
        assert row[2] == segment.get("speaker", "")
        assert "\t" not in row[3] and "\n" not in row[3]
    assert rows[-1] == ["100000", "101250", "", 'Он сказал: "Стой!" и ушёл.']
    assert rows[1][3] == segments[0]["text"]


def test_tsv_plain_lines_split_on_tabs():
    # Without quotes in the text, every line is simply tab-separated, as whisper's tsv.
    segments = _transcript(2, diarized=False)
    lines = formats.render(segments, "tsv").splitlines()
    assert lines[1].split("\t") == [str(_ms(segments[0]["start"])), str(_ms(segments[0]["end"])), "", segments[0]["text"]]


def test_json_round_trip_keeps_cyrillic():
    segments = _transcript(2, diarized=True)
    text = formats.render(segments, "json")
    assert json.loads(text) == segments
    assert "Корреспондент" in text  # ensure_ascii=False


def test_unknown_format_names_output_format():
    with pytest.raises(ValueError, match="output_format"):
        formats.render([], "docx")
    assert formats.FORMATS == ("json", "srt", "vtt", "txt", "tsv")


@pytest.mark.parametrize(
    "kwargs",
    [{"max_line_width": 0}, {"max_lines": 0}, {"max_cue_duration_s": 0.0}, {"min_cue_duration_s": -1.0},
     {"min_cue_duration_s": 8.0}, {"max_cue_duration_s": float("nan")}],
)
def test_options_are_validated(kwargs):
    with pytest.raises(ValueError):
        SubtitleOptions(**kwargs)


def test_cue_dataclass():
    (cue,) = formats.cues([{"start": 0.0, "end": 1.0, "text": "Привет мир", "speaker": "SPEAKER_00"}])
    assert cue == Cue(0.0, 1.0, ("Привет мир",), "SPEAKER_00")
    assert cue.text == "Привет мир"


# --------------------------------------------------------------------------- properties


_WORD = st.text(alphabet="абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГД.,!?;:«»—&<>", min_size=1, max_size=14)
_LONG_WORD = st.text(alphabet="абвгдежзийклмно", min_size=40, max_size=70)
_SPEAKER = st.sampled_from([None, "SPEAKER_00", "SPEAKER_01"])
_OPTIONS = st.builds(
    lambda width, lines, max_ms, min_frac, labels: SubtitleOptions(width, lines, max_ms / 1000, max_ms * min_frac // 1 / 1000, labels),
    st.integers(8, 60), st.integers(1, 3), st.integers(800, 10_000), st.floats(0, 1, allow_subnormal=False), st.booleans(),
)


@st.composite
def clean_transcripts(draw) -> list[dict]:
    """Segments in time order with 1 ms or more per word (and 2 ms per character when only
    text): the source leaves room for every cue, so times must match exactly."""
    segments = []
    t = draw(st.integers(0, 5000))
    for _ in range(draw(st.integers(1, 5))):
        words = draw(st.lists(st.one_of(_WORD, _LONG_WORD), min_size=1, max_size=25))
        seg_speaker = draw(_SPEAKER)
        pad_before = draw(st.integers(0, 300))
        if draw(st.booleans()):
            entries = []
            w_t = t + pad_before
            for word in words:
                duration = draw(st.integers(1, 3000))
                entry = {"word": word, "start": w_t / 1000, "end": (w_t + duration) / 1000}
                speaker = draw(st.one_of(st.none(), st.sampled_from([seg_speaker or "SPEAKER_00", "SPEAKER_01"])))
                if speaker:
                    entry["speaker"] = speaker
                entries.append(entry)
                w_t += duration + draw(st.integers(0, 400))
            end = entries[-1]["end"] * 1000 + draw(st.integers(0, 300))
            segment = {"start": t / 1000, "end": end / 1000, "text": " ".join(words), "words": entries}
        else:
            chars = len(" ".join(words))
            end = t + pad_before + draw(st.integers(2 * chars, 40_000 + 2 * chars))
            segment = {"start": t / 1000, "end": end / 1000, "text": " ".join(words)}
        if seg_speaker:
            segment["speaker"] = seg_speaker
        segments.append(segment)
        t = int(end) + draw(st.integers(0, 2000))
    return segments


_TIME = st.one_of(st.none(), st.floats(0, 30, allow_subnormal=False), st.just(5.0), st.just(float("nan")))


@st.composite
def messy_transcripts(draw) -> list[dict]:
    """Anything alignment might hand over: overlaps, zero-length and untimed words, equal
    starts, segments out of order."""
    segments = []
    for _ in range(draw(st.integers(0, 5))):
        words = draw(st.lists(_WORD, min_size=1, max_size=15))
        start = draw(st.floats(0, 30, allow_subnormal=False))
        segment = {"start": start, "end": start + draw(st.floats(0, 10, allow_subnormal=False)), "text": " ".join(words)}
        if draw(st.booleans()):
            segment["words"] = [
                {"word": w, "start": draw(_TIME), "end": draw(_TIME), **({"speaker": s} if (s := draw(_SPEAKER)) else {})}
                for w in words
            ]
        if speaker := draw(_SPEAKER):
            segment["speaker"] = speaker
        segments.append(segment)
    return segments


def _normalized(segments: list[dict]) -> list[dict]:
    """The segments as the checker reads them: NaN word times count as missing."""
    out = []
    for segment in segments:
        copy = dict(segment)
        if "words" in copy:
            copy["words"] = [
                {**w, **{k: None for k in ("start", "end") if isinstance(w.get(k), float) and math.isnan(w[k])}}
                for w in copy["words"]
            ]
        out.append(copy)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clean_transcripts(), _OPTIONS)
def test_property_clean_input_keeps_every_invariant(segments, options):
    check_cues(parse_srt(formats.render(segments, "srt", options)), segments, options)
    check_cues(parse_vtt(formats.render(segments, "vtt", options)), segments, options)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_transcripts(), _OPTIONS)
def test_property_messy_input_still_gives_valid_files(segments, options):
    normalized = _normalized(segments)
    check_cues(parse_srt(formats.render(segments, "srt", options)), normalized, options, exact_times=False)
    check_cues(parse_vtt(formats.render(segments, "vtt", options)), normalized, options, exact_times=False)
