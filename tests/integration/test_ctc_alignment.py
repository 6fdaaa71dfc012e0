"""``ctc_alignment`` against its reference, whisperX 3.8.6's ``whisperx.align``, on real speech.

No wav2vec2 weights exist offline: randomly initialised models of the real architectures
(Hugging Face group norm: one segment per forward; Hugging Face layer norm: padded batches;
a torchaudio wav2vec2) produce real emissions from festvox-ru audio, and both implementations
must turn them into the same words and times. Where the truth is known by construction
(synthetic emissions), the recovered word times must be exact to the frame.
"""

from __future__ import annotations

import re
import statistics
import sys
import time

import numpy as np
import pytest
from references import FESTVOX, ROOT, festvox_pause_runs, festvox_transcripts, require_assets

from stages import alignment
from stages import asr
from stages import ctc_alignment
from stages.ctc_alignment import CtcAlignOptions, SegmentText

sys.path.insert(0, str(ROOT / "bench"))
from random_models import RUSSIAN_LETTERS, make_random_wav2vec2  # noqa: E402

# Clips for the equivalence tests (about 70 s), cut into their comma phrases where the labels
# have one pause run per phrase.
EQUIVALENCE_CLIPS = ("ru_0012", "ru_0014", "ru_0016", "ru_0017", "ru_0024", "ru_0032", "ru_0034", "ru_0038")
MIXED_TEXT = " В 1945 году Smith сказал: 100% OK, и ушёл. Потом вернулся! Что дальше? Ничего…"
# Batched (padded, masked) emissions differ from one-row forwards by float noise: on this
# CPU logits within 4e-7 and every word time identical; on an H100 (xlsr-53-large shape,
# random sharpened head, float16, 16 min of festvox) 98.7-99.4 % of words within 20 ms, the
# rest moved by near-tie decisions that the noise flips.
BATCHED_WITHIN_20MS_MIN = 0.98


@pytest.fixture(scope="module", autouse=True)
def offline():
    require_assets()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        for language in ("ru", "en"):
            alignment.ensure_punkt(language)
        yield


def _ctc_like(head, blank_id: int) -> None:
    """Sharpen a random CTC head into a trained one's shape: the blank dominating most frames,
    characters spiking on a few. A raw random head gives near-uniform emissions, whose best
    path packs every character into the first frames (one frame each) and leaves most trellis
    decisions and the backtrack's walk untested; sharpened, paths spread over the audio."""
    import torch

    with torch.no_grad():
        head.weight.mul_(30.0)
        head.bias.mul_(30.0)
        head.bias[blank_id] += 15.0


def _load(folder) -> tuple[object, dict]:
    import whisperx

    model, metadata = whisperx.load_align_model("ru", "cpu", model_name=str(folder))
    _ctc_like(model.lm_head, metadata["dictionary"]["<pad>"])
    return model, metadata


@pytest.fixture(scope="module")
def group_norm_aligner(tmp_path_factory):
    """Tiny random HF model with the transformers default group norm: not batchable."""
    return _load(make_random_wav2vec2(tmp_path_factory.mktemp("w2v-group"), "tiny"))


@pytest.fixture(scope="module")
def layer_norm_aligner(tmp_path_factory):
    """Tiny random HF model with a layer-norm feature encoder (as xlsr-53-large): batched."""
    return _load(make_random_wav2vec2(tmp_path_factory.mktemp("w2v-layer"), "tiny", feat_extract_norm="layer"))


@pytest.fixture(scope="module")
def torchaudio_aligner():
    """A tiny random torchaudio wav2vec2 with the English labels of WAV2VEC2_ASR_BASE_960H."""
    import torch
    import torchaudio

    labels = torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H.get_labels()
    torch.manual_seed(0)
    model = torchaudio.models.wav2vec2_model(
        "group_norm", [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2, False, 32, 0.0, 16, 4, 2, 2, 0.0, 64, 0.0, 0.0, False, 0.0, len(labels)
    ).eval()
    _ctc_like(model.aux, 0)  # "-" is the blank
    return model, {"language": "en", "dictionary": {c.lower(): i for i, c in enumerate(labels)}, "type": "torchaudio"}


def _clip(clip: str) -> np.ndarray:
    import soundfile as sf

    waveform, rate = sf.read(FESTVOX / "wav" / f"{clip}.wav", dtype="float32")
    assert rate == ctc_alignment.SAMPLE_RATE
    return waveform


def festvox_program(clips, cut: bool = True) -> tuple[np.ndarray, list[SegmentText]]:
    """The clips end to end and their real transcripts as segments (seconds in the joined audio):
    one per comma phrase (its labelled pause run +-0.1 s) where phrases and runs match, else one
    per clip. Texts start with a space, as Whisper's do."""
    texts = festvox_transcripts()
    audio, segments, offset = [], [], 0.0
    for clip in clips:
        waveform = _clip(clip)
        duration = len(waveform) / ctc_alignment.SAMPLE_RATE
        text = texts[clip].replace("+", "")
        phrases = [p for p in re.split(r"(?<=[,.!?])\s+", text) if p.strip()]
        runs = festvox_pause_runs(clip)
        if cut and len(runs) == len(phrases):
            for phrase, (start, end) in zip(phrases, runs):
                segments.append(SegmentText(round(offset + max(0.0, start - 0.1), 3), round(offset + min(duration, end + 0.1), 3), " " + phrase))
        else:
            segments.append(SegmentText(round(offset, 3), round(offset + duration, 3), " " + text))
        audio.append(waveform)
        offset += duration
    return np.concatenate(audio), segments


@pytest.fixture(scope="module")
def program():
    """About 70 s of festvox-ru cut into phrases, plus digits/Latin/punctuation/several sentences."""
    waveform, segments = festvox_program(EQUIVALENCE_CLIPS)
    return waveform, [*segments, SegmentText(2.0, 9.5, MIXED_TEXT)]


def whisperx_segments(segments, aligner, waveform) -> list[dict]:
    import whisperx

    model, metadata = aligner
    dicts = [{"start": s.start, "end": s.end, "text": s.text} for s in segments]
    return whisperx.align(dicts, model, metadata, waveform, "cpu", return_char_alignments=False)["segments"]


def compare(reference: list[dict], ours: list[dict]) -> dict:
    """How far our words are from whisperX's (its words without times are skipped)."""
    ref_words = [w for s in reference for w in s["words"]]
    our_words = [w for s in ours for w in s["words"]]
    assert [w["word"] for w in our_words] == [w["word"] for w in ref_words]
    timed = [(r, o) for r, o in zip(ref_words, our_words) if "start" in r]
    assert all(("start" in o) == ("start" in r) for r, o in zip(ref_words, our_words))
    errors = [max(abs(r["start"] - o["start"]), abs(r["end"] - o["end"])) for r, o in timed]
    score_errors = [abs(r["score"] - o["score"]) for r, o in timed]
    return {
        "words": len(ref_words),
        "timed": len(timed),
        "exact": int(sum(e == 0 for e in errors)),
        "max_time_diff_s": float(max(errors, default=0.0)),
        "within_20ms": float(sum(e <= 0.02 for e in errors) / max(1, len(errors))),
        "max_score_diff": float(max(score_errors, default=0.0)),
        "same_segments": [(float(s["start"]), float(s["end"]), s["text"]) for s in reference] == [(s["start"], s["end"], s["text"]) for s in ours],
    }


def test_matches_whisperx_one_segment_per_forward(program, group_norm_aligner):
    waveform, segments = program
    model, metadata = group_norm_aligner
    assert not ctc_alignment.padding_is_exact(model, ctc_alignment.Vocabulary.from_metadata(metadata))
    reference = whisperx_segments(segments, group_norm_aligner, waveform)
    ours = ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu")
    stats = compare(reference, ours)
    print(stats)
    assert stats["words"] >= 100 and stats["timed"] == stats["words"]
    assert stats["max_time_diff_s"] <= 0.001 and stats["max_score_diff"] <= 0.001  # measured: all identical
    assert stats["same_segments"]
    # Small batches and trellis passes (several of each, one row at a time) change nothing.
    tight = CtcAlignOptions(max_rows_per_forward=3, max_seconds_per_forward=10.0, max_trellis_cells=50_000, padded_batches="always")
    assert ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu", tight) == ours


def test_matches_whisperx_batched_layer_norm(program, layer_norm_aligner):
    waveform, segments = program
    model, metadata = layer_norm_aligner
    assert ctc_alignment.padding_is_exact(model, ctc_alignment.Vocabulary.from_metadata(metadata))
    reference = whisperx_segments(segments, layer_norm_aligner, waveform)
    batched = ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu", CtcAlignOptions(padded_batches="always"))
    stats = compare(reference, batched)
    print(stats)
    assert stats["words"] >= 100 and stats["timed"] == stats["words"]
    assert stats["within_20ms"] >= BATCHED_WITHIN_20MS_MIN
    # Unbatched (the default on a CPU), the same model gives whisperX's numbers exactly.
    unbatched = ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu")
    exact = compare(reference, unbatched)
    assert exact["max_time_diff_s"] <= 0.001 and exact["same_segments"]


def test_fixed_rows_pad_batches_with_silence_without_changing_words(program, layer_norm_aligner):
    """Padded forwards filled up to ``rows_for_length`` rows (the default on CUDA) time every word as
    batches of only the real rows do; warm_up runs one forward per padded width (up to 4.5 s: 1-5 s)."""
    waveform, segments = program
    model, metadata = layer_norm_aligner
    exact_rows = CtcAlignOptions(padded_batches="always", fixed_rows="never")
    fixed_rows = CtcAlignOptions(padded_batches="always", fixed_rows="always")
    assert ctc_alignment.rows_for_length(10 * 16000, fixed_rows) == 12
    assert ctc_alignment.rows_for_length(30 * 16000, fixed_rows) == 4
    assert ctc_alignment.rows_for_length(1 * 16000, fixed_rows) == 32
    plain = ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu", exact_rows)
    filled = ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu", fixed_rows)
    stats = compare(plain, filled)
    assert stats["words"] >= 100 and stats["timed"] == stats["words"]
    assert stats["within_20ms"] >= 0.99, stats
    assert ctc_alignment.warm_up(model, metadata, "cpu", longest_s=4.5, options=fixed_rows) == 5
    # Where forwards are one segment each (a CPU by default), there are no shapes to warm;
    # padded batches on a CPU keep their real rows unless asked.
    assert ctc_alignment.warm_up(model, metadata, "cpu") == 0
    assert ctc_alignment.warm_up(model, metadata, "cpu", options=CtcAlignOptions(padded_batches="always")) == 0


def test_matches_whisperx_torchaudio_model(program, torchaudio_aligner):
    waveform, _ = program
    model, metadata = torchaudio_aligner
    segments = [
        SegmentText(0.5, 6.0, " Hello world, this is a test. We have 42 apples!"),
        SegmentText(6.2, 9.0, " It's QUITE fine, isn't it?"),
        SegmentText(9.0, 9.02, " a"),  # 320 samples: padded to 400 and given ``lengths``
    ]
    stats = compare(whisperx_segments(segments, torchaudio_aligner, waveform), ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu"))
    assert stats["timed"] == stats["words"] >= 14
    assert stats["max_time_diff_s"] <= 0.001 and stats["same_segments"]


def _oracle_emissions(layout: list[tuple[int, str]], n_frames: int, dictionary: dict[str, int]) -> np.ndarray:
    """Log-probabilities (frames, columns) with the blank dominating every frame except one
    spike per (frame, character) of ``layout``; a character the model lacks spikes "а"."""
    logits = np.zeros((n_frames, max(dictionary.values()) + 1), dtype=np.float32)
    logits[:, dictionary["<pad>"]] = 10.0
    for frame, char in layout:
        logits[frame] = 0.0
        logits[frame, dictionary.get(char, dictionary["а"])] = 10.0
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def test_oracle_word_times_exact_to_the_frame():
    """Each word's first character spikes at its known start frame, its last character at its
    known end frame - 1, the space after it at its end frame: the aligner must return exactly
    those frames (the trellis attributes the blanks after a character to that character)."""
    dictionary = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4} | {c: i + 5 for i, c in enumerate(RUSSIAN_LETTERS)}
    metadata = {"language": "ru", "dictionary": dictionary, "type": "huggingface"}
    words = [("Мама", 10, 30), ("мыла", 41, 62), ("1945", 70, 81), ("раму.", 95, 118)]
    layout = []
    for k, (word, start, end) in enumerate(words):
        frames = np.linspace(start, end - 1, len(word)).round().astype(int)
        layout += [(int(f), c.lower()) for f, c in zip(frames, word)]
        if k < len(words) - 1:
            layout.append((end, "|"))
    n_frames, frame_s = 140, 0.02
    segment = SegmentText(2.0, 2.0 + n_frames * frame_s, " " + " ".join(w for w, _, _ in words))
    aligned = ctc_alignment.align_emission(segment, _oracle_emissions(layout, n_frames, dictionary), metadata)
    got = [w for s in aligned for w in s["words"]]
    assert [w["word"] for w in got] == [w for w, _, _ in words]
    for word, (_, start, end) in zip(got, words):
        assert word["start"] == pytest.approx(2.0 + start * frame_s, abs=1e-9), word
        assert word["end"] == pytest.approx(2.0 + end * frame_s, abs=1e-9), word
        assert word["score"] > 0.5  # spikes are certain, blanks after them too
    assert len(aligned) == 1 and aligned[0]["start"] == 2.0 + 10 * frame_s and aligned[0]["end"] == pytest.approx(2.0 + 118 * frame_s)


def test_edge_cases_match_whisperx(program, group_norm_aligner):
    """Inputs where whisperX still aligns: characters the model lacks only, a crop under 400
    samples with one character, whitespace only (no words)."""
    waveform, _ = program
    model, metadata = group_norm_aligner
    segments = [SegmentText(1.0, 3.0, " 1945 OK!"), SegmentText(3.0, 3.01, " а"), SegmentText(4.0, 5.0, "   ")]
    reference = whisperx_segments(segments, group_norm_aligner, waveform)
    ours = ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu")
    stats = compare(reference, ours)
    assert stats["timed"] == stats["words"] == 3 and stats["max_time_diff_s"] == 0.0 and stats["same_segments"]
    assert ours[-1]["words"] == []


def test_language_without_spaces_matches_whisperx(program, group_norm_aligner):
    """zh/ja: one word per character, sentences joined without a space."""
    waveform, _ = program
    model, metadata = group_norm_aligner
    metadata = {**metadata, "language": "zh"}
    segments = [SegmentText(0.5, 4.0, "приветмир. какдела?"), SegmentText(4.0, 7.0, "всё хорошо")]
    stats = compare(whisperx_segments(segments, (model, metadata), waveform), ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu"))
    assert stats["words"] == stats["timed"] >= 20 and stats["max_time_diff_s"] == 0.0 and stats["same_segments"]


def test_unalignable_segments_keep_their_words(program, group_norm_aligner):
    """Where whisperX returns a segment without words (start past the audio, more characters
    than frames), the words stay, untimed, and align_with_wav2vec2 spreads them over the
    segment; empty text is dropped before aligning."""
    waveform, _ = program
    model, metadata = group_norm_aligner
    audio_end = len(waveform) / ctc_alignment.SAMPLE_RATE
    segments = [
        SegmentText(audio_end + 1.0, audio_end + 3.0, " после конца записи"),
        SegmentText(1.0, 1.1, " слишком много букв для четырёх кадров"),
        SegmentText(5.0, 5.01, " да"),  # one frame, two characters
    ]
    raw = ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu")
    assert [len(s["words"]) for s in raw] == [3, 6, 1]
    assert all("start" not in w for s in raw for w in s["words"])
    aligner = alignment.Aligner("ru", model, metadata, "test")
    windows = [asr.WindowTranscript(s.start, s.end, s.text, [], -0.1, 0.0, 1.0, 0.0) for s in segments]
    windows.append(asr.WindowTranscript(6.0, 7.0, "", [], -0.1, 0.0, 1.0, 0.0))
    cleaned = alignment.align_with_wav2vec2(windows, aligner, waveform, "cpu")
    assert len(cleaned) == 3
    for segment, window in zip(cleaned, windows):
        for word in segment["words"]:
            assert window.start - 1e-3 <= word["start"] <= word["end"] <= window.end + 1e-3


@pytest.mark.parametrize("values", [
    [np.nan, 1.0, np.nan, np.nan, 2.0, np.nan],
    [1.0, np.nan, 2.0],
    [1.0, np.nan, np.nan, np.nan, 2.0, np.nan, np.nan, 3.0],
    [np.nan, np.nan, 5.0],
    [4.0, np.nan],
])
def test_nearest_fill_matches_whisperx_interpolation(values):
    import pandas as pd
    from whisperx.utils import interpolate_nans

    expected = interpolate_nans(pd.Series(values), method="nearest").tolist()
    assert ctc_alignment._nearest_fill([None if np.isnan(v) else v for v in values]) == expected


def _best_of(runs: int, work) -> float:
    """Fastest wall time (s) of ``runs`` calls of ``work``."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def _per_segment_forwards(model, waveform: np.ndarray, segments: list[SegmentText]) -> None:
    """The model forwards whisperX makes, and nothing else: one per segment."""
    import torch

    with torch.inference_mode():
        for segment in segments:
            samples, _ = ctc_alignment.crop_audio(waveform, segment.start, segment.end)
            model(torch.from_numpy(samples)[None])


def test_speed_against_whisperx(group_norm_aligner, layer_norm_aligner):
    """Prints (run with -s) whisperx.align vs ours on about 2 min of festvox-ru, one segment per
    clip, with the tiny models on this CPU; whisperX's forwards (one per segment) alone are timed too."""
    import torch

    clips, seconds = [], 0.0
    for clip in sorted(festvox_transcripts()):
        if seconds >= 120.0:
            break
        clips.append(clip)
        seconds += len(_clip(clip)) / ctc_alignment.SAMPLE_RATE
    waveform, segments = festvox_program(clips, cut=False)
    report = {"audio_s": round(len(waveform) / ctc_alignment.SAMPLE_RATE, 1), "segments": len(segments)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # other work on a small CI machine makes multi-threaded timings erratic
    try:
        for name, (model, metadata) in (("group norm", group_norm_aligner), ("layer norm", layer_norm_aligner)):
            forwards_s = _best_of(2, lambda m=model: _per_segment_forwards(m, waveform, segments))
            whisperx_s = _best_of(2, lambda m=model, d=metadata: whisperx_segments(segments, (m, d), waveform))
            ours_s = _best_of(2, lambda m=model, d=metadata: ctc_alignment.align_segments(segments, m, d, waveform, "cpu"))
            stats = compare(whisperx_segments(segments, (model, metadata), waveform), ctc_alignment.align_segments(segments, model, metadata, waveform, "cpu"))
            report[name] = {"whisperx_s": round(whisperx_s, 3), "ours_s": round(ours_s, 3), "per_segment_forwards_s": round(forwards_s, 3),
                            "words": stats["words"], "exact": stats["exact"]}
    finally:
        torch.set_num_threads(threads)
    print(report)
    assert statistics.mean(report[k]["exact"] / report[k]["words"] for k in ("group norm", "layer norm")) > 0.9
