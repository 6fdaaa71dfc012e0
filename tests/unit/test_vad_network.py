"""The VAD in plain torch (``stages.vad_network``) gives pyannote's scores and whisperX's regions:
the same checkpoint through pyannote's own inference (whisperX's ``load_vad_model``) and
through ours, on real speech of several lengths (shorter than one chunk, on the chunk grid,
off it with a padded tail, long enough for several forward batches), and whisperX's
``Binarize`` against ``vad.binarize`` on those scores, min-cuts included. Scores may differ
only by float32 rounding of the same operations (1e-6); regions must be equal."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch
from references import FESTVOX, require_assets

from stages import vad
from stages.vad_network import BATCH_CHUNKS, VadNetwork, bundled_checkpoint, read_checkpoint


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 75 s of real Russian speech (festvox clips end to end, 16 kHz)."""
    require_assets()
    parts = []
    for wav in sorted((FESTVOX / "wav").glob("ru_*.wav"))[200:220]:
        samples, rate = sf.read(str(wav), dtype="float32")
        assert rate == vad.SAMPLE_RATE
        parts.append(samples)
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def both():
    from whisperx.vads.pyannote import load_vad_model

    return load_vad_model("cpu"), VadNetwork.load(bundled_checkpoint(), "cpu")


# Lengths in samples: under one chunk, exactly one chunk, on the 0.5 s grid, off the grid, and
# more chunks than one forward batch holds (ours runs them as several work items).
LENGTHS = (3 * 16000, 5 * 16000, 12 * 16000, 12 * 16000 + 1234, (BATCH_CHUNKS * 8000) + 5 * 16000 + 777)


@pytest.mark.parametrize("length", LENGTHS)
def test_scores_equal_pyannotes_inference(both, speech, length):
    pipeline, network = both
    waveform = speech[:length]
    theirs = pipeline({"waveform": torch.from_numpy(waveform).unsqueeze(0), "sample_rate": vad.SAMPLE_RATE})
    work_items = []
    ours = vad.speech_scores_in_steps(network, waveform, lambda work: work_items.append(1) or work())
    expected_items = -(-max(0, (length - 80000) // 8000 + 1) // BATCH_CHUNKS) if length >= 80000 else 0
    tail = length < 80000 or (length - 80000) % 8000 > 0
    assert len(work_items) == expected_items + tail
    grid = theirs.sliding_window
    assert (ours.frames.start, ours.frames.duration, ours.frames.step) == pytest.approx((grid.start, grid.duration, grid.step))
    assert ours.data.shape == (theirs.data.shape[0],)
    np.testing.assert_allclose(ours.data, theirs.data[:, 0], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def speech_scores(both, speech) -> vad.SpeechScores:
    return vad.speech_scores(both[1], speech)


@pytest.mark.parametrize(("onset", "offset", "chunk_size"), [(0.3, 0.25, 30.0), (0.5, 0.363, 30.0), (0.3, 0.25, 4.0),
                                                             (0.7, 0.1, 2.5), (0.05, 0.02, 30.0)])
def test_regions_equal_whisperx_binarize(speech_scores, onset, offset, chunk_size):
    from pyannote.core import SlidingWindow, SlidingWindowFeature
    from whisperx.vads.pyannote import Binarize

    scores = speech_scores
    frames = SlidingWindow(start=scores.frames.start, duration=scores.frames.duration, step=scores.frames.step)
    theirs = Binarize(onset=onset, offset=offset, max_duration=chunk_size)(SlidingWindowFeature(scores.data[:, None], frames))
    expected = [(float(s.start), float(s.end)) for s in theirs.get_timeline()]
    ours = vad.binarize(scores, vad.VadOptions(onset=onset, offset=offset, chunk_size=chunk_size))
    assert len(expected) > 1
    assert ours == expected


def test_the_checkpoint_reader_runs_no_pickled_code(tmp_path):
    """Globals the checkpoint pickles other than tensor rebuilding and plain containers are
    absorbed unread: a pickled call to os.system, or to torch.save, does not run."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class TorchPayload:  # torch's own callables are not trusted either, only tensor rebuilding
        def __reduce__(self):
            return (torch.save, ({"x": 1}, str(marker)))

    hparams, weights = read_checkpoint(bundled_checkpoint())
    hostile = tmp_path / "hostile.bin"
    torch.save({"hyper_parameters": hparams, "state_dict": weights, "extra": Payload(), "more": TorchPayload()},
               str(hostile))
    read_hparams, read_weights = read_checkpoint(hostile)
    assert not marker.exists()
    assert read_hparams["lstm"]["num_layers"] == 4 and set(read_weights) == set(weights)
