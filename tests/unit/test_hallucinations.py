"""The hallucination screen on strings: known phrases, edge sentences, loops, and the rule in
``asr._screen_text`` that decides what is dropped (no model needed)."""

from __future__ import annotations

import pytest

from stages import asr
from stages import hallucinations as h


@pytest.mark.parametrize("text", [
    "Редактор субтитров А.Синецкая Корректор А.Егорова",
    "Субтитры и Корректор А.Егорова",  # what the brown-noise window gives on an AMD AVX2 CPU
    "Субтитры сделал DimaTorzok",
    "Субтитры создавал DimaTorzok.",
    "Субтитры и подписывайтесь на канал!",
    "Продолжение следует...",
    "ПРОДОЛЖЕНИЕ СЛЕДУЕТ",
    "Спасибо за просмотр!",
    "Подписывайтесь на наш канал.",
    "Ставьте лайки и подписывайтесь на канал",
    "ТРЕВОЖНАЯ МУЗЫКА",
    "ПЕЧАЛЬНАЯ ЗАСТАВКА",
    "Тихая спокойная музыка. Лай собаки.",
    "[музыка]",
    "Спасибо.",
    "Thank you for watching!",
    "Thanks for watching, and see you next time.",
    "Subtitles by the Amara.org community",
    "Please subscribe to my channel.",
    "[Music]",
    "А-а-а-а!",
    "Мммм...",
    "Oh!",
    "you",
    "Sous-titres réalisés par la communauté d'Amara.org",
])
def test_known_phrases(text):
    assert h.is_known_phrase(text)


@pytest.mark.parametrize("text", [
    "Спасибо, что пришли сегодня на нашу встречу.",
    "Я включил субтитры и смотрю фильм.",
    "Мне очень нравится эта спокойная тихая музыка.",
    "Я слышу звук.",  # a caption is adjectives and a sound, nothing else
    "Был выстрел.",
    "Корректор текста нашёл три ошибки в статье о субтитрах и редакторах, и мы их исправили.",
    "Это странно, но я уж, как-то привыкла к вам.",
    "I love you",
    "А он ушёл.",
    "Thank you for coming to the meeting today, we have a lot to discuss.",
    "",
    "и",
])
def test_ordinary_sentences_are_not_known_phrases(text):
    assert not h.is_known_phrase(text)


def test_normalise_folds_case_punctuation_and_yo():
    assert h.normalise("  Её «ЁЛКА»,  ПРОДОЛЖЕНИЕ—следует… ") == "ее елка продолжение следует"
    assert h.is_known_phrase("Продолжение слЕдует!!!") and h.is_known_phrase("спасибо  за   просмотр")


def test_mostly_a_phrase():
    assert h.known_share("Редактор субтитров А.Синецкая Корректор А.Егорова") == 1.0  # one credit does not swallow the next
    assert 0 < h.known_share("Я включил субтитры и смотрю фильм.") < h.MOSTLY


def test_edge_sentences_are_stripped_middle_ones_kept():
    speech = "Это странно, но я уж, как-то привыкла к вам."
    assert h.strip_edge_phrases(f"{speech} Продолжение следует...") == speech
    assert h.strip_edge_phrases(f"Субтитры сделал DimaTorzok. {speech} Спасибо за просмотр!") == speech
    assert h.strip_edge_phrases(f"{speech} Спасибо за просмотр. {speech}") == f"{speech} Спасибо за просмотр. {speech}"
    assert h.strip_edge_phrases("Спасибо за просмотр! Подписывайтесь на канал!") == ""
    assert h.strip_edge_phrases(speech) == speech


@pytest.mark.parametrize("text, collapsed", [
    ("и и и и и", "и"),
    ("Привет, мир и и и и и конец", "Привет, мир и конец"),
    ("Я не знаю. Я не знаю. Я не знаю. Что?", "Я не знаю. Что?"),
    ("Thank you, Mr. President, thank you, Mr. President, thank you, Mr. President.", "Thank you, Mr. President,"),
    ("Тихо! Тихо! Тихо!", "Тихо!"),  # the same sentence three times, however short
    ("Да, да, да.", "Да, да, да."),  # three words in one sentence: a normal way to say it
    ("ну ну ну", "ну ну ну"),
    ("Мы шли, шли и шли.", "Мы шли, шли и шли."),
    ("Он сказал: нет, нет. Она сказала: нет, нет.", "Он сказал: нет, нет. Она сказала: нет, нет."),
])
def test_loops_are_collapsed(text, collapsed):
    assert h.collapse_repeats(text) == collapsed
    assert h.has_loop(text) == (collapsed != text)


class FakeTokenizer:
    def encode(self, text):
        return [len(word) for word in text.split()]


def window(text, speech_prob=0.9, no_speech_prob=0.05):
    return asr.WindowTranscript(0.0, 10.0, text, [1, 2, 3], -0.3, no_speech_prob, asr.compression_ratio(text), 0.0, speech_prob=speech_prob)


def screen(result, opts=None):
    asr._screen_text(result, opts or asr.DecodeOptions(), FakeTokenizer())
    return result


def test_known_phrase_is_dropped_where_the_vad_or_whisper_doubts():
    credit = "Субтитры и Корректор А.Егорова"
    assert screen(window(credit, speech_prob=0.03, no_speech_prob=0.559)).silent  # the AMD case: VAD doubts
    assert screen(window(credit, speech_prob=0.8, no_speech_prob=0.45)).silent  # Whisper leans to non-speech
    kept = screen(window(credit, speech_prob=0.8, no_speech_prob=0.05))  # both sure: someone said it
    assert not kept.silent and kept.text == credit and kept.screened is None


def test_real_sentence_with_thanks_on_speech_stays():
    text = "Спасибо, что пришли сегодня. Спасибо за внимание."
    result = screen(window(text, speech_prob=0.95, no_speech_prob=0.01))
    assert not result.silent and result.text == text
    bare = screen(window("Спасибо.", speech_prob=0.95, no_speech_prob=0.01))
    assert not bare.silent and bare.text == "Спасибо."


def test_edge_phrase_is_cut_only_where_the_vad_doubts():
    speech = "Это странно, но я уж, как-то привыкла к вам."
    doubted = screen(window(f"{speech} Продолжение следует...", speech_prob=0.4))
    assert not doubted.silent and doubted.text == speech and doubted.screened == "edge phrase cut"
    assert doubted.tokens == FakeTokenizer().encode(" " + speech)  # tokens follow the text (Whisper's word timings)
    sure = screen(window(f"{speech} Продолжение следует...", speech_prob=0.9))
    assert sure.text == f"{speech} Продолжение следует..."


def test_loops_are_collapsed_or_dropped_where_the_vad_doubts():
    looped = screen(window("Я не знаю. " * 6, speech_prob=0.9))
    assert not looped.silent and looped.text == "Я не знаю." and looped.screened == "repeats collapsed"
    # What people do say on clear speech stays as said.
    for said in ("Алло. Алло. Алло.", "Тихо! Тихо! Тихо! Тихо!", "да да да да да"):
        kept = screen(window(said, speech_prob=0.9))
        assert not kept.silent and kept.text == said and kept.screened is None, said
    assert screen(window("Я не знаю. Я не знаю. Я не знаю.", speech_prob=0.3)).silent
    assert screen(window("и и и и и и", speech_prob=0.3)).silent
    assert screen(window("Thanks for watching! Thanks for watching! Thanks for watching!", speech_prob=0.9, no_speech_prob=0.4)).silent


def test_the_screen_follows_the_thresholds_switches():
    """``no_speech_threshold: null`` keeps known phrases, ``compression_ratio_threshold: null`` keeps loops."""
    raw = asr.DecodeOptions(no_speech_threshold=None, compression_ratio_threshold=None)
    credit = screen(window("Субтитры и Корректор А.Егорова", speech_prob=0.03, no_speech_prob=0.9), raw)
    assert not credit.silent and credit.text == "Субтитры и Корректор А.Егорова"
    loop = screen(window("и и и и и и", speech_prob=0.3), raw)
    assert not loop.silent and loop.text == "и и и и и и"
