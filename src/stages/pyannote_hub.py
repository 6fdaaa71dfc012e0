"""Which Hugging Face files a pyannote pipeline needs, and which of them are missing.

A pyannote pipeline id (``pyannote/speaker-diarization-3.1``) names only a ``config.yaml``; the
models it refers to live in other repositories, each gated on its own. When one of them is
missing, pyannote's own error names neither the repository nor the file (offline it is a
``LocalEntryNotFoundError``; online a refusal, or ``None`` instead of a pipeline). This module
reads the config, lists every ``(repository, file)`` the pipeline will load, and checks each
one the way pyannote will fetch it, so the worker's warning and the image build can name them.

Torch-free (``huggingface_hub`` and ``yaml`` only): ``builder/fetch_models.py`` uses it during
the image build, where the worker's own code is not installed.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"
MODEL_FILE = "pytorch_model.bin"
PLDA_FILES = ("xvec_transform.npz", "plda.npz")
# pyannote 4's SpeakerDiarization defaults for what a config leaves out: community-1's
# sub-folders. 3.1's config leaves out ``plda``, which the constructor loads even when the
# clustering never uses it (pyannote #2044).
_COMMUNITY_1 = "pyannote/speaker-diarization-community-1"
DEFAULTS = {key: {"checkpoint": _COMMUNITY_1, "subfolder": key} for key in ("segmentation", "embedding", "plda")}
VBX_CLUSTERING = "VBxClustering"
SPEAKER_DIARIZATION_CLASSES = frozenset({
    "pyannote.audio.pipelines.SpeakerDiarization",
    "pyannote.audio.pipelines.speaker_diarization.SpeakerDiarization",
})
# Embedding ids pyannote loads as its own checkpoints (``pytorch_model.bin``); speechbrain or
# NeMo embeddings bring their own file lists, which are not checked here.
PYANNOTE_EMBEDDING_PREFIXES = ("pyannote/", "pyannoteai/")


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face model repository (``filename`` may include a sub-folder)."""

    repo_id: str
    filename: str

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filename}"


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as ``org/name`` on the Hub rather than a local path."""
    return (
        name.count("/") == 1
        and not name.startswith((".", "/", "~"))
        and not os.path.exists(name)
        and all(part.strip() for part in name.split("/"))
    )


def is_speaker_diarization(config: dict[str, Any]) -> bool:
    """Whether ``config`` builds pyannote's ``SpeakerDiarization`` (the class that loads a PLDA)."""
    name = str(config.get("pipeline", {}).get("name", ""))
    return name in SPEAKER_DIARIZATION_CLASSES


def uses_plda(config: dict[str, Any]) -> bool:
    """Whether the pipeline in ``config`` is pyannote's ``SpeakerDiarization`` clustering with
    VBx (its default), the only step that uses a PLDA."""
    params = config.get("pipeline", {}).get("params", {}) or {}
    return is_speaker_diarization(config) and params.get("clustering", VBX_CLUSTERING) == VBX_CLUSTERING


def loads_unused_plda(config: dict[str, Any]) -> bool:
    """Whether pyannote 4.0.7 would load a PLDA that the pipeline of ``config`` never uses."""
    return is_speaker_diarization(config) and not uses_plda(config)


def _expand(value: Any, pipeline_id: str) -> Any:
    """``$model/<sub>[@<revision>]`` (a sub-folder of the pipeline's own repository) ->
    checkpoint dict, in nested dicts and lists too, as pyannote's own expansion does."""
    if isinstance(value, str) and value.startswith("$model/"):
        sub, _, revision = value.split("/", 1)[1].partition("@")
        return {"checkpoint": pipeline_id, "subfolder": sub, **({"revision": revision} if revision else {})}
    if isinstance(value, dict):
        return {key: _expand(item, pipeline_id) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, pipeline_id) for item in value]
    return value


def _model_file(value: Any) -> HubFile | None:
    """The checkpoint file a ``segmentation``/``embedding`` parameter loads from the Hub, if any."""
    if isinstance(value, str) and is_hub_id(value):
        return HubFile(value, MODEL_FILE)
    if isinstance(value, dict) and isinstance(value.get("checkpoint"), str) and is_hub_id(value["checkpoint"]):
        sub = str(value.get("subfolder") or "").strip("/")
        return HubFile(value["checkpoint"], f"{sub}/{MODEL_FILE}" if sub else MODEL_FILE)
    return None


def _plda_files(value: Any) -> list[HubFile]:
    if isinstance(value, str) and is_hub_id(value):
        return [HubFile(value, name) for name in PLDA_FILES]
    if isinstance(value, dict) and isinstance(value.get("checkpoint"), str) and is_hub_id(value["checkpoint"]):
        sub = str(value.get("subfolder") or "").strip("/")
        return [HubFile(value["checkpoint"], f"{sub}/{name}" if sub else name) for name in PLDA_FILES]
    return []


def needed_files(pipeline_id: str, config: dict[str, Any], *, plda_if_unused: bool = False) -> list[HubFile]:
    """Every Hub file the pipeline of ``config`` (read from ``pipeline_id``) loads.

    plda_if_unused: also list the PLDA that pyannote 4.0.7 loads for pipelines that never use it
        (plain ``Pipeline.from_pretrained``); the worker skips it, so by default it is left out.
    """
    files = [HubFile(pipeline_id, CONFIG_FILE)] if is_hub_id(pipeline_id) else []
    params = config.get("pipeline", {}).get("params", {}) or {}
    defaults = DEFAULTS if is_speaker_diarization(config) else {}
    for key in ("segmentation", "embedding"):
        value = _expand(params.get(key, defaults.get(key)), pipeline_id)
        checkpoint = value.get("checkpoint") if isinstance(value, dict) else value
        if key == "embedding" and isinstance(checkpoint, str) and not (
            checkpoint.startswith(PYANNOTE_EMBEDDING_PREFIXES) or checkpoint == pipeline_id
        ):
            continue  # speechbrain/NeMo embeddings bring their own files
        found = _model_file(value)
        if found is not None:
            files.append(found)
    if uses_plda(config) or (plda_if_unused and loads_unused_plda(config)):
        files += _plda_files(_expand(params.get("plda", DEFAULTS["plda"]), pipeline_id))
    unique: list[HubFile] = []
    for item in files:
        if item not in unique:
            unique.append(item)
    return unique


def read_config(pipeline: str, token: str | None, cache_dir: str | None = None) -> dict[str, Any]:
    """The parsed ``config.yaml`` of a pipeline: a Hub id (fetched or read from the cache), a
    local folder holding one, or a path to the file itself."""
    path = Path(pipeline)
    if path.is_dir():
        path = path / CONFIG_FILE
    elif not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(pipeline, CONFIG_FILE, token=token or None, cache_dir=cache_dir))
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, dict) or "pipeline" not in config:
        raise ValueError(f"{path} is not a pyannote pipeline config (no 'pipeline' section)")
    return config


def expanded_config(pipeline_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose ``$model/<sub>`` parameters name ``pipeline_id`` explicitly,
    so the config can be handed to ``Pipeline.from_pretrained`` as a dict."""
    config = copy.deepcopy(config)
    pipeline = config.get("pipeline", {})
    if isinstance(pipeline.get("params"), dict):
        pipeline["params"] = _expand(pipeline["params"], pipeline_id)
    return config


def describe_failure(exc: BaseException) -> str:
    """Why one file could not be had, in the operator's terms."""
    name = type(exc).__name__
    if name == "LocalEntryNotFoundError" or "outgoing traffic has been disabled" in str(exc):
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        return "not in the local Hugging Face cache and the Hub could not be reached"
    if name == "GatedRepoError":
        return "gated: accept its conditions on huggingface.co with the token's account"
    if name == "RepositoryNotFoundError":
        return "repository not found, or the token may not read it"
    if name in {"EntryNotFoundError", "RemoteEntryNotFoundError"}:
        return "no such file in the repository"
    return f"{name}: {' '.join(str(exc).split())[:160]}"


def missing_files(files: list[HubFile], token: str | None, cache_dir: str | None = None) -> list[tuple[HubFile, str]]:
    """The files of ``files`` that cannot be had, each with the reason, fetching (or finding in
    the cache, offline) each the way pyannote will. Empty when the pipeline can load."""
    from huggingface_hub import hf_hub_download

    missing = []
    for item in files:
        try:
            hf_hub_download(item.repo_id, item.filename, token=token or None, cache_dir=cache_dir)
        except Exception as exc:  # noqa: BLE001 - every failure is reported by name
            missing.append((item, describe_failure(exc)))
    return missing


def format_missing(missing: list[tuple[HubFile, str]]) -> str:
    """``repo/file (reason); ...`` with one reason per group of files that share it."""
    groups: dict[str, list[str]] = {}
    for item, reason in missing:
        groups.setdefault(reason, []).append(str(item))
    return "; ".join(f"{', '.join(names)} ({reason})" for reason, names in groups.items())
