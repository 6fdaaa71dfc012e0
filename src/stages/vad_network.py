"""whisperX's VAD network in plain torch: its bundled checkpoint (pyannote's "PyanNet"
segmentation layout: SincNet filters, a 4-layer bidirectional LSTM, two linear layers and a
sigmoid over 3 speaker outputs), read without importing pyannote.audio, and the sliding
inference over a file cut into batches.

Why not pyannote's own ``Inference``: importing pyannote.audio takes ~7 s of start-up (Lightning,
torchmetrics and the rest), and every job needs the VAD at once while only diarization needs
pyannote; and pyannote's VAD inference runs a whole file as one call, which holds the shared
torch thread for the length of a long file. Here each batch of 5 s chunks is a work item of its
own. The scores equal pyannote's (``tests/unit/test_vad_network.py`` compares them): same
chunks (5 s every 0.5 s, the tail zero-padded), same network, the speaker outputs reduced by
their maximum (pyannote's VAD pipeline does that before aggregating), the chunks overlap-added
with a Hamming window on the network's frame grid, and the padding cropped.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16_000
CHUNK_S = 5.0  # the network's input: 5 s chunks (the checkpoint's training duration)
STEP_S = 0.5  # one chunk every 0.5 s (whisperX's VAD pipeline: 10 % of the duration)
BATCH_CHUNKS = 32  # chunks per forward call (pyannote's default inference batch)
# SincNet's layers (the sinc filterbank, then pool, conv, pool, conv, pool): kernel sizes and
# strides, which set the output frame grid; the filterbank's stride is the checkpoint's.
_KERNELS = (251, 3, 5, 3, 5, 3)
_LATER_STRIDES = (3, 1, 3, 1, 3)


def bundled_checkpoint() -> Path:
    """The VAD checkpoint inside the installed whisperX package (found without importing it)."""
    spec = importlib.util.find_spec("whisperx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("whisperx is not installed: its VAD checkpoint is missing")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "pytorch_model.bin"


class _Absorbed:
    """Stands in for every non-torch object pickled in the checkpoint (pyannote's task
    specifications, omegaconf nodes): no foreign code runs. What the pickle hands it (the
    constructor's arguments, the state it restores) is kept as plain data, so the task
    specifications of a segmentation checkpoint (chunk duration, powerset classes) can be read."""

    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _CheckpointUnpickler(pickle.Unpickler):
    """Resolves only what a weights checkpoint needs (tensor rebuilding, storages, dtypes and
    plain containers); any other pickled global becomes ``_Absorbed``, so no callable the file
    names runs (torch.load's own ``weights_only`` allow-list refuses pyannote's and omegaconf's
    pickled objects outright, hence this one)."""

    _CONTAINERS = {("builtins", "dict"), ("builtins", "list"), ("builtins", "set"), ("builtins", "tuple"),
                   ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "bytes"),
                   ("builtins", "bool"), ("builtins", "slice"), ("collections", "OrderedDict"),
                   ("collections", "defaultdict"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        name = "int" if (module, name) == ("builtins", "long") else name
        tensor_part = (module == "torch._utils" and name.startswith("_rebuild_")) or (
            module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)))
        if tensor_part or (module, name) in self._CONTAINERS:
            return super().find_class(module, name)
        return _Absorbed


class _CheckpointPickle:
    """The ``pickle_module`` torch.load uses: the restricted unpickler above."""

    Unpickler = _CheckpointUnpickler
    load = pickle.load


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checkpoint's hyper-parameters and weights."""
    hparams, weights, _ = read_checkpoint_with_task(path)
    return hparams, weights


def read_checkpoint_with_task(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint's hyper-parameters, weights and task specifications (pyannote's
    ``Specifications`` fields as a plain dict: ``duration``, ``classes``, ``powerset_max_classes``,
    ``warm_up``...; empty when the checkpoint has none)."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_CheckpointPickle)
    specifications = dict(checkpoint.get("pyannote.audio", {})).get("specifications")
    state = specifications.state if isinstance(specifications, _Absorbed) else None
    task = dict(state) if isinstance(state, dict) else {}
    return dict(checkpoint["hyper_parameters"]), dict(checkpoint["state_dict"]), task


class SincFeatures(nn.Module):
    """SincNet: learnable band-pass filters (asteroid's parametrised sinc filterbank), then
    two convolutions, each stage max-pooled, instance-normalised and leaky-ReLU'd."""

    def __init__(self, stride: int, sample_rate: int) -> None:
        super().__init__()
        from asteroid_filterbanks import Encoder, ParamSincFB

        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv1d = nn.ModuleList([
            Encoder(ParamSincFB(80, _KERNELS[0], stride=stride, sample_rate=sample_rate, min_low_hz=50, min_band_hz=50)),
            nn.Conv1d(80, 60, 5, stride=1),
            nn.Conv1d(60, 60, 5, stride=1),
        ])
        self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        self.norm1d = nn.ModuleList([nn.InstanceNorm1d(80, affine=True), nn.InstanceNorm1d(60, affine=True),
                                     nn.InstanceNorm1d(60, affine=True)])

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        out = self.wav_norm1d(waveforms)
        for index, (conv, pool, norm) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d)):
            out = conv(out)
            if index == 0:
                out = torch.abs(out)  # the sinc filters' outputs are rectified before pooling
            out = F.leaky_relu(norm(pool(out)))
        return out


class SegmentationNetwork(nn.Module):
    """The checkpoint's network: (batch, 1, samples) -> (batch, frames, outputs).

    outputs: 3 speaker probabilities in [0, 1] (sigmoid; whisperX's VAD checkpoint), or, with
    ``powerset``, log-probabilities of the ``num_outputs`` speaker sets (log-softmax;
    segmentation-3.0: 7 sets of at most 2 of 3 speakers).
    """

    def __init__(self, hparams: dict, num_outputs: int = 3, powerset: bool = False) -> None:
        super().__init__()
        self.powerset = powerset
        lstm, linear = dict(hparams["lstm"]), dict(hparams["linear"])
        if not lstm.get("monolithic", True):
            raise ValueError("this VAD checkpoint stacks its LSTM layers one by one; expected one monolithic LSTM")
        self.sincnet = SincFeatures(int(hparams["sincnet"]["stride"]), int(hparams["sample_rate"]))
        self.lstm = nn.LSTM(60, int(lstm["hidden_size"]), num_layers=int(lstm["num_layers"]),
                            bidirectional=bool(lstm["bidirectional"]), dropout=float(lstm["dropout"]), batch_first=True)
        width = int(lstm["hidden_size"]) * (2 if lstm["bidirectional"] else 1)
        sizes = [width] + [int(linear["hidden_size"])] * int(linear["num_layers"])
        self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.classifier = nn.Linear(sizes[-1], num_outputs)
        self.frames = FrameGrid.of_sincnet(int(hparams["sincnet"]["stride"]), int(hparams["sample_rate"]))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.sincnet(waveforms).transpose(1, 2))
        for layer in self.linear:
            out = F.leaky_relu(layer(out))
        scores = self.classifier(out)
        return F.log_softmax(scores, dim=-1) if self.powerset else torch.sigmoid(scores)


@dataclass(frozen=True)
class FrameGrid:
    """Frame i covers [start + i*step, start + i*step + duration) seconds."""

    start: float
    duration: float
    step: float

    @classmethod
    def of_sincnet(cls, stride: int, sample_rate: int) -> FrameGrid:
        """The output frames' receptive field in the input (one frame, and the shift between
        two), from SincNet's kernel sizes and strides."""
        strides = (stride, *_LATER_STRIDES)

        def field(frames: int) -> int:
            size = frames
            for kernel, step in reversed(list(zip(_KERNELS, strides))):
                size = kernel + (size - 1) * step
            return size

        centre = 0
        for kernel, step in reversed(list(zip(_KERNELS, strides))):
            centre = centre * step + (kernel - 1) // 2
        size = field(1)
        return cls((centre - (size - 1) / 2) / sample_rate, size / sample_rate, (field(2) - size) / sample_rate)

    def middle(self, index: np.ndarray) -> np.ndarray:
        """Frame centres (seconds), computed as pyannote does, so thresholds cut at the same frames."""
        first = self.start + index * self.step
        return 0.5 * (first + (first + self.duration))

    def closest_frame(self, seconds: float) -> int:
        return int(np.rint((seconds - self.start - 0.5 * self.duration) / self.step))


@dataclass
class SpeechScores:
    """Frame-level speech probabilities of a file (``data``, one per frame of ``frames``)."""

    data: np.ndarray  # (frames,) float32
    frames: FrameGrid


def sliding_chunks(waveform: torch.Tensor, window: int, step: int, batch_size: int) -> tuple[list[torch.Tensor], int]:
    """A (1, samples) waveform cut into ``window``-sample chunks every ``step`` samples, as
    (chunks, 1, window) forward batches of at most ``batch_size`` complete chunks; when the file
    does not end on a chunk boundary (or is shorter than one chunk), one more chunk after the
    last complete one, zero-padded to full length, alone in the last batch (pyannote's sliding
    inference). Returns the batches and the number of complete chunks."""
    samples = int(waveform.shape[1])
    if samples >= window:
        chunks = waveform.unfold(1, window, step).permute(1, 0, 2)  # (chunk, channel, sample): a view
    else:
        chunks = waveform.new_zeros((0, 1, window))
    complete = int(chunks.shape[0])
    batches = [chunks[c : c + batch_size] for c in range(0, complete, batch_size)]
    if samples < window or (samples - window) % step > 0:
        tail = waveform[:, complete * step :]
        batches.append(F.pad(tail, (0, window - tail.shape[1]))[None])
    return batches, complete


class VadNetwork:
    """The network on a device, and its sliding inference cut into batches."""

    def __init__(self, network: SegmentationNetwork, device: str) -> None:
        self.network = network.eval().to(torch.device(device))
        self.device = torch.device(device)
        self.window = int(round(CHUNK_S * SAMPLE_RATE))
        self.step = round(STEP_S * SAMPLE_RATE)
        chunk_frames = self.network(torch.zeros(1, 1, self.window, device=self.device)).shape[1]
        self.hamming = np.hamming(chunk_frames).reshape(-1, 1)

    @classmethod
    def load(cls, path: Path, device: str) -> VadNetwork:
        hparams, weights = read_checkpoint(path)
        network = SegmentationNetwork(hparams)
        network.load_state_dict(weights)
        with torch.inference_mode():
            return cls(network, device)

    def batches(self, waveform: np.ndarray) -> tuple[list[torch.Tensor], int]:
        """The file's chunks in forward batches (the zero-padded tail chunk alone, last), and
        the file's length in samples."""
        tensor = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)).unsqueeze(0)
        out, _ = sliding_chunks(tensor, self.window, self.step, BATCH_CHUNKS)
        return out, tensor.shape[1]

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        """(chunks, frames, 1): each frame's highest speaker probability, i.e. its speech score."""
        with torch.inference_mode():
            scores = self.network(batch.to(self.device)).cpu().numpy()
        return np.max(scores, axis=-1, keepdims=True)

    def aggregate(self, outputs: list[np.ndarray], samples: int) -> SpeechScores:
        """The batches' outputs overlap-added on the frame grid (Hamming-weighted mean of the
        chunks covering each frame), cropped to the file's length."""
        stacked = np.vstack(outputs)
        frames = self.network.frames
        grid = FrameGrid(0.0, frames.duration, frames.step)  # the chunks start at 0
        count = stacked.shape[0]
        total_frames = grid.closest_frame(CHUNK_S + (count - 1) * STEP_S + 0.5 * grid.duration) + 1
        summed = np.zeros((total_frames, 1), dtype=np.float32)
        weight = np.zeros((total_frames, 1), dtype=np.float32)
        covered = np.zeros((total_frames, 1), dtype=np.float32)
        per_chunk = stacked.shape[1]
        for index in range(count):
            first = grid.closest_frame(index * STEP_S + 0.5 * grid.duration)
            summed[first : first + per_chunk] += stacked[index] * self.hamming
            weight[first : first + per_chunk] += self.hamming
            covered[first : first + per_chunk] = 1.0
        mean = summed / np.maximum(weight, 1e-12)
        mean[covered == 0.0] = 0.0
        if samples < self.window or (samples - self.window) % self.step > 0:
            # Frames that overlap the file (the padded tail's other frames are dropped).
            last = int(np.floor((samples / SAMPLE_RATE - grid.start) / grid.step))
            mean = mean[: max(0, min(last + 1, len(mean)))]
        return SpeechScores(mean[:, 0].astype(np.float32), grid)
