"""Language detection and telephone speech on clips the worker was never tuned on, against
plain faster-whisper on the same model and audio.

Splits of festvox-ru (``bench/accuracy.py`` uses the same): clip number modulo 4 == 1 is the
*dev* split (tuning and experiments), modulo 4 == 3 the *test* split (never tuned on; the
clips below are every 8th of it). ``ru_0410`` (rest split) is the clip the old detection lost
to Romanian, kept as a named regression case.

What is asserted (measured with ``CT2_FORCE_CPU_ISA=AVX2`` and natively on AVX-512; numbers in
the test docstrings):
- no clip where the worker's language is wrong and faster-whisper's ``detect_language`` right;
- the worker's WER with ``language: null`` equals its WER with ``language: "ru"`` (+0.005);
- on the same clips through a 300-3400 Hz band at 8 kHz, the worker's WER with the language
  detected is no worse than plain sequential faster-whisper's.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf
from references import BASE_MODEL, FESTVOX, LOCAL_MODELS, PYANNOTE_SAMPLE, festvox_transcripts, wer

import asr
import rp_schema
import vad
from models import resolve_asr_model
from offline_worker import REQUEST_ENV, offline_predictor, offline_process_env

SR = 16_000
TELEPHONE_MARGIN = 0.01  # WER: sampling noise of 21 clips (~330 words)
TEST_SPLIT = tuple(c for c in sorted(festvox_transcripts()) if int(c.split("_")[1]) % 4 == 3)
TEST_CLIPS = TEST_SPLIT[::8] + ("ru_0410",)  # 20 test-split clips + the regression clip


@pytest.fixture(scope="module")
def predictor():
    with offline_process_env():
        yield offline_predictor()


@pytest.fixture(scope="module")
def plain_whisper():
    """faster-whisper's own ``WhisperModel`` on the same CTranslate2 weights."""
    from faster_whisper import WhisperModel

    return WhisperModel(str(LOCAL_MODELS / BASE_MODEL), device="cpu", compute_type="int8")


def load(path) -> np.ndarray:
    samples, rate = sf.read(str(path), dtype="float32")
    assert rate == SR
    return samples


def worker_language(predictor, samples: np.ndarray) -> str | None:
    """The worker's detection on ``samples`` (its VAD windows, then ``asr.detect_language``
    with the request defaults), without transcribing."""
    model, _ = predictor.asr_models.whisper(resolve_asr_model(BASE_MODEL, str(LOCAL_MODELS), None), "int8")
    scores = vad.speech_scores(predictor.asr_models.vad(), samples)
    windows = vad.speech_windows(scores, vad.VadOptions(), len(samples) / SR)
    defaults = rp_schema.defaults()
    detection = asr.detect_language(model, samples, vad.detection_windows(scores, windows),
                                    defaults["language_detection_min_prob"], defaults["language_detection_max_tries"], "cpu")
    return detection.language


def transcribe(predictor, path, language: str | None) -> dict:
    fields = {"audio_file": str(path), "language": language, "diarization": False, "align_output": False}
    return predictor.predict(rp_schema.resolve_options(fields, REQUEST_ENV))


def text(result: dict) -> str:
    return " ".join(s["text"] for s in result["segments"])


def music(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    notes = np.array([220, 277, 330, 440, 554, 659])
    freq = notes[(t // 0.4).astype(int) % len(notes)]
    return (0.15 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(4 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float) -> np.ndarray:
    return (np.random.default_rng(5).standard_normal(int(seconds * SR)) * 0.05).astype(np.float32)


def telephone(src, dest):
    """``src`` through a 300-3400 Hz band-pass at 8 kHz (PCM16 WAV), as a phone line carries it."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src),
                    "-af", "highpass=f=300:poles=2,highpass=f=300:poles=2,lowpass=f=3400:poles=2,lowpass=f=3400:poles=2",
                    "-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le", str(dest)], check=True, timeout=60)
    return dest


# ------------------------------------------------------------------ detection
def test_detection_never_worse_than_faster_whisper(predictor, plain_whisper):
    """On the 21 clips, 12 s of noise or music before speech, and English: every clip that
    faster-whisper's ``detect_language`` gets right, the worker gets right too. Measured on
    all 629 cases of bench/accuracy.py language (H200, float16): worker 626, faster-whisper
    625, none where only the worker is wrong (before: ru_0410 read as Romanian; docs/BENCHMARKS.md
    section 5)."""
    cases = {clip: ("ru", load(FESTVOX / "wav" / f"{clip}.wav")) for clip in TEST_CLIPS}
    english = load(PYANNOTE_SAMPLE / "sample.wav")
    cases["pyannote sample"] = ("en", english)
    speech = load(FESTVOX / "wav" / "ru_0203.wav")
    cases["noise then ru"] = ("ru", np.concatenate([noise(12), speech]))
    cases["music then ru"] = ("ru", np.concatenate([music(12), speech]))
    cases["music then en"] = ("en", np.concatenate([music(12), english]))
    worse = []
    for name, (truth, samples) in cases.items():
        mine = worker_language(predictor, samples)
        theirs, _, _ = plain_whisper.detect_language(samples)
        print(f"{name}: truth {truth}, worker {mine}, faster-whisper {theirs}")
        if mine != truth and theirs == truth:
            worse.append((name, mine))
    assert worse == []
    assert worker_language(predictor, load(FESTVOX / "wav" / "ru_0410.wav")) == "ru"


def test_auto_language_wer_equals_forced_language_wer(predictor, plain_whisper):
    """With ``language: null`` the worker writes exactly what it writes with ``language: "ru"``
    on every clip whose language it detects, and it misses none that faster-whisper gets
    right; so the WER difference is what the misses that both share cost. Over all 620
    festvox-ru clips (bench/accuracy.py language) those are 2 clips, read as Ukrainian by
    both (ru_0259, ru_0371)."""
    refs = festvox_transcripts()
    auto, forced, missed = [], [], []
    for clip in TEST_CLIPS:
        path = FESTVOX / "wav" / f"{clip}.wav"
        result = transcribe(predictor, path, None)
        auto.append(text(result))
        forced.append(text(transcribe(predictor, path, "ru")))
        if result["detected_language"] != "ru":
            missed.append(clip)
        else:
            assert auto[-1] == forced[-1], clip
    references = [refs[c] for c in TEST_CLIPS]
    shared = [c for c in missed if plain_whisper.detect_language(load(FESTVOX / "wav" / f"{c}.wav"))[0] != "ru"]
    print(f"WER auto {wer(references, auto):.4f}, forced ru {wer(references, forced):.4f}; missed {missed} "
          f"(faster-whisper misses too: {shared})")
    assert missed == shared
    kept = [i for i, c in enumerate(TEST_CLIPS) if c not in missed]
    assert wer([references[i] for i in kept], [auto[i] for i in kept]) == wer([references[i] for i in kept], [forced[i] for i in kept])


# ------------------------------------------------------------------ telephone band
def test_telephone_band_no_worse_than_faster_whisper(predictor, plain_whisper, tmp_path):
    """The 21 clips at 8 kHz through a 300-3400 Hz band, language detected by each: the
    worker's WER is no worse than sequential faster-whisper's (its defaults: beam 5, with
    timestamps, conditioned on previous text), within ``TELEPHONE_MARGIN``. See the printed numbers and
    docs/BENCHMARKS.md for the dev and test splits measured with bench/accuracy.py."""
    refs = festvox_transcripts()
    mine, theirs, worse = [], [], []
    for clip in TEST_CLIPS:
        path = telephone(FESTVOX / "wav" / f"{clip}.wav", tmp_path / f"{clip}_8k.wav")
        result = transcribe(predictor, path, None)
        mine.append(text(result))
        segments, info = plain_whisper.transcribe(str(path))
        theirs.append(" ".join(s.text.strip() for s in segments))
        if result["detected_language"] != "ru" and info.language == "ru":
            worse.append(clip)
    references = [refs[c] for c in TEST_CLIPS]
    print(f"telephone WER: worker {wer(references, mine):.4f}, faster-whisper {wer(references, theirs):.4f}")
    assert worse == []
    # Measured: test clips 0.196 vs 0.193 (one word in 330), dev split (40 clips, tuning)
    # 0.203 vs 0.218: a tie within sampling noise, hence one word in a hundred of margin.
    assert wer(references, mine) <= wer(references, theirs) + TELEPHONE_MARGIN
