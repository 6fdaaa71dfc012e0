"""The production models' own loading paths, offline, through Hub-shaped caches.

scripts/setup.sh builds ``.assets/hub-cache`` (scripts/hub_cache.py): a Hugging Face cache
holding each production repository's real file names and configuration with randomly
initialised weights of the exact architecture (real ones for segmentation-3.0 and Whisper
base). Each worker here runs as a user deploys it: ``HF_HUB_OFFLINE=1``, ``HF_HOME`` pointing
at a cache that holds only the repositories an operator would have accepted, a dummy token,
and the production ids in ENV and requests. ``MODELS_DIR`` is an empty folder, so nothing
comes from the worker's own model folder.

What random weights cannot show (the text, the speakers' identities) is not asserted; what
they can show is: every file is found by its Hub id through the libraries' own calls, the
shapes fit (128 mel bins for large-v3), every word gets a wav2vec2 time with the Russian
alphabet, the gated pipeline (not the token-free fallback) runs with the token, and the
speaker bounds hold.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf
from references import ASSETS, FESTVOX, PYANNOTE_SAMPLE, require_assets
from servers import FileServer, WorkerApi

HUB_CACHE = ASSETS / "hub-cache" / "hub"
LARGE_V3 = "bzikst/faster-whisper-large-v3-russian"
BASE = "Systran/faster-whisper-base"
ALIGNER = "jonatasgrosman/wav2vec2-large-xlsr-53-russian"
P31 = "pyannote/speaker-diarization-3.1"
COMMUNITY = "pyannote/speaker-diarization-community-1"
# What an operator accepts for 3.1 per docs/DEPLOY.md: not community-1 (pyannote #2044).
P31_REPOS = (P31, "pyannote/segmentation-3.0", "pyannote/wespeaker-voxceleb-resnet34-LM")
TOKEN = "hf_dummy_token_for_offline_tests"
OFFLINE_BACKEND = "offline:segmentation-3.0+campplus"
RU_CLIP = "ru_0003"  # test split (clip number mod 4 == 3)


def repo_dir(repo_id: str) -> Path:
    return HUB_CACHE / f"models--{repo_id.replace('/', '--')}"


def hf_home(root: Path, repos: tuple[str, ...]) -> Path:
    """An HF_HOME whose hub/ holds (links to) just ``repos`` of the Hub-shaped cache."""
    missing = [repo for repo in repos if not (repo_dir(repo) / "refs" / "main").is_file()]
    if missing:
        raise RuntimeError(f"Hub-shaped cache lacks {', '.join(missing)}: run bash scripts/setup.sh")
    (root / "hub").mkdir(parents=True)
    for repo in repos:
        (root / "hub" / repo_dir(repo).name).symlink_to(repo_dir(repo), target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    require_assets()
    root = tmp_path_factory.mktemp("media")
    shutil.copy(FESTVOX / "wav" / f"{RU_CLIP}.wav", root / "ru.wav")
    # 12 s of the 2-speaker sample: enough for two speakers, short enough for random-weight
    # WeSpeaker embeddings on 2 CPU cores (30 s took 75-110 s per request).
    audio, rate = sf.read(PYANNOTE_SAMPLE / "sample.wav", dtype="float32")
    sf.write(root / "sample.wav", audio[: 12 * rate], rate)
    with FileServer(root) as server:
        yield server


def _ok(envelope: dict) -> dict:
    assert envelope.get("status") == "COMPLETED", envelope
    output = envelope["output"]
    assert "error" not in output, output
    return output


def _speakers(output: dict) -> set[str]:
    return {segment["speaker"] for segment in output["segments"] if segment.get("speaker")}


# ----------------------------------------------------------------------------- production ids
@pytest.fixture(scope="module")
def production(tmp_path_factory):
    """The worker as deployed with the production ids and a token: large-v3 by its Hub id as
    the model, whisperX's default Russian aligner (no ALIGN_MODEL_RU), pyannote 3.1 with only
    the repositories it uses accepted."""
    root = tmp_path_factory.mktemp("production")
    home = hf_home(root / "hf", (LARGE_V3, BASE, ALIGNER, *P31_REPOS))
    (root / "models").mkdir()
    with WorkerApi(root / "worker.log", startup_timeout_s=900, HF_HOME=str(home), MODELS_DIR=str(root / "models"),
                   MODEL=LARGE_V3, ALLOWED_MODELS=BASE, HF_TOKEN=TOKEN, WARMUP="false", COMPUTE_TYPE="int8") as worker:
        yield worker


def test_large_v3_loads_by_its_hub_id_and_decodes_with_128_mel_bins(production, media):
    output = _ok(production.runsync({
        "audio_file": media.url("ru.wav"), "language": "ru", "beam_size": 1, "temperature_increment_on_fallback": None,
        "no_speech_threshold": None, "log_prob_threshold": None, "compression_ratio_threshold": None,
        "align_output": False, "diarization": False, "debug": True,
    }))  # fmt: skip
    model = output["debug_info"]["model"]
    assert model["origin"] == "hub", model
    assert f"models--{LARGE_V3.replace('/', '--')}/snapshots/" in model["path"], model["path"]
    assert (model["n_mels"], model["decoder_layers"], model["d_model"]) == (128, 32, 1280), model
    assert model["compute_type"] == "int8"
    assert output["debug_info"]["decode"]["vad_windows"] >= 1


def test_russian_aligner_by_id_and_gated_31_without_community_1(production, media):
    """whisperX's default Russian aligner loads by its id and times every word; 3.1 loads
    through DiarizationPipeline with the token from the cache that lacks community-1."""
    output = _ok(production.runsync({
        "audio_file": media.url("ru.wav"), "model": BASE, "language": "ru", "align_output": True,
        "diarization": True, "max_speakers": 2, "debug": True,
    }))  # fmt: skip
    assert output["warnings"] == [], output["warnings"]
    debug = output["debug_info"]["output"]
    assert debug["alignment_method"] == f"wav2vec2 ({ALIGNER})", debug
    assert debug["diarization_backend"] == P31, debug
    words = [word for segment in output["segments"] for word in segment["words"]]
    russian = [word for word in words if any("а" <= ch <= "я" or ch == "ё" for ch in word["word"].lower())]
    assert len(russian) >= 5, [word["word"] for word in words]
    for word in words:  # every word timed (a word without letters of the vocabulary is interpolated)
        assert 0.0 <= word["start"] <= word["end"], word
        assert 0.0 <= word["score"] <= 1.0, word
    assert all(segment.get("speaker") for segment in output["segments"])


def test_31_honours_the_speaker_bounds(production, media):
    for bounds, expected in (({"min_speakers": 2, "max_speakers": 2}, 2), ({"max_speakers": 1}, 1)):
        output = _ok(production.runsync({
            "audio_file": media.url("sample.wav"), "model": BASE, "language": "en", "align_output": False,
            "diarization": True, "debug": True, **bounds,
        }))  # fmt: skip
        debug = output["debug_info"]["output"]
        assert debug["diarization_backend"] == P31
        assert debug["diarization_speakers"] == expected, (bounds, debug, output["warnings"])
        assert output["warnings"] == []
        assert 1 <= len(_speakers(output)) <= expected  # words go to the speakers found


# ----------------------------------------------------------------------------- community-1, no token
@pytest.fixture(scope="module")
def community(tmp_path_factory):
    """A worker whose cache holds community-1 but not 3.1, and no token in its ENV."""
    root = tmp_path_factory.mktemp("community")
    home = hf_home(root / "hf", (BASE, ALIGNER, COMMUNITY))
    (root / "models").mkdir()
    with WorkerApi(root / "worker.log", startup_timeout_s=600, HF_HOME=str(home), MODELS_DIR=str(root / "models"),
                   MODEL=BASE, ALLOWED_MODELS=COMMUNITY, WARMUP="false", COMPUTE_TYPE="int8") as worker:
        yield worker


def test_community_1_loads_by_id_with_a_request_token(community, media):
    output = _ok(community.runsync({
        "audio_file": media.url("sample.wav"), "language": "en", "align_output": False, "diarization": True,
        "diarization_model": COMMUNITY, "huggingface_access_token": TOKEN, "min_speakers": 2, "max_speakers": 2,
        "debug": True,
    }))  # fmt: skip
    debug = output["debug_info"]["output"]
    assert debug["diarization_backend"] == COMMUNITY
    assert output["warnings"] == [], output["warnings"]
    assert debug["diarization_speakers"] == 2, debug


def test_gated_id_without_a_token_warns_and_uses_the_token_free_pipeline(community, media):
    output = _ok(community.runsync({"audio_file": media.url("ru.wav"), "language": "ru", "diarization": True,
                                    "align_output": False, "debug": True}))
    assert output["debug_info"]["output"]["diarization_backend"] == OFFLINE_BACKEND
    assert output["warnings"] == [
        f"no Hugging Face token for the gated {P31}: used the token-free pipeline {OFFLINE_BACKEND} instead"
    ]


def test_missing_repository_is_named_and_the_failure_remembered(community, media):
    """3.1 is not in this cache: the warning names the missing file; the second request does
    not go back to the Hub and says so."""
    request = {"audio_file": media.url("ru.wav"), "language": "ru", "diarization": True, "align_output": False,
               "huggingface_access_token": TOKEN, "debug": True}
    first = _ok(community.runsync(request))
    second = _ok(community.runsync(request))
    for output in (first, second):
        assert output["debug_info"]["output"]["diarization_backend"] == OFFLINE_BACKEND
        (warning,) = output["warnings"]
        assert f"{P31}/config.yaml (not in the local Hugging Face cache and HF_HUB_OFFLINE is set)" in warning, warning
        assert warning.endswith(f"used the token-free pipeline {OFFLINE_BACKEND} instead"), warning
    assert "remembered from an earlier request" not in first["warnings"][0]
    assert "remembered from an earlier request" in second["warnings"][0]
