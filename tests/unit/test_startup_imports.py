"""What the worker imports on its way to "ready": ``import handler`` (the entry point) loads
none of the heavy libraries that only some requests need. Each is imported where it is used:
pyannote.audio when a requested pyannote pipeline loads (``stages/diarization.py``), scipy's
clustering by the diarization lane's warm-up, scipy.optimize by the first job that names known
speakers (``stages/known_speakers.py``; ~0.7 s of a 2-core CPU's start-up,
``python -X importtime``). Checked in a fresh interpreter, since this test process imports
them for other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

NOT_AT_START_UP = ("pyannote.audio", "lightning", "torchmetrics", "transformers", "torchvision", "whisperx",
                   "matplotlib", "scipy.optimize", "scipy.signal", "scipy.cluster", "sklearn")

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import handler
print(json.dumps(sorted(sys.modules)))
"""


def test_the_handler_imports_none_of_the_libraries_only_some_requests_need():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYANNOTE_METRICS_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(SRC)], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "predict" in modules and "torch" in modules, "the probe did not import the worker: it would prove little"
    loaded = [name for name in modules if any(name == bad or name.startswith(bad + ".") for bad in NOT_AT_START_UP)]
    assert loaded == [], loaded[:10]
