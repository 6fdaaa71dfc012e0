"""RunPod Hub files (.runpod/hub.json, .runpod/tests.json) and test_input.json.

Checked against the fields of RunPod's Hub publishing guide, and against the worker itself:
every ``env`` key is a variable the worker reads (collected from ``rp_schema`` and from the
``environ.get(...)``-style reads in ``src/``, not from a list kept here), each default is what
the worker would use without it, presets only set those variables to values the worker
accepts, and every test input is a valid request.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import rp_schema
from settings import WorkerSettings, fetch_policy_from_env

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
HUB_PATH = ROOT / ".runpod" / "hub.json"
TESTS_PATH = ROOT / ".runpod" / "tests.json"
TEST_INPUT_PATH = ROOT / "test_input.json"

# --- the documented format (RunPod Hub publishing guide: hub.json / tests.json reference) --
HUB_REQUIRED = {"title", "description", "type", "category", "config"}
HUB_OPTIONAL = {"iconUrl"}
CATEGORIES = {"audio", "embedding", "language", "video", "image"}
CONFIG_REQUIRED = {"runsOn", "containerDiskInGb"}
CONFIG_OPTIONAL = {"cpuFlavor", "gpuCount", "gpuIds", "allowedCudaVersions", "env", "presets"}
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
INPUT_FIELDS = {"name", "type", "description", "default", "advanced", "options", "min", "max", "trueValue", "falseValue"}
TEST_FIELDS = {"name", "input", "timeout"}
TEST_CONFIG_FIELDS = {"gpuTypeId", "gpuCount", "cpuFlavor", "env", "allowedCudaVersions"}
CUDA_VERSION = re.compile(r"^\d+\.\d+$")
NAME = r"([A-Z][A-Z0-9_]*)"

# A request that is valid whatever the environment adds (resolve_options needs an audio source).
MINIMAL_REQUEST = {"audio_file": "https://example.com/a.wav"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


HUB = _load(HUB_PATH)
TESTS = _load(TESTS_PATH)
ENV_ENTRIES: list[dict] = HUB["config"].get("env", [])
INPUTS: dict[str, dict] = {entry["key"]: entry["input"] for entry in ENV_ENTRIES if "input" in entry}


def worker_env_names() -> tuple[set[str], set[str]]:
    """(names, prefixes) of the ENV variables the worker reads.

    The request fields' aliases come from ``rp_schema.env_aliases()``; worker-level settings
    are found in ``src/*.py`` as ``environ.get("X")`` / ``env.get("X")``, helper calls such as
    ``_env_int(env, "X", ...)``, ``*_ENV = "X"`` constants, and ``startswith("X_")`` prefixes
    (``ALIGN_MODEL_<LANG>``).
    """
    names = {name for aliases in rp_schema.env_aliases().values() for name in aliases}
    prefixes: set[str] = set()
    for path in SRC.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(rf'\b(?:environ|env)\.get\(\s*"{NAME}"', text))
        names |= set(re.findall(rf'\b_env_\w+\(\s*\w+\s*,\s*"{NAME}"', text))
        names |= set(re.findall(rf'^\w*_ENV\s*=\s*"{NAME}"', text, flags=re.M))
        prefixes |= set(re.findall(r'\.startswith\(\s*"([A-Z][A-Z0-9_]*_)"', text))
    return names, prefixes


def _alias_to_field() -> dict[str, str]:
    return {name: field for field, aliases in rp_schema.env_aliases().items() for name in aliases}


def env_string(key: str, value: Any) -> str:
    """The ENV text RunPod sets for a hub/preset value of ``key``."""
    spec = INPUTS.get(key, {})
    if isinstance(value, bool):
        if spec.get("type") == "boolean":
            return spec["trueValue"] if value else spec["falseValue"]
        return "true" if value else "false"
    return str(value)


# --- hub.json: format -----------------------------------------------------------------------
def test_hub_metadata_fields():
    assert HUB_REQUIRED <= HUB.keys(), HUB_REQUIRED - HUB.keys()
    assert HUB.keys() <= HUB_REQUIRED | HUB_OPTIONAL, HUB.keys() - HUB_REQUIRED - HUB_OPTIONAL
    assert isinstance(HUB["title"], str) and HUB["title"].strip()
    assert isinstance(HUB["description"], str) and len(HUB["description"]) > 40
    assert HUB["type"] == "serverless"
    assert HUB["category"] == "audio" and HUB["category"] in CATEGORIES
    assert HUB["iconUrl"].startswith("https://")


def test_hub_config_is_a_single_gpu_serverless_worker():
    config = HUB["config"]
    assert CONFIG_REQUIRED <= config.keys() and config.keys() <= CONFIG_REQUIRED | CONFIG_OPTIONAL
    assert config["runsOn"] == "GPU"
    assert "cpuFlavor" not in config  # only for runsOn CPU
    assert isinstance(config["gpuCount"], int) and config["gpuCount"] == 1
    pools = [item.strip() for item in config["gpuIds"].split(",")]
    assert pools and all(pools), config["gpuIds"]
    # The image is ~10 GB with the baked models; the seed asks for 15-20 GB of disk.
    assert isinstance(config["containerDiskInGb"], int) and 15 <= config["containerDiskInGb"] <= 40
    versions = config["allowedCudaVersions"]
    assert versions and all(isinstance(v, str) and CUDA_VERSION.match(v) for v in versions)
    # torch 2.8 / ctranslate2 4.x need a CUDA 12 capable driver.
    assert all(int(v.split(".")[0]) >= 12 for v in versions)


def test_hub_env_entries_are_well_formed():
    keys = [entry["key"] for entry in ENV_ENTRIES]
    assert len(keys) == len(set(keys)), "duplicate env keys"
    for entry in ENV_ENTRIES:
        assert re.fullmatch(NAME, entry["key"]), entry
        assert ("value" in entry) != ("input" in entry), f"{entry['key']}: exactly one of value / input"
        if "value" in entry:
            assert isinstance(entry["value"], str), entry
            continue
        spec = entry["input"]
        assert spec.keys() <= INPUT_FIELDS, (entry["key"], spec.keys() - INPUT_FIELDS)
        assert spec["type"] in INPUT_TYPES, entry
        assert spec["name"].strip() and spec["description"].strip(), entry
        assert "default" in spec, f"{entry['key']}: give the default the worker uses"
        if "options" in spec:
            values = [option["value"] for option in spec["options"]]
            assert all(option.keys() == {"label", "value"} for option in spec["options"]), entry
            assert spec["default"] in values, entry
        if spec["type"] == "boolean":
            assert isinstance(spec["default"], bool), entry
            assert {spec["trueValue"], spec["falseValue"]} == {"true", "false"}, entry
        if spec["type"] == "number":
            assert isinstance(spec["default"], (int, float)) and not isinstance(spec["default"], bool), entry
            assert spec.get("min", -float("inf")) <= spec["default"] <= spec.get("max", float("inf")), entry
        if spec["type"] == "string":
            assert isinstance(spec["default"], str), entry


def test_worker_env_names_are_collected_from_the_source():
    names, prefixes = worker_env_names()
    # Guards the collection itself: one name of each kind of read must be found.
    assert {"MODEL", "HF_TOKEN", "MODELS_DIR", "WARMUP", "MAX_AUDIO_BYTES", "OFFLINE_DIARIZATION_DIR"} <= names
    assert "ALIGN_MODEL_" in prefixes


def test_every_hub_env_key_is_read_by_the_worker():
    names, prefixes = worker_env_names()
    unknown = [
        entry["key"] for entry in ENV_ENTRIES
        if entry["key"] not in names and not entry["key"].startswith(tuple(prefixes))
    ]  # fmt: skip
    assert not unknown, f"hub.json sets ENV the worker never reads: {unknown}"


@pytest.mark.parametrize("key", sorted(INPUTS))
def test_hub_default_is_the_workers_own_default(key):
    """Deploying with the hub's default must change nothing: the worker resolves the default's
    ENV text to the same value it uses when the variable is unset."""
    text = env_string(key, INPUTS[key]["default"])
    field = _alias_to_field().get(key)
    if field is not None:
        with_default = rp_schema.resolve_options(MINIMAL_REQUEST, environ={key: text}).to_dict()
        without = rp_schema.resolve_options(MINIMAL_REQUEST, environ={}).to_dict()
        assert with_default == without, f"{key}={text!r}"
        if INPUTS[key]["default"] != "":  # "" stands for "unset" (null defaults)
            assert INPUTS[key]["default"] == rp_schema.INPUT_SCHEMA[field]["default"]
    else:
        assert WorkerSettings.from_env({key: text}) == WorkerSettings.from_env({}), f"{key}={text!r}"
        assert fetch_policy_from_env({key: text}) == fetch_policy_from_env({}), f"{key}={text!r}"


@pytest.mark.parametrize("key", sorted(key for key, spec in INPUTS.items() if key in _alias_to_field() and spec["type"] == "number"))
def test_hub_number_bounds_are_accepted_by_the_worker(key):
    """The form's min/max are values the worker accepts (the schema's ranges may be exclusive)."""
    spec = INPUTS[key]
    for bound in ("min", "max"):
        if bound in spec:
            rp_schema.resolve_options(MINIMAL_REQUEST, environ={key: str(spec[bound])})


def test_hub_options_are_the_schema_choices():
    for key, spec in INPUTS.items():
        field = _alias_to_field().get(key)
        if "options" in spec and field is not None:
            assert {option["value"] for option in spec["options"]} <= set(rp_schema.INPUT_SCHEMA[field]["choices"]), key


# --- hub.json: presets ----------------------------------------------------------------------
PRESETS = HUB["config"].get("presets", [])


def test_presets_are_well_formed_and_only_set_hub_env():
    assert PRESETS, "hub.json should offer presets"
    names = [preset["name"] for preset in PRESETS]
    assert len(names) == len(set(names))
    for preset in PRESETS:
        assert preset.keys() == {"name", "defaults"}, preset
        assert preset["defaults"], preset
        unknown = set(preset["defaults"]) - {entry["key"] for entry in ENV_ENTRIES}
        assert not unknown, f"preset {preset['name']!r} sets {unknown}, which hub.json does not declare in env"


@pytest.mark.parametrize("preset", PRESETS, ids=[preset["name"] for preset in PRESETS])
def test_preset_values_are_accepted_by_the_worker(preset):
    environ = {key: env_string(key, value) for key, value in preset["defaults"].items()}
    for key, value in preset["defaults"].items():
        spec = INPUTS[key]
        kind = {"boolean": bool, "number": (int, float), "string": str, "huggingface": str}[spec["type"]]
        assert isinstance(value, kind), (key, value)
        if "options" in spec:
            assert value in {option["value"] for option in spec["options"]}, (key, value)
    options = rp_schema.resolve_options(MINIMAL_REQUEST, environ=environ)
    for key, text in environ.items():
        field = _alias_to_field().get(key)
        if field is not None:  # the preset really changes what the worker does
            assert options.to_dict()[field] == rp_schema.resolve_options(MINIMAL_REQUEST, environ={key: text}).to_dict()[field]
    WorkerSettings.from_env(environ)
    fetch_policy_from_env(environ)


# --- tests.json -----------------------------------------------------------------------------
def test_tests_json_format():
    assert TESTS.keys() <= {"tests", "config"} and TESTS["tests"]
    names = [test["name"] for test in TESTS["tests"]]
    assert len(names) == len(set(names))
    for test in TESTS["tests"]:
        assert {"name", "input"} <= test.keys() <= TEST_FIELDS, test
        assert isinstance(test["input"], dict) and test["input"]
        assert isinstance(test.get("timeout", 1), int) and test.get("timeout", 1) > 0
    config = TESTS["config"]
    assert config.keys() <= TEST_CONFIG_FIELDS, config.keys() - TEST_CONFIG_FIELDS
    assert isinstance(config["gpuTypeId"], str) and config["gpuTypeId"]  # a GPU test (runsOn GPU)
    assert isinstance(config["gpuCount"], int) and config["gpuCount"] >= 1
    for entry in config.get("env", []):
        assert entry.keys() == {"key", "value"} and isinstance(entry["value"], str), entry
    assert all(CUDA_VERSION.match(v) for v in config.get("allowedCudaVersions", []))


def test_tests_json_env_is_read_by_the_worker():
    names, prefixes = worker_env_names()
    for entry in TESTS["config"].get("env", []):
        assert entry["key"] in names or entry["key"].startswith(tuple(prefixes)), entry


@pytest.mark.parametrize("test", TESTS["tests"], ids=[test["name"] for test in TESTS["tests"]])
def test_tests_json_inputs_are_valid_requests(test):
    environ = {entry["key"]: entry["value"] for entry in TESTS["config"].get("env", [])}
    options = rp_schema.resolve_options(test["input"], environ=environ)
    assert options.audio_file and options.audio_file.startswith("https://")  # the Hub's test has no local files


def test_test_input_json_is_a_valid_request():
    job = _load(TEST_INPUT_PATH)
    assert job.keys() == {"input"}
    options = rp_schema.resolve_options(job["input"], environ={})
    # RunPod's SDK runs this file when the worker starts outside RunPod: a public URL, so it
    # works anywhere with internet (no local path, no base64 blob).
    assert options.audio_file.startswith("https://") and options.audio_base64 is None
