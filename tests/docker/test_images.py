"""Build the images and transcribe a file in a container (collected with WHISPERX_DOCKER_TESTS=1).

Runs scripts/docker_build_test.sh, which needs Docker with BuildKit (it starts dockerd when it
is installed and not running, and installs docker.io when missing, as root), builds the
monolith and the base+app images from a locally bootstrapped Debian with the offline test
models baked in, and runs one job through the image's CMD with the network off. A machine
without Docker fails this test: it is only collected when asked for.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / ".stage-docker" / "report.txt"
TIMEOUT_S = 60 * 60  # cold: ~15 min here; slow mirrors or a loaded machine can double it


def test_images_build_and_run_a_job_offline(tmp_path):
    log = tmp_path / "docker_build_test.log"
    REPORT.unlink(missing_ok=True)
    with log.open("w") as out:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "docker_build_test.sh"), *os.environ.get("WHISPERX_DOCKER_TEST_ARGS", "").split()],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT_S, check=False,
        )  # fmt: skip
    text = log.read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, f"docker_build_test.sh failed ({proc.returncode}):\n{text[-6000:]}"
    report = REPORT.read_text(encoding="utf-8")
    print(report)
    assert "container job test: passed" in report
