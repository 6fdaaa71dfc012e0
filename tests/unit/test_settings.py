"""Worker settings (``settings.ENV_TABLE``, ``WorkerSettings.from_env``): every ENV variable is
declared once, parsed into a typed, finite, range-checked value, and a bad environment is
refused with one SettingsError that names every bad variable, its value and what is allowed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import settings
from stages.fetch import FetchPolicy
from settings import ENV_BY_NAME, ENV_TABLE, SettingsError, WorkerSettings, check_device, fetch_policy_from_env

NUMERIC = [var for var in ENV_TABLE if var.kind in (int, float)]
CHOICES = [var for var in ENV_TABLE if var.choices]
BOOLEANS = [var for var in ENV_TABLE if var.kind is bool]
FULL_BUCKET = {
    "BUCKET_ENDPOINT_URL": "https://s3.example.com",
    "BUCKET_ACCESS_KEY_ID": "AKIDEXAMPLEKEY123",
    "BUCKET_SECRET_ACCESS_KEY": "wJalrXUtnFEMIsecretsecret",
    "BUCKET_NAME": "results",
}
README = Path(__file__).resolve().parents[2] / "README.md"


def problems_of(env: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env(env)
    return caught.value.problems


# ---------------------------------------------------------------- the table, walked
@pytest.mark.parametrize("var", NUMERIC, ids=lambda var: var.name)
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1", "garbage", "12abc", "0x10"])
def test_every_numeric_setting_refuses_non_finite_negative_and_garbage(var, text):
    (problem,) = problems_of({var.name: text})
    assert problem.startswith(f"ENV {var.name}={text!r} must be ")
    assert var.range_text() in problem


@pytest.mark.parametrize("var", NUMERIC, ids=lambda var: var.name)
def test_every_numeric_setting_accepts_its_bounds_and_refuses_beyond(var):
    low, high = var.min, var.max
    assert low is not None and high is not None, f"{var.name} needs a range"
    bucket = FULL_BUCKET  # RESULT_INLINE_LIMIT_BYTES=0 needs one
    if var.min_exclusive:
        problems_of({**bucket, var.name: str(low)})
    else:
        WorkerSettings.from_env({**bucket, var.name: str(int(low))})
    WorkerSettings.from_env({**bucket, var.name: str(int(high))})
    problems_of({**bucket, var.name: str(int(high) + 1)})


@pytest.mark.parametrize("var", NUMERIC, ids=lambda var: var.name)
def test_blank_numeric_setting_is_its_default(var):
    assert WorkerSettings.from_env({var.name: "  "}) == WorkerSettings.from_env({})


def test_integer_settings_refuse_fractions_and_take_exponents_and_underscores():
    (problem,) = problems_of({"RESULT_INLINE_LIMIT_BYTES": "1.5"})
    assert problem.startswith("ENV RESULT_INLINE_LIMIT_BYTES='1.5' must be a whole number of bytes >= 0")
    assert WorkerSettings.from_env({"MAX_AUDIO_BYTES": "2e9"}).fetch.max_bytes == 2_000_000_000
    assert WorkerSettings.from_env({"MAX_AUDIO_BYTES": "1_000"}).fetch.max_bytes == 1000


@pytest.mark.parametrize("var", BOOLEANS + CHOICES, ids=lambda var: var.name)
def test_boolean_and_choice_settings_refuse_other_words(var):
    (problem,) = problems_of({var.name: "maybe"})
    assert problem.startswith(f"ENV {var.name}='maybe' must be ")


def test_defaults_are_in_their_ranges_and_the_dataclass_takes_them_from_the_table():
    for var in NUMERIC:
        if var.default is not None:
            WorkerSettings.from_env({var.name: str(var.default)})
    # The one computed default (the kernel cache, from the network volume) aside.
    assert dataclasses.replace(WorkerSettings.from_env({}), kernel_cache_dir="") == WorkerSettings()


def test_each_variable_is_declared_once_with_a_doc():
    names = [var.name for var in ENV_TABLE]
    assert len(names) == len(set(names))
    assert all(var.doc and var.name.isupper() for var in ENV_TABLE)


# ---------------------------------------------------------------- the reproduced failures
@pytest.mark.parametrize(("env", "start"), [
    ({"JOB_TIMEOUT_S": "inf"}, "ENV JOB_TIMEOUT_S='inf' must be a finite number of seconds >= 0"),
    ({"JOB_TIMEOUT_S": "nan"}, "ENV JOB_TIMEOUT_S='nan' must be a finite number of seconds >= 0"),
    ({"DOWNLOAD_CONNECT_TIMEOUT": "nan"}, "ENV DOWNLOAD_CONNECT_TIMEOUT='nan' must be a finite number of seconds > 0"),
    ({"DOWNLOAD_READ_TIMEOUT": "inf"}, "ENV DOWNLOAD_READ_TIMEOUT='inf' must be a finite number of seconds > 0"),
    ({"CPU_THREADS": "-4"}, "ENV CPU_THREADS='-4' must be a whole number of threads >= 0"),
    ({"RESULT_INLINE_LIMIT_BYTES": "-1"}, "ENV RESULT_INLINE_LIMIT_BYTES='-1' must be a whole number of bytes >= 0"),
    ({"RESULT_INLINE_LIMIT_BYTES": "lots"}, "ENV RESULT_INLINE_LIMIT_BYTES='lots' must be"),
    ({"LOG_TAIL_CHARS": "-1"}, "ENV LOG_TAIL_CHARS='-1' must be"),
    ({"LOG_LEVEL": "LOUD"}, "ENV LOG_LEVEL='LOUD' must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ({"MAX_CACHED_ALIGNERS": "0"}, "ENV MAX_CACHED_ALIGNERS='0' must be a whole number of aligners >= 1"),
])
def test_reproduced_bad_values_are_refused_with_the_range(env, start):
    (problem,) = problems_of(env)
    assert problem.startswith(start), problem


def test_all_bad_variables_are_listed_in_one_error():
    env = {"JOB_TIMEOUT_S": "inf", "CPU_THREADS": "-4", "WARMUP": "maybe", "DOWNLOAD_CONNECT_TIMEOUT": "nan",
           "RESULT_INLINE_LIMIT_BYTES": "x", "WORKER_DEVICE": "tpu", "MODELS_DIR": "/m"}
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env(env)
    error = caught.value
    assert isinstance(error, ValueError) and len(error.problems) == 6
    for name in set(env) - {"MODELS_DIR"}:
        assert f"ENV {name}={env[name]!r}" in str(error)
    assert str(error).startswith("6 bad worker settings: ")


def test_download_settings_reach_the_fetch_policy():
    policy = fetch_policy_from_env({"DOWNLOAD_CONNECT_TIMEOUT": "2.5", "DOWNLOAD_READ_TIMEOUT": "7", "DOWNLOAD_TIMEOUT": "120"})
    assert (policy.connect_timeout_s, policy.read_timeout_s) == (2.5, 7.0)
    with pytest.raises(SettingsError, match="DOWNLOAD_TIMEOUT='-5'"):
        fetch_policy_from_env({"DOWNLOAD_TIMEOUT": "-5"})
    if "download_timeout_s" in FetchPolicy.__dataclass_fields__:  # fetch.py gets the field in a parallel change
        assert policy.download_timeout_s == 120.0  # type: ignore[attr-defined]
        assert fetch_policy_from_env({}).download_timeout_s == 600.0  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the new settings
def test_new_settings_and_their_defaults():
    default = WorkerSettings.from_env({})
    assert default.job_timeout_s == 3600.0  # a public endpoint has a budget by default
    assert default.max_audio_seconds == 14400.0 and default.max_cached_aligners == 4
    assert ENV_BY_NAME["DOWNLOAD_TIMEOUT"].default == 600.0
    tuned = WorkerSettings.from_env({"JOB_TIMEOUT_S": "0", "MAX_AUDIO_SECONDS": "0", "MAX_CACHED_ALIGNERS": "9"})
    assert (tuned.job_timeout_s, tuned.max_audio_seconds, tuned.max_cached_aligners) == (0.0, 0.0, 9)
    assert WorkerSettings.from_env({"MAX_AUDIO_SECONDS": "90.5"}).max_audio_seconds == 90.5


def test_lists_blank_means_empty_and_unset_means_default():
    assert WorkerSettings.from_env({}).preload_align_languages == ("ru",)
    assert WorkerSettings.from_env({"PRELOAD_ALIGN_LANGUAGES": ""}).preload_align_languages == ()
    assert WorkerSettings.from_env({"PRELOAD_ALIGN_LANGUAGES": " RU, en ,"}).preload_align_languages == ("ru", "en")
    assert WorkerSettings.from_env({"ALLOWED_MODELS": "a, b:int8"}).allowed_models == ("a", "b:int8")


def test_log_level_is_normalised():
    assert WorkerSettings.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


# ---------------------------------------------------------------- the bucket ENV
def test_complete_bucket_env_configures_uploads():
    results = WorkerSettings.from_env(FULL_BUCKET).results
    assert results.bucket_configured and results.bucket_name == "results"
    assert not WorkerSettings.from_env({}).results.bucket_configured


def test_bucket_endpoint_without_bucket_name_is_an_error():
    (problem,) = problems_of({name: value for name, value in FULL_BUCKET.items() if name != "BUCKET_NAME"})
    assert problem.startswith("BUCKET_ENDPOINT_URL is set but BUCKET_NAME is not: ")


@pytest.mark.parametrize("missing", [("BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"), ("BUCKET_ENDPOINT_URL",),
                                     ("BUCKET_SECRET_ACCESS_KEY",)])
def test_partial_bucket_env_is_an_error_that_shows_no_secret(missing):
    problems = problems_of({name: value for name, value in FULL_BUCKET.items() if name not in missing})
    text = " ".join(problems)
    assert "incomplete bucket ENV" in text and all(name in text for name in missing)
    assert FULL_BUCKET["BUCKET_SECRET_ACCESS_KEY"] not in text and FULL_BUCKET["BUCKET_ACCESS_KEY_ID"] not in text


def test_bucket_endpoint_must_be_an_http_url():
    (problem,) = problems_of({**FULL_BUCKET, "BUCKET_ENDPOINT_URL": "s3.example.com"})
    assert problem.startswith("ENV BUCKET_ENDPOINT_URL='s3.example.com' must be an http(s) URL")


def test_zero_inline_limit_needs_a_bucket():
    (problem,) = problems_of({"RESULT_INLINE_LIMIT_BYTES": "0"})
    assert "no bucket is configured" in problem
    assert WorkerSettings.from_env({**FULL_BUCKET, "RESULT_INLINE_LIMIT_BYTES": "0"}).results.inline_limit_bytes == 0


# ---------------------------------------------------------------- the device
def test_cuda_without_a_gpu_is_a_settings_error():
    with pytest.raises(SettingsError, match=r"^ENV WORKER_DEVICE='cuda' but no CUDA device is usable"):
        check_device("cuda", 0)
    check_device("cuda", 1)
    check_device("auto", 0)
    check_device("cpu", 0)


# ---------------------------------------------------------------- documentation
def _readme_worker_env_names() -> set[str]:
    """The names in the first column of the README's worker-settings table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Worker settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_<>]*)`", row.split("|")[1])}


def test_every_variable_the_readme_documents_is_declared():
    declared = {var.name for var in ENV_TABLE} | {older for var in ENV_TABLE for older in var.older}
    documented = _readme_worker_env_names()
    assert "JOB_TIMEOUT_S" in documented  # the parse itself works
    unknown = {name for name in documented if name not in declared and not name.startswith(settings.ALIGN_MODEL_PREFIX)}
    assert not unknown, f"README documents worker ENV that settings.ENV_TABLE does not declare: {sorted(unknown)}"


def test_markdown_table_lists_every_operator_variable():
    table = settings.env_table_markdown()
    for var in ENV_TABLE:
        assert (f"`{var.name}`" in table) == var.operator
    assert "| `JOB_TIMEOUT_S` | float (seconds) | 3600 | >= 0 and <= 604800 |" in table
