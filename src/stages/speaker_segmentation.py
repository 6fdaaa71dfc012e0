"""Local speaker segmentation of the offline diarization pipeline: pyannote's segmentation-3.0
(a powerset PyanNet) slid over a file in plain torch, without pyannote.audio.

The network is ``vad_network.SegmentationNetwork`` with its powerset head (7 speaker sets: none,
one of 3 local speakers, or two of them); its checkpoint is read by
``vad_network.read_checkpoint_with_task``, which also gives the task's chunk duration and classes.
What ``SpeakerSegmentation`` returns is what pyannote's ``Inference(skip_aggregation=True)``
gives ``SpeakerDiarization``: for each 10 s chunk (one every ``step`` seconds, the last one
zero-padded), the frame-level one-hot speaker activity decoded from the most likely speaker set.
The chunks go through the network in the same batches as pyannote's (``batch_size`` complete
chunks per forward, then the padded last chunk alone), so the frame decisions are the same to
the bit on the same device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.pyannote_core import SlidingWindow, SlidingWindowFeature
from stages.vad_network import FrameGrid, SegmentationNetwork, read_checkpoint_with_task, sliding_chunks

SegmentationHook = Callable[..., None]
"""Called as ``hook(completed=chunks done, total=chunks)`` while chunks go through the network."""


@dataclass(frozen=True)
class SegmentationTask:
    """What the checkpoint was trained for (pyannote's task ``Specifications``).

    duration: chunk length, seconds (10.0 for segmentation-3.0).
    num_speakers: local speakers per chunk (3).
    max_set_size: most local speakers active at once in the powerset encoding (2).
    warm_up: seconds at each end of a chunk pyannote leaves out of aggregation ((0, 0) here).
    """

    duration: float
    num_speakers: int
    max_set_size: int
    warm_up: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def from_checkpoint(cls, task: dict[str, Any], num_outputs: int) -> SegmentationTask:
        """The task of a checkpoint (``read_checkpoint_with_task``), checked against the
        classifier's ``num_outputs``; ValueError for anything but a powerset segmentation model."""
        classes = task.get("classes")
        max_set_size = task.get("powerset_max_classes")
        duration = task.get("duration")
        if not classes or max_set_size is None or duration is None:
            raise ValueError("not a powerset speaker-segmentation checkpoint (like segmentation-3.0): "
                             f"its task reads {sorted(task)}")
        warm_up = tuple(float(value) for value in task.get("warm_up") or (0.0, 0.0))
        made = cls(float(duration), len(classes), int(max_set_size), (warm_up[0], warm_up[1]))
        if made.num_sets != num_outputs:
            raise ValueError(f"the checkpoint's classifier has {num_outputs} outputs, its task {made.num_sets} speaker sets")
        return made

    @property
    def num_sets(self) -> int:
        """Speaker sets of the powerset encoding (7 for 3 speakers, at most 2 at once)."""
        return len(self.set_members())

    def set_members(self) -> np.ndarray:
        """(sets, speakers) float32, 1 where a speaker belongs to a set, in the order the network's
        outputs follow: by set size, then lexicographically (pyannote's ``Powerset`` mapping)."""
        rows = []
        for size in range(self.max_set_size + 1):
            for members in combinations(range(self.num_speakers), size):
                row = np.zeros(self.num_speakers, dtype=np.float32)
                row[list(members)] = 1.0
                rows.append(row)
        return np.stack(rows)


def load_segmentation_network(path: Path) -> tuple[SegmentationNetwork, SegmentationTask]:
    """segmentation-3.0's network (eval mode, CPU) and its task, from its checkpoint
    (``pytorch_model.bin``), without pyannote.audio."""
    hparams, weights, task_state = read_checkpoint_with_task(path)
    num_outputs = int(weights["classifier.weight"].shape[0])
    task = SegmentationTask.from_checkpoint(task_state, num_outputs)
    if int(hparams.get("sample_rate", 16_000)) != 16_000:
        raise ValueError(f"{path}: expected a 16 kHz model, got {hparams.get('sample_rate')} Hz")
    network = SegmentationNetwork(hparams, num_outputs=num_outputs, powerset=True)
    network.load_state_dict(weights)
    return network.eval(), task


class SpeakerSegmentation:
    """segmentation-3.0 slid over a file: each chunk's frame-level local speaker activity.

    network, task: from ``load_segmentation_network``.
    step: seconds between chunk starts (``segmentation_step`` x the chunk duration).
    batch_size: complete chunks per forward.
    """

    sample_rate = 16_000

    def __init__(self, network: SegmentationNetwork, task: SegmentationTask, step: float, batch_size: int) -> None:
        self.network = network
        self.task = task
        self.step = step
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self._members = torch.from_numpy(task.set_members())
        grid: FrameGrid = network.frames
        # The network's output frames (seconds): the grid pyannote calls the model's receptive field.
        self.frames = SlidingWindow(start=grid.start, duration=grid.duration, step=grid.step)

    def to(self, device: torch.device) -> SpeakerSegmentation:
        """Move the network to ``device``."""
        self.network.to(device)
        self._members = self._members.to(device)
        self.device = torch.device(device)
        return self

    @property
    def window_samples(self) -> int:
        """Samples per chunk (160,000 for 10 s)."""
        return round(self.task.duration * self.sample_rate)

    @property
    def step_samples(self) -> int:
        """Samples between chunk starts."""
        return round(self.step * self.sample_rate)

    def chunks(self) -> SlidingWindow:
        """The chunks' positions (seconds): chunk i covers [i * step, i * step + duration)."""
        return SlidingWindow(start=0.0, duration=self.task.duration, step=self.step)

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        """(chunks, frames, speakers) float32 one-hot activity of a (chunks, 1, samples) batch:
        the members of each frame's most likely speaker set."""
        with torch.inference_mode():
            log_probabilities = self.network(batch.to(self.device))
            best = torch.argmax(log_probabilities, dim=-1)
            return self._members[best].cpu().numpy()

    def __call__(self, waveform: torch.Tensor, hook: SegmentationHook | None = None) -> SlidingWindowFeature:
        """Activity of every chunk of a (1, samples) 16 kHz waveform: (chunks, frames, speakers)
        on ``chunks()``, values 0 or 1.

        The complete chunks run ``batch_size`` at a time; when the file does not end on a chunk
        boundary (or is shorter than a chunk), one more chunk starts after the last complete one
        and is zero-padded to full length, and runs alone.
        """
        batches, complete = sliding_chunks(waveform, self.window_samples, self.step_samples, self.batch_size)
        full_batches = -(-complete // self.batch_size)
        total = complete + len(batches) - full_batches  # the padded last chunk, if any, counts too
        if hook is not None:
            hook(completed=0, total=total)
        outputs = []
        for index, batch in enumerate(batches):
            outputs.append(self.infer(batch))
            if hook is not None:
                # As pyannote counts: a full batch adds batch_size (may pass ``total`` on the
                # last one); the padded last chunk completes it.
                hook(completed=(index + 1) * self.batch_size if index < full_batches else total, total=total)
        return SlidingWindowFeature(np.vstack(outputs), self.chunks())
