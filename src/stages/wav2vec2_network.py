"""wav2vec2 CTC aligners in plain torch, loaded from a Hugging Face folder without transformers.

whisperX loads a Hub aligner with transformers' ``Wav2Vec2ForCTC`` and ``Wav2Vec2Processor``;
importing those costs 2 s (transformers) plus 10.9 s (its model, generation and processor
stacks) on the H200's host, which set the worker's start-up (docs/BENCHMARKS.md section 16).
The network itself is small: a convolutional feature encoder, a projection, a convolutional
position embedding and a transformer encoder, then a linear CTC head. This module builds that
network from ``config.json`` and loads the checkpoint's tensors into it under the same names,
strictly (a tensor missing or left over means a variant this module does not know).

Covered: ``model_type`` "wav2vec2" CTC checkpoints with either feature-encoder norm ("group":
group norm in the first conv layer; "layer": layer norm in each) and either encoder order
(post-norm, or pre-norm with ``do_stable_layer_norm``), GELU activations, weight-normed
position convolution saved either way (``weight_g``/``weight_v`` or parametrizations).
Anything else raises ``Unsupported`` and the caller loads it through whisperX instead.
The outputs equal transformers' in eval mode (tests/unit/test_wav2vec2_network.py compares
logits with padding and attention masks on both norms and both encoder orders).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CtcOutput", "Unsupported", "Wav2Vec2Ctc", "Wav2Vec2Shape", "ctc_dictionary", "load_wav2vec2_ctc", "weights_file"]

# Checkpoint files, most preferred first (safetensors: no pickle, memory-mapped).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class Unsupported(ValueError):
    """The folder holds a wav2vec2 variant this module does not build; message says which."""


@dataclass(frozen=True)
class Wav2Vec2Shape:
    """The fields of a transformers ``Wav2Vec2Config`` that fix the CTC network; defaults are
    transformers' own (a ``config.json`` written by ``save_pretrained`` carries them all)."""

    vocab_size: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group" | "layer"; ctc_alignment.padding_is_exact reads it
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Wav2Vec2Shape:
        """The shape of ``config`` (a parsed ``config.json``); ``Unsupported`` for variants
        whose network differs from the one built here."""
        if config.get("model_type", "wav2vec2") != "wav2vec2":
            raise Unsupported(f"model_type {config.get('model_type')!r}")
        architectures = config.get("architectures") or ["Wav2Vec2ForCTC"]
        if "Wav2Vec2ForCTC" not in architectures:
            raise Unsupported(f"architectures {architectures}")
        for key, expected in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
            if config.get(key, expected) != expected:
                raise Unsupported(f"{key} {config.get(key)!r}")
        for key in ("add_adapter", "use_weighted_layer_sum", "conv_pos_batch_norm"):
            if config.get(key):
                raise Unsupported(f"{key} is set")
        if config.get("feat_extract_norm", "group") not in ("group", "layer"):
            raise Unsupported(f"feat_extract_norm {config.get('feat_extract_norm')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names}
        shape = cls(**values)
        if not len(shape.conv_dim) == len(shape.conv_kernel) == len(shape.conv_stride):
            raise Unsupported("conv_dim, conv_kernel and conv_stride differ in length")
        return shape

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        """Emission frames the feature encoder makes from inputs of ``samples`` samples."""
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            samples = torch.div(samples - kernel, stride, rounding_mode="floor") + 1
        return samples


class _ConvLayer(nn.Module):
    """One feature-encoder layer: conv, then (per the norm) group or layer norm, then GELU."""

    def __init__(self, shape: Wav2Vec2Shape, index: int) -> None:
        super().__init__()
        in_dim = shape.conv_dim[index - 1] if index > 0 else 1
        out_dim = shape.conv_dim[index]
        self.conv = nn.Conv1d(in_dim, out_dim, shape.conv_kernel[index], stride=shape.conv_stride[index], bias=shape.conv_bias)
        self.norm_kind = shape.feat_extract_norm if shape.feat_extract_norm == "layer" or index == 0 else ""
        if self.norm_kind == "layer":
            self.layer_norm: nn.Module = nn.LayerNorm(out_dim)
        elif self.norm_kind == "group":  # one group per channel: each channel normalised over time
            self.layer_norm = nn.GroupNorm(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm_kind == "group":
            x = self.layer_norm(x)
        return F.gelu(x)


class _FeatureEncoder(nn.Module):
    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(_ConvLayer(shape, i) for i in range(len(shape.conv_dim)))

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        x = samples[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)  # (batch, frames, channels)


class _FeatureProjection(nn.Module):
    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(shape.conv_dim[-1], eps=shape.layer_norm_eps)
        self.projection = nn.Linear(shape.conv_dim[-1], shape.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(features))


class _PositionConv(nn.Module):
    """Grouped convolution over time added to the frames (its weight-norm folded in at load)."""

    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        kernel = shape.num_conv_pos_embeddings
        self.conv = nn.Conv1d(shape.hidden_size, shape.hidden_size, kernel, padding=kernel // 2,
                              groups=shape.num_conv_pos_embedding_groups)
        self.trim = 1 if kernel % 2 == 0 else 0  # an even kernel with padding k/2 makes one frame too many

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.conv(hidden.transpose(1, 2))
        if self.trim:
            x = x[:, :, : -self.trim]
        return F.gelu(x).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.heads = shape.num_attention_heads
        size = shape.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(size, size) for _ in range(4))

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, frames, size = hidden.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, frames, self.heads, size // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(hidden)), split(self.k_proj(hidden)),
                                             split(self.v_proj(hidden)), attn_mask=key_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, size))


class _FeedForward(nn.Module):
    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(shape.hidden_size, shape.intermediate_size)
        self.output_dense = nn.Linear(shape.intermediate_size, shape.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(hidden)))


class _EncoderLayer(nn.Module):
    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.pre_norm = shape.do_stable_layer_norm
        self.attention = _Attention(shape)
        self.layer_norm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.feed_forward = _FeedForward(shape)
        self.final_layer_norm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            hidden = hidden + self.attention(self.layer_norm(hidden), key_mask)
            return hidden + self.feed_forward(self.final_layer_norm(hidden))
        hidden = self.layer_norm(hidden + self.attention(hidden, key_mask))
        return self.final_layer_norm(hidden + self.feed_forward(hidden))


class _Encoder(nn.Module):
    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.pre_norm = shape.do_stable_layer_norm
        self.pos_conv_embed = _PositionConv(shape)
        self.layer_norm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.layers = nn.ModuleList(_EncoderLayer(shape) for _ in range(shape.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        key_mask = None
        if frame_mask is not None:
            hidden = hidden.masked_fill(~frame_mask[:, :, None], 0.0)  # padded frames enter as zeros
            key_mask = frame_mask[:, None, None, :]  # every query attends to valid frames only
        hidden = hidden + self.pos_conv_embed(hidden)
        if not self.pre_norm:
            hidden = self.layer_norm(hidden)
        for layer in self.layers:
            hidden = layer(hidden, key_mask)
        return self.layer_norm(hidden) if self.pre_norm else hidden


class _Backbone(nn.Module):
    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.feature_extractor = _FeatureEncoder(shape)
        self.feature_projection = _FeatureProjection(shape)
        self.encoder = _Encoder(shape)


@dataclass
class CtcOutput:
    """What ``Wav2Vec2Ctc`` returns: ``logits`` (batch, frames, vocabulary), as transformers'
    ``CausalLMOutput`` carries them (``aligners.HalfPrecision`` replaces them with float32)."""

    logits: torch.Tensor


class Wav2Vec2Ctc(nn.Module):
    """A wav2vec2 CTC network; called as transformers' ``Wav2Vec2ForCTC`` is by ``ctc_alignment``:
    ``model(samples, attention_mask=...)`` with samples (batch, samples) at 16 kHz and a mask
    of 1 for real samples, 0 for padding; returns ``CtcOutput``."""

    def __init__(self, shape: Wav2Vec2Shape) -> None:
        super().__init__()
        self.config = shape
        self.wav2vec2 = _Backbone(shape)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size)

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        """Emission frames made from inputs of ``samples`` samples (any integer tensor)."""
        return self.config.output_lengths(samples)

    def forward(self, samples: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CtcOutput:
        backbone = self.wav2vec2
        features = backbone.feature_extractor(samples)
        frame_mask = None
        if attention_mask is not None:
            valid = self.output_lengths(attention_mask.sum(-1))
            frame_mask = torch.arange(features.shape[1], device=features.device)[None, :] < valid[:, None]
        hidden = backbone.encoder(backbone.feature_projection(features), frame_mask)
        return CtcOutput(self.lm_head(hidden))


def weights_file(folder: Path) -> Path:
    """The checkpoint file in ``folder`` (``WEIGHT_FILES`` order); FileNotFoundError if none."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {folder}")


def _read_tensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=device)
    return torch.load(path, map_location=device, weights_only=True)


def _renamed(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under this module's names: old layer-norm names (gamma, beta)
    renamed, the training-only masked-frame embedding dropped and the position convolution's
    weight norm folded into one weight."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith("masked_spec_embed"):
            continue
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
        out[name] = tensor
    prefix = "wav2vec2.encoder.pos_conv_embed.conv."
    for g_name, v_name in (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1")):
        if prefix + g_name in out and prefix + v_name in out:
            g, v = out.pop(prefix + g_name), out.pop(prefix + v_name)
            # torch's weight_norm(dim=2): each kernel position's slice scaled to norm g
            norm = v.float().pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
            out[prefix + "weight"] = (g.float() * v.float() / norm).to(v.dtype)
    return out


def load_wav2vec2_ctc(folder: Path, device: str) -> Wav2Vec2Ctc:
    """The CTC network saved in ``folder`` (``config.json`` and a ``WEIGHT_FILES`` checkpoint),
    in eval mode on ``device``. Raises ``Unsupported`` for variants not built here (the
    checkpoint's tensors must match the network's exactly) and OSError/ValueError for an
    unreadable folder."""
    shape = Wav2Vec2Shape.from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    with torch.device("meta"):
        model = Wav2Vec2Ctc(shape)
    tensors = _renamed(_read_tensors(weights_file(folder), device))
    expected = set(model.state_dict())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise Unsupported(f"checkpoint tensors differ from a wav2vec2 CTC network: missing {missing[:3]}, unexpected {extra[:3]}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, assign=True)
    return model.to(device).eval().requires_grad_(False)


def ctc_dictionary(folder: Path) -> dict[str, int]:
    """Lower-cased token -> emission column, as whisperX builds it from the processor's
    tokenizer (``{token.lower(): id for token, id in tokenizer.get_vocab().items()}``): the
    tokens of ``vocab.json``, then the added tokens (``tokenizer_config.json``'s
    ``added_tokens_decoder``; in folders saved before it existed, ``added_tokens.json``), a later
    one winning a lower-cased clash."""
    vocabulary: dict[str, int] = dict(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    config_path = folder / "tokenizer_config.json"
    decoder = json.loads(config_path.read_text(encoding="utf-8")).get("added_tokens_decoder") if config_path.is_file() else None
    if decoder is not None:
        for code, token in sorted(decoder.items(), key=lambda item: int(item[0])):
            vocabulary[token["content"]] = int(code)
    elif (folder / "added_tokens.json").is_file():
        vocabulary.update(json.loads((folder / "added_tokens.json").read_text(encoding="utf-8")))
    if any(not isinstance(code, int) or code < 0 for code in vocabulary.values()):
        raise ValueError(f"vocab.json in {folder} maps a token to something other than a column")
    return {token.lower(): code for token, code in vocabulary.items()}
