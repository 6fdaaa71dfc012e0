"""tests/conftest.py's skip guard: a skipped test that is not marked ``gpu`` fails the run.

Each case runs pytest in a subprocess on tiny test files in a temp folder, next to copies of the
repo's own ``tests/conftest.py`` and ``pytest.ini`` (so exactly the hooks and marker CI uses).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTEST_TIMEOUT_S = 120

NON_GPU_SKIPS = '''
import pytest

def test_passes():
    pass

@pytest.mark.skipif(True, reason="asset missing (a forbidden skip)")
def test_skipped_by_mark():
    pass

def test_skipped_in_body():
    pytest.skip("skipped at run time")

@pytest.mark.xfail(reason="an xfail is not a skip")
def test_expected_failure():
    assert False
'''
MODULE_SKIP = '''
import pytest

pytest.importorskip("no_such_module_for_the_skip_guard_test")

def test_never_collected():
    pass
'''
GPU_ONLY_SKIP = '''
import pytest

def test_passes():
    pass

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="no CUDA GPU here")
def test_needs_a_gpu():
    pass
'''


def _run_pytest(folder: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    """pytest (this venv) on ``files`` in ``folder``, with the repo's conftest.py and pytest.ini."""
    shutil.copy(ROOT / "tests" / "conftest.py", folder / "conftest.py")
    shutil.copy(ROOT / "pytest.ini", folder / "pytest.ini")
    for name, text in files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(folder), str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=PYTEST_TIMEOUT_S,
    )


def test_non_gpu_skips_fail_the_run_and_are_listed(tmp_path):
    proc = _run_pytest(tmp_path, {"test_a.py": NON_GPU_SKIPS, "test_b.py": MODULE_SKIP})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "skipped tests that are not GPU-only (this fails the run)" in out, out
    assert "SKIPPED test_a.py::test_skipped_by_mark: asset missing (a forbidden skip)" in out, out
    assert "SKIPPED test_a.py::test_skipped_in_body: skipped at run time" in out, out
    assert "SKIPPED test_b.py: could not import 'no_such_module_for_the_skip_guard_test'" in out, out
    listed = out.split("not GPU-only (this fails the run)")[1].split("short test summary info")[0]
    assert "test_expected_failure" not in listed and "test_passes" not in listed, listed  # xfail is no skip
    assert "1 passed" in out and "xfailed" in out, out


def test_gpu_only_skip_keeps_the_run_green(tmp_path):
    proc = _run_pytest(tmp_path, {"test_gpu.py": GPU_ONLY_SKIP})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed, 1 skipped" in out, out
    assert "not GPU-only" not in out, out
