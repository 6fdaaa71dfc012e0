"""wav2vec2 CTC aligners without transformers (``stages.wav2vec2_network``) give transformers'
logits, whisperX's dictionary and lengths, from the folders and Hub caches the worker meets.

Each checkpoint has every parameter drawn at random (std 0.3, so each one moves the output),
saved by transformers' own ``save_pretrained``; the network runs on padded rows with an
attention mask, as the aligner's padded forwards do. Float32 on CPU: the same operations in
a different order differ by rounding, so logits agree within 1e-4 (measured: below 1e-6).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from references import ROOT

from stages import aligner_files, alignment, ctc_alignment, wav2vec2_network
from stages.whisperx_tables import constant

sys.path.insert(0, str(ROOT / "bench"))
from random_models import make_random_wav2vec2  # noqa: E402

TOLERANCE = 1e-4


def _checkpoint(folder: Path, norm: str, stable: bool, **config_changes: object) -> Path:
    """A tiny Wav2Vec2ForCTC with random parameters everywhere, saved by transformers."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    make_random_wav2vec2(folder, "tiny", feat_extract_norm=norm)
    config = Wav2Vec2Config.from_pretrained(folder)
    config.do_stable_layer_norm = stable
    for key, value in config_changes.items():
        setattr(config, key, value)
    torch.manual_seed(1)
    model = Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    model.save_pretrained(folder)
    return folder


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 1 s: one whole, two zero-padded after 0.56 s and 0.25 s, and their mask."""
    generator = torch.Generator().manual_seed(2)
    samples = torch.randn(3, 16000, generator=generator) * 0.1
    mask = torch.ones(3, 16000, dtype=torch.long)
    mask[1, 9000:] = 0
    mask[2, 4000:] = 0
    return samples * mask, mask


def _transformers_logits(folder: Path, samples: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    from transformers import Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(samples, attention_mask=mask).logits


@pytest.mark.parametrize("norm, stable", [("group", False), ("layer", False), ("layer", True)])
def test_logits_equal_transformers(tmp_path, norm, stable):
    folder = _checkpoint(tmp_path, norm, stable)
    samples, mask = _padded_batch()
    ours = wav2vec2_network.load_wav2vec2_ctc(folder, "cpu")
    with torch.no_grad():
        for rows, row_mask in ((samples, mask), (samples[:1], None)):
            expected = _transformers_logits(folder, rows, row_mask)
            got = ours(rows, attention_mask=row_mask).logits
            assert got.shape == expected.shape
            assert expected.abs().max() > 1.0  # the random parameters reach the output
            assert (got - expected).abs().max().item() < TOLERANCE


def test_output_lengths_equal_transformers(tmp_path):
    from transformers import Wav2Vec2ForCTC

    folder = _checkpoint(tmp_path, "layer", True)
    lengths = torch.arange(400, 64000, 997)
    expected = Wav2Vec2ForCTC.from_pretrained(folder)._get_feat_extract_output_lengths(lengths)
    ours = wav2vec2_network.load_wav2vec2_ctc(folder, "cpu")
    assert torch.equal(ours.output_lengths(lengths), expected)
    assert np.array_equal(ctc_alignment.output_frames(ours, lengths.numpy()), expected.numpy())


def test_old_checkpoint_names_load_the_same_network(tmp_path):
    """Checkpoints saved before torch's weight-norm parametrizations (``weight_g``/``weight_v``,
    as the production Russian aligner's ``pytorch_model.bin`` is) and with ``gamma``/``beta``
    layer-norm names give the same logits."""
    from safetensors.torch import load_file

    folder = _checkpoint(tmp_path / "new", "layer", True)
    samples, mask = _padded_batch()
    with torch.no_grad():
        expected = wav2vec2_network.load_wav2vec2_ctc(folder, "cpu")(samples, attention_mask=mask).logits
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "vocab.json"):
        (old / name).write_bytes((folder / name).read_bytes())
    renamed = {}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        name = name.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        if name.endswith("layer_norm.weight"):
            name = name[: -len("weight")] + "gamma"
        renamed[name] = tensor
    assert any(n.endswith("weight_g") for n in renamed) and any(n.endswith("gamma") for n in renamed)
    torch.save(renamed, old / "pytorch_model.bin")
    with torch.no_grad():
        got = wav2vec2_network.load_wav2vec2_ctc(old, "cpu")(samples, attention_mask=mask).logits
    assert (got - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("change, reason", [
    ({"model_type": "hubert"}, "model_type"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"add_adapter": True}, "add_adapter"),
    ({"architectures": ["Wav2Vec2ForPreTraining"]}, "architectures"),
])
def test_variants_not_built_here_are_refused(tmp_path, change, reason):
    folder = _checkpoint(tmp_path, "layer", True)
    config = json.loads((folder / "config.json").read_text()) | change
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(wav2vec2_network.Unsupported, match=reason):
        wav2vec2_network.load_wav2vec2_ctc(folder, "cpu")


def test_a_tensor_left_over_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _checkpoint(tmp_path, "layer", True)
    tensors = load_file(str(folder / "model.safetensors")) | {"wav2vec2.adapter.proj.weight": torch.zeros(2, 2)}
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(wav2vec2_network.Unsupported, match="unexpected"):
        wav2vec2_network.load_wav2vec2_ctc(folder, "cpu")


def test_an_unsupported_variant_still_loads_through_whisperx(tmp_path):
    """The worker's aligner cache falls back to whisperX (transformers) for a variant it does
    not build, and aligns with it as before."""
    from transformers import Wav2Vec2ForCTC

    folder = _checkpoint(tmp_path, "layer", True, hidden_act="relu")
    aligners = alignment.AlignmentModels("cpu", lambda _language: str(folder))
    aligner, _ = aligners.get("ru")
    assert isinstance(aligner.model, Wav2Vec2ForCTC)
    plain = _checkpoint(tmp_path / "plain", "layer", True)
    aligner, _ = alignment.AlignmentModels("cpu", lambda _language: str(plain)).get("ru")
    assert isinstance(aligner.model, wav2vec2_network.Wav2Vec2Ctc)
    assert aligner.metadata["type"] == "huggingface" and aligner.source == str(plain)


def test_dictionary_equals_whisperx(tmp_path):
    import whisperx

    folder = _checkpoint(tmp_path, "group", False)
    # an added token beyond vocab.json, upper case: whisperX lower-cases it too
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["60"] = {"content": "<EXTRA>", "lstrip": False, "normalized": False, "rstrip": False,
                                            "single_word": False, "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    _, metadata = whisperx.load_align_model("ru", "cpu", model_name=str(folder))
    assert wav2vec2_network.ctc_dictionary(folder) == metadata["dictionary"]
    assert metadata["dictionary"]["<extra>"] == 60


def test_tables_read_from_source_equal_whisperx():
    import whisperx.alignment

    for name in ("DEFAULT_ALIGN_MODELS_TORCH", "DEFAULT_ALIGN_MODELS_HF", "LANGUAGES_WITHOUT_SPACES"):
        assert constant("alignment", name) == getattr(whisperx.alignment, name)
    assert alignment._whisperx_default("ru") == whisperx.alignment.DEFAULT_ALIGN_MODELS_HF["ru"]
    assert alignment._whisperx_default("xx") is None


def _hub_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A Hub cache entry as huggingface_hub writes it: refs/main names a revision whose
    snapshot folder holds the files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def test_a_hub_id_resolves_to_its_cached_snapshot_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "run through scripts/test.sh (HF_HUB_OFFLINE=1)"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = _checkpoint(tmp_path / "source", "layer", True)
    files = {name: (source / name).read_bytes() for name in ("config.json", "vocab.json", "model.safetensors")}
    snapshot = _hub_snapshot(tmp_path / "hub", "someone/wav2vec2-ru", files)
    assert aligner_files.local_folder("someone/wav2vec2-ru") == snapshot
    aligner, _ = alignment.AlignmentModels("cpu", lambda _language: "someone/wav2vec2-ru").get("ru")
    assert isinstance(aligner.model, wav2vec2_network.Wav2Vec2Ctc)

    del files["model.safetensors"]
    _hub_snapshot(tmp_path / "hub", "someone/no-weights", files)
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):
        aligner_files.local_folder("someone/no-weights")
    with pytest.raises(alignment.AlignerUnavailable, match="someone/no-weights"):
        alignment.AlignmentModels("cpu", lambda _language: "someone/no-weights").get("ru")


def test_a_missing_local_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        aligner_files.local_folder(str(tmp_path / "absent"))
    with pytest.raises(alignment.AlignerUnavailable, match="absent"):
        alignment.AlignmentModels("cpu", lambda _language: str(tmp_path / "absent")).get("ru")


def test_a_language_without_any_aligner_says_so():
    with pytest.raises(alignment.AlignerUnavailable, match="ALIGN_MODEL_XX is not set"):
        alignment.AlignmentModels("cpu").get("xx")
