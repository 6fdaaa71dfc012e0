"""Device memory of the ASR stage alone, by batch size and beam width (GPU only).

Each configuration runs twice in one process after a warm-up call; NVML's device-wide peak
above the idle level (model loaded) is what the decode itself adds. CTranslate2's allocator
is chosen per process (``CT2_CUDA_ALLOCATOR``), so ``--allocator`` starts a fresh process.

    python bench/asr_memory.py --model /tmp/random-whisper-large-v3 --audio long.flac --configs 32x5,16x5,32x1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--audio", required=True)
    parser.add_argument("--configs", default="32x5,16x5,32x1", help="comma list of BATCHxBEAM")
    parser.add_argument("--tokens-per-second", type=float, default=5.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch  # noqa: F401 - first, so its CUDA libraries are the ones loaded

    from stages import asr
    import run_bench
    from stages import vad
    from faster_whisper import WhisperModel

    run_bench.cap_decoding(args.tokens_per_second)
    waveform = run_bench.load_audio(args.audio, 17)
    model = WhisperModel(args.model, device="cuda", compute_type="float16")
    tokenizer = asr.make_tokenizer(model, "ru", "transcribe")
    windows = [vad.SpeechWindow(30.0 * i, 30.0 * (i + 1), ((30.0 * i, 30.0 * (i + 1)),)) for i in range(32)]
    run_bench.reset_peak("cuda")
    asr.transcribe_windows(model, waveform, windows[:4], tokenizer, asr.DecodeOptions(beam_size=5), 4, "cuda")
    rows = []
    for config in args.configs.split(","):
        batch, beam = (int(x) for x in config.split("x"))
        for attempt in range(2):
            run_bench.reset_peak("cuda")
            idle = run_bench._NVML.peak
            t0 = run_bench.now()
            asr.transcribe_windows(model, waveform, windows, tokenizer, asr.DecodeOptions(beam_size=beam), batch, "cuda")
            seconds = run_bench.now() - t0
            rows.append({"batch": batch, "beam": beam, "attempt": attempt, "seconds": round(seconds, 2),
                         "idle_mb": round(idle / 2**20), "peak_mb": run_bench.peak_mb("cuda"),
                         "added_mb": round(run_bench.peak_mb("cuda") - idle / 2**20)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
