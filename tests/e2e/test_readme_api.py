"""The README's local API command, run exactly as written, serves requests with the seed's
defaults: ``diarization`` is on by default, so the words of a transcript carry speakers.

The command and the request are parsed out of README.md's "The RunPod local API" block, so the
two cannot drift apart; only the port is swapped for a free one. The worker starts in a bare
ENV (PATH and a locale; HOME in a temp folder, so nothing outside the repo and the test's own
folders is read or written), plus what the suite always runs with (HF_HUB_OFFLINE=1: no Hub
here). The audio is a festvox-ru clip served from 127.0.0.1 (the command allows private URLs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import requests
from references import FESTVOX, LOCAL_MODELS, ROOT, require_assets
from servers import FileServer, WorkerApi, free_port

CLIP = "ru_0308"  # 4.3 s, one speaker: "Это странно, но я уж, как-то привыкла к вам."
_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# The suite's environment (scripts/test.sh exports the same): this machine has no Hub.
SUITE_ENV = {"HF_HUB_OFFLINE": "1", "PYANNOTE_METRICS_ENABLED": "false"}
# Warnings that mean diarization did not label the words (the token-free pipeline's own note,
# "no Hugging Face token ...: used the token-free pipeline ... instead", is the documented default).
DIARIZATION_FAILED = ("speakers are not labelled", "diarization is not available", "offline pipeline failed")


def readme_api_block() -> list[str]:
    """Shell commands of the first bash block under "## The RunPod local API", with
    backslash-continued lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The RunPod local API", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def split_command(line: str) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, argv) of one shell command line."""
    words = shlex.split(line)
    env = {}
    while words and _ASSIGNMENT.match(words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def readme_server_command(port: int) -> tuple[dict[str, str], list[str]]:
    """The README's worker command with ``--rp_api_port`` set to ``port``."""
    line = next(line for line in readme_api_block() if "--rp_serve_api" in line)
    env, argv = split_command(line)
    assert argv[argv.index("--rp_api_host") + 1] == "127.0.0.1", argv
    argv[argv.index("--rp_api_port") + 1] = str(port)
    return env, argv


def readme_request() -> tuple[str, dict]:
    """(path, JSON body) of the README's curl example."""
    line = next(line for line in readme_api_block() if line.startswith("curl "))
    _, argv = split_command(line)
    url = next(word for word in argv if word.startswith("http://"))
    return "/" + url.split("/", 3)[3], json.loads(argv[argv.index("-d") + 1])


def test_readme_command_is_parsed_as_expected():
    """The parse itself: the command is the worker with the seed's defaults (no DIARIZATION)."""
    env, argv = readme_server_command(8123)
    assert argv[:2] == [".venv/bin/python", "src/handler.py"] and "--rp_serve_api" in argv, argv
    assert env.get("MODELS_DIR") == ".models", env
    assert not {"DIARIZATION", "DIARIZE", "OFFLINE_DIARIZATION_DIR"} & env.keys(), env
    path, body = readme_request()
    assert path == "/runsync" and set(body["input"]) == {"audio_file", "language"}, (path, body)


@pytest.fixture(scope="module")
def clip_server(tmp_path_factory):
    require_assets()
    offline = LOCAL_MODELS / "offline-diarization" / "camplusplus.py"
    assert offline.exists(), f"{offline} missing: run bash scripts/setup.sh (it links the diarization weights there)"
    root = tmp_path_factory.mktemp("media")
    shutil.copy(FESTVOX / "wav" / f"{CLIP}.wav", root / f"{CLIP}.wav")
    with FileServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def readme_worker(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    readme_env, argv = readme_server_command(port)
    environ = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL") if key in os.environ}
    environ.update(SUITE_ENV, HOME=str(home), CONTAINER_LOG_PATH=str(home / "container_log.txt"), **readme_env)
    with WorkerApi(Path(home) / "worker.log", port=port, argv=argv, environ=environ) as worker:
        yield worker


def test_readme_command_serves_diarized_words(readme_worker, clip_server):
    path, body = readme_request()
    body["input"]["audio_file"] = clip_server.url(f"{CLIP}.wav")
    response = requests.post(readme_worker.base + path, json=body, timeout=600)
    response.raise_for_status()
    envelope = response.json()
    assert envelope.get("status") == "COMPLETED", envelope
    output = envelope["output"]
    warnings = output.get("warnings", [])
    assert not [w for w in warnings if any(bad in w for bad in DIARIZATION_FAILED)], warnings
    words = [word for segment in output["segments"] for word in segment["words"]]
    assert len(words) >= 5, output["segments"]
    assert all(word.get("speaker") for word in words), words
    assert all(segment.get("speaker") for segment in output["segments"]), output["segments"]
    assert output["detected_language"] == "ru"
