"""Model registries load outside any lock that other models need (``model_cache``).

A job must never wait for the load of a model it does not use: an English job once waited
43 s behind another job's aligner load from a hanging Hub. Here loaders are fakes that block
on a ``threading.Event``, so no weights are needed; each test ends in well under a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from stages import alignment
from stages import diarization
import model_cache
from resident.models import AsrModels, ModelLoadError, ResolvedModel

# How long a load of another key may delay a caller at most (seconds): far above a dict look-up,
# far below a model load.
PROMPT_S = 0.5
# Safety net: no test waits longer than this for a thread (a hang fails instead of blocking CI).
HANG_S = 5.0


class Background:
    """Runs ``call`` in a thread, keeping its result or exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        self.finished_at = time.perf_counter()

    def join(self) -> Any:
        self._thread.join(HANG_S)
        assert not self._thread.is_alive(), "thread still running"
        return self.result

    def alive(self) -> bool:
        return self._thread.is_alive()


class Gate:
    """A loader's gate: ``entered`` is set when a load starts, the load returns when ``opened``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def pass_through(self) -> None:
        self.entered.set()
        assert self.opened.wait(HANG_S), "gate never opened"


class FakeAligners(alignment.AlignmentModels):
    """``AlignmentModels`` whose loads are instant fakes, or block at a language's gate, or fail
    with what ``failures`` holds for the language (once)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("cpu", **kwargs)
        self.loads: list[str] = []
        self.gates: dict[str, Gate] = {}
        self.failures: dict[str, BaseException] = {}
        self._loads_lock = threading.Lock()

    def _load(self, language: str) -> alignment.Aligner:
        with self._loads_lock:
            self.loads.append(language)
        if language in self.gates:
            self.gates[language].pass_through()
        if language in self.failures:
            raise self.failures.pop(language)
        return alignment.Aligner(language, object(), {}, f"fake-{language}")  # type: ignore[arg-type]


def blocked_load(aligners: FakeAligners, language: str) -> tuple[Gate, Background]:
    """Start ``get(language)`` in a thread and return once its load is under way (blocked)."""
    gate = aligners.gates[language] = Gate()
    loading = Background(lambda: aligners.get(language))
    assert gate.entered.wait(HANG_S)
    return gate, loading


# --------------------------------------------------------------------------- aligners
def test_a_blocked_load_does_not_delay_another_language():
    aligners = FakeAligners()
    gate, loading_ru = blocked_load(aligners, "ru")
    started = time.perf_counter()
    aligner, seconds = aligners.get("en")
    assert time.perf_counter() - started < PROMPT_S
    assert aligner.language == "en" and seconds < PROMPT_S
    assert loading_ru.alive()  # ru is still loading all along
    gate.opened.set()
    assert loading_ru.join()[0].language == "ru"


def test_concurrent_callers_of_one_language_share_one_load():
    aligners = FakeAligners()
    gate, first = blocked_load(aligners, "ru")
    second = Background(lambda: aligners.get("ru"))
    time.sleep(0.3)  # the second caller is waiting, not loading
    assert second.alive() and aligners.loads == ["ru"]
    gate.opened.set()
    (one, _), (other, waited) = first.join(), second.join()
    assert one is other and aligners.loads == ["ru"]
    assert waited >= 0.3  # the wait counts as load time for the job that waited
    assert aligners.get("ru") == (one, 0.0)


def test_least_recently_used_aligner_is_dropped_but_kept_ones_stay():
    aligners = FakeAligners(max_cached=2, kept=frozenset({"ru"}))
    for language in ("ru", "en", "de", "fr"):
        aligners.get(language)
    assert aligners.resident() == ["ru", "de", "fr"]
    aligners.get("de")  # de is now more recently used than fr
    aligners.get("en")  # loaded again: drops fr, never ru
    assert aligners.resident() == ["ru", "de", "en"]
    assert aligners.loads == ["ru", "en", "de", "fr", "en"]
    assert aligners.get("ru")[1] == 0.0


def test_dropping_an_aligner_on_cuda_returns_cached_blocks(monkeypatch):
    released: list[bool] = []
    monkeypatch.setattr(alignment, "release_cuda_cache", lambda: released.append(True))
    aligners = FakeAligners(max_cached=1)
    aligners.device = "cuda"
    aligners.get("en")
    assert not released
    aligners.get("de")
    assert released == [True] and aligners.resident() == ["de"]


def test_a_failed_load_raises_and_the_next_call_loads_again():
    aligners = FakeAligners()
    aligners.failures["ru"] = RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        aligners.get("ru")
    assert aligners.resident() == []
    assert aligners.get("ru")[0].language == "ru"
    assert aligners.loads == ["ru", "ru"]


def test_an_unavailable_aligner_is_remembered_until_the_retry_interval(monkeypatch):
    """No aligner for a language (offline, unknown): asked again at once, the error is repeated
    without a load; after ``FAILED_LOAD_RETRY_S`` it is loaded again."""
    aligners = FakeAligners()
    aligners.failures["xx"] = alignment.AlignerUnavailable("no wav2vec2 alignment model for language 'xx'")
    for _ in range(2):
        with pytest.raises(alignment.AlignerUnavailable, match="'xx'"):
            aligners.get("xx")
    assert aligners.loads == ["xx"]
    monkeypatch.setattr(alignment, "FAILED_LOAD_RETRY_S", 0.0)
    assert aligners.get("xx")[0].language == "xx"
    assert aligners.loads == ["xx", "xx"]


def test_callers_waiting_for_a_failed_load_get_its_error_and_do_not_load():
    aligners = FakeAligners()
    aligners.failures["ru"] = alignment.AlignerUnavailable("no wav2vec2 alignment model for language 'ru'")
    gate, first = blocked_load(aligners, "ru")
    second = Background(lambda: aligners.get("ru"))
    time.sleep(0.1)
    gate.opened.set()
    first.join(), second.join()
    assert isinstance(first.error, alignment.AlignerUnavailable)
    assert isinstance(second.error, alignment.AlignerUnavailable)
    assert aligners.loads == ["ru"]


class Cancelled(RuntimeError):
    pass


def test_wait_check_stops_a_waiting_caller_promptly_and_the_load_goes_on():
    aligners = FakeAligners()
    gate, first = blocked_load(aligners, "ru")
    cancel = threading.Event()

    def wait_check() -> None:
        if cancel.is_set():
            raise Cancelled("job cancelled")

    waiting = Background(lambda: aligners.get("ru", wait_check=wait_check))
    time.sleep(0.3)
    assert waiting.alive()
    cancelled_at = time.perf_counter()
    cancel.set()
    waiting.join()
    assert isinstance(waiting.error, Cancelled)
    assert waiting.finished_at is not None and waiting.finished_at - cancelled_at < PROMPT_S
    assert first.alive()  # the load itself is not stopped: other jobs may still need it
    gate.opened.set()
    assert first.join()[0].language == "ru"
    assert aligners.resident() == ["ru"] and aligners.loads == ["ru"]


# --------------------------------------------------------------------------- the cache itself
def test_cache_waiters_may_retry_a_failed_load_instead_of_sharing_its_error():
    """``retry_failed``: a waiter whose load failed runs its own (the outcome depends on the
    caller, e.g. its token) instead of getting another caller's exception."""
    cache: model_cache.SingleFlightCache[str, str] = model_cache.SingleFlightCache(2)
    gate = Gate()

    def failing() -> str:
        gate.pass_through()
        raise PermissionError("401 with token hf_first")

    first = Background(lambda: cache.get("pipe", failing, retry_failed=True))
    assert gate.entered.wait(HANG_S)
    second = Background(lambda: cache.get("pipe", lambda: "loaded", retry_failed=True))
    time.sleep(0.1)
    gate.opened.set()
    first.join()
    assert isinstance(first.error, PermissionError)
    assert second.join()[0] == "loaded" and second.error is None
    assert cache.resident() == ["pipe"]


def test_cache_keep_marks_a_key_never_dropped():
    dropped: list[list[str]] = []
    cache: model_cache.SingleFlightCache[str, int] = model_cache.SingleFlightCache(1, on_evict=dropped.append)
    cache.keep("default")
    for value, key in enumerate(("default", "a", "b")):
        cache.get(key, lambda value=value: value)  # type: ignore[misc]
    assert cache.resident() == ["default", "b"] and dropped == [["a"]]
    assert "b" in cache and "a" not in cache


def test_release_cuda_cache_never_imports_torch(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    model_cache.release_cuda_cache()
    assert "torch" not in sys.modules


# --------------------------------------------------------------------------- diarization registry
def blocking(gate: Gate, value: Any) -> Callable[[], Any]:
    def load() -> Any:
        gate.pass_through()
        return value

    return load


def test_a_blocked_pipeline_load_does_not_delay_another_pipeline():
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    gate = Gate()
    loading = Background(lambda: registry._entry(("org/slow", "cpu"), blocking(gate, "slow")))
    assert gate.entered.wait(HANG_S)
    started = time.perf_counter()
    entry = registry._entry(("org/fast", "cpu"), lambda: "fast")
    assert time.perf_counter() - started < PROMPT_S and entry.pipeline == "fast"
    assert loading.alive() and registry.resident() == ["org/fast"]
    gate.opened.set()
    assert loading.join().pipeline == "slow"
    assert registry.resident() == ["org/fast", "org/slow"]


def test_concurrent_callers_of_one_pipeline_share_one_load():
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    gate = Gate()
    loads: list[str] = []

    def load() -> str:
        loads.append("pipe")
        gate.pass_through()
        return "pipe"

    first = Background(lambda: registry._entry(("org/pipe", "cpu"), load))
    assert gate.entered.wait(HANG_S)
    second = Background(lambda: registry._entry(("org/pipe", "cpu"), load))
    time.sleep(0.2)
    gate.opened.set()
    assert first.join() is second.join() and loads == ["pipe"]


def test_a_pipeline_load_failing_with_one_token_is_not_reported_to_another(monkeypatch):
    """Requests that wait for a requested pipeline's load that fails try with their own token:
    the error (which may quote the first token) never reaches them, and a waiter with the same
    token gets the remembered failure without another round of Hub calls."""
    gate = Gate()
    calls: list[str | None] = []

    def load(model: str, token: str | None, device: str) -> object:
        calls.append(token)
        if token == "hf_first":
            gate.pass_through()
            raise RuntimeError(f"401 for {model} with token {token}")
        return object()

    monkeypatch.setattr(diarization, "load_requested_pipeline", load)
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    first = Background(lambda: registry.requested_pipeline("org/pipe", "hf_first"))
    assert gate.entered.wait(HANG_S)
    same_token = Background(lambda: registry.requested_pipeline("org/pipe", "hf_first"))
    other_token = Background(lambda: registry.requested_pipeline("org/pipe", "hf_second"))
    time.sleep(0.2)
    gate.opened.set()
    first.join(), same_token.join(), other_token.join()
    assert isinstance(first.error, RuntimeError) and "hf_first" in str(first.error)
    # The same-token waiter may have waited for the second token's load, which succeeded.
    if same_token.error is not None:
        assert isinstance(same_token.error, diarization.PipelineLoadFailedEarlier)
        assert "hf_first" not in str(same_token.error)
    assert other_token.error is None and other_token.result.pipeline is not None
    assert calls == ["hf_first", "hf_second"]


# --------------------------------------------------------------------------- ASR registry
def test_a_blocked_asr_load_does_not_delay_another_model(monkeypatch):
    gates = {"slow": Gate()}
    loads: list[str] = []

    def load(self: AsrModels, model: ResolvedModel, compute_type: str) -> Any:
        loads.append(model.name)
        if model.name in gates:
            gates[model.name].pass_through()
        if model.name == "broken":
            raise ModelLoadError("could not load model 'broken'")
        return f"whisper-{model.name}"

    monkeypatch.setattr(AsrModels, "_load", load)
    models = AsrModels("cpu", "/nonexistent")

    def whisper(name: str) -> tuple[Any, float]:
        return models.whisper(ResolvedModel(name, f"/m/{name}", "hub"), "int8")

    slow = Background(lambda: whisper("slow"))
    assert gates["slow"].entered.wait(HANG_S)
    waiting = Background(lambda: whisper("slow"))
    started = time.perf_counter()
    assert whisper("fast")[0] == "whisper-fast" and time.perf_counter() - started < PROMPT_S
    with pytest.raises(ModelLoadError):
        whisper("broken")
    assert slow.alive() and waiting.alive()
    gates["slow"].opened.set()
    assert slow.join()[0] == waiting.join()[0] == "whisper-slow"
    assert loads == ["slow", "fast", "broken"]
