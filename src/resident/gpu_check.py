"""Start-up check of the GPU stack that CTranslate2 (faster-whisper) needs.

ctranslate2 4.x is built against CUDA 12: on a GPU it dlopens ``libcublas.so.12`` (and
cuDNN 9) by name when the first model is loaded, so an image that lacks them, or has them
where the dynamic loader does not look, starts fine and then fails on the first job with a
bare "Library libcublas.so.12 is not found or cannot be loaded". ``check_gpu_stack()`` finds
this at start-up and says what to fix. The dlopen is the check that matters: on an H100 whose
only CUDA libraries were CUDA 13's, ctranslate2 4.8.5 saw the GPU and
``get_supported_compute_types("cuda")`` answered normally, while ``libcublas.so.12`` was missing. The image makes the pip copies (nvidia-cublas-cu12,
nvidia-cudnn-cu12, both torch dependencies) findable through ``LD_LIBRARY_PATH``.

On a machine without a CUDA device it returns ``[]`` after two cheap queries. It never raises.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("gpu_check")  # the bare name: log lines read as before the move

#: Shared libraries that ctranslate2 4.x loads on a GPU, with the pip package providing each.
REQUIRED_LIBRARIES: tuple[tuple[str, str], ...] = (
    ("libcublas.so.12", "nvidia-cublas-cu12"),
    ("libcudnn.so.9", "nvidia-cudnn-cu12"),
)


def _torch_cuda_available() -> bool:
    """torch's view (imported only when it is already loaded or installed; False on error)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _ctranslate2_cuda_devices() -> int:
    """Number of CUDA devices CTranslate2 sees (0 when it cannot tell)."""
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:
        return 0


def _ctranslate2_cuda_compute_types() -> set[str]:
    """``ctranslate2.get_supported_compute_types("cuda")``; raises what it raises."""
    import ctranslate2

    return set(ctranslate2.get_supported_compute_types("cuda"))


def _pip_library_dirs(library: str) -> list[str]:
    """Folders of installed nvidia-* pip packages that hold ``library`` (for the hint)."""
    found = []
    for entry in sys.path:
        nvidia = Path(entry) / "nvidia"
        if nvidia.is_dir():
            found += sorted(str(path.parent) for path in nvidia.glob(f"*/lib/{library}"))
    return found


def check_gpu_stack(
    *,
    torch_cuda_available: Callable[[], bool] = _torch_cuda_available,
    ct2_cuda_devices: Callable[[], int] = _ctranslate2_cuda_devices,
    ct2_compute_types: Callable[[], set[str]] = _ctranslate2_cuda_compute_types,
    load_library: Callable[[str], object] | None = None,
) -> list[str]:
    """Warnings about the CUDA stack of this process, ``[]`` when fine or when there is no GPU.

    Checked when torch or CTranslate2 sees a CUDA device: each library of
    ``REQUIRED_LIBRARIES`` can be dlopened, CTranslate2 sees the device too, and
    ``ctranslate2.get_supported_compute_types("cuda")`` answers (with float16, the default
    compute type). The keyword arguments replace the probes (for tests); libraries are
    loaded with ``ctypes.CDLL`` by default.
    """
    load = load_library or ctypes.CDLL
    try:
        ct2_devices = ct2_cuda_devices()
        torch_cuda = torch_cuda_available() if ct2_devices == 0 else True
        if ct2_devices == 0 and not torch_cuda:
            return []
        warnings: list[str] = []
        missing = []
        for library, package in REQUIRED_LIBRARIES:
            try:
                load(library)
            except OSError as exc:
                missing.append(library)
                found = _pip_library_dirs(library)
                where = (
                    f"it is installed in {found[0]} but that folder is not on LD_LIBRARY_PATH"
                    if found
                    else f"install {package} (pip) or use a CUDA 12 base image"
                )
                warnings.append(
                    f"a CUDA GPU is visible but {library} cannot be loaded ({str(exc).strip()[:160]}): "
                    f"CTranslate2 (faster-whisper) needs it on the GPU; {where} "
                    f"(LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH', '')!r})"
                )
        if ct2_devices == 0:
            warnings.append(
                "torch sees a CUDA GPU but CTranslate2 does not (a CPU-only ctranslate2 build or a driver "
                "too old for CUDA 12): transcription would run on the CPU"
            )
        elif not missing:
            try:
                compute_types = ct2_compute_types()
            except Exception as exc:
                warnings.append(
                    f'ctranslate2.get_supported_compute_types("cuda") failed ({type(exc).__name__}: '
                    f"{str(exc).strip()[:200]}): the CUDA stack is unusable for CTranslate2"
                )
            else:
                if "float16" not in compute_types:
                    warnings.append(
                        f"this GPU has no float16 support in CTranslate2 (supported: {', '.join(sorted(compute_types))}): "
                        "set COMPUTE_TYPE to one of them"
                    )
        return warnings
    except Exception as exc:  # a check must never stop the worker
        return [f"GPU stack check failed: {type(exc).__name__}: {exc}"]
