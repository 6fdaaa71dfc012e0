"""How the diarization registry treats a requested pipeline that fails to load.

A pipeline whose files cannot be had fails the same way on every request until something
changes on the operator's side, so the failure is remembered (per model, device and token) for
``FAILED_LOAD_RETRY_S`` instead of asking the Hub again on every request. The loader itself
is replaced here by one that counts its calls; the real loads are in
tests/integration/test_hub_models.py.
"""

from __future__ import annotations

import pytest

from stages import diarization


@pytest.fixture()
def failing_loader(monkeypatch):
    calls: list[tuple[str, str | None]] = []

    def load(model, token, device):
        calls.append((model, token))
        raise diarization.PipelineFilesMissing(f"cannot get {model}/config.yaml (not in the local Hugging Face cache)")

    monkeypatch.setattr(diarization, "load_requested_pipeline", load)
    return calls


def test_a_failed_load_is_remembered_not_retried(failing_loader):
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    with pytest.raises(diarization.PipelineFilesMissing):
        registry.requested_pipeline("org/pipe", "hf_a")
    with pytest.raises(diarization.PipelineLoadFailedEarlier, match=r"cannot get org/pipe/config.yaml .*remembered"):
        registry.requested_pipeline("org/pipe", "hf_a")
    assert failing_loader == [("org/pipe", "hf_a")]


def test_another_token_or_model_is_tried(failing_loader):
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    for model, token in (("org/pipe", "hf_a"), ("org/pipe", "hf_b"), ("org/other", "hf_a")):
        with pytest.raises(diarization.PipelineFilesMissing):
            registry.requested_pipeline(model, token)
    assert len(failing_loader) == 3


def test_an_expired_failure_is_retried_and_dropped(failing_loader, monkeypatch):
    """After the retry interval the same request loads again, and expired entries go, so at
    most one entry per token seen recently is kept."""
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    with pytest.raises(diarization.PipelineFilesMissing):
        registry.requested_pipeline("org/pipe", "hf_a")
    monkeypatch.setattr(diarization, "FAILED_LOAD_RETRY_S", 0.0)
    with pytest.raises(diarization.PipelineFilesMissing):
        registry.requested_pipeline("org/pipe", "hf_a")
    assert len(failing_loader) == 2
    with pytest.raises(diarization.PipelineFilesMissing):
        registry.requested_pipeline("org/pipe", "hf_b")
    assert len(registry._failed_loads) == 1  # hf_a's expired entry went


def test_the_remembered_failure_does_not_keep_the_token(monkeypatch):
    """An error whose text holds the token is remembered, and repeated, with it redacted."""
    secret = "hf_secret_token_value"

    def load(model, token, device):
        raise RuntimeError(f"401 for {model} with token {token}")

    monkeypatch.setattr(diarization, "load_requested_pipeline", load)
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    with pytest.raises(RuntimeError):
        registry.requested_pipeline("org/pipe", secret)
    assert secret not in repr(registry._failed_loads) and "***" in repr(registry._failed_loads)
    with pytest.raises(diarization.PipelineLoadFailedEarlier) as caught:
        registry.requested_pipeline("org/pipe", secret)
    assert secret not in str(caught.value) and "with token ***" in str(caught.value)


def test_a_successful_load_clears_the_models_failures_and_serves_every_token(monkeypatch):
    calls: list[str | None] = []

    def load(model, token, device):
        calls.append(token)
        if token == "hf_a":
            raise diarization.PipelineFilesMissing("cannot get org/pipe/config.yaml (gated)")
        return object()

    monkeypatch.setattr(diarization, "load_requested_pipeline", load)
    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())
    with pytest.raises(diarization.PipelineFilesMissing):
        registry.requested_pipeline("org/pipe", "hf_a")
    loaded = registry.requested_pipeline("org/pipe", "hf_b")
    assert registry._failed_loads == {}
    assert registry.requested_pipeline("org/pipe", "hf_a") is loaded  # resident: no second load
    assert calls == ["hf_a", "hf_b"]


def test_a_token_pyannote_would_drop_is_named_in_the_error(tmp_path, monkeypatch):
    """Offline with nothing cached: the missing config is named, and so is the token rule."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "run through scripts/test.sh (HF_HUB_OFFLINE=1)"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(diarization.PipelineFilesMissing) as caught:
        diarization.load_requested_pipeline("pyannote/speaker-diarization-3.1", "not_an_hf_token", "cpu")
    message = str(caught.value)
    assert message.startswith("cannot get pyannote/speaker-diarization-3.1/config.yaml (not in the local Hugging Face cache")
    assert message.endswith("pyannote uses only tokens that start with hf_")
    assert "not_an_hf_token" not in message


def test_replicas_let_runs_go_side_by_side_up_to_their_number():
    """A pipeline entry with replicas: each run leases one; a second concurrent run gets a
    second replica (loaded then), a third waits for one to come back; a failed load of a
    replica frees its place."""
    import threading

    loads: list[str] = []

    def load() -> str:
        loads.append(f"replica-{len(loads) + 1}")
        return loads[-1]

    entry = diarization._Entry(load(), load, replicas=2)
    with entry.lease() as first, entry.lease() as second:
        assert {first, second} == {"replica-1", "replica-2"}
        waiting: list[str] = []
        third = threading.Thread(target=lambda: waiting.append(entry.lease().__enter__()))
        third.start()
        third.join(0.2)
        assert third.is_alive() and not waiting  # both replicas busy: the third run waits
    third.join(5)
    assert waiting and waiting[0] in {"replica-1", "replica-2"} and len(loads) == 2

    broken = diarization._Entry("only", lambda: (_ for _ in ()).throw(RuntimeError("no memory")), replicas=2)
    with broken.lease():
        with pytest.raises(RuntimeError, match="no memory"), broken.lease():
            pass
        assert broken._count == 1
    with broken.lease() as again:
        assert again == "only"


def test_default_diarization_threads():
    from predict import default_diarization_threads

    assert default_diarization_threads("cpu", 8) == 1
    assert default_diarization_threads("cuda", 1) == 1
    assert default_diarization_threads("cuda", 8) == 2
