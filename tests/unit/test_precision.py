"""Issue 13 #2: the TF32 policy is set once at start-up and pyannote cannot change it mid-job.

pyannote's ``fix_reproducibility(device)`` switches TF32 off whenever the device is CUDA; it
needs no GPU to do so (it only reads ``device.type`` and sets two process-wide flags), so these
checks run on CPU. No weights, no audio.
"""

from __future__ import annotations

import pytest
import torch

from resident import precision
from settings import WorkerSettings


@pytest.fixture
def tf32_flags():
    """Put the process-wide TF32 flags back as they were after the test."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def flags() -> tuple[bool, bool]:
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


@pytest.mark.parametrize("allow", [True, False])
def test_pyannote_leaves_the_start_up_policy_alone(allow, tf32_flags):
    import pyannote.audio.core.inference
    import pyannote.audio.core.pipeline

    assert precision.apply("cuda", allow) is allow
    assert flags() == (allow, allow)
    pyannote.audio.core.pipeline.fix_reproducibility(torch.device("cuda"))
    assert flags() == (allow, allow)
    pyannote.audio.core.inference.fix_reproducibility(torch.device("cuda"))
    assert flags() == (allow, allow)


def test_pyannote_imported_later_is_pinned_too(tf32_flags):
    """A module that imports the name after start-up gets the worker's function as well."""
    precision.apply("cuda", True)
    from pyannote.audio.utils.reproducibility import fix_reproducibility

    assert fix_reproducibility is precision.keep_precision
    fix_reproducibility(torch.device("cuda"))
    assert flags() == (True, True)


def test_cpu_policy_reports_no_tf32(tf32_flags):
    assert precision.apply("cpu", True) is False


@pytest.mark.parametrize(("raw", "expected"), [(None, True), ("true", True), ("0", False), ("false", False)])
def test_tf32_env(raw, expected):
    env = {} if raw is None else {"TORCH_ALLOW_TF32": raw}
    assert WorkerSettings.from_env(env).torch_allow_tf32 is expected


def test_tf32_env_rejects_garbage():
    with pytest.raises(ValueError, match="TORCH_ALLOW_TF32"):
        WorkerSettings.from_env({"TORCH_ALLOW_TF32": "maybe"})


def test_no_stage_sets_the_flags_again():
    """Only ``precision.apply`` (at start-up) sets the flags: no per-stage re-setting."""
    import inspect

    import predict

    source = inspect.getsource(predict)
    assert "torch.backends" not in source and "_configure_torch" not in source
