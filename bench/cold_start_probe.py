"""Where a cold start's seconds go: each one-off cost of a fresh process, timed step by step.

    python3 bench/cold_start_probe.py --model /tmp/random-whisper-large-v3 --aligner DIR \
        --offline-diarization-dir DIR --out probe.json

Runs itself twice in fresh interpreters, with an empty CUDA kernel cache and then with the
cache the first run filled (``CUDA_CACHE_PATH``); a step much slower with the empty cache
compiles GPU code from PTX (a library without machine code for this GPU). Each step is timed
on its first call and again on a second call with new inputs of the same kind, so "first -
second" is the one-off cost a warm-up (or the first job) pays. CAM++ is timed on new input
shapes with cuDNN on and with cuDNN off (torch's own convolution kernels: no per-shape plan).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STEPS: dict[str, float] = {}


def step(name: str, fn, sync: bool = True):
    import torch

    started = time.perf_counter()
    out = fn()
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    STEPS[name] = round(time.perf_counter() - started, 4)
    return out


def probe(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    torch = step("import_torch", lambda: __import__("torch"), sync=False)
    step("import_ctranslate2", lambda: __import__("ctranslate2"), sync=False)
    step("import_whisperx_asr", lambda: __import__("whisperx.asr"), sync=False)
    step("cuda_init", lambda: torch.zeros(1, device="cuda"))

    from whisperx.asr import WhisperModel

    from stages import asr

    model = step("asr_load", lambda: WhisperModel(args.model, device="cuda", compute_type="float16"))
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000 * 30) * 0.01).astype(np.float32)
    n_mels = asr.mel_bins(model)

    def features(rows: int) -> np.ndarray:
        return rng.standard_normal((rows, n_mels, 3000)).astype(np.float32)

    step("log_mel_first", lambda: asr.log_mel_batch(model, noise, [asr.SpeechWindow(0.0, 30.0, ())], "cuda"))
    step("log_mel_second", lambda: asr.log_mel_batch(model, noise, [asr.SpeechWindow(0.0, 20.0, ())] * 3, "cuda"))
    step("encode_1_first", lambda: model.encode(features(1)))
    step("encode_1_second", lambda: model.encode(features(1)))
    step("encode_16_first", lambda: model.encode(features(16)))
    step("encode_16_second", lambda: model.encode(features(16)))
    call = asr.GenerateCall(prompt=(50258, 50263, 50360, 50364), suppress=(), temperature=0.0, beam_size=5, patience=1.0,
                            best_of=1, length_penalty=1.0)
    for rows in (1, 16):
        step(f"generate_{rows}x_beam5_first", lambda rows=rows: asr.generate(model, features(rows), call, 24))
        step(f"generate_{rows}x_beam5_second", lambda rows=rows: asr.generate(model, features(rows), call, 24))
    step("generate_8x_beam5_new_rows", lambda: asr.generate(model, features(8), call, 24))
    step("detect_first", lambda: asr.detect(model, features(1)))
    step("detect_second", lambda: asr.detect(model, features(2)))

    from stages import vad
    from resident.models import AsrModels

    vad_model = step("vad_load", lambda: AsrModels("cuda", ".", 0).vad())
    step("vad_30s_first", lambda: vad.speech_scores(vad_model, noise))
    step("vad_30s_second", lambda: vad.speech_scores(vad_model, noise[::-1].copy()))
    step("vad_120s", lambda: vad.speech_scores(vad_model, np.tile(noise, 4)))

    from stages.offline_diarization import build_offline_pipeline

    pipeline = step("diarization_load", lambda: build_offline_pipeline(args.offline_diarization_dir, "cuda"))
    step("diarization_30s_first", lambda: pipeline({"waveform": torch.from_numpy(noise)[None], "sample_rate": 16000}))
    step("diarization_30s_second", lambda: pipeline({"waveform": torch.from_numpy(noise[::-1].copy())[None], "sample_rate": 16000}))
    network = pipeline._embedding.network
    with torch.inference_mode():
        for label, lengths, cudnn in (("cudnn_on", (300, 400, 500, 600, 700), True),
                                      ("cudnn_off", (310, 410, 510, 610, 710), False),
                                      ("cudnn_on_again", (300, 400, 500, 600, 700), True)):
            torch.backends.cudnn.enabled = cudnn
            for rows in (1, 8):
                times = []
                for n in lengths:
                    step(f"campplus_{label}_{rows}x{n}", lambda n=n, rows=rows: network(torch.zeros((rows, n, 80), device="cuda")))
                    times.append(STEPS[f"campplus_{label}_{rows}x{n}"])
                STEPS[f"campplus_{label}_{rows}rows_mean"] = round(float(np.mean(times)), 4)
        torch.backends.cudnn.enabled = True
    if args.aligner:
        from transformers import Wav2Vec2ForCTC

        aligner = step("aligner_load", lambda: Wav2Vec2ForCTC.from_pretrained(args.aligner).to("cuda").half().eval())
        with torch.inference_mode():
            for label, seconds in (("first_10s", 10.0), ("second_10s", 10.0), ("new_7s", 7.0), ("new_23s", 23.0)):
                step(f"aligner_{label}", lambda s=seconds: aligner(torch.zeros((1, int(16000 * s)), device="cuda", dtype=torch.float16)))
            torch.backends.cudnn.enabled = False
            for label, seconds in (("cudnn_off_new_13s", 13.0), ("cudnn_off_new_17s", 17.0)):
                step(f"aligner_{label}", lambda s=seconds: aligner(torch.zeros((1, int(16000 * s)), device="cuda", dtype=torch.float16)))
            torch.backends.cudnn.enabled = True
    STEPS["total_s"] = round(time.perf_counter() - started, 3)
    print("PROBE", json.dumps(STEPS), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="CTranslate2 Whisper folder")
    parser.add_argument("--aligner", default=None, help="wav2vec2 folder")
    parser.add_argument("--offline-diarization-dir", required=True)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cold_start_probe.json"))
    args = parser.parse_args()
    if args.child:
        probe(args)
        return
    cache = Path(os.environ.get("TMPDIR", "/tmp")) / "cold-start-probe-kernel-cache"
    subprocess.run(["rm", "-rf", str(cache)], check=False)
    env = {**os.environ, "CUDA_CACHE_PATH": str(cache), "CUDA_CACHE_MAXSIZE": str(4 * 2**30)}
    report: dict = {"command": " ".join(sys.argv)}
    for label in ("empty_kernel_cache", "filled_kernel_cache"):
        done = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
        report[label] = json.loads(line[6:]) if line else {"error": done.stderr[-2000:]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    empty, filled = report["empty_kernel_cache"], report["filled_kernel_cache"]
    for key in empty:
        print(f"{key:<40} {empty[key]!s:>10} {filled.get(key)!s:>10}")


if __name__ == "__main__":
    main()
