"""Issue 13: one job can never hurt the next (model gating, allow-list, caches, temp folder,
speaker-segment re-joining). Unit level: no weights, no audio."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from resident.models import looks_like_local_path


@pytest.mark.parametrize("name", ["/etc", "/nonexistent/config.yaml", "pipeline.yml", "~/pipelines/x", "./x",
                                  "../x", "a/../../etc", "C:\\\\models\\\\x", "a/b/c", "tests/unit"])
def test_local_looking_model_references(name):
    assert looks_like_local_path(name)


@pytest.mark.parametrize("name", ["pyannote/speaker-diarization-3.1", "someone/other-pipeline", "large-v3",
                                  "Systran/faster-whisper-base", ""])
def test_hub_ids_are_not_local(name):
    assert not looks_like_local_path(name)


class _RecordingAligners:
    """Stands in for ``alignment.AlignmentModels``: records the languages asked for and has
    no aligner for any of them (as offline)."""

    def __init__(self):
        self.asked: list[str] = []

    def get(self, language, wait_check=None):
        from stages import alignment

        self.asked.append(language)
        raise alignment.AlignerUnavailable(f"no aligner for {language}")


@pytest.mark.parametrize(("task", "expected"), [("translate", "en"), ("transcribe", "ru")])
def test_translation_is_aligned_in_english(task, expected, monkeypatch):
    """``task: translate`` gives English text: the English aligner is asked for (or Whisper's
    timings used), not the source language's (issue 13 #7)."""
    from stages import alignment
    import predict
    import rp_schema
    from settings import WorkerSettings

    predictor = predict.Predictor(WorkerSettings(device="cpu"))
    predictor.aligners = _RecordingAligners()
    seen = {}

    def whisper_timings(model, waveform, kept, tokenizer, batch_size, device, check=None):
        seen["called"] = True
        return [{"start": 0.0, "end": 1.0, "text": "Hello", "words": []}]

    monkeypatch.setattr(alignment, "whisper_word_timings", whisper_timings)
    state = predict._RequestState()
    segments, method = predictor._align(None, None, None, ["kept"], "ru", rp_schema.RequestOptions(task=task), [], state)
    assert predictor.aligners.asked == [expected]
    assert method == "whisper cross-attention" and seen["called"]
    predictor.lanes.diarization_pool.shutdown()


def test_allow_list_entries():
    from resident.models import is_allowed

    always = {"large-v3-default"}
    assert is_allowed("large-v3-default", "float32", (), always)
    assert not is_allowed("org/other", "int8", (), always)
    assert is_allowed("org/other", "int8", ("org/other",), always)
    assert is_allowed("org/other", "int8", ("org/other:int8",), always)
    assert not is_allowed("org/other", "float32", ("org/other:int8",), always)
    assert is_allowed("anything/at-all", "float16", ("*",), always)
    assert not is_allowed("pyannote/x", None, ("pyannote/x:int8",), set())


def test_models_dir_folders_are_allowed_but_not_path_tricks(tmp_path):
    from resident.models import in_models_dir

    (tmp_path / "whisper-a").mkdir()
    (tmp_path / "whisper-a" / "model.bin").write_bytes(b"")
    assert in_models_dir("whisper-a", str(tmp_path)) and in_models_dir("org/whisper-a", str(tmp_path))
    assert not in_models_dir("whisper-b", str(tmp_path))
    assert not in_models_dir("../" + tmp_path.name + "/whisper-a", str(tmp_path / "sub"))


class _FakeWhisper:
    loads: list[str] = []

    def __init__(self, path, **kwargs):
        _FakeWhisper.loads.append(path)


def test_asr_cache_drops_least_recently_used_non_default(monkeypatch):
    """MAX_CACHED_MODELS=2: a fourth model drops the least recently used of the non-default
    ones; the preloaded (kept) model is never dropped (issue 13 #3)."""
    import faster_whisper

    from resident.models import AsrModels, ResolvedModel

    monkeypatch.setattr(faster_whisper, "WhisperModel", _FakeWhisper)
    models = AsrModels("cpu", "/nonexistent", max_cached=2)

    def load(name, compute="int8", keep=False):
        return models.whisper(ResolvedModel(name, f"/m/{name}", "hub"), compute, keep=keep)

    load("default", keep=True)
    load("a")
    load("b")
    load("a")  # a is now more recently used than b
    _, seconds = load("a")
    assert seconds == 0.0
    load("c")
    assert [key[0] for key in models.resident()] == ["/m/default", "/m/a", "/m/c"]
    load("a", "float32")  # another compute type is another resident model
    assert [key[:2] for key in models.resident()] == [("/m/default", "int8"), ("/m/c", "int8"), ("/m/a", "float32")]
    load("default")
    assert len(models.resident()) == 3


def test_diarization_cache_drops_least_recently_used_non_default():
    from stages import diarization

    registry = diarization.DiarizationModels("cpu", "/nonexistent", max_cached=1,
                                             kept_models=frozenset({"pyannote/default"}))
    offline = f"{diarization.OFFLINE_BACKEND}@/nonexistent"
    for name in (offline, "pyannote/default", "org/a", "org/b"):
        registry._entry((name, "cpu"), object)
    assert registry.resident() == [offline, "pyannote/default", "org/b"]


def test_budget_checked_between_alignment_groups(monkeypatch):
    """With a time budget, wav2vec2 alignment runs in groups of segments and checks the
    budget before each; once it is spent no further group is aligned (issue 13 #6)."""
    from types import SimpleNamespace

    from stages import alignment
    from stages import ctc_alignment

    aligned_groups = []
    monkeypatch.setattr(ctc_alignment, "align_segments", lambda segments, *a, **k: aligned_groups.append(len(segments)) or [])
    monkeypatch.setattr(alignment, "CHECKED_GROUP_SEGMENTS", 2)
    windows = [SimpleNamespace(start=float(i), end=i + 1.0, text=f"w{i}") for i in range(5)]
    aligner = SimpleNamespace(model=None, metadata={})
    checks = []

    def check():
        checks.append(1)
        if len(checks) == 3:
            raise TimeoutError("budget spent")

    with pytest.raises(TimeoutError):
        alignment.align_with_wav2vec2(windows, aligner, None, "cpu", check=check)
    assert aligned_groups == [2, 2]
    aligned_groups.clear()
    alignment.align_with_wav2vec2(windows, aligner, None, "cpu")  # no budget: one call, as before
    assert aligned_groups == [5]


def test_allow_list_and_cache_settings_from_env():
    from settings import WorkerSettings

    settings = WorkerSettings.from_env({"ALLOWED_MODELS": " org/a , org/b:int8,,*", "MAX_CACHED_MODELS": "3"})
    assert settings.allowed_models == ("org/a", "org/b:int8", "*") and settings.max_cached_models == 3
    defaults = WorkerSettings.from_env({})
    assert defaults.allowed_models == () and defaults.max_cached_models == 2
    with pytest.raises(ValueError, match="MAX_CACHED_MODELS"):
        WorkerSettings.from_env({"MAX_CACHED_MODELS": "0"})


def test_stopped_diarization_does_not_fall_back_to_the_offline_pipeline(monkeypatch):
    """A run stopped because its job is over ends there: no second (offline) run."""
    import numpy as np

    from stages import diarization

    registry = diarization.DiarizationModels("cpu", "/nonexistent", kept_models=frozenset())

    def pipeline(audio, hook=None, **kwargs):  # the pyannote pipeline inside whisperX's wrapper
        hook("segmentation", None, total=10, completed=1)
        raise AssertionError("not reached")

    wrapper = SimpleNamespace(model=pipeline)  # whisperx.diarize.DiarizationPipeline keeps it as .model
    monkeypatch.setattr(registry, "requested_pipeline", lambda model, token: diarization._Entry(wrapper))
    monkeypatch.setattr(registry, "offline_pipeline", lambda: pytest.fail("fell back to the offline pipeline"))

    def stop(percent):
        raise diarization.Stopped("job over")

    with pytest.raises(diarization.Stopped):
        registry.diarize(np.zeros(16000, dtype=np.float32), model="org/x", token="hf_x", min_speakers=None,
                         max_speakers=None, num_speakers=None, return_embeddings=False, progress_callback=stop)
