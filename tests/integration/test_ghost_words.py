"""No ghost words: the real worker, default request options (diarization off), on non-speech.

33 non-speech clips are made here with numpy (seeded): silence, white/pink/brown noise from
-50 to -10 dBFS, mains hum with harmonics, clicks, synthetic music, tones, room tone. Each is
transcribed alone (5–15 s; every word is a ghost word), and 10 of them also between festvox-ru
speech clips, in one request (a word that overlaps no speech clip is a ghost word; the speech
clips' WER there is compared with the same clips transcribed alone). The VAD keeps nearly all
of it from the decoder, so each clip is also decoded as a speech window of its own, with its
real VAD probability and the default decoding options: what a low ``vad_onset`` or a fooled
VAD hands over, and where Whisper's thresholds alone decide by a few hundredths, differently
on different CPUs. There every drop must rest on a signal with a margin: a known phrase or loop
(``hallucinations.py``), or scores well clear of the thresholds.

Run it as an AMD AVX2 machine would (CTranslate2 then uses oneDNN, not MKL; its
``CT2_FORCE_CPU_ISA=AVX2`` alone changes nothing here, as the int8 GEMM is MKL's either way):

    CT2_FORCE_CPU_ISA=AVX2 CT2_USE_MKL=0 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python -m pytest tests/integration/test_ghost_words.py

``python tests/integration/test_ghost_words.py`` prints the ghost words per category with
and without the hallucination screen (the "before" numbers) instead of asserting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

if __name__ == "__main__":  # run as a script: the same import path pytest's conftest gives
    sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "src"), str(Path(__file__).resolve().parents[1])]

from references import FESTVOX, LOCAL_MODELS, festvox_transcripts, wer

from stages import asr
from stages import hallucinations
import quality
import rp_schema
from stages import vad
from offline_worker import REQUEST_ENV, offline_predictor, offline_process_env

SR = 16_000
EDGE_TOLERANCE_S = 0.5  # Whisper's own word times (no aligner offline) may spill this far past a clip
# Short festvox-ru clips (3.8–5 s; fixtures_audio.SHORT_CLIPS), taken in turn around the non-speech.
SPEECH_CLIPS = ("ru_0683", "ru_0308", "ru_0063", "ru_0695", "ru_0054", "ru_0306")
# What another CPU may move a score by: CTranslate2's int8 kernels gave the brown-noise window
# of test_decoding no-speech probability 0.670 here (MKL) and 0.559 on an AMD AVX2 CPU (0.571
# with oneDNN limited to AVX2 here); log-probabilities moved by up to 0.15 on these clips.
NO_SPEECH_MARGIN = 0.15
LOG_PROB_MARGIN = 0.2
VAD_MARGIN = 0.1


# ------------------------------------------------------------------ signals
# Measured quality: run on every CPU kernel path by scripts/kernel_paths.py.
pytestmark = pytest.mark.quality


def at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS of ``dbfs`` (0 dBFS = RMS 1.0), as float32."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32) if rms > 0 else x.astype(np.float32)


def coloured(rng: np.random.Generator, seconds: float, exponent: float) -> np.ndarray:
    """Noise with power ~ 1/f**exponent: 0 white, 1 pink, 2 brown (above 20 Hz)."""
    n = int(seconds * SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spectrum *= np.maximum(freqs, 20.0) ** (-exponent / 2)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n)


def hum(seconds: float, base_hz: float, harmonics: int = 6) -> np.ndarray:
    """Mains hum: ``base_hz`` and its harmonics at falling levels, odd ones stronger."""
    t = np.arange(int(seconds * SR)) / SR
    return sum((1.0 if k % 2 else 0.5) / k * np.sin(2 * np.pi * base_hz * k * t + k) for k in range(1, harmonics + 1))


def clicks(rng: np.random.Generator, seconds: float, per_second: float, regular: bool = False) -> np.ndarray:
    """Short decaying impulses (1–3 ms) at random (Poisson) or regular times, random levels."""
    n = int(seconds * SR)
    out = np.zeros(n)
    times = np.arange(0.2, seconds, 1 / per_second) if regular else np.sort(rng.uniform(0, seconds, rng.poisson(per_second * seconds)))
    for at in times:
        length = int(rng.uniform(0.001, 0.003) * SR)
        first = int(at * SR)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4)) * rng.uniform(0.3, 1.0)
        out[first : first + length] += burst[: n - first]
    return out


def tone(freq: float | np.ndarray, t: np.ndarray, partials: int = 4) -> np.ndarray:
    """A note with a few harmonics (a soft sawtooth)."""
    return sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, partials + 1))


def music(seconds: float, bpm: float, parts: set[str], seed: int) -> np.ndarray:
    """Synthetic music: a I–V–vi–IV progression as ``pad`` (held chords), ``chords`` (struck on
    the beat), ``arpeggio`` (one note per half beat), ``bass`` (root on the beat) and
    ``drums`` (kick on 1 and 3, hi-hat on every half beat)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    beat = 60.0 / bpm
    root = 220.0 * 2 ** (rng.integers(0, 7) / 12)
    progression = [(0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12)]  # semitones of I, V, vi, IV
    chord = np.array(progression)[(t // (4 * beat)).astype(int) % 4]  # one chord per bar
    in_beat = t % beat
    out = np.zeros(n)
    if "pad" in parts:
        out += sum(tone(root * 2 ** (chord[:, i] / 12), t, 3) for i in range(3)) * 0.3
    if "chords" in parts:
        out += sum(tone(root * 2 ** (chord[:, i] / 12), t) for i in range(3)) * np.exp(-in_beat / 0.25)
    if "arpeggio" in parts:
        step = (t // (beat / 2)).astype(int) % 3
        out += tone(2 * root * 2 ** (chord[np.arange(n), step] / 12), t) * np.exp(-(t % (beat / 2)) / 0.15)
    if "bass" in parts:
        out += 1.5 * tone(root / 2 * 2 ** (chord[:, 0] / 12), t, 2) * np.exp(-in_beat / 0.4)
    if "drums" in parts:
        bar_beat = (t // beat).astype(int) % 4
        kick = np.sin(2 * np.pi * (60 + 60 * np.exp(-in_beat / 0.03)) * in_beat) * np.exp(-in_beat / 0.12)
        out += 2.0 * kick * np.isin(bar_beat, (0, 2))
        half = t % (beat / 2)
        out += 0.4 * rng.standard_normal(n) * np.exp(-half / 0.02)
    return out


def beeps(seconds: float, pattern: str) -> np.ndarray:
    """``busy``: 1 kHz, 0.25 s on / 0.75 s off; ``dtmf``: keypad tones; ``sweep``: 100 Hz–4 kHz chirps."""
    t = np.arange(int(seconds * SR)) / SR
    if pattern == "busy":
        return np.sin(2 * np.pi * 1000 * t) * ((t % 1.0) < 0.25)
    if pattern == "dtmf":
        low, high = (697, 770, 852, 941), (1209, 1336, 1477)
        key = (t // 0.4).astype(int)
        pair = np.sin(2 * np.pi * np.take(low, key % 4) * t) + np.sin(2 * np.pi * np.take(high, key % 3) * t)
        return pair * ((t % 0.4) < 0.2)
    period = t % 2.0
    return np.sin(2 * np.pi * (100 * period + (3900 / 4.0) * period**2))  # 100 Hz -> 4 kHz in 2 s


def room_tone(rng: np.random.Generator, seconds: float, kind: str) -> np.ndarray:
    """``office``: pink hiss + low rumble + faint hum; ``fan``: brown noise + 120 Hz blade tone;
    ``rain``: hiss with soft droplet clicks."""
    if kind == "office":
        return at_dbfs(coloured(rng, seconds, 1), -50) + at_dbfs(coloured(rng, seconds, 2), -48) + at_dbfs(hum(seconds, 50), -62)
    if kind == "fan":
        return at_dbfs(coloured(rng, seconds, 2), -36) + at_dbfs(hum(seconds, 120, 4), -45)
    return at_dbfs(coloured(rng, seconds, 0.5), -34) + at_dbfs(clicks(rng, seconds, 25), -40)


@dataclass(frozen=True)
class Clip:
    category: str
    name: str
    make: Callable[[np.random.Generator], np.ndarray]


def non_speech_clips() -> list[Clip]:
    """The non-speech set: (category, name, maker); a maker gets its own seeded generator."""
    clips = [
        Clip("silence", "digital silence 8s", lambda r: np.zeros(8 * SR)),
        Clip("silence", "dither -80dBFS 6s", lambda r: at_dbfs(r.standard_normal(6 * SR), -80)),
    ]
    for colour, exponent in (("white", 0), ("pink", 1), ("brown", 2)):
        for level, seconds in ((-50, 10), (-35, 7), (-20, 12), (-10, 5)):
            clips.append(Clip(f"{colour} noise", f"{colour} {level}dBFS {seconds}s",
                              lambda r, e=exponent, lv=level, s=seconds: at_dbfs(coloured(r, s, e), lv)))
    for base, level, seconds in ((50, -50, 10), (50, -35, 8), (50, -20, 12), (60, -30, 6)):
        clips.append(Clip("hum", f"{base}Hz hum {level}dBFS {seconds}s", lambda r, b=base, lv=level, s=seconds: at_dbfs(hum(s, b), lv)))
    clips += [
        Clip("clicks", "sparse clicks 10s", lambda r: at_dbfs(clicks(r, 10, 2), -40)),
        Clip("clicks", "crackle over hiss 8s", lambda r: at_dbfs(clicks(r, 8, 40), -30) + at_dbfs(r.standard_normal(8 * SR), -60)),
        Clip("clicks", "clock ticks 12s", lambda r: at_dbfs(clicks(r, 12, 1, regular=True), -35)),
        Clip("music", "pad 80bpm 12s", lambda r: at_dbfs(music(12, 80, {"pad"}, 1), -22)),
        Clip("music", "chords 120bpm 10s", lambda r: at_dbfs(music(10, 120, {"chords"}, 2), -20)),
        Clip("music", "arpeggio 140bpm 8s", lambda r: at_dbfs(music(8, 140, {"arpeggio", "bass"}, 3), -20)),
        Clip("music", "drums 100bpm 9s", lambda r: at_dbfs(music(9, 100, {"drums"}, 4), -20)),
        Clip("music", "band 110bpm 15s", lambda r: at_dbfs(music(15, 110, {"chords", "bass", "drums"}, 5), -18)),
        Clip("music", "quiet band 95bpm 10s", lambda r: at_dbfs(music(10, 95, {"pad", "arpeggio", "drums"}, 6), -40)),
        Clip("tones", "busy beeps 8s", lambda r: at_dbfs(beeps(8, "busy"), -25)),
        Clip("tones", "dtmf 6s", lambda r: at_dbfs(beeps(6, "dtmf"), -25)),
        Clip("tones", "sweeps 10s", lambda r: at_dbfs(beeps(10, "sweep"), -25)),
        Clip("room tone", "office 12s", lambda r: room_tone(r, 12, "office")),
        Clip("room tone", "fan 10s", lambda r: room_tone(r, 10, "fan")),
        Clip("room tone", "rain 8s", lambda r: room_tone(r, 8, "rain")),
    ]
    return clips


# Clips also placed between two speech clips (a shortened copy: 5–7 s of it).
BETWEEN = ("digital silence 8s", "white -35dBFS 7s", "pink -20dBFS 12s", "brown -20dBFS 12s", "50Hz hum -20dBFS 12s",
           "crackle over hiss 8s", "band 110bpm 15s", "arpeggio 140bpm 8s", "busy beeps 8s", "office 12s")


def render(clip: Clip, index: int) -> np.ndarray:
    return np.clip(clip.make(np.random.default_rng(1000 + index)), -1.0, 1.0).astype(np.float32)


def speech(clip: str) -> np.ndarray:
    return sf.read(FESTVOX / "wav" / f"{clip}.wav", dtype="float32")[0]


# ------------------------------------------------------------------ running the worker
def transcribe(predictor, path: Path, **fields) -> list[dict]:
    """Segments of one request with the default options (diarization off)."""
    return predictor.predict(rp_schema.resolve_options({"audio_file": str(path), "diarization": False, **fields}, REQUEST_ENV))["segments"]


def timed_words(segments: list[dict]) -> list[tuple[float, float, str]]:
    """(start, end, word) of every word; a segment without word times lends its own."""
    out = []
    for segment in segments:
        words = segment.get("words") or [{"word": w} for w in segment["text"].split()]
        out += [(w.get("start", segment["start"]), w.get("end", segment["end"]), w["word"]) for w in words]
    return out


def overlap(start: float, end: float, span: tuple[float, float]) -> float:
    """Seconds of [start, end] inside ``span`` widened by ``EDGE_TOLERANCE_S``; a zero-length
    word inside counts as a tiny overlap."""
    low, high = max(start, span[0] - EDGE_TOLERANCE_S), min(end, span[1] + EDGE_TOLERANCE_S)
    return high - low + 1e-6 if high >= low else 0.0


@dataclass
class Outcome:
    """Ghost words per non-speech clip, and the speech clips' text around them and alone."""

    alone: dict[str, list[str]]  # clip name -> every word of the clip transcribed alone
    between: dict[str, list[str]]  # clip name -> words inside it when between two speech clips
    forced: dict[str, asr.WindowTranscript]  # clip name -> the clip decoded as a speech window
    speech_between: list[tuple[str, str]]  # (speech clip, its words in the chain)
    speech_alone: dict[str, str]  # speech clip -> its text transcribed alone
    seconds: dict[str, float]

    @staticmethod
    def by_category(which: dict[str, list[str]]) -> dict[str, int]:
        category = {c.name: c.category for c in non_speech_clips()}
        counts: dict[str, int] = {}
        for name, words in which.items():
            counts[category[name]] = counts.get(category[name], 0) + len(words)
        return counts

    def wer_between(self) -> float:
        refs = festvox_transcripts()
        return wer([refs[c] for c, _ in self.speech_between], [h for _, h in self.speech_between])

    def wer_alone(self) -> float:
        refs = festvox_transcripts()
        return wer([refs[c] for c, _ in self.speech_between], [self.speech_alone[c] for c, _ in self.speech_between])


def run_alone(predictor, workdir: Path, rendered: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """Each non-speech clip as a request of its own: every word is a ghost word."""
    ghosts = {}
    for i, (name, audio) in enumerate(rendered.items()):
        path = workdir / f"alone_{i:02d}.wav"
        sf.write(path, audio, SR)
        ghosts[name] = [w for _, _, w in timed_words(transcribe(predictor, path))]
    return ghosts


def run_between(predictor, workdir: Path, rendered: dict[str, np.ndarray]):
    """One request: speech, non-speech, speech, non-speech, ..., speech (``BETWEEN`` clips of
    5–7 s between 11 festvox clips). A word is the speech clip's it overlaps most; a word
    that overlaps no speech clip is a ghost of the non-speech it lies in."""
    parts, spans, gaps, at = [], [], {}, 0.0
    for i in range(len(BETWEEN) + 1):
        clip = SPEECH_CLIPS[i % len(SPEECH_CLIPS)]
        audio = speech(clip)
        parts.append(audio)
        spans.append((clip, (at, at + len(audio) / SR)))
        at += len(audio) / SR
        if i < len(BETWEEN):
            gap = rendered[BETWEEN[i]][: int((5 + i % 3) * SR)]
            parts.append(gap)
            gaps[BETWEEN[i]] = (at, at + len(gap) / SR)
            at += len(gap) / SR
    path = workdir / "between.wav"
    sf.write(path, np.concatenate(parts), SR)
    texts: dict[int, list[str]] = {i: [] for i in range(len(spans))}
    ghosts: dict[str, list[str]] = {name: [] for name in gaps}
    for start, end, word in timed_words(transcribe(predictor, path)):
        best = max(range(len(spans)), key=lambda i: overlap(start, end, spans[i][1]))
        if overlap(start, end, spans[best][1]) > 0:
            texts[best].append(word)
        else:
            middle = (start + end) / 2
            ghosts[min(gaps, key=lambda g: 0 if gaps[g][0] <= middle <= gaps[g][1] else abs(middle - sum(gaps[g]) / 2))].append(word)
    return ghosts, [(spans[i][0], " ".join(texts[i])) for i in range(len(spans))]


def run_forced(predictor, rendered: dict[str, np.ndarray], language: str = "ru") -> dict[str, asr.WindowTranscript]:
    """Each non-speech clip decoded as one speech window (what a low ``vad_onset``, or a VAD
    fooled by the noise, hands the decoder), with its real VAD speech probability and the
    request's default decoding options: the case Whisper's thresholds alone decide by a few
    hundredths, differently on different CPUs."""
    from resident.models import resolve_asr_model
    from predict import decode_options

    audio = np.concatenate(list(rendered.values()))
    scores = vad.speech_scores(predictor.asr_models.vad(), audio)
    windows, at = [], 0.0
    for clip in rendered.values():
        region = ((at, at + len(clip) / SR),)
        windows.append(vad.SpeechWindow(at, region[0][1], region, vad.mean_speech_prob(scores, region)))
        at = region[0][1]
    opts = rp_schema.resolve_options({"audio_file": "unused.wav"}, REQUEST_ENV)
    model, _ = predictor.asr_models.whisper(resolve_asr_model(opts.model, str(LOCAL_MODELS), None), "int8")
    tokenizer = asr.make_tokenizer(model, language, opts.task)
    decoded = asr.transcribe_windows(model, audio, windows, tokenizer, decode_options(opts), opts.batch_size, "cpu")
    return dict(zip(rendered, decoded))


def kept_words(forced: dict[str, asr.WindowTranscript]) -> dict[str, list[str]]:
    return {name: ([] if t.silent else t.text.split()) for name, t in forced.items()}


def run_all(predictor, workdir: Path) -> Outcome:
    seconds = {}
    started = time.monotonic()
    rendered = {c.name: render(c, i) for i, c in enumerate(non_speech_clips())}
    alone = run_alone(predictor, workdir, rendered)
    seconds["alone"] = time.monotonic() - started
    between, speech_between = run_between(predictor, workdir, rendered)
    seconds["between"] = time.monotonic() - started - sum(seconds.values())
    speech_alone = {clip: " ".join(w for _, _, w in timed_words(transcribe(predictor, FESTVOX / "wav" / f"{clip}.wav", align_output=False)))
                    for clip in SPEECH_CLIPS}
    seconds["speech alone"] = time.monotonic() - started - sum(seconds.values())
    forced = run_forced(predictor, rendered)
    seconds["forced"] = time.monotonic() - started - sum(seconds.values())
    return Outcome(alone, between, forced, speech_between, speech_alone, seconds)


def report(outcome: Outcome, label: str) -> str:
    lines = [f"[{label}] {' '.join(f'{k} {v:.0f} s' for k, v in outcome.seconds.items())}"]
    forced = kept_words(outcome.forced)
    for which, ghosts in (("alone", outcome.alone), ("between", outcome.between), ("forced", forced)):
        lines.append(f"  {which:8s}({len(ghosts)} clips, {sum(map(len, ghosts.values()))} ghost words): {outcome.by_category(ghosts)}")
    lines.append(f"  speech WER between non-speech {outcome.wer_between():.3f}, alone {outcome.wer_alone():.3f}")
    for which, ghosts in (("alone", outcome.alone), ("between", outcome.between), ("forced", forced)):
        lines += [f"    {which} {name}: {' '.join(words)}" for name, words in ghosts.items() if words]
    return "\n".join(lines)


# ------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Outcome:
    with offline_process_env():
        result = run_all(offline_predictor(), tmp_path_factory.mktemp("ghost"))
    print("\n" + report(result, "screen on"))
    return result


def test_the_set_covers_every_kind_of_non_speech():
    clips = non_speech_clips()
    assert len(clips) >= 30 and len({c.name for c in clips}) == len(clips)
    assert {c.category for c in clips} >= {"silence", "white noise", "pink noise", "brown noise", "hum", "clicks", "music", "tones", "room tone"}
    for i, clip in enumerate(clips):
        audio = render(clip, i)
        assert 5 * SR <= len(audio) <= 15 * SR, clip.name
        assert np.array_equal(audio, render(clip, i))  # seeded: the same clip every run
    levels = {c.name: 20 * np.log10(np.sqrt(np.mean(render(c, i).astype(np.float64) ** 2)) + 1e-12) for i, c in enumerate(clips)}
    assert abs(levels["white -35dBFS 7s"] + 35) < 0.5 and abs(levels["brown -50dBFS 10s"] + 50) < 0.5
    assert set(BETWEEN) <= set(levels)


# Of the 33 clips alone, how many may keep a ghost phrase: a window whose no-speech probability
# lands within the kernels' spread of the threshold decides differently per CPU. Measured per
# kernel path (scripts/kernel_paths.py, docs/BENCHMARKS.md): 0 natively on an AMD EPYC (CT2
# AVX2/oneDNN, torch AVX-512); 1 with torch and oneDNN capped at AVX2 ("sweeps 10s" reads "I
# don't know.": no-speech 0.591 there, 0.635 natively, threshold 0.6; Whisper's own rule,
# no-speech > 0.6 and log-prob < -1, keeps it too). The bound is that spread plus one clip
# (``main`` prints the ghost words per clip with the screen on and off).
GHOST_CLIPS_ALONE_MAX = 2


def test_ghost_words_on_non_speech_alone_within_the_kernel_spread(outcome):
    ghosts = {name: words for name, words in outcome.alone.items() if words}
    print("ghost words alone:", ghosts)
    quality.record("ghost words alone", "words", sum(len(w) for w in ghosts.values()))
    quality.check_bound("ghost words alone", "clips_with_ghost_words", len(ghosts), GHOST_CLIPS_ALONE_MAX)


def test_no_ghost_words_between_speech_clips(outcome):
    ghosts = {name: words for name, words in outcome.between.items() if words}
    assert not ghosts, ghosts


def test_no_ghost_words_when_non_speech_reaches_the_decoder(outcome):
    ghosts = {name: words for name, words in kept_words(outcome.forced).items() if words}
    assert not ghosts, ghosts


def test_every_non_speech_window_is_dropped_with_a_margin(outcome):
    """No drop may rest on a score within what another CPU moves it by: each non-speech
    window's text is a known phrase or a loop, or its scores clear the thresholds by
    ``NO_SPEECH_MARGIN`` / ``LOG_PROB_MARGIN`` (and the VAD doubts it by ``VAD_MARGIN``)."""
    opts = rp_schema.resolve_options({"audio_file": "unused.wav"}, REQUEST_ENV)
    shaky = {}
    for name, t in outcome.forced.items():
        assert t.speech_prob < asr.VAD_DOUBT - VAD_MARGIN, (name, t.speech_prob)
        if not t.text:
            continue
        by_text = hallucinations.is_known_phrase(t.text) or hallucinations.has_loop(t.text)
        by_score = (t.no_speech_prob > opts.no_speech_threshold + NO_SPEECH_MARGIN
                    or t.avg_logprob < opts.log_prob_threshold - LOG_PROB_MARGIN)
        if not (by_text or by_score):
            shaky[name] = (t.text, round(t.no_speech_prob, 3), round(t.avg_logprob, 3))
    assert not shaky, shaky


def test_speech_wer_unchanged_next_to_non_speech(outcome):
    """The speech around the non-speech reads as well as the same clips alone: not
    significantly worse over the 11 speech clips of the chain (sign-flip test, p < 0.01;
    ``tests/quality.py``). The WER alone has a sanity floor (the base model on these clips),
    its spread over the kernel paths in docs/BENCHMARKS.md."""
    refs = festvox_transcripts()
    clips = [c for c, _ in outcome.speech_between]
    quality.check_bound("ghost words", "wer_alone", outcome.wer_alone(), 0.25)
    quality.assert_not_worse("speech next to non-speech", [refs[c] for c in clips], [h for _, h in outcome.speech_between],
                             [outcome.speech_alone[c] for c in clips], "between non-speech", "alone")


# ------------------------------------------------------------------ before/after, as a script
def main() -> None:
    import tempfile

    screen = asr._screen_text
    with offline_process_env(), tempfile.TemporaryDirectory() as tmp:
        predictor = offline_predictor()
        for label, screened in (("screen off (before)", False), ("screen on (after)", True)):
            asr._screen_text = screen if screened else (lambda *args: None)
            try:
                print(report(run_all(predictor, Path(tmp)), label), flush=True)
            finally:
                asr._screen_text = screen


if __name__ == "__main__":
    main()
