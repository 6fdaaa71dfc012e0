"""gpu_check.check_gpu_stack: silent and fast on this CPU-only machine, clear messages when a
GPU is visible but CTranslate2's CUDA 12 libraries are not (probes patched)."""

from __future__ import annotations

import time

from resident import gpu_check
import pytest


def _loader(missing: set[str]):
    """A stand-in for ctypes.CDLL that fails like the dynamic loader for ``missing``."""
    loaded: list[str] = []

    def load(name: str):
        loaded.append(name)
        if name in missing:
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return object()

    load.loaded = loaded
    return load


def test_cpu_only_machine_returns_no_warnings_quickly():
    gpu_check.check_gpu_stack()  # first call pays the torch/ctranslate2 imports
    started = time.perf_counter()
    assert gpu_check.check_gpu_stack() == []
    assert time.perf_counter() - started < 1.0


def test_cpu_only_never_touches_the_libraries():
    load = _loader(set())
    assert gpu_check.check_gpu_stack(torch_cuda_available=lambda: False, ct2_cuda_devices=lambda: 0, load_library=load) == []
    assert load.loaded == []


def test_missing_cublas_is_reported_with_the_fix():
    load = _loader({"libcublas.so.12"})
    warnings = gpu_check.check_gpu_stack(
        torch_cuda_available=lambda: True, ct2_cuda_devices=lambda: 1, load_library=load,
        ct2_compute_types=lambda: pytest.fail("compute types must not be queried without cuBLAS"),
    )
    assert len(warnings) == 1
    message = warnings[0]
    assert "libcublas.so.12 cannot be loaded" in message
    assert "cannot open shared object file" in message  # the loader's own reason
    assert "nvidia-cublas-cu12" in message or "not on LD_LIBRARY_PATH" in message
    assert "LD_LIBRARY_PATH=" in message
    assert load.loaded == ["libcublas.so.12", "libcudnn.so.9"]


def test_default_loader_is_ctypes_cdll(monkeypatch):
    load = _loader({"libcudnn.so.9"})
    monkeypatch.setattr(gpu_check.ctypes, "CDLL", load)
    warnings = gpu_check.check_gpu_stack(
        torch_cuda_available=lambda: False, ct2_cuda_devices=lambda: 2, ct2_compute_types=lambda: {"float16"}
    )
    assert load.loaded == ["libcublas.so.12", "libcudnn.so.9"]
    assert len(warnings) == 1 and "libcudnn.so.9 cannot be loaded" in warnings[0]


def test_pip_copy_that_is_not_on_the_loader_path_is_named(monkeypatch, tmp_path):
    lib_dir = tmp_path / "nvidia" / "cublas" / "lib"
    lib_dir.mkdir(parents=True)
    (lib_dir / "libcublas.so.12").write_bytes(b"")
    monkeypatch.setattr(gpu_check.sys, "path", [str(tmp_path)])
    warnings = gpu_check.check_gpu_stack(
        torch_cuda_available=lambda: True, ct2_cuda_devices=lambda: 1, load_library=_loader({"libcublas.so.12"})
    )
    assert f"installed in {lib_dir} but that folder is not on LD_LIBRARY_PATH" in warnings[0]


def test_ctranslate2_compute_type_query_failure_is_reported():
    def broken():
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    warnings = gpu_check.check_gpu_stack(
        torch_cuda_available=lambda: True, ct2_cuda_devices=lambda: 1, load_library=_loader(set()), ct2_compute_types=broken
    )
    assert len(warnings) == 1
    assert 'get_supported_compute_types("cuda") failed' in warnings[0]
    assert "driver version is insufficient" in warnings[0]


def test_working_gpu_stack_gives_no_warnings():
    warnings = gpu_check.check_gpu_stack(
        torch_cuda_available=lambda: True, ct2_cuda_devices=lambda: 1, load_library=_loader(set()),
        ct2_compute_types=lambda: {"float32", "float16", "int8", "int8_float16"},
    )
    assert warnings == []


def test_gpu_without_float16_suggests_another_compute_type():
    warnings = gpu_check.check_gpu_stack(
        torch_cuda_available=lambda: True, ct2_cuda_devices=lambda: 1, load_library=_loader(set()),
        ct2_compute_types=lambda: {"float32", "int8"},
    )
    assert len(warnings) == 1 and "COMPUTE_TYPE" in warnings[0] and "float32, int8" in warnings[0]


def test_torch_sees_gpu_but_ctranslate2_does_not():
    warnings = gpu_check.check_gpu_stack(
        torch_cuda_available=lambda: True, ct2_cuda_devices=lambda: 0, load_library=_loader(set())
    )
    assert len(warnings) == 1 and "CTranslate2 does not" in warnings[0]


def test_a_crashing_probe_becomes_a_warning_not_an_exception():
    def explode():
        raise ValueError("boom")

    warnings = gpu_check.check_gpu_stack(ct2_cuda_devices=explode)
    assert warnings == ["GPU stack check failed: ValueError: boom"]
