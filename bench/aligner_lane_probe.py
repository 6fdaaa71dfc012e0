"""Why the aligner's start-up warm-up is slow in the worker: the warm-up alone, or beside
pyannote's import in another thread (as start-up's diarization lane runs it).

One fresh process per mode: torch and a CUDA context, the plain-torch aligner loaded from a
folder (``AlignmentModels``), then ``ctc_alignment.warm_up`` (every fixed-row shape once) timed
twice, each padded forward synchronised and summed. Mode ``pyannote`` starts
``import pyannote.audio.pipelines`` in a thread just before the first warm-up.

    python3 bench/aligner_lane_probe.py alone --aligner /tmp/wav2vec2-ru-large
    python3 bench/aligner_lane_probe.py pyannote --aligner /tmp/wav2vec2-ru-large
    python3 bench/aligner_lane_probe.py alone --no-cudnn --aligner /tmp/wav2vec2-ru-large

``--no-cudnn`` turns cuDNN off for the process (torch's own convolution kernels), to tell how
much of a new shape's first-time cost is cuDNN choosing a plan.

Prints one line per step (seconds). Measured on an H100 (BENCHMARKS 16, session 15).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("alone", "pyannote"))
    parser.add_argument("--aligner", required=True, help="wav2vec2 CTC folder (config.json, vocab.json, weights)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-cudnn", action="store_true", help="torch.backends.cudnn.enabled = False")
    args = parser.parse_args()
    clock = time.perf_counter
    started = clock()
    import torch

    torch.backends.cudnn.enabled = not args.no_cudnn
    torch.zeros(1, device=args.device)
    print("torch + device", round(clock() - started, 2), flush=True)
    from stages import alignment, ctc_alignment

    models = alignment.AlignmentModels(args.device, lambda _language: args.aligner, kept=frozenset(["ru"]))
    started = clock()
    aligner, _ = models.get("ru")
    print("load", round(clock() - started, 2), flush=True)
    alignment.ensure_punkt("ru")
    if args.mode == "pyannote":
        def load_pyannote() -> None:
            began = clock()
            import pyannote.audio.pipelines  # noqa: F401

            print("pyannote import (thread)", round(clock() - began, 2), flush=True)

        threading.Thread(target=load_pyannote).start()
    forward = ctc_alignment._forward_padded
    spent: list[float] = []

    def timed_forward(*a, **k):  # type: ignore[no-untyped-def]
        began = clock()
        result = forward(*a, **k)
        if args.device == "cuda":
            torch.cuda.synchronize()
        spent.append(clock() - began)
        return result

    ctc_alignment._forward_padded = timed_forward  # type: ignore[assignment]
    for attempt in ("first", "second"):
        spent.clear()
        began = clock()
        shapes = ctc_alignment.warm_up(aligner.model, aligner.metadata, args.device)
        print(args.mode, "no-cudnn" if args.no_cudnn else "cudnn", attempt, "warm-up:", shapes, "shapes", round(clock() - began, 2), "s; forwards",
              round(sum(spent), 2), "s; each (ms):", " ".join(str(round(1000 * s)) for s in spent), flush=True)


if __name__ == "__main__":
    main()
