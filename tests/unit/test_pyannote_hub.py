"""src/stages/pyannote_hub.py: the files a pyannote pipeline config needs, found (or not) offline.

The configs are the public ``config.yaml`` of the two pipelines the worker names (as
scripts/hub_cache.py writes them); the cache is
a Hugging Face cache folder written here (``models--org--name/snapshots/<rev>/...``), read
with ``HF_HUB_OFFLINE=1`` as scripts/test.sh sets it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from stages import pyannote_hub
import pytest
import yaml
from stages.pyannote_hub import HubFile
from references import hub_cache_builder

# The public config.yaml of both pipelines, as the Hub-shaped cache writes them.
CONFIG_31 = yaml.safe_load(hub_cache_builder().DIARIZATION_31_CONFIG)
CONFIG_COMMUNITY = yaml.safe_load(hub_cache_builder().COMMUNITY_1_CONFIG)

P31 = "pyannote/speaker-diarization-3.1"
COMMUNITY = "pyannote/speaker-diarization-community-1"


def test_31_needs_its_config_segmentation_and_wespeaker_but_no_plda():
    assert pyannote_hub.needed_files(P31, CONFIG_31) == [
        HubFile(P31, "config.yaml"),
        HubFile("pyannote/segmentation-3.0", "pytorch_model.bin"),
        HubFile("pyannote/wespeaker-voxceleb-resnet34-LM", "pytorch_model.bin"),
    ]
    assert not pyannote_hub.uses_plda(CONFIG_31)


def test_plain_pyannote_would_also_need_community_1s_plda_for_31():
    """What pyannote 4.0.7 loads for 3.1 (issue #2044): community-1's PLDA files."""
    files = pyannote_hub.needed_files(P31, CONFIG_31, plda_if_unused=True)
    assert files[-2:] == [HubFile(COMMUNITY, "plda/xvec_transform.npz"), HubFile(COMMUNITY, "plda/plda.npz")]


def test_community_1_needs_its_own_subfolders_and_plda():
    assert pyannote_hub.uses_plda(CONFIG_COMMUNITY)
    assert [str(f) for f in pyannote_hub.needed_files(COMMUNITY, CONFIG_COMMUNITY)] == [
        f"{COMMUNITY}/config.yaml",
        f"{COMMUNITY}/segmentation/pytorch_model.bin",
        f"{COMMUNITY}/embedding/pytorch_model.bin",
        f"{COMMUNITY}/plda/xvec_transform.npz",
        f"{COMMUNITY}/plda/plda.npz",
    ]


def test_expanded_config_names_the_repository_and_leaves_the_original_alone():
    expanded = pyannote_hub.expanded_config(COMMUNITY, CONFIG_COMMUNITY)
    assert expanded["pipeline"]["params"]["embedding"] == {"checkpoint": COMMUNITY, "subfolder": "embedding"}
    assert CONFIG_COMMUNITY["pipeline"]["params"]["embedding"] == "$model/embedding"


def test_other_pipeline_classes_need_no_plda():
    config = {"pipeline": {"name": "diarization.OfflineSpeakerDiarization", "params": {"offline_dir": "/x"}}}
    assert not pyannote_hub.uses_plda(config) and not pyannote_hub.loads_unused_plda(config)
    assert pyannote_hub.needed_files("org/custom", config, plda_if_unused=True) == [HubFile("org/custom", "config.yaml")]
    assert pyannote_hub.loads_unused_plda(CONFIG_31) and not pyannote_hub.loads_unused_plda(CONFIG_COMMUNITY)


def test_local_and_non_pyannote_references_are_not_hub_files(tmp_path):
    config = {"pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization",
                           "params": {"segmentation": str(tmp_path), "embedding": "speechbrain/spkrec-ecapa-voxceleb",
                                      "clustering": "AgglomerativeClustering"}}}
    assert pyannote_hub.needed_files(str(tmp_path), config) == []
    assert not pyannote_hub.is_hub_id(str(tmp_path)) and not pyannote_hub.is_hub_id("a/b/c")
    assert pyannote_hub.is_hub_id(P31)


def _cache_file(cache: Path, repo_id: str, filename: str, content: bytes = b"x") -> None:
    """Write one file into a Hugging Face cache laid out as huggingface_hub lays it out."""
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    path = repo / "snapshots" / revision / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_missing_files_names_each_absent_file_offline(tmp_path):
    """An operator who accepted 3.1, segmentation-3.0 and WeSpeaker has all the worker needs;
    plain pyannote would also want community-1's PLDA, and each missing file is named."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "run through scripts/test.sh (HF_HUB_OFFLINE=1)"
    _cache_file(tmp_path, P31, "config.yaml", yaml.safe_dump(CONFIG_31).encode())
    _cache_file(tmp_path, "pyannote/segmentation-3.0", "pytorch_model.bin")
    _cache_file(tmp_path, "pyannote/wespeaker-voxceleb-resnet34-LM", "pytorch_model.bin")

    config = pyannote_hub.read_config(P31, "hf_dummy", cache_dir=str(tmp_path))
    assert config == CONFIG_31
    assert pyannote_hub.missing_files(pyannote_hub.needed_files(P31, config), "hf_dummy", str(tmp_path)) == []
    missing = pyannote_hub.missing_files(pyannote_hub.needed_files(P31, config, plda_if_unused=True), "hf_dummy",
                                         str(tmp_path))
    assert [str(item) for item, _ in missing] == [f"{COMMUNITY}/plda/xvec_transform.npz", f"{COMMUNITY}/plda/plda.npz"]
    text = pyannote_hub.format_missing(missing)
    assert text == (f"{COMMUNITY}/plda/xvec_transform.npz, {COMMUNITY}/plda/plda.npz "
                    "(not in the local Hugging Face cache and HF_HUB_OFFLINE is set)")


def test_read_config_rejects_a_file_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError, match="not a pyannote pipeline config"):
        pyannote_hub.read_config(str(tmp_path), None)


def test_a_config_without_segmentation_or_embedding_gets_pyannotes_defaults():
    """pyannote 4 fills a missing segmentation/embedding/plda with community-1's sub-folders."""
    config = {"pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization", "params": {}}}
    assert [str(f) for f in pyannote_hub.needed_files("org/pipe", config)] == [
        "org/pipe/config.yaml",
        f"{COMMUNITY}/segmentation/pytorch_model.bin",
        f"{COMMUNITY}/embedding/pytorch_model.bin",
        f"{COMMUNITY}/plda/xvec_transform.npz",
        f"{COMMUNITY}/plda/plda.npz",
    ]


def test_model_references_expand_with_revisions_and_nesting():
    config = {"pipeline": {"name": "x.Y", "params": {"a": "$model/seg@v2", "b": {"c": ["$model/emb"]}}}}
    params = pyannote_hub.expanded_config("org/pipe", config)["pipeline"]["params"]
    assert params["a"] == {"checkpoint": "org/pipe", "subfolder": "seg", "revision": "v2"}
    assert params["b"] == {"c": [{"checkpoint": "org/pipe", "subfolder": "emb"}]}


def test_a_cache_miss_online_is_not_called_offline(monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    miss = LocalEntryNotFoundError("cannot find the requested files in the local cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert pyannote_hub.describe_failure(miss) == "not in the local Hugging Face cache and the Hub could not be reached"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert pyannote_hub.describe_failure(miss) == "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
