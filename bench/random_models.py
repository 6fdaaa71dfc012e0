"""Randomly initialised models of real shapes, for tests and speed benchmarks only.

No wav2vec2 aligner or production-size Whisper weights exist offline; random weights of the
same architecture exercise the real loading code (tests) and measure speed and memory at
production size (benchmarks). They say nothing about accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

RUSSIAN_LETTERS = "абвгдежзийклмнопрстуфхцчшщъыьэюя"


def make_random_wav2vec2(folder: Path, size: str = "tiny", seed: int = 0, feat_extract_norm: str | None = None) -> Path:
    """A Russian-alphabet ``Wav2Vec2ForCTC`` saved with ``save_pretrained``.

    size "tiny": 2 layers of 32 (fast, for tests); "large": xlsr-53-large shape (24 x 1024).
    ``feat_extract_norm`` ("group" | "layer") overrides the size's feature-encoder norm (tiny:
    "group", the transformers default; large: "layer", as xlsr-53): layer norm makes zero
    padding exact, so the aligner batches segments.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4} | {c: i + 5 for i, c in enumerate(RUSSIAN_LETTERS)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    if size == "tiny":
        config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, pad_token_id=0,
                                feat_extract_norm=feat_extract_norm or "group")
    else:
        config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                                conv_dim=(512,) * 7, do_stable_layer_norm=True, feat_extract_norm=feat_extract_norm or "layer", pad_token_id=0)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    return folder


def make_random_whisper_ct2(folder: Path, tokenizer_dir: Path, size: str = "large-v3", seed: int = 0) -> Path:
    """A random Whisper of ``size`` dimensions converted to CTranslate2 (float16).

    The tokenizer (and vocabulary) comes from ``tokenizer_dir`` (a multilingual CTranslate2
    Whisper folder); large-v3 takes 128 mel bins, written to ``preprocessor_config.json``.
    """
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    shapes = {
        "large-v3": {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 32, "encoder_attention_heads": 20,
                     "decoder_attention_heads": 20, "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120, "num_mel_bins": 128,
                     "vocab_size": 51866},
        "base": {"d_model": 512, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
                 "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "num_mel_bins": 80,
                 "vocab_size": 51865},
    }[size]
    folder = Path(folder)
    hf_dir = folder.with_name(folder.name + "-hf")
    tokenizer_dir = Path(tokenizer_dir)
    torch.manual_seed(seed)
    config = WhisperConfig(max_source_positions=1500, max_target_positions=448, **shapes)
    model = WhisperForConditionalGeneration(config).half()
    model.save_pretrained(hf_dir)
    shutil.copy(tokenizer_dir / "tokenizer.json", hf_dir / "tokenizer.json")
    TransformersConverter(str(hf_dir), load_as_float16=True).convert(str(folder), quantization="float16", force=True)
    for name in ("tokenizer.json", "vocabulary.txt"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, folder / name)
    (folder / "preprocessor_config.json").write_text(json.dumps({"feature_size": shapes["num_mel_bins"], "sampling_rate": 16000,
                                                                   "hop_length": 160, "chunk_length": 30, "n_fft": 400}))
    shutil.rmtree(hf_dir, ignore_errors=True)
    return folder
