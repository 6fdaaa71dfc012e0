"""``handler.start_up_beside_sdk_import``: the RunPod SDK's import overlaps start-up instead of
coming before it (it is needed only to take jobs), and nothing of start-up's contract changes:
a failed start-up still leaves a worker that answers jobs, a broken SDK still raises."""

from __future__ import annotations

import threading
import time
import types

import pytest

import handler
import jobs


class _Imports:
    """Stands in for ``importlib`` inside handler: records where and when the SDK was imported."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.thread = ""
        self.started = 0.0

    def import_module(self, name: str) -> types.ModuleType:
        self.thread, self.started = threading.current_thread().name, time.perf_counter()
        time.sleep(0.2)
        if self.fail:
            raise ImportError(f"No module named {name!r}")
        return types.ModuleType(name)


def test_the_sdk_is_imported_in_another_thread_while_start_up_runs(monkeypatch):
    imports = _Imports()
    window: list[float] = []

    def start_up() -> None:
        window.append(time.perf_counter())
        time.sleep(0.3)
        window.append(time.perf_counter())

    monkeypatch.setattr(handler, "importlib", imports)
    monkeypatch.setattr(jobs, "start_up", start_up)
    sdk = handler.start_up_beside_sdk_import()
    assert sdk.__name__ == "runpod"
    assert imports.thread.startswith("import-sdk") and imports.thread != threading.current_thread().name
    assert window[0] - 0.25 < imports.started < window[1], "the import did not overlap start-up"


def test_a_failed_start_up_still_returns_the_sdk_so_jobs_are_answered_with_the_cause(monkeypatch):
    def start_up() -> None:
        raise jobs.WorkerUnavailable("worker start-up failed: no usable device")

    monkeypatch.setattr(handler, "importlib", _Imports())
    monkeypatch.setattr(jobs, "start_up", start_up)
    assert handler.start_up_beside_sdk_import().__name__ == "runpod"


def test_an_sdk_that_cannot_be_imported_raises_after_start_up(monkeypatch):
    ran: list[bool] = []
    monkeypatch.setattr(handler, "importlib", _Imports(fail=True))
    monkeypatch.setattr(jobs, "start_up", lambda: ran.append(True))
    with pytest.raises(ImportError, match="runpod"):
        handler.start_up_beside_sdk_import()
    assert ran == [True]
