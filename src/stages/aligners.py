"""The wav2vec2 aligner types that ``alignment`` (which loads and keeps them) and
``ctc_alignment`` (which runs them) share; imports neither, so the two never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import torch
    from torchaudio.models import Wav2Vec2Model
    from transformers import Wav2Vec2ForCTC

    from stages.wav2vec2_network import Wav2Vec2Ctc

__all__ = ["AlignModel", "Aligner", "AlignerUnavailable", "HalfPrecision"]

# A wav2vec2 aligner: a Hugging Face checkpoint built by ``wav2vec2_network``, or what
# ``whisperx.load_align_model`` returns (a transformers model or a torchaudio bundle), on a GPU
# behind ``HalfPrecision``.
AlignModel: TypeAlias = "Wav2Vec2Ctc | Wav2Vec2ForCTC | Wav2Vec2Model | HalfPrecision"


class AlignerUnavailable(RuntimeError):
    """No wav2vec2 aligner could be loaded for a language; message says why."""


@dataclass(frozen=True)
class Aligner:
    """A loaded wav2vec2 aligner: whisperX's (model, metadata) pair and where it came from."""

    language: str
    model: AlignModel
    metadata: dict
    source: str


class HalfPrecision:
    """Runs a wav2vec2 aligner in float16 on the GPU behind its float32 interface.

    whisperX feeds float32 audio and reads float32 emissions; half precision halves the
    aligner's weights and activations (xlsr-53-large: 1.2 GB -> 0.6 GB) and roughly doubles
    its speed on tensor cores; CTC emissions are log-softmaxed in float32 afterwards.
    """

    def __init__(self, inner: Wav2Vec2Ctc | Wav2Vec2ForCTC | Wav2Vec2Model) -> None:
        self.inner = inner.half()

    def __call__(self, waveform: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(waveform.half(), *args, **kwargs)
        if hasattr(out, "logits"):  # transformers Wav2Vec2ForCTC
            out.logits = out.logits.float()
            return out
        if isinstance(out, tuple):  # torchaudio bundles: (emissions, lengths)
            return (out[0].float(), *out[1:])
        return out.float()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
