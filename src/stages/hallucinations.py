"""Known Whisper hallucinations: text that does not depend on the CPU the decoder ran on.

Whisper was trained on subtitled video, so over silence, noise or music it writes what those
subtitles carry where nobody speaks: credits ("Редактор субтитров ...", "Субтитры сделал ..."),
outros ("Продолжение следует...", "Thanks for watching!"), sound captions ("МУЗЫКА"), or it
loops ("и и и и и"). Its no-speech probability is a soft score whose value moves by a few
hundredths between CPUs (CTranslate2's int8 kernels differ by instruction set), so a rule that
only compares it with a threshold is a coin toss near the threshold. The text is the second,
CPU-independent signal: this module says whether a text is (mostly) such a phrase, strips such
sentences at the edges of a text, and collapses loops. Whether the text is dropped is decided
by the caller (``asr.py``), only where the VAD or Whisper doubts speech: the same words said
by a person on a clear speech window stay.

The phrase list is short and curated (phrases widely reported for Whisper, plus the ones
measured on the offline test model); it is a backstop, not a replacement for the thresholds.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# A name after a credit ("Субтитры сделал DimaTorzok", "Корректор А.Егорова"): up to 3 words,
# none of which starts the next credit ("Редактор субтитров А.Синецкая Корректор А.Егорова").
_NAME = r"(?: (?!(?:редактор|корректор|субтитр)\w*)\w+){0,3}"
_THANKS = r"(?:thank you|thanks)(?: so much| very much)?"
# Up to two adjectives before the noun of a sound caption ("ТРЕВОЖНАЯ МУЗЫКА", "ТЕЛЕФОННЫЙ ЗВОНОК").
_ADJECTIVES = r"(?:\w+(?:ая|ое|ый|ий|ой|ые|ие|ей) ){0,2}"

# Patterns over normalised text (``normalise``): they may cover part of a text.
PHRASES: dict[str, tuple[str, ...]] = {
    "ru": (
        r"редактор(?:ы)? субтитров" + _NAME,
        r"корректор" + _NAME,
        r"субтитры (?:сделал|сделала|сделали|делал|делала|создавал|создавала|создал|создала|создавались|"
        r"подготовил|подготовила|подготовлены|перевел|перевела|сделаны)(?: сообществом)?" + _NAME,
        r"субтитры",
        r"dimatorzok",
        r"продолжение следует",
        r"спасибо за (?:просмотр|внимание)(?: видео)?",
        r"(?:подписывайтесь|подпишитесь) на (?:мой |наш |этот )?канал",
        r"подписчик(?:и|ов|ам)?",
        r"не забудьте подписаться(?: на (?:мой |наш )?канал)?",
        r"ставьте (?:лайки?|палец вверх)",
        r"до (?:новых|скорых) встреч",
        r"до встречи в (?:следующем|новом) (?:видео|выпуске)",
    ),
    "en": (
        _THANKS + r" for (?:watching|listening)(?: this video)?",
        r"(?:please )?(?:like and )?subscribe(?: to (?:my|our|the) channel)?",
        r"don t forget to (?:like|subscribe)(?: and subscribe)?",
        r"(?:subtitles|captions|transcription|translated|translation) by" + _NAME + r"(?: community)?",
        r"amara org(?: community)?",
        r"(?:i ll )?see you (?:in the )?next (?:time|video|one)",
    ),
    # The classic credit lines of a few more languages (a detected language can be any).
    "other": (
        r"sous titres? réalisés? (?:par|pour)" + _NAME,
        r"subtítulos? (?:realizados? )?por" + _NAME,
        r"untertitel (?:im auftrag|von|der)" + _NAME,
        r"ご視聴ありがとうございました",
        r"시청해주셔서 감사합니다",
    ),
}

# Texts that are a hallucination only when they make up the whole text (or sentence), alone or
# several in a row, as patterns over normalised text: captions of a sound ("ТРЕВОЖНАЯ МУЗЫКА",
# "[Music]"), or a bare thanks. Inside a longer text they are ordinary words.
WHOLE: dict[str, tuple[str, ...]] = {
    "ru": (
        r"(?:большое )?спасибо(?: большое| вам| всем)?",
        r"всем пока",
        _ADJECTIVES + r"(?:музыка|мелодия|заставка|звук|звуки|шум|шумы|шипение|звонок|гудок|гудки|сигнал|сирена|"
        r"аплодисменты|овации|смех|тишина|стук|шаги|шорох|скрип|треск|свист|выстрел|выстрелы|взрыв|взрывы|гром|"
        r"дождь|ветер|лай|вой|крик|крики|плач|вздох|кашель)(?: играет| телефона| в дверь| собаки)?",
        r"звонит телефон",
        r"а+|о+|э+|у+|ы+|м+|хм+|ах|ох|эх|ух|ой|ай",  # vocalisations: "А-а-а-а!", "Мммм"
    ),
    "en": (
        r"you",
        r"(?:thank you|thanks)(?: very much| so much| all)?",
        r"bye",
        r"(?:\w+ )?(?:music|applause|laughter|silence)(?: playing)?",
        r"a+h*|o+h*|u+h+|u+m+|h+m+|m+",  # "Oh!", "Uh", "Hmm"
    ),
}

# Words that join phrases ("Субтитры и Корректор ..."): neither hallucination nor evidence against.
FILLERS = frozenset({"и", "а", "но", "или", "by", "and", "the", "a", "or", "&"})

# Share of a text's (non-filler) words that phrases must cover for it to be "mostly" a phrase.
MOSTLY = 0.75

# Loops: a single word repeated at least this many times in a row ("и и и и"); a phrase of 2+
# words, or a whole sentence of any length, at least this many times ("Я не знаю. Я не знаю.
# Я не знаю.", "Тихо! Тихо! Тихо!").
MIN_WORD_REPEATS = 4
MIN_PHRASE_REPEATS = 3
MAX_LOOP_WORDS = 12  # longest repeated phrase looked for, in words

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def normalise(text: str) -> str:
    """Lower case, ё -> е, compatibility forms folded, punctuation -> space, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower().replace("ё", "е")
    text = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text)
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _phrase_pattern() -> re.Pattern[str]:
    alternatives = sorted({p for group in PHRASES.values() for p in group}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")


@lru_cache(maxsize=1)
def _whole_pattern() -> re.Pattern[str]:
    """One or more ``WHOLE`` texts in a row ("ТРЕВОЖНАЯ МУЗЫКА СПОКОЙНАЯ МУЗЫКА")."""
    one = "|".join(f"(?:{p})" for group in WHOLE.values() for p in group)
    return re.compile(f"(?:{one})(?: (?:{one}))*")


def known_share(text: str) -> float:
    """Share (0–1) of ``text``'s words, fillers aside, covered by known hallucination phrases;
    1.0 when the whole text is one of ``WHOLE``; 0.0 for an empty text."""
    norm = normalise(text)
    words = norm.split()
    if not words:
        return 0.0
    content = [w for w in words if w not in FILLERS]
    if _whole_pattern().fullmatch(" ".join(content)) or _whole_pattern().fullmatch(norm):
        return 1.0
    covered = [False] * len(words)
    starts = [m.start() for m in re.finditer(r"\S+", norm)]
    for match in _phrase_pattern().finditer(norm):
        for i, start in enumerate(starts):
            if match.start() <= start < match.end():
                covered[i] = True
    counted = [c for w, c in zip(words, covered) if w not in FILLERS or c]
    if not any(covered) or not counted:
        return 0.0
    return sum(counted) / len(counted)


def is_known_phrase(text: str) -> bool:
    """Whether ``text`` is (mostly, ``MOSTLY``) a known hallucination phrase.

    >>> is_known_phrase("Субтитры и Корректор А.Егорова")
    True
    >>> is_known_phrase("Спасибо, что пришли сегодня на нашу встречу.")
    False
    """
    return known_share(text) >= MOSTLY


def sentences(text: str) -> list[str]:
    """``text`` cut after sentence punctuation (. ! ? …) followed by a space."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def strip_edge_phrases(text: str) -> str:
    """``text`` without the whole sentences at its start and end that are known hallucination
    phrases ("... как-то привыкла к вам. Продолжение следует..." -> "... как-то привыкла к
    вам."); sentences in the middle are left alone. Empty when every sentence is one."""
    parts = sentences(text)
    while parts and is_known_phrase(parts[-1]):
        parts.pop()
    while parts and is_known_phrase(parts[0]):
        parts.pop(0)
    return " ".join(parts)


def _key(word: str) -> str:
    return normalise(word)


def collapse_repeats(text: str, min_word_repeats: int = MIN_WORD_REPEATS,
                     min_phrase_repeats: int = MIN_PHRASE_REPEATS) -> str:
    """``text`` with each loop (a word repeated ``MIN_WORD_REPEATS``+ times in a row, or a
    phrase of up to ``MAX_LOOP_WORDS`` words or a sentence repeated ``MIN_PHRASE_REPEATS``+
    times) kept once.

    Words are compared normalised (case, punctuation, ё); the first copy is kept as written.
    "и и и и и" -> "и"; "Тихо! Тихо! Тихо!" -> "Тихо!"; "да, да, да" stays (a normal way to
    say it).
    """
    words = text.split()
    keys = [_key(w) for w in words]
    out: list[str] = []
    i = 0
    while i < len(words):
        best_n, best_count = 0, 0
        for n in range(1, min(MAX_LOOP_WORDS, (len(words) - i) // 2) + 1):
            gram = keys[i : i + n]
            if not any(gram):
                continue
            count = 1
            while keys[i + count * n : i + (count + 1) * n] == gram:
                count += 1
            sentence = words[i + n - 1][-1] in ".!?…"  # each copy ends a sentence
            needed = min_word_repeats if n == 1 and not sentence else min_phrase_repeats
            if count >= needed and n * count > best_n * best_count:
                best_n, best_count = n, count
        if best_count:
            out.extend(words[i : i + best_n])
            i += best_n * best_count
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def has_loop(text: str, min_word_repeats: int = MIN_WORD_REPEATS, min_phrase_repeats: int = MIN_PHRASE_REPEATS) -> bool:
    """Whether ``collapse_repeats`` (with the same minimums) would shorten ``text``."""
    return len(collapse_repeats(text, min_word_repeats, min_phrase_repeats).split()) < len(text.split())
