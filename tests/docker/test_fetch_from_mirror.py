"""builder/fetch_models.py bakes every production model from a Hub mirror (no Docker needed).

The mirror is the Hub-shaped cache of scripts/setup.sh (.assets/hub-cache/hub). The fetcher
runs in a child process as in the image build: ``HF_HOME`` is the image's cache folder (here a
temporary one), ``--hub-mirror`` the mirror, and the production defaults for the models
(large-v3, the Russian aligner, pyannote 3.1 and community-1). The worker then finds each one
where the image's ENV points: ``/models/<name>``, ``ALIGN_MODEL_RU`` and the HF cache, which
must load offline with nothing but what was baked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from references import ASSETS


ROOT = Path(__file__).resolve().parents[2]
MIRROR = ASSETS / "hub-cache" / "hub"
PIPELINES = ("pyannote/speaker-diarization-3.1", "pyannote/speaker-diarization-community-1")


def test_fetcher_bakes_the_production_ids_from_the_mirror(tmp_path):
    if not (MIRROR / "models--bzikst--faster-whisper-large-v3-russian" / "refs" / "main").is_file():
        raise RuntimeError(f"{MIRROR} incomplete: run bash scripts/setup.sh")
    models, hf_home = tmp_path / "models", tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(hf_home), "PYANNOTE_METRICS_ENABLED": "false"}
    env.pop("HF_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "builder" / "fetch_models.py"), "--hub-mirror", str(MIRROR),
         "--models-dir", str(models), "--align-langs", "ru", "--diarization-models", " ".join(PIPELINES),
         "--offline-diarization", "0", "--nltk", "0", "--hf-token-file", str(tmp_path / "no-token")],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "FAILED" not in proc.stdout and "SKIPPED" not in proc.stdout, proc.stdout

    large = models / "faster-whisper-large-v3-russian"
    assert sorted(p.name for p in large.iterdir()) == [
        "config.json", "model.bin", "preprocessor_config.json", "tokenizer.json", "vocabulary.json"]
    assert json.loads((large / "preprocessor_config.json").read_text())["feature_size"] == 128
    assert not any(p.is_symlink() for p in large.iterdir())  # copies, not links into the mirror
    aligner = models / "wav2vec2-ru"
    assert (aligner / "config.json").is_file() and (aligner / "vocab.json").is_file()

    # Every file of both pipelines is in the image's cache, found offline with no token.
    check = (
        "import sys\nfrom stages import pyannote_hub\n"
        "for pipeline in sys.argv[1:]:\n"
        "    files = pyannote_hub.needed_files(pipeline, pyannote_hub.read_config(pipeline, None))\n"
        "    missing = pyannote_hub.missing_files(files, None)\n"
        "    assert not missing, pyannote_hub.format_missing(missing)\n"
        "    print(pipeline, len(files))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check, *PIPELINES], cwd=ROOT / "src", capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"}, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [PIPELINES[0], "3", PIPELINES[1], "5"]


def test_31_alone_bakes_its_three_repositories_not_community_1(tmp_path):
    """What an operator who accepted only 3.1's repositories gets baked (pyannote #2044)."""
    hf_home = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(hf_home), "PYANNOTE_METRICS_ENABLED": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "builder" / "fetch_models.py"), "--hub-mirror", str(MIRROR),
         "--models-dir", str(tmp_path / "models"), "--asr", "0", "--align-langs", "", "--diarization-models", PIPELINES[0],
         "--offline-diarization", "0", "--nltk", "0", "--hf-token-file", str(tmp_path / "no-token")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    repos = sorted(p.name for p in (hf_home / "hub").iterdir() if p.name.startswith("models--"))
    assert repos == ["models--pyannote--segmentation-3.0", "models--pyannote--speaker-diarization-3.1",
                     "models--pyannote--wespeaker-voxceleb-resnet34-LM"]
