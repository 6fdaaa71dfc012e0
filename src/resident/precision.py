"""The worker's float32 precision policy: set once at start-up, never changed by a stage.

TF32 (``torch.backends.cuda.matmul.allow_tf32`` / ``torch.backends.cudnn.allow_tf32``) is a
process-wide switch, while ASR, alignment and diarization run in parallel threads. pyannote
calls ``fix_reproducibility(device)`` at every pipeline call and every ``Inference`` call,
which switches TF32 off on CUDA (pyannote issue 1370), and the worker used to switch it on again
before each alignment: the precision a kernel ran at depended on which thread had last touched
the switch. Now ``apply`` sets the policy (``TORCH_ALLOW_TF32``) before any thread starts, and
``pin_pyannote`` replaces the ``fix_reproducibility`` names pyannote's modules imported with
``keep_precision``, which leaves the switch as the worker set it. With ``TORCH_ALLOW_TF32=false``
that is pyannote's own choice (TF32 off), made once instead of at every call.

This is the only place the worker sets these flags or patches pyannote's precision handling.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("precision")  # the bare name: log lines read as before the move

# Modules that call ``fix_reproducibility`` (imported by name, so each keeps its own reference).
PYANNOTE_MODULES = ("pyannote.audio.utils.reproducibility", "pyannote.audio.core.inference",
                    "pyannote.audio.core.pipeline")


def keep_precision(device: torch.device | None = None) -> None:
    """Stands in for pyannote's ``fix_reproducibility``: the precision policy is the worker's
    (set once by ``apply``), so a pipeline or inference call leaves it as it is."""


def pin_pyannote() -> list[str]:
    """Point pyannote's ``fix_reproducibility`` names at ``keep_precision``; idempotent.

    Returns the modules patched (none when pyannote is not installed)."""
    patched = []
    for name in PYANNOTE_MODULES:
        try:
            module: Any = importlib.import_module(name)  # one of pyannote's: its names are replaced below
        except ImportError:
            continue
        if hasattr(module, "fix_reproducibility"):
            module.fix_reproducibility = keep_precision
            patched.append(name)
    logger.debug("pyannote's fix_reproducibility pinned in %d modules", len(patched))
    return patched


def apply(device: str, allow_tf32: bool, pin: bool = True) -> bool:
    """Set the process's precision policy for ``device`` and keep pyannote from changing it.

    On CUDA: TF32 for float32 matmuls and cuDNN convolutions as ``allow_tf32`` says
    (VAD, diarization and the log-mel features run in float32: diarization ~8 % faster
    with it; the aligner runs in float16; docs/BENCHMARKS.md "Precision policy (TF32)"). On CPU: flush denormal
    floats (they make CPU convolutions, VAD and CAM++, up to 10x slower); TF32 does not apply.
    Call it once, before any stage runs in any thread. Returns whether TF32 is on.
    ``pin``: also ``pin_pyannote`` now. The worker's start-up passes False: importing pyannote
    takes seconds, and only a requested pyannote pipeline needs it, so the diarization registry
    pins just before it first loads one (``DiarizationModels.prepare_pyannote``).
    """
    import torch

    tf32 = device == "cuda" and allow_tf32
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    else:
        torch.set_flush_denormal(True)
    logger.info("precision policy on %s: TF32 %s", device, "on" if tf32 else "off")
    if pin:
        pin_pyannote()
    return tf32
