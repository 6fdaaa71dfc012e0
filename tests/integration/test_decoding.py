"""Decoding behaviour on real weights: quality thresholds that act in batched mode, language
detection on speech (not on the first 30 s), and the decoding controls users ask for."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
from references import BASE_MODEL, FESTVOX, LOCAL_MODELS, PYANNOTE_SAMPLE, festvox_transcripts, wer

from stages import asr
import quality
import rp_schema
from stages import vad
from resident.models import resolve_asr_model, whisper_dimensions
from offline_worker import REQUEST_ENV, offline_predictor, offline_process_env

SR = 16_000
ENV = REQUEST_ENV


@pytest.fixture(scope="module")
def predictor():
    with offline_process_env():
        yield offline_predictor()


def run(predictor, path, **fields) -> dict:
    return predictor.predict(rp_schema.resolve_options({"audio_file": str(path), "diarization": False, **fields}, ENV))


def text(result: dict) -> str:
    return " ".join(s["text"] for s in result["segments"])


def chord_music(seconds: float) -> np.ndarray:
    """A synthetic melody (sine notes, 0.5 s each): music-like non-speech."""
    t = np.arange(int(seconds * SR)) / SR
    notes = np.array([220, 277, 330, 440, 554, 659])
    freq = notes[(t // 0.5).astype(int) % len(notes)]
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def non_speech() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 10 * SR
    return {
        "silence": np.zeros(n, np.float32),
        "white noise": (rng.standard_normal(n) * 0.1).astype(np.float32),
        "hum": (0.2 * np.sin(2 * np.pi * 50 * np.arange(n) / SR)).astype(np.float32),
        "music": chord_music(10),
        "brown noise": (lambda x: 0.3 * x / np.abs(x).max())(np.cumsum(rng.standard_normal(n))).astype(np.float32),
    }


# ------------------------------------------------------------------ thresholds
@pytest.mark.quality  # scripts/kernel_paths.py runs it on every CPU kernel path
def test_thresholds_drop_non_speech_windows(predictor):
    """Windows of non-speech (as a VAD with a low onset lets through) hallucinate text
    ("Редактор субтитров ...") when the thresholds are ignored, as whisperX's batched path
    does; with them, Whisper's no-speech probability and the VAD's own doubt drop them."""
    kinds = non_speech()
    audio = np.concatenate(list(kinds.values()))
    model, _ = predictor.asr_models.whisper(resolve_asr_model(BASE_MODEL, str(LOCAL_MODELS), None), "int8")
    scores = vad.speech_scores(predictor.asr_models.vad(), audio)
    windows = []
    for i in range(len(kinds)):
        region = ((i * 10.0, i * 10.0 + 10.0),)
        windows.append(vad.SpeechWindow(region[0][0], region[0][1], region, vad.mean_speech_prob(scores, region)))
    tokenizer = asr.make_tokenizer(model, "ru", "transcribe")
    on = asr.DecodeOptions(length_penalty=1.1, temperatures=asr.temperature_schedule(0.0, 0.2))
    off = asr.DecodeOptions(length_penalty=1.1, compression_ratio_threshold=None, log_prob_threshold=None, no_speech_threshold=None)
    kept_on = asr.transcribe_windows(model, audio, windows, tokenizer, on, 8, "cpu")
    kept_off = asr.transcribe_windows(model, audio, windows, tokenizer, off, 8, "cpu")
    words_on = sum(len(r.text.split()) for r in kept_on if not r.silent)
    words_off = sum(len(r.text.split()) for r in kept_off if not r.silent)
    print(f"hallucinated words on {len(kinds)} non-speech windows: thresholds on {words_on}, off {words_off}")
    assert words_off >= 5  # the problem is real on these inputs (measured 22)
    assert words_on == 0


@pytest.mark.quality  # scripts/kernel_paths.py runs it on every CPU kernel path
def test_thresholds_cost_no_wer_on_speech(predictor):
    """The screens (no-speech, log-prob, compression thresholds, temperature fallback) cost no
    WER on speech: not significantly worse than without them over 12 clips (sign-flip test,
    p < 0.01; ``tests/quality.py``)."""
    dev_split = [c for c in sorted(festvox_transcripts()) if int(c.split("_")[1]) % 4 == 1]
    clips = ("ru_0002", "ru_0003", "ru_0005", "ru_0022", *dev_split[2:10])
    refs = [festvox_transcripts()[c] for c in clips]
    off_fields = {"no_speech_threshold": None, "log_prob_threshold": None, "compression_ratio_threshold": None, "temperature_increment_on_fallback": None}
    on = [text(run(predictor, FESTVOX / "wav" / f"{c}.wav", align_output=False)) for c in clips]
    off = [text(run(predictor, FESTVOX / "wav" / f"{c}.wav", align_output=False, **off_fields)) for c in clips]
    quality.assert_not_worse("thresholds on speech", refs, on, off, "thresholds on", "thresholds off")


def test_silence_gives_empty_transcript_with_warning(predictor, tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(10 * SR, np.float32), SR)
    result = run(predictor, path)
    assert result["segments"] == []
    assert any("no speech" in w for w in result["warnings"])


# ------------------------------------------------------------------ language detection
@pytest.mark.quality  # scripts/kernel_paths.py runs it on every CPU kernel path
def test_language_detected_on_speech_after_leading_music(predictor, tmp_path):
    """25 s of music and noise before Russian speech: detection runs on the speech windows."""
    speech, _ = sf.read(FESTVOX / "wav" / "ru_0005.wav", dtype="float32")
    rng = np.random.default_rng(0)
    lead = np.concatenate([chord_music(20), (rng.standard_normal(5 * SR) * 0.01).astype(np.float32)])
    path = tmp_path / "music_then_ru.wav"
    sf.write(path, np.concatenate([lead, speech]), SR)
    result = run(predictor, path, debug=True, align_output=False)
    detection = result["debug_info"]["decode"]["language_detection"]
    assert result["detected_language"] == "ru"
    assert detection["tries"][0]["start"] >= 20.0  # the music was never used for detection
    assert detection["met_threshold"] and detection["probability"] >= 0.5
    # Spread over the kernel paths of scripts/kernel_paths.py in docs/BENCHMARKS.md.
    quality.check_bound("speech after music", "wer_ru_0005", wer(festvox_transcripts()["ru_0005"], text(result)), 0.35)


def test_language_detection_retries_up_to_max_tries(predictor, tmp_path):
    clips = [sf.read(FESTVOX / "wav" / f"{c}.wav", dtype="float32")[0] for c in ("ru_0002", "ru_0003", "ru_0022")]
    gap = np.zeros(SR, np.float32)
    audio = np.concatenate([clips[0], gap, clips[1], gap, clips[2]])
    path = tmp_path / "three.wav"
    sf.write(path, np.tile(audio, 3), SR)  # > 60 s: several windows
    result = run(predictor, path, debug=True, align_output=False, language_detection_min_prob=1.0, language_detection_max_tries=2)
    detection = result["debug_info"]["decode"]["language_detection"]
    assert len(detection["tries"]) == 2 and not detection["met_threshold"]
    assert result["detected_language"] == "ru"
    assert any("language_detection_min_prob" in w for w in result["warnings"])


# ------------------------------------------------------------------ decoding controls
@pytest.fixture(scope="module")
def numbers_clip(tmp_path_factory):
    """English synthetic speech full of numbers (espeak-ng)."""
    path = tmp_path_factory.mktemp("tts") / "numbers.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path),
                    "In nineteen forty five, twenty five people paid three hundred dollars for the tickets."], check=True)
    return path


def test_suppress_numerals(predictor, numbers_clip):
    plain = text(run(predictor, numbers_clip, language="en", align_output=False))
    spelled = text(run(predictor, numbers_clip, language="en", align_output=False, suppress_numerals=True))
    assert re.search(r"\d", plain), plain  # the model writes digits by default
    assert not re.search(r"\d", spelled) and "twenty" in spelled.lower(), spelled


def test_initial_prompt_and_hotwords_reach_the_decoder(predictor, numbers_clip):
    """A prompt conditions the decoder: the text may stay the same, its likelihood does not."""

    def decode(**fields):
        result = run(predictor, numbers_clip, language="en", align_output=False, debug=True, **fields)
        return text(result), [w["avg_logprob"] for w in result["debug_info"]["decode"]["windows"]]

    plain = decode()
    prompted = decode(initial_prompt="Протокол заседания. Числа пишем цифрами: 1945, 25, 300.")
    hot = decode(hotwords="билет рублей")
    assert prompted != plain and hot != plain
    assert prompted[1] != plain[1] and hot[1] != plain[1]


def test_translate_task_gives_english(predictor):
    result = run(predictor, FESTVOX / "wav" / "ru_0005.wav", task="translate", language="ru", align_output=False)
    letters = [c for c in text(result) if c.isalpha()]
    assert letters and sum(c.isascii() for c in letters) / len(letters) > 0.9, text(result)


def test_word_scores_are_kept(predictor):
    result = run(predictor, FESTVOX / "wav" / "ru_0002.wav")
    words = [w for s in result["segments"] for w in s["words"]]
    assert words and all(0.0 <= w["score"] <= 1.0 for w in words)


def test_num_speakers_and_speaker_embeddings(predictor):
    result = offline_predictor().predict(rp_schema.resolve_options({"audio_file": str(PYANNOTE_SAMPLE / "sample.wav"), "diarization": True,
                                                  "num_speakers": 2, "return_speaker_embeddings": True}, ENV))
    speakers = {s["speaker"] for s in result["segments"] if "speaker" in s}
    assert len(speakers) == 2
    embeddings = result["speaker_embeddings"]
    assert set(embeddings) == speakers and all(len(v) == 192 for v in embeddings.values())


@pytest.mark.parametrize("fmt, head", [("srt", "1\n00:00:"), ("vtt", "WEBVTT"), ("txt", ""), ("tsv", "start\tend\tspeaker\ttext")])
def test_output_format_is_returned_next_to_segments(predictor, fmt, head):
    from stages import formats

    result = run(predictor, FESTVOX / "wav" / "ru_0002.wav", output_format=fmt)
    assert result["segments"] and result["output_format"] == fmt
    assert result["output"].startswith(head)
    assert result["output"] == formats.render(result["segments"], fmt)


# ------------------------------------------------------------------ GPU-oriented batching, on real weights
def test_whisper_dimensions_read_from_the_model_file(tmp_path):
    dims = whisper_dimensions(str(LOCAL_MODELS / BASE_MODEL))
    assert (dims.decoder_layers, dims.d_model) == (6, 512)  # Whisper base
    import sys

    from references import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    from random_models import make_random_whisper_ct2  # a fresh conversion: the current converter's layout

    converted = make_random_whisper_ct2(tmp_path / "random-base", LOCAL_MODELS / BASE_MODEL, "base")
    dims = whisper_dimensions(str(converted))
    assert (dims.decoder_layers, dims.d_model) == (6, 512)
    (tmp_path / "model.bin").write_bytes(b"not a model")
    assert whisper_dimensions(str(tmp_path)) is None


def test_decoding_in_slices_gives_the_same_text(predictor):
    """A batch decoded as several generate calls (the GPU memory cap) equals one call."""
    model, _ = predictor.asr_models.whisper(resolve_asr_model(BASE_MODEL, str(LOCAL_MODELS), None), "int8")
    waveform = np.concatenate([sf.read(FESTVOX / "wav" / f"{clip}.wav", dtype="float32")[0] for clip in ("ru_0002", "ru_0003", "ru_0005")])
    seconds = len(waveform) / SR
    windows = [vad.SpeechWindow(s, min(s + 4.0, seconds), ((s, min(s + 4.0, seconds)),)) for s in np.arange(0.0, seconds - 0.5, 4.0)]
    assert len(windows) >= 4
    tokenizer = asr.make_tokenizer(model, "ru", "transcribe")
    opts = asr.DecodeOptions(beam_size=2)
    whole = asr.transcribe_windows(model, waveform, windows, tokenizer, opts, len(windows), "cpu")
    sliced = asr.transcribe_windows(model, waveform, windows, tokenizer, opts, len(windows), "cpu", max_rows=2)
    assert [w.text for w in sliced] == [w.text for w in whole]
    assert any(w.text for w in whole)


def test_fill_batch_cuts_short_audio_at_pauses_without_losing_words(predictor, tmp_path):
    """Two minutes of read speech give few 30 s windows; re-cut to fill a batch (chunk size
    lowered to >= 10 s) they cover the same speech and the WER does not degrade."""
    from fixtures_audio import concat_clips

    path, _, clips = concat_clips(tmp_path / "ru.wav", 120)
    waveform = sf.read(path, dtype="float32")[0]
    scores = vad.speech_scores(predictor.asr_models.vad(), waveform)
    opts = vad.VadOptions()
    coarse = vad.speech_windows(scores, opts, len(waveform) / SR)
    fine = vad.fill_batch(scores, coarse, opts, len(waveform) / SR, batch_size=32, min_chunk_s=10.0)
    assert len(coarse) < len(fine) <= 32
    longest = max(w.duration for w in fine)
    assert longest <= 10.0 + 1e-6  # chunk size lowered to the 10 s floor (120 s of speech fits 32 windows of 10 s)
    assert sum(w.duration for w in fine) / len(fine) >= 5.0  # whole pauses-to-pauses stretches, not slivers
    speech = sum(e - s for w in coarse for s, e in w.regions)
    assert abs(sum(e - s for w in fine for s, e in w.regions) - speech) < 0.05 * speech  # same speech, re-cut
    assert vad.fill_batch(scores, coarse, opts, len(waveform) / SR, batch_size=32, min_chunk_s=0.0) == coarse
    assert vad.fill_batch(scores, coarse, opts, len(waveform) / SR, batch_size=len(coarse), min_chunk_s=10.0) == coarse
    reference = " ".join(festvox_transcripts()[c] for c in clips)
    model, _ = predictor.asr_models.whisper(resolve_asr_model(BASE_MODEL, str(LOCAL_MODELS), None), "int8")
    tokenizer = asr.make_tokenizer(model, "ru", "transcribe")
    errors = {}
    for name, windows in (("coarse", coarse), ("fine", fine)):
        decoded = asr.transcribe_windows(model, waveform, windows, tokenizer, asr.DecodeOptions(), 32, "cpu")
        errors[name] = wer(reference, " ".join(t.text for t in decoded))
    print(errors)
    assert errors["fine"] <= errors["coarse"] + 0.03  # measured 0.170 vs 0.186 (base model)
