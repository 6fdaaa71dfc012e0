"""How the aligner groups transcript segments into model forwards and pads them: the
options, the batch plan (shortest rows first, bounded rows and padded audio per forward), the
padded row widths and, on a GPU, the fixed rows per width that keep every forward's shape one
that start-up warmed up.

Units: audio in 16 kHz samples unless a name says seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class CtcAlignOptions:
    """Tunables of the emission batching and the trellis; none of them changes a result of the
    one-segment-per-forward path, and batching changes layer-norm emissions only by float noise."""

    max_rows_per_forward: int = 32  # segments per model forward
    max_seconds_per_forward: float = 120.0  # padded audio per forward (rows x longest row): 240 s took ~8 GB of torch memory for xlsr-large in fp16 on an H100
    # Padded row lengths (seconds, ascending): a row is padded up to the first that holds it, so
    # shapes repeat (cuDNN plans each new shape once; on the lent H100 a new shape's first
    # forward took ~130 ms against ~30 ms, bench/aligner_lane_probe.py), and every shape up to
    # 32 s is warmed up at start-up: 18 shapes instead of 32 in whole seconds. Above 8 s the
    # widths are where ``rows_for_length`` (120 s / width) changes, so each row shares a forward
    # with as many others as it did in whole seconds: a long file needs no more forwards.
    # Longer rows: multiples of ``pad_multiple_s``.
    pad_widths_s: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 15, 17, 20, 24, 30, 32)
    pad_multiple_s: float = 1.0
    # Where models that pad exactly (padding_is_exact) get padded batches: "cuda" (on a GPU,
    # where batching saves a launch-bound forward per segment; on a CPU it saves nothing and
    # computes the padding), "always" or "never" (one segment per forward everywhere).
    padded_batches: Literal["cuda", "always", "never"] = "cuda"
    # Where padded forwards get exactly ``rows_for_length`` rows (silent rows fill a short
    # batch), so every forward has one shape per padded width, all run once at start-up by ``warm_up``:
    # "cuda" (a new shape costs cuDNN a plan, ~40 ms each, ~0.3 s on the first 16-min job
    # without this; on a CPU the filler rows would only cost time), "always" or "never".
    fixed_rows: Literal["cuda", "always", "never"] = "cuda"
    max_trellis_cells: int = 64_000_000  # segments x frames x tokens per trellis pass (= bytes of its decision array)


def plan_batches(lengths: Sequence[int], padded: bool, options: CtcAlignOptions) -> list[list[int]]:
    """Group positions of ``lengths`` (samples) into batches, shortest first.

    A batch holds at most ``max_rows_per_forward`` rows and at most ``max_seconds_per_forward``
    of audio: padded (rows x longest row, rounded up) for padded forwards, else the sum of its
    rows, which bounds the emissions held at once. One row always fits.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    limit = options.max_seconds_per_forward * SAMPLE_RATE
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        cost = (len(current) + 1) * padded_length(lengths[i], options) if padded else sum(lengths[k] for k in current) + lengths[i]
        if current and (len(current) >= options.max_rows_per_forward or cost > limit):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padded_length(samples: int, options: CtcAlignOptions) -> int:
    """``samples`` rounded up to the first of ``pad_widths_s`` that holds it, else to a
    multiple of ``pad_multiple_s``."""
    for seconds in options.pad_widths_s:
        width = int(round(seconds * SAMPLE_RATE))
        if samples <= width:
            return width
    multiple = max(1, int(round(options.pad_multiple_s * SAMPLE_RATE)))
    return int(math.ceil(samples / multiple)) * multiple


def padded_widths(longest_samples: int, options: CtcAlignOptions) -> list[int]:
    """Every padded row length (samples) a row of at most ``longest_samples`` can get."""
    widths, samples = [], 1
    while samples <= longest_samples:
        width = padded_length(samples, options)
        widths.append(width)
        samples = width + 1
    return widths


def uses_fixed_rows(device: str, options: CtcAlignOptions) -> bool:
    return options.fixed_rows == "always" or (options.fixed_rows == "cuda" and str(device).startswith("cuda"))


def rows_for_length(padded_samples: int, options: CtcAlignOptions) -> int:
    """Rows of a padded forward whose rows are ``padded_samples`` long: as many as
    ``plan_batches`` can put in it (at least 1)."""
    return max(1, min(options.max_rows_per_forward, int(options.max_seconds_per_forward * SAMPLE_RATE // padded_samples)))
