"""Where a Hugging Face wav2vec2 aligner's files are: a local folder, or the Hub's cache.

``ALIGN_MODEL_<LANG>`` (or whisperX's default for a language) names a local folder or an
``owner/name`` Hub id. A Hub aligner is fetched file by file into the Hugging Face cache
(``HF_HOME``; honouring ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` as transformers does), only the files
``wav2vec2_network`` reads: the network's config, the tokenizer's vocabulary and one checkpoint
(safetensors when the repo has it, else the pickled one), so a repo holding both is not
downloaded twice. The image bakes the default aligners into that cache at build time.
"""

from __future__ import annotations

from pathlib import Path

from stages.wav2vec2_network import WEIGHT_FILES

__all__ = ["local_folder"]

REQUIRED_FILES = ("config.json", "vocab.json")
OPTIONAL_FILES = ("tokenizer_config.json", "added_tokens.json")


def local_folder(name: str) -> Path:
    """A folder holding the aligner ``name``'s files: ``name`` itself when it is a folder, else
    the Hub cache's snapshot of repo ``name`` after fetching what is missing there. Raises
    FileNotFoundError for a local path that is no folder, and huggingface_hub's errors (offline
    and not cached, unknown or gated repo) for a Hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or name.startswith((".", "~")):
        raise FileNotFoundError(f"aligner folder {name} does not exist")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    folder = Path(hf_hub_download(name, REQUIRED_FILES[0])).parent
    for filename in REQUIRED_FILES[1:]:
        hf_hub_download(name, filename)
    for filename in OPTIONAL_FILES:
        try:
            hf_hub_download(name, filename)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            pass  # older repos have no tokenizer_config.json, most none of added_tokens.json
    first_error: Exception | None = None
    for filename in WEIGHT_FILES:
        try:
            hf_hub_download(name, filename)
            return folder
        except (EntryNotFoundError, LocalEntryNotFoundError) as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error
